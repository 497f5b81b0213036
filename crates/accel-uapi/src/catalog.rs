//! The message catalogue: every request and reply with its fixed wire tag, and for each
//! request the reply it gets and the descriptors that travel each way. This table is the
//! ABI; the order of the Rust enums is not. docs/PROTOCOL.md's tables are checked against
//! it by a test (`tests/protocol.rs`), and the client library checks every reply with it.

use crate::proto::{Reply, Request};
use crate::wire::{Kind, Message};

/// One request: its tag, the reply it gets on success (any request may instead get
/// [`Reply::Error`]), and how many descriptors travel with it and with its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSpec {
    /// Wire tag.
    pub tag: u32,
    /// Name of the variant.
    pub name: &'static str,
    /// Tag of the reply on success.
    pub reply: u32,
    /// Descriptors sent with the request.
    pub fds_in: u8,
    /// Descriptors received with the successful reply.
    pub fds_out: u8,
}

/// One reply: its tag and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplySpec {
    /// Wire tag.
    pub tag: u32,
    /// Name of the variant.
    pub name: &'static str,
}

/// Reply tags start here, so no request tag equals a reply tag.
pub const REPLY_TAG_BASE: u32 = 256;

const fn rep(tag: u32, name: &'static str) -> ReplySpec {
    ReplySpec { tag, name }
}

/// Every reply, in the declaration order of [`Reply`].
pub const REPLIES: [ReplySpec; 21] = [
    rep(256, "Hello"),
    rep(257, "Ok"),
    rep(258, "Devices"),
    rep(259, "Device"),
    rep(260, "Bo"),
    rep(261, "Fd"),
    rep(262, "Queue"),
    rep(263, "Submitted"),
    rep(264, "Waited"),
    rep(265, "Syncobj"),
    rep(266, "Point"),
    rep(267, "Netlink"),
    rep(268, "Namespaces"),
    rep(269, "Stats"),
    rep(270, "Clients"),
    rep(271, "Error"),
    rep(272, "Token"),
    rep(273, "Points"),
    rep(274, "Program"),
    rep(275, "RingErrors"),
    rep(276, "Mapping"),
];

/// Tag of [`Reply::Error`].
pub const ERROR_TAG: u32 = 271;

const HELLO: u32 = 256;
const OK: u32 = 257;
const DEVICES: u32 = 258;
const DEVICE: u32 = 259;
const BO: u32 = 260;
const FD: u32 = 261;
const QUEUE: u32 = 262;
const SUBMITTED: u32 = 263;
const WAITED: u32 = 264;
const SYNCOBJ: u32 = 265;
const POINT: u32 = 266;
const NETLINK: u32 = 267;
const NAMESPACES: u32 = 268;
const STATS: u32 = 269;
const CLIENTS: u32 = 270;
const TOKEN: u32 = 272;
const POINTS: u32 = 273;
const PROGRAM: u32 = 274;
const RING_ERRORS: u32 = 275;
const MAPPING: u32 = 276;

const fn req(tag: u32, name: &'static str, reply: u32, fds_in: u8, fds_out: u8) -> RequestSpec {
    RequestSpec { tag, name, reply, fds_in, fds_out }
}

