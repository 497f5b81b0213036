//! Conformance of the RAS family with the kernel's drm-ras, as a tool written from the kernel's
//! spec sees it: requests are encoded and replies decoded by a generic codec built from
//! `specs/kernel/drm_ras.yaml` alone (the kernel's file, vendored), never by accel's encoder.
//! The family is resolved by name through the generic netlink controller, every kernel command
//! is exercised (do and dump), and each reply must hold exactly the attributes the kernel's
//! spec lists for it, with their types, plus netlink's conventions: sequence numbers,
//! `NLM_F_MULTI` and `NLMSG_DONE` on dumps only, ACKs when asked, errors with extended ACKs.

mod common;

use std::collections::BTreeMap;

use accel::{Connection, Errno};
use accel_uapi::{Reply, Request};
use common::Daemon;
use serde_yaml_ng::Value;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_ACK_TLVS: u16 = 0x200;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_OPS: u16 = 6;

/// A spec attribute: id and type.
#[derive(Debug, Clone)]
struct Attr {
    id: u16,
    ty: String,
}

/// One operation of the spec.
#[derive(Debug, Clone)]
struct Op {
    id: u8,
    set: String,
    spec: Value,
}

/// The family as the kernel's spec file describes it.
struct Spec {
    name: String,
    sets: BTreeMap<String, BTreeMap<String, Attr>>,
    ops: BTreeMap<String, Op>,
}

impl Spec {
    fn load() -> Spec {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../specs/kernel/drm_ras.yaml");
        let y: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut sets = BTreeMap::new();
        for s in y["attribute-sets"].as_sequence().unwrap() {
            let mut attrs = BTreeMap::new();
            let mut next = 1;
            for a in s["attributes"].as_sequence().unwrap() {
                let id = a["value"].as_u64().unwrap_or(next) as u16;
                next = u64::from(id) + 1;
                attrs.insert(
                    a["name"].as_str().unwrap().to_string(),
                    Attr { id, ty: a["type"].as_str().unwrap().into() },
                );
            }
            sets.insert(s["name"].as_str().unwrap().to_string(), attrs);
        }
        let mut ops = BTreeMap::new();
        let mut next = 1;
        for o in y["operations"]["list"].as_sequence().unwrap() {
            let id = o["value"].as_u64().unwrap_or(next) as u8;
            next = u64::from(id) + 1;
            let op = Op { id, set: o["attribute-set"].as_str().unwrap().into(), spec: o.clone() };
            ops.insert(o["name"].as_str().unwrap().to_string(), op);
        }
        Spec { name: y["name"].as_str().unwrap().into(), sets, ops }
    }

    /// The attribute names the spec lists for `op`'s `kind` (`do`/`dump`) `dir`.
    fn listed(&self, op: &str, kind: &str, dir: &str) -> Vec<String> {
        self.ops[op].spec[kind][dir]["attributes"]
            .as_sequence()
            .map(|l| l.iter().map(|a| a.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }
}

/// An attribute value, decoded by the spec's type.
#[derive(Debug, Clone, PartialEq)]
enum V {
    U32(u32),
    Str(String),
}

fn nla(out: &mut Vec<u8>, id: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&id.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// nlmsghdr + genlmsghdr + attributes, by hand.
fn message(family: u16, flags: u16, seq: u32, cmd: u8, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&family.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[cmd, 1, 0, 0]);
    m.extend_from_slice(attrs);
    m
}

/// A received message: header fields, and for family messages the command and raw attributes.
#[derive(Debug)]
struct Msg {
    kind: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
    payload: Vec<u8>,
}

fn parse(bytes: &[u8]) -> Msg {
    let h = |a: usize| u16::from_ne_bytes([bytes[a], bytes[a + 1]]);
    let w = |a: usize| u32::from_ne_bytes([bytes[a], bytes[a + 1], bytes[a + 2], bytes[a + 3]]);
    assert_eq!(w(0) as usize, bytes.len(), "nlmsg_len is the message's length");
    let kind = h(4);
    let (cmd, payload) = if kind >= 16 { (bytes[16], bytes[20..].to_vec()) } else { (0, bytes[16..].to_vec()) };
    Msg { kind, flags: h(6), seq: w(8), cmd, payload }
}

fn attrs_of(payload: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[at], payload[at + 1]]) as usize;
        let id = u16::from_ne_bytes([payload[at + 2], payload[at + 3]]) & 0x3fff;
        assert!(len >= 4 && at + len <= payload.len(), "attribute length {len} at {at}");
        out.push((id, payload[at + 4..at + len].to_vec()));
        at += len.next_multiple_of(4);
    }
    out
}

