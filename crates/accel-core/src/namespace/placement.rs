//! Placement: which namespace a new client goes to (rules, peer facts, admins).

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Namespace;
use crate::credentials::AdminPolicy;
use crate::credentials::PeerCred;

/// One placement rule from the config: every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRule {
    /// Target namespace.
    pub namespace: String,
    /// Peer user id.
    pub uid: Option<u32>,
    /// Peer group id.
    pub gid: Option<u32>,
    /// Prefix of the peer's cgroup path (`/proc/<pid>/cgroup`, v2 line).
    pub cgroup_prefix: Option<String>,
    /// Inode of the peer's user namespace (`/proc/<pid>/ns/user`).
    pub userns: Option<u64>,
    /// Inode of the peer's pid namespace (`/proc/<pid>/ns/pid`).
    pub pidns: Option<u64>,
    /// Token the client gives in the handshake.
    pub token: Option<String>,
}

/// What placement looks at, read from `/proc/<pid>` of the peer.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// Credentials (`SO_PEERCRED`).
    pub cred: PeerCred,
    /// Supplementary groups (`Groups:` of `/proc/<pid>/status`).
    pub groups: Vec<u32>,
    /// cgroup v2 path.
    pub cgroup: Option<String>,
    /// User namespace inode.
    pub userns: Option<u64>,
    /// Pid namespace inode.
    pub pidns: Option<u64>,
}

impl PeerInfo {
    /// Reads what placement needs about process `cred.pid`.
    pub fn of(cred: PeerCred) -> PeerInfo {
        let proc = PathBuf::from(format!("/proc/{}", cred.pid));
        let ino = |p: &str| std::fs::metadata(proc.join(p)).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let cgroup = std::fs::read_to_string(proc.join("cgroup"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string)));
        let groups = std::fs::read_to_string(proc.join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Groups:"))
                    .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
            })
            .unwrap_or_default();
        PeerInfo { cred, groups, cgroup, userns: ino("ns/user"), pidns: ino("ns/pid") }
    }
}

impl PlacementRule {
    pub(super) fn matches(&self, peer: &PeerInfo, token: Option<&str>) -> bool {
        self.uid.is_none_or(|u| u == peer.cred.uid)
            && self.gid.is_none_or(|g| g == peer.cred.gid)
            && self.cgroup_prefix.as_deref().is_none_or(|p| peer.cgroup.as_deref().is_some_and(|c| c.starts_with(p)))
            && self.userns.is_none_or(|n| peer.userns == Some(n))
            && self.pidns.is_none_or(|n| peer.pidns == Some(n))
            && self.token.as_deref().is_none_or(|t| token == Some(t))
    }
}

/// How clients are placed and who is an admin (from the daemon's config).
#[derive(Debug, Clone, Default)]
pub struct PlacementConfig {
    /// Placement rules, first match wins.
    pub rules: Vec<PlacementRule>,
    /// Who is an admin besides root and the daemon's user.
    pub admin: AdminPolicy,
    /// Where unplaced non-admin clients go (default: [`super::DEFAULT`], created empty if missing).
    pub default_namespace: Option<String>,
}

/// Where a client was placed.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Its namespace.
    pub ns: Arc<Namespace>,
    /// Whether it is an admin (root, the daemon's user, an admin group).
    pub admin: bool,
}
