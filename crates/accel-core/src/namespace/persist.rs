//! How namespaces are kept on disk: `namespaces.toml`, private and written atomically.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Share;

/// How a namespace is persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct NsRecord {
    /// A plaintext token written by an older daemon: hashed and dropped at load.
    #[serde(default, skip_serializing)]
    pub(super) token: Option<String>,
    /// PHC hashes of the namespace's tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) token_hashes: Vec<String>,
    #[serde(default)]
    pub(super) devices: Vec<DeviceRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DeviceRecord {
    pub(super) device: u32,
    #[serde(flatten)]
    pub(super) share: Share,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct StateFile {
    #[serde(default)]
    pub(super) namespaces: BTreeMap<String, NsRecord>,
}