/// Every request, in the declaration order of [`Request`]. Tags are grouped by area:
/// 1–15 connection and devices, 16–31 buffers, 32–47 queues and submission, 48–63 fences,
/// 64–79 syncobjs, 80–95 RAS, 96–111 namespaces, 112–127 statistics.
pub const REQUESTS: [RequestSpec; 51] = [
    req(1, "Hello", HELLO, 0, 0),
    req(2, "ListDevices", DEVICES, 0, 0),
    req(3, "DeviceInfo", DEVICE, 0, 0),
    req(4, "Open", DEVICE, 0, 0),
    req(16, "BoCreate", BO, 0, 0),
    req(17, "BoInfo", BO, 0, 0),
    req(18, "BoClose", OK, 0, 0),
    req(19, "BoMmap", FD, 0, 1),
    req(20, "BoExport", FD, 0, 1),
    req(21, "BoImport", BO, 1, 0),
    req(32, "QueueCreate", QUEUE, 0, 0),
    req(33, "QueueDestroy", OK, 0, 0),
    req(34, "RingCreate", FD, 0, 3),
    req(35, "Submit", SUBMITTED, 0, 0),
    req(48, "Wait", WAITED, 0, 0),
    req(49, "FenceClose", OK, 0, 0),
    req(50, "ExportSyncFd", FD, 0, 1),
    req(64, "SyncobjCreate", SYNCOBJ, 0, 0),
    req(65, "SyncobjDestroy", OK, 0, 0),
    req(66, "SyncobjSignal", OK, 0, 0),
    req(67, "SyncobjReset", OK, 0, 0),
    req(68, "SyncobjQuery", POINT, 0, 0),
    req(69, "SyncobjExport", FD, 0, 1),
    req(70, "SyncobjImport", SYNCOBJ, 1, 0),
    req(80, "Netlink", NETLINK, 0, 0),
    req(81, "RasSubscribe", OK, 0, 0),
    req(96, "NsCreate", OK, 0, 0),
    req(97, "NsDelete", OK, 0, 0),
    req(98, "NsAssign", OK, 0, 0),
    req(99, "NsList", NAMESPACES, 0, 0),
    req(112, "Stats", STATS, 0, 0),
    req(113, "Clients", CLIENTS, 0, 0),
    req(100, "NsToken", TOKEN, 0, 0),
    req(101, "NsRetireTokens", POINT, 0, 0),
    req(36, "SubmitWait", WAITED, 0, 0),
    req(71, "SyncobjWaitMany", WAITED, 0, 0),
    req(72, "SyncobjSignalMany", OK, 0, 0),
    req(73, "SyncobjResetMany", OK, 0, 0),
    req(74, "SyncobjQueryMany", POINTS, 0, 0),
    req(75, "SyncobjTransfer", OK, 0, 0),
    req(76, "SyncobjEventfd", OK, 1, 0),
    req(77, "SyncobjExportSyncFile", FD, 0, 1),
    req(78, "SyncobjImportSyncFile", OK, 1, 0),
    req(37, "ProgramLoad", PROGRAM, 0, 0),
    req(38, "ProgramInfo", PROGRAM, 0, 0),
    req(39, "ProgramUnload", OK, 0, 0),
    req(82, "RasSubscribeExt", OK, 0, 0),
    req(40, "RingErrors", RING_ERRORS, 0, 0),
    req(51, "ExportNativeSyncFile", FD, 0, 1),
    req(22, "BoImportExternal", BO, 1, 0),
    req(23, "BoMapping", MAPPING, 0, 1),
];

/// The tags of a spec table, in its order.
macro_rules! tags {
    ($specs:expr) => {{
        let mut out = [0; $specs.len()];
        let mut i = 0;
        while i < out.len() {
            out[i] = $specs[i].tag;
            i += 1;
        }
        out
    }};
}

const REQUEST_TAGS: [u32; REQUESTS.len()] = tags!(REQUESTS);
const REPLY_TAGS: [u32; REPLIES.len()] = tags!(REPLIES);

impl Message for Request {
    const KIND: Kind = Kind::Request;
    const TAGS: &'static [u32] = &REQUEST_TAGS;
}

impl Message for Reply {
    const KIND: Kind = Kind::Reply;
    const TAGS: &'static [u32] = &REPLY_TAGS;
}

/// The spec of the request with wire tag `tag`.
pub fn request(tag: u32) -> Option<&'static RequestSpec> {
    REQUESTS.iter().find(|r| r.tag == tag)
}

/// The spec of the reply with wire tag `tag`.
pub fn reply(tag: u32) -> Option<&'static ReplySpec> {
    REPLIES.iter().find(|r| r.tag == tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_unique_and_requests_and_replies_disjoint() {
        let mut all: Vec<u32> = REQUESTS.iter().map(|r| r.tag).chain(REPLIES.iter().map(|r| r.tag)).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), REQUESTS.len() + REPLIES.len());
        assert!(REQUESTS.iter().all(|r| r.tag < REPLY_TAG_BASE) && REPLIES.iter().all(|r| r.tag >= REPLY_TAG_BASE));
        assert!(REQUESTS.iter().all(|r| reply(r.reply).is_some()), "every request names a real reply");
        assert_eq!(reply(ERROR_TAG).unwrap().name, "Error");
    }
}
