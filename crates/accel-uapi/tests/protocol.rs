//! docs/PROTOCOL.md must describe exactly what the code puts on the wire.
//!
//! The catalogue part of the document (every message with its tag, fields, reply and
//! descriptors; every type; every errno; the ring constants) is rendered here from the
//! code: from the message catalogue, and from the serde formats traced with
//! serde-reflection. The test fails when the document differs; `ACCEL_BLESS=1 cargo test
//! -p accel-uapi --test protocol` rewrites it. The golden messages in
//! `specs/golden-messages.txt` are decoded and re-encoded byte for byte, so other
//! implementations can check themselves against the same file.

use std::collections::BTreeMap;

use accel_uapi::catalog::{self, REPLIES, REQUESTS};
use accel_uapi::wire::{self, Kind, Message, HEADER_LEN};
use accel_uapi::*;
use serde_reflection::{ContainerFormat, Format, Named, Registry, Tracer, TracerConfig, VariantFormat};

fn root(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn registry() -> Registry {
    let mut tracer = Tracer::new(TracerConfig::default());
    macro_rules! trace {
        ($($t:ty),*) => { $(tracer.trace_simple_type::<$t>().expect(stringify!($t));)* };
    }
    trace!(
        Category,
        Priority,
        Severity,
        Health,
        OpKind,
        Float16,
        RegionKind,
        ParamKind,
        LaunchArg,
        Op,
        WaitPoint,
        FenceStatus,
        Request,
        Reply
    );
    tracer.registry().expect("every type traced completely")
}

fn ty(f: &Format) -> String {
    match f {
        Format::TypeName(n) => format!("[{n}](#{})", n.to_lowercase()),
        Format::Unit => "unit".into(),
        Format::Bool => "bool".into(),
        Format::I8 => "i8".into(),
        Format::I16 => "i16 (zigzag varint)".into(),
        Format::I32 => "i32 (zigzag varint)".into(),
        Format::I64 => "i64 (zigzag varint)".into(),
        Format::U8 => "u8".into(),
        Format::U16 => "u16 (varint)".into(),
        Format::U32 => "u32 (varint)".into(),
        Format::U64 => "u64 (varint)".into(),
        Format::F32 => "f32 (4 bytes LE)".into(),
        Format::F64 => "f64 (8 bytes LE)".into(),
        Format::Str => "string".into(),
        Format::Bytes => "bytes".into(),
        Format::Option(t) => format!("option<{}>", ty(t)),
        Format::Seq(t) => format!("seq<{}>", ty(t)),
        Format::Tuple(ts) => format!("({})", ts.iter().map(ty).collect::<Vec<_>>().join(", ")),
        Format::TupleArray { content, size } => format!("[{}; {size}]", ty(content)),
        other => format!("{other:?}"),
    }
}

fn fields(v: &VariantFormat) -> String {
    match v {
        VariantFormat::Unit => "—".into(),
        VariantFormat::NewType(t) => ty(t),
        VariantFormat::Tuple(ts) => ts.iter().map(ty).collect::<Vec<_>>().join(", "),
        VariantFormat::Struct(named) => named_fields(named),
        VariantFormat::Variable(_) => unreachable!("registry is complete"),
    }
}

fn named_fields(named: &[Named<Format>]) -> String {
    if named.is_empty() {
        return "—".into();
    }
    named.iter().map(|n| format!("`{}`: {}", n.name, ty(&n.value))).collect::<Vec<_>>().join(", ")
}

fn variants<'a>(reg: &'a Registry, name: &str) -> &'a BTreeMap<u32, Named<VariantFormat>> {
    match &reg[name] {
        ContainerFormat::Enum(v) => v,
        other => panic!("{name} is not an enum: {other:?}"),
    }
}