/// Decodes a reply's attributes by the spec: every one must be in `set` and listed for the
/// reply, with its type's size; returns them by name.
fn decode(spec: &Spec, set: &str, listed: &[String], payload: &[u8]) -> BTreeMap<String, V> {
    let mut out = BTreeMap::new();
    for (id, value) in attrs_of(payload) {
        let (name, attr) = spec.sets[set]
            .iter()
            .find(|(_, a)| a.id == id)
            .unwrap_or_else(|| panic!("attribute {id} is not in the kernel's {set}: a YNL tool fails on it"));
        assert!(listed.contains(name), "{name} is not in the kernel's reply {listed:?}");
        let v = match attr.ty.as_str() {
            "u32" => V::U32(u32::from_ne_bytes(value.as_slice().try_into().expect("u32 is 4 bytes"))),
            "string" => {
                assert_eq!(value.last(), Some(&0), "{name}: strings are NUL-terminated");
                V::Str(String::from_utf8(value[..value.len() - 1].to_vec()).unwrap())
            }
            other => panic!("type {other} not in the kernel's spec"),
        };
        assert!(out.insert(name.clone(), v).is_none(), "{name} twice");
    }
    out
}

fn u32_attr(spec: &Spec, set: &str, name: &str, v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    nla(&mut out, spec.sets[set][name].id, &v.to_ne_bytes());
    out
}

/// Sends one netlink request over the accel socket; returns every message of the answer.
fn exchange(conn: &mut Connection, bytes: Vec<u8>) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut reply = conn.call(&Request::Netlink(bytes)).unwrap();
    loop {
        let Reply::Netlink(frames) = reply else { panic!("{reply:?}") };
        let mut last = None;
        for f in frames {
            let m = parse(&f);
            last = Some((m.kind, m.flags));
            out.push(m);
        }
        // A dump's frames continue until NLMSG_DONE.
        match last {
            Some((k, f)) if f & NLM_F_MULTI != 0 && k != NLMSG_DONE => reply = conn.recv_reply().unwrap().0,
            _ => return out,
        }
    }
}

fn error_code(m: &Msg) -> i32 {
    assert_eq!(m.kind, NLMSG_ERROR);
    i32::from_ne_bytes(m.payload[0..4].try_into().unwrap())
}

/// Resolves the family by name through the controller, as YNL and libnl do.
fn resolve(conn: &mut Connection, name: &str) -> (u16, Vec<(u32, u32)>) {
    let mut attrs = Vec::new();
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    nla(&mut attrs, CTRL_ATTR_FAMILY_NAME, &bytes);
    let reply = exchange(conn, message(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, 5, CTRL_CMD_GETFAMILY, &attrs));
    assert_eq!(reply.len(), 2, "the family, then the ACK");
    assert_eq!((reply[0].kind, reply[0].cmd, reply[0].seq), (GENL_ID_CTRL, CTRL_CMD_NEWFAMILY, 5));
    assert_eq!(error_code(&reply[1]), 0);
    let got = attrs_of(&reply[0].payload);
    let id = got.iter().find(|a| a.0 == CTRL_ATTR_FAMILY_ID).map(|a| u16::from_ne_bytes([a.1[0], a.1[1]])).unwrap();
    let name_attr = got.iter().find(|a| a.0 == CTRL_ATTR_FAMILY_NAME).unwrap();
    assert_eq!(&name_attr.1[..name.len()], name.as_bytes());
    let ops = got.iter().find(|a| a.0 == CTRL_ATTR_OPS).unwrap();
    let ops = attrs_of(&ops.1)
        .into_iter()
        .map(|(_, op)| {
            let f = attrs_of(&op);
            let word = |k: u16| f.iter().find(|a| a.0 == k).map(|a| u32::from_ne_bytes(a.1[..4].try_into().unwrap()));
            (word(1).unwrap(), word(2).unwrap())
        })
        .collect();
    (id, ops)
}

