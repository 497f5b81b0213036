//! Client handle tables: generational slotmap keys as the u64 handles clients see. The
//! bottom of the core: every object table uses these helpers.

use std::sync::{RwLock, RwLockReadGuard};

use slotmap::{Key, KeyData, SlotMap};

use accel_uapi::Errno;

use crate::{bail, Error, Result};

/// Most handles of one kind a client may hold.
pub const MAX_HANDLES: usize = 1 << 16;

/// The slotmap key of a handle value.
pub fn key<K: From<KeyData>>(raw: u64) -> K {
    KeyData::from_ffi(raw).into()
}

fn raw<K: Key>(k: K) -> u64 {
    k.data().as_ffi()
}

/// Adds `v` and returns its handle; `ENOSPC` past [`MAX_HANDLES`].
pub fn insert<K: Key, V>(table: &mut SlotMap<K, V>, what: &str, v: V) -> Result<u64> {
    if table.len() >= MAX_HANDLES {
        bail!(ENOSPC, "too many {what} handles (limit {MAX_HANDLES})");
    }
    Ok(raw(table.insert(v)))
}

/// The value behind a handle; `ENOENT` for stale or forged ones.
pub fn lookup<'a, K: Key + From<KeyData>, V>(table: &'a SlotMap<K, V>, what: &str, h: u64) -> Result<&'a V> {
    table
        .get(key(h))
        .ok_or_else(|| Error::new(Errno::ENOENT, format!("no {what} with handle {h:#x} (stale or never issued)")))
}

/// A handle table shared between threads (a client and its rings): values are cloned out
/// (`Arc`s), handles are the raw u64 keys.
pub struct Table<K: Key, V> {
    map: RwLock<SlotMap<K, V>>,
    what: &'static str,
}

impl<K: Key, V: Clone> Table<K, V> {
    /// An empty table of `what`s (named in errors).
    pub fn new(what: &'static str) -> Self {
        Table { map: RwLock::new(SlotMap::with_key()), what }
    }

    fn read(&self) -> RwLockReadGuard<'_, SlotMap<K, V>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The value behind handle `h`; `ENOENT` for stale or forged handles.
    pub fn get(&self, h: u64) -> Result<V> {
        lookup(&self.read(), self.what, h).cloned()
    }

    /// Adds a value and returns its handle; `ENOSPC` past [`MAX_HANDLES`].
    pub fn insert(&self, v: V) -> Result<u64> {
        insert(&mut self.map.write().unwrap_or_else(|e| e.into_inner()), self.what, v)
    }

    /// Removes a handle.
    pub fn remove(&self, h: u64) -> Option<V> {
        self.map.write().unwrap_or_else(|e| e.into_inner()).remove(key(h))
    }

    /// Handles held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// No handles held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