/// The generated part of docs/PROTOCOL.md.
fn render() -> String {
    let reg = registry();
    let mut out = String::new();
    let reply_name = |tag: u32| catalog::reply(tag).map_or("?", |r| r.name);

    out.push_str("### Requests\n\nBody: the tag (varint), then the fields in order. Any request may instead be answered with `Error`.\n\n");
    out.push_str("| tag | request | fields | reply | fds sent | fds in reply |\n|---|---|---|---|---|---|\n");
    let reqs = variants(&reg, "Request");
    assert_eq!(reqs.len(), REQUESTS.len(), "every request variant is in the catalogue");
    for (i, v) in reqs {
        let spec = &REQUESTS[*i as usize];
        assert_eq!(spec.name, v.name, "catalogue entry {i} names another variant than the enum declares there");
        out.push_str(&format!(
            "| {} | `{}` | {} | `{}` | {} | {} |\n",
            spec.tag,
            spec.name,
            fields(&v.value),
            reply_name(spec.reply),
            spec.fds_in,
            spec.fds_out
        ));
    }

    out.push_str("\n### Replies\n\n| tag | reply | fields |\n|---|---|---|\n");
    let reps = variants(&reg, "Reply");
    assert_eq!(reps.len(), REPLIES.len(), "every reply variant is in the catalogue");
    for (i, v) in reps {
        let spec = &REPLIES[*i as usize];
        assert_eq!(spec.name, v.name, "catalogue entry {i} names another variant than the enum declares there");
        out.push_str(&format!("| {} | `{}` | {} |\n", spec.tag, spec.name, fields(&v.value)));
    }

    out.push_str(
        "\n### Types\n\nEnums inside messages are encoded as their index (varint), then the variant's fields.\n",
    );
    for (name, format) in &reg {
        if name == "Request" || name == "Reply" {
            continue;
        }
        out.push_str(&format!("\n#### {name}\n\n"));
        match format {
            ContainerFormat::Struct(named) => {
                out.push_str("| field | type |\n|---|---|\n");
                for n in named {
                    out.push_str(&format!("| `{}` | {} |\n", n.name, ty(&n.value)));
                }
            }
            ContainerFormat::NewTypeStruct(t) => out.push_str(&format!("Encoded as {}.\n", ty(t))),
            ContainerFormat::Enum(vs) => {
                out.push_str("| index | variant | fields |\n|---|---|---|\n");
                for (i, v) in vs {
                    out.push_str(&format!("| {i} | `{}` | {} |\n", v.name, fields(&v.value)));
                }
            }
            other => out.push_str(&format!("{other:?}\n")),
        }
    }

    out.push_str("\n### Errors\n\n`Errno` values are Linux's `errno.h` numbers, encoded as u32 (varint).\n\n");
    out.push_str("| name | value | meaning |\n|---|---|---|\n");
    for e in Errno::ALL {
        out.push_str(&format!("| `{}` | {} | {} |\n", e.name(), e.raw(), e.description()));
    }

    out.push_str("\n### Constants\n\n| name | value |\n|---|---|\n");
    let consts: [(&str, u64); 20] = [
        ("header magic (`ACCL` little-endian)", u64::from(wire::MAGIC)),
        ("header length", HEADER_LEN as u64),
        ("ABI major", u64::from(wire::ABI_MAJOR)),
        ("ABI minor", u64::from(wire::ABI_MINOR)),
        ("largest message, header included", wire::MAX_MESSAGE as u64),
        ("most descriptors per message", wire::MAX_FDS as u64),
        ("kind: request", Kind::Request as u64),
        ("kind: reply", Kind::Reply as u64),
        ("ring magic (`ARNG` little-endian)", u64::from(ring::RING_MAGIC)),
        ("ring header length (SQ starts here)", ring::HEADER_LEN as u64),
        ("ring `sq_head` offset", ring::SQ_HEAD as u64),
        ("ring `cq_head` offset", ring::CQ_HEAD as u64),
        ("ring `poller_sleeping` offset", ring::POLLER_SLEEPING as u64),
        ("ring `client_waiting` offset", ring::CLIENT_WAITING as u64),
        ("ring info offset (magic, sq_entries, cq_entries)", ring::INFO as u64),
        ("ring `client_spins` offset", ring::CLIENT_SPINS as u64),
        ("ring `spin_budget` offset", ring::SPIN_BUDGET as u64),
        ("SQE size", ring::SQE_SIZE as u64),
        ("CQE size", ring::CQE_SIZE as u64),
        ("largest ring (SQ entries)", u64::from(ring::MAX_RING_ENTRIES)),
    ];
    for (name, value) in consts {
        out.push_str(&format!("| {name} | {value} |\n"));
    }
    out
}

const BEGIN: &str = "<!-- BEGIN GENERATED: crates/accel-uapi/tests/protocol.rs -->\n";
const END: &str = "<!-- END GENERATED -->";