#[test]
fn a_client_built_from_the_kernels_spec_gets_exactly_the_kernels_replies() {
    let spec = Spec::load();
    let d = Daemon::start(&["testdev", "cpu"]);
    let mut conn = Connection::connect(d.socket()).unwrap();
    let (family, ops) = resolve(&mut conn, &spec.name);
    for (name, op) in &spec.ops {
        assert!(ops.iter().any(|(id, _)| *id == u32::from(op.id)), "GETFAMILY lists {name}");
    }
    // An unknown family is ENOENT.
    let mut attrs = Vec::new();
    nla(&mut attrs, CTRL_ATTR_FAMILY_NAME, b"no-such-family\0");
    let r = exchange(&mut conn, message(GENL_ID_CTRL, NLM_F_REQUEST, 6, CTRL_CMD_GETFAMILY, &attrs));
    assert_eq!((error_code(&r[0]), r[0].seq), (-(Errno::ENOENT.raw() as i32), 6));

    // list-nodes (dump): NLM_F_MULTI parts with the request's sequence number, then DONE.
    let list = &spec.ops["list-nodes"];
    let listed = spec.listed("list-nodes", "dump", "reply");
    let r = exchange(&mut conn, message(family, NLM_F_REQUEST | NLM_F_DUMP | NLM_F_ACK, 10, list.id, &[]));
    let (done, parts) = r.split_last().unwrap();
    assert_eq!((done.kind, done.seq), (NLMSG_DONE, 10));
    assert_eq!(parts.len(), 7, "testdev's five nodes and the cpu device's two");
    let mut nodes = Vec::new();
    for p in parts {
        assert_eq!((p.kind, p.seq, p.cmd, p.flags & NLM_F_MULTI), (family, 10, list.id, NLM_F_MULTI));
        let a = decode(&spec, &list.set, &listed, &p.payload);
        assert_eq!(a.keys().cloned().collect::<Vec<_>>(), {
            let mut l = listed.clone();
            l.sort();
            l
        });
        assert_eq!(a["node-type"], V::U32(1), "error-counter");
        nodes.push(a);
    }
    assert_eq!(nodes[0]["device-name"], V::Str("accel0".into()));
    assert_eq!(nodes[0]["node-name"], V::Str("memory".into()));
    let V::U32(memory) = nodes[0]["node-id"] else { panic!() };

    // get-error-counter, dump of one node: its counters, exactly the kernel's attributes.
    let get = &spec.ops["get-error-counter"];
    let set = get.set.clone();
    let node = u32_attr(&spec, &set, "node-id", memory);
    let r = exchange(&mut conn, message(family, NLM_F_REQUEST | NLM_F_DUMP, 11, get.id, &node));
    let (done, parts) = r.split_last().unwrap();
    assert_eq!(done.kind, NLMSG_DONE);
    let counters: Vec<_> = parts
        .iter()
        .map(|p| decode(&spec, &set, &spec.listed("get-error-counter", "dump", "reply"), &p.payload))
        .collect();
    assert_eq!(counters.len(), 2);
    assert_eq!(counters[1]["error-name"], V::Str("ecc-uncorrected".into()));

    // Inject through accel's own command, then read with the kernel's do: reply, then ACK.
    let mut ras = accel::ras::Ras::connect(d.socket()).unwrap();
    let inject = accel::ras::RasMsg::new(
        accel::ras::RasCmd::InjectError,
        vec![accel::ras::RasAttr::NodeId(memory), accel::ras::RasAttr::ErrorId(1), accel::ras::RasAttr::Count(3)],
    );
    ras.request(inject, false).unwrap();
    let mut ids = node.clone();
    ids.extend(u32_attr(&spec, &set, "error-id", 1));
    let r = exchange(&mut conn, message(family, NLM_F_REQUEST | NLM_F_ACK, 12, get.id, &ids));
    assert_eq!(r.len(), 2, "the reply, then the ACK asked for");
    assert_eq!((r[0].kind, r[0].seq, r[0].flags & NLM_F_MULTI), (family, 12, 0));
    let c = decode(&spec, &set, &spec.listed("get-error-counter", "do", "reply"), &r[0].payload);
    assert_eq!((c["error-id"].clone(), c["error-value"].clone()), (V::U32(1), V::U32(3)));
    assert_eq!((error_code(&r[1]), r[1].seq), (0, 12));
    // Without NLM_F_ACK: the reply alone.
    let r = exchange(&mut conn, message(family, NLM_F_REQUEST, 13, get.id, &ids));
    assert_eq!((r.len(), r[0].kind), (1, family));

    // clear-error-counter (do, no reply): the ACK alone, and the counter is zero.
    let clear = &spec.ops["clear-error-counter"];
    let r = exchange(&mut conn, message(family, NLM_F_REQUEST | NLM_F_ACK, 14, clear.id, &ids));
    assert_eq!((r.len(), error_code(&r[0]), r[0].seq), (1, 0, 14));
    let r = exchange(&mut conn, message(family, NLM_F_REQUEST, 15, get.id, &ids));
    assert_eq!(
        decode(&spec, &set, &spec.listed("get-error-counter", "do", "reply"), &r[0].payload)["error-value"],
        V::U32(0)
    );

    // The kernel's errnos, each with the request's sequence number and an extended ACK.
    let expect = |conn: &mut Connection, bytes: Vec<u8>, seq: u32, errno: Errno| {
        let r = exchange(conn, bytes);
        assert_eq!(r.len(), 1);
        assert_eq!((error_code(&r[0]), r[0].seq), (-(errno.raw() as i32), seq));
        assert_eq!(r[0].flags & NLM_F_ACK_TLVS, NLM_F_ACK_TLVS, "an extended ACK message");
    };
    let mut bad = node.clone();
    bad.extend(u32_attr(&spec, &set, "error-id", 99));
    expect(&mut conn, message(family, NLM_F_REQUEST, 20, get.id, &bad), 20, Errno::EINVAL);
    let mut gone = u32_attr(&spec, &set, "node-id", 999);
    gone.extend(u32_attr(&spec, &set, "error-id", 1));
    expect(&mut conn, message(family, NLM_F_REQUEST, 21, get.id, &gone), 21, Errno::ENOENT);
    expect(&mut conn, message(family, NLM_F_REQUEST, 22, get.id, &node), 22, Errno::EINVAL);
    // list-nodes without NLM_F_DUMP: a do the operation does not have.
    expect(&mut conn, message(family, NLM_F_REQUEST, 23, list.id, &[]), 23, Errno::EOPNOTSUPP);
    // A request that does not decode still gets its own sequence number back.
    let mut broken = message(family, NLM_F_REQUEST, 24, get.id, &ids);
    broken.truncate(broken.len() - 2);
    let len = broken.len() as u32;
    broken[0..4].copy_from_slice(&len.to_ne_bytes());
    expect(&mut conn, broken, 24, Errno::EINVAL);
}
