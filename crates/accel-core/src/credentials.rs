//! Who a peer is: namespace tokens (kept only as salted argon2id hashes) and the admin rule.
//!
//! A token is a bearer secret that places a client in a namespace (for containers, where
//! peer credentials say little). The daemon never stores one: the state file keeps PHC
//! hash strings, verification runs in constant time, and a successful verification is
//! remembered in memory by a BLAKE2 digest so that reconnecting clients do not pay the
//! argon2 cost again. Peer-credential placement (uid, gid, cgroup) needs no secret at all
//! and is the recommended way for host processes.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use blake2::{Blake2s256, Digest};

use crate::{bail, lock, Error, Result};

/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 256;
/// Most valid tokens a namespace holds at once (rotation keeps old ones for a while).
pub const MAX_TOKENS: usize = 4;

/// argon2id with 8 MiB and two passes: a few milliseconds per check on a server core,
/// enough to make an offline guess of a human-chosen token expensive; generated tokens
/// (256 random bits) cannot be guessed at any cost.
fn hasher() -> Argon2<'static> {
    let params = Params::new(8 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Checks a token a client or admin supplies.
pub fn check_token(token: &str) -> Result<()> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || token.chars().any(|c| c.is_control()) {
        bail!(EINVAL, "tokens are 1–{MAX_TOKEN_LEN} bytes without control characters");
    }
    Ok(())
}

/// A salted argon2id hash of `token`, as a PHC string (`$argon2id$v=19$...`).
pub fn hash_token(token: &str) -> Result<String> {
    check_token(token)?;
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(token.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::new(accel_uapi::Errno::EIO, format!("hashing token: {e}")))
}

/// Whether `token` matches the PHC hash `hash` (constant-time comparison inside).
pub fn verify_token(hash: &str, token: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| hasher().verify_password(token.as_bytes(), &h).is_ok())
}

/// A new random token: `accel_` and 256 random bits in hex.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("accel_{hex}")
}

/// Remembers tokens that verified, by digest: token → namespace name. Only the daemon's
/// memory holds it; any change of a namespace's tokens clears it.
#[derive(Default)]
pub(crate) struct TokenCache(Mutex<HashMap<[u8; 32], String>>);

impl TokenCache {
    fn digest(token: &str) -> [u8; 32] {
        Blake2s256::digest(token.as_bytes()).into()
    }

    pub(crate) fn get(&self, token: &str) -> Option<String> {
        lock(&self.0).get(&Self::digest(token)).cloned()
    }

    pub(crate) fn put(&self, token: &str, ns: &str) {
        let mut map = lock(&self.0);
        // Bounded: only verified tokens enter, and there are at most MAX_TOKENS per namespace,
        // but a cap keeps memory fixed whatever happens.
        if map.len() >= 4096 {
            map.clear();
        }
        map.insert(Self::digest(token), ns.to_string());
    }

    pub(crate) fn clear(&self) {
        lock(&self.0).clear();
    }
}

/// Who counts as an admin: root, the daemon's own user, and members of the configured
/// admin groups (like `CAP_SYS_ADMIN` / `GENL_ADMIN_PERM` for the kernel's DRM and netlink).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminPolicy {
    /// Group ids whose members (primary or supplementary) are admins.
    pub groups: Vec<u32>,
}

impl AdminPolicy {
    /// Whether a peer with `uid`, primary `gid` and supplementary `groups` is an admin.
    pub fn is_admin(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        uid == 0
            || uid == rustix::process::getuid().as_raw()
            || self.groups.iter().any(|g| *g == gid || groups.contains(g))
    }
}

/// Peer credentials read from the socket (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerCred {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_token_and_are_salted() {
        let a = hash_token("s3cret").unwrap();
        let b = hash_token("s3cret").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "every hash has its own salt");
        assert!(!a.contains("s3cret"));
        assert!(verify_token(&a, "s3cret") && verify_token(&b, "s3cret"));
        assert!(!verify_token(&a, "s3cres") && !verify_token(&a, ""));
        assert!(!verify_token("not a hash", "s3cret"));
    }

    #[test]
    fn bad_tokens_are_refused_and_generated_ones_are_unique() {
        assert_eq!(hash_token("").unwrap_err().code, accel_uapi::Errno::EINVAL);
        assert_eq!(hash_token("a\nb").unwrap_err().code, accel_uapi::Errno::EINVAL);
        assert_eq!(hash_token(&"x".repeat(MAX_TOKEN_LEN + 1)).unwrap_err().code, accel_uapi::Errno::EINVAL);
        let (t1, t2) = (generate_token(), generate_token());
        assert_ne!(t1, t2);
        assert_eq!(t1.len(), "accel_".len() + 64);
        check_token(&t1).unwrap();
    }

    #[test]
    fn admin_rule_covers_root_own_user_and_groups() {
        let p = AdminPolicy { groups: vec![990] };
        let me = rustix::process::getuid().as_raw();
        assert!(p.is_admin(0, 5, &[]));
        assert!(p.is_admin(me, 5, &[]));
        let other = if me == 4242 { 4243 } else { 4242 };
        assert!(!p.is_admin(other, 5, &[6, 7]));
        assert!(p.is_admin(other, 990, &[]));
        assert!(p.is_admin(other, 5, &[990]));
    }
}