#[test]
fn protocol_document_matches_the_code() {
    let path = root("docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(&path).expect("docs/PROTOCOL.md");
    let (start, end) = (doc.find(BEGIN).expect("begin marker") + BEGIN.len(), doc.find(END).expect("end marker"));
    let generated = render();
    if std::env::var_os("ACCEL_BLESS").is_some() {
        std::fs::write(&path, format!("{}{generated}{}", &doc[..start], &doc[end..])).unwrap();
        return;
    }
    assert!(
        doc[start..end] == generated,
        "docs/PROTOCOL.md's catalogue differs from the code; if the change is intended (and ABI-compatible, \
         or the ABI version moved), run ACCEL_BLESS=1 cargo test -p accel-uapi --test protocol"
    );
}

/// One sample of each kind of encoding the protocol uses.
fn samples() -> Vec<(&'static str, Kind, u32, Vec<u8>)> {
    fn req(name: &'static str, seq: u32, r: Request) -> (&'static str, Kind, u32, Vec<u8>) {
        (name, Kind::Request, seq, wire::encode(Kind::Request, seq, &r).unwrap())
    }
    fn rep(name: &'static str, seq: u32, r: Reply) -> (&'static str, Kind, u32, Vec<u8>) {
        (name, Kind::Reply, seq, wire::encode(Kind::Reply, seq, &r).unwrap())
    }
    let bo = BoHandle(0x0000_0001_0000_0002);
    vec![
        req(
            "hello",
            1,
            Request::Hello { abi_major: 2, abi_minor: 0, name: "python".into(), token: Some("s3cret".into()) },
        ),
        req("list-devices", 2, Request::ListDevices),
        req("open", 3, Request::Open { minor: 0, wait_ms: 0 }),
        req("bo-create", 4, Request::BoCreate { size: 1 << 20, region: 0 }),
        req("queue-create", 5, Request::QueueCreate { timeout_ms: 0, priority: Priority::Normal, weight: 0 }),
        req(
            "submit-fill",
            6,
            Request::Submit {
                queue: QueueHandle(1),
                op: Op::Fill { dst: BufView { bo, offset: 0, len: 4096 }, pattern: 0xdead_beef },
                wait: vec![WaitPoint::Syncobj { handle: SyncobjHandle(3), point: 7 }],
                signal: vec![SignalPoint { handle: SyncobjHandle(4), point: 1 }],
            },
        ),
        req(
            "submit-gemm",
            7,
            Request::Submit {
                queue: QueueHandle(1),
                op: Op::GemmF32(GemmF32 {
                    m: 2,
                    n: 2,
                    k: 2,
                    a: MatView { bo, offset: 0, row_stride: 2 },
                    b: MatView { bo, offset: 16, row_stride: 2 },
                    c: MatView { bo, offset: 32, row_stride: 2 },
                    alpha: 1.0,
                    beta: 0.5,
                }),
                wait: vec![],
                signal: vec![],
            },
        ),
        req(
            "wait",
            8,
            Request::Wait { points: vec![WaitPoint::Fence(FenceHandle(9))], all: true, timeout_ns: 1_000_000_000 },
        ),
        req("bo-import", 9, Request::BoImport),
        rep(
            "hello-reply",
            1,
            Reply::Hello { abi_major: 2, abi_minor: 0, client_id: 42, server: "acceld 0.1.0".into() },
        ),
        rep("bo", 4, Reply::Bo { handle: bo, size: 1 << 20, region: 0 }),
        rep("submitted", 6, Reply::Submitted { fence: FenceHandle(9), seqno: 300 }),
        rep(
            "waited",
            8,
            Reply::Waited {
                first: 0,
                status: vec![FenceStatus::Error(Errno::ETIME)],
                timestamps: vec![123_456_789],
                messages: vec![String::new()],
            },
        ),
        rep("fd", 10, Reply::Fd),
        rep("error", 11, Reply::Error { code: Errno::EPROTO, message: "bad".into() }),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_round_trip<T: Message + PartialEq + std::fmt::Debug>(kind: Kind, bytes: &[u8], seq: u32) {
    let (got_seq, value) = wire::decode::<T>(kind, bytes).expect("golden message decodes");
    assert_eq!(got_seq, seq);
    assert_eq!(wire::encode(kind, seq, &value).unwrap(), bytes, "re-encoding gives the same bytes: {value:?}");
}

#[test]
fn golden_messages_decode_and_re_encode_byte_for_byte() {
    let path = root("specs/golden-messages.txt");
    let expected: String = samples()
        .iter()
        .map(|(name, kind, seq, bytes)| {
            format!("{name} {} {seq} {}\n", if *kind == Kind::Request { "request" } else { "reply" }, hex(bytes))
        })
        .collect();
    let header = "# name kind seq hex: whole messages (16-byte header + body) of ABI 2.0; see docs/PROTOCOL.md\n";
    if std::env::var_os("ACCEL_BLESS").is_some() {
        std::fs::write(&path, format!("{header}{expected}")).unwrap();
    }
    let file = std::fs::read_to_string(&path).expect("specs/golden-messages.txt");
    assert_eq!(file.strip_prefix(header).expect("header line"), expected, "golden messages changed: the ABI moved");
    for line in expected.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let seq: u32 = parts[2].parse().unwrap();
        let bytes: Vec<u8> =
            (0..parts[3].len()).step_by(2).map(|i| u8::from_str_radix(&parts[3][i..i + 2], 16).unwrap()).collect();
        match parts[1] {
            "request" => check_round_trip::<Request>(Kind::Request, &bytes, seq),
            _ => check_round_trip::<Reply>(Kind::Reply, &bytes, seq),
        }
    }
}

#[test]
fn netlink_frames_travel_as_byte_strings_with_the_bytes_of_u8_sequences() {
    use accel_uapi::{Reply, Request};
    // Written and read as blocks, but the same bytes as a sequence of u8 (each one byte).
    let reply = Reply::Netlink(vec![vec![1, 2, 3], vec![], vec![255; 200]]);
    let body = postcard::to_stdvec(&reply).unwrap();
    let mut want = vec![3]; // after the variant: 3 frames
    want.extend([3, 1, 2, 3, 0]);
    want.extend([200, 1]); // varint 200
    want.extend([255; 200]);
    assert_eq!(&body[body.len() - want.len()..], &want[..]);
    assert_eq!(postcard::from_bytes::<Reply>(&body).unwrap(), reply);
    let req = Request::Netlink(vec![9; 130]);
    let body = postcard::to_stdvec(&req).unwrap();
    assert_eq!(&body[body.len() - 132..], &[[130, 1].as_slice(), &[9; 130]].concat()[..]);
    assert_eq!(postcard::from_bytes::<Request>(&body).unwrap(), req);
}
