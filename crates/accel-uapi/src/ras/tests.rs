use super::frame::{decode_family, decode_netlink, NLMSG_HDRLEN};
use super::msg::value_len;
use super::*;

/// A payload of type `ty`: `n` in its size, `text` NUL-terminated.
fn payload(ty: AttrType, n: u64, text: &str) -> Vec<u8> {
    match ty {
        AttrType::Flag => vec![],
        AttrType::U8 => vec![n as u8],
        AttrType::U32 => (n as u32).to_ne_bytes().to_vec(),
        AttrType::U64 => n.to_ne_bytes().to_vec(),
        AttrType::String => [text.as_bytes(), &[0]].concat(),
    }
}

fn sample(name: &str, ty: AttrType) -> RasAttr {
    let n = if ty == AttrType::U64 { u64::MAX } else { 7 };
    RasAttr::parser(name)(&payload(ty, n, &format!("{name}-value"))).unwrap_or_else(|| panic!("{name} has no variant"))
}

#[test]
fn every_attribute_is_emitted_with_its_table_id_and_size() {
    // Attributes a set lacks have no id there.
    for set in AttrSet::ALL {
        for &(_, name, _, ty) in ATTRIBUTES {
            let in_set = attr_by_name(set, name).is_some();
            assert_eq!(sample(name, ty).id(set).is_some(), in_set, "{name} in {}", set.name());
        }
    }
    for &(set, name, id, ty) in ATTRIBUTES {
        let attr = sample(name, ty);
        assert_eq!(attr.id(set), Some(id), "{name} in {}", set.name());
        let size = match ty {
            AttrType::Flag => 0,
            AttrType::U8 => 1,
            AttrType::U32 => 4,
            AttrType::U64 => 8,
            AttrType::String => name.len() + "-value".len() + 1,
        };
        assert_eq!(value_len(&attr), size, "{name} in {}", set.name());
        assert_eq!(attr.name(), name);
        assert_eq!(attr.is_extension(set), set == AttrSet::Reporter || id >= ACCEL_ATTR_BASE);
    }
}

#[test]
fn messages_round_trip_through_netlink_framing() {
    for &(name, id, set) in COMMANDS {
        let cmd = RasCmd::from_id(id).unwrap();
        assert_eq!(cmd.name(), name);
        let attrs: Vec<RasAttr> =
            ATTRIBUTES.iter().filter(|a| a.0 == set).map(|&(_, name, _, ty)| sample(name, ty)).collect();
        let bytes = request(RasMsg::new(cmd, attrs.clone()), true, 42);
        match decode(&bytes).unwrap() {
            Parsed::Msg { msg, flags, seq } => {
                assert_eq!((msg.cmd, msg.attrs, seq, is_dump(flags)), (cmd, attrs, 42, true));
                assert_eq!(flags & NLM_F_ACK, NLM_F_ACK);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(decode(&done(3)).unwrap(), Parsed::Done);
    assert_eq!(decode(&error(22, 3)).unwrap(), Parsed::Error(Some(-22), None));
}

#[test]
fn errors_echo_the_request_and_carry_an_extended_ack_message() {
    let req = request_header(&request(RasMsg::new(RasCmd::ListNodes, vec![]), false, 77));
    let bytes = error_for(&req, 95, "list-nodes is a dump");
    assert_eq!(request_header(&bytes).seq, 77);
    assert_eq!(&bytes[20..36], &req.raw[..], "the request's header follows the error code");
    assert_eq!(decode(&bytes).unwrap(), Parsed::Error(Some(-95), Some("list-nodes is a dump".into())));
    let ack = error_for(&req, 0, "");
    assert_eq!(decode(&ack).unwrap(), Parsed::Error(None, None));
}

#[test]
fn kernel_only_drops_accel_attributes() {
    let msg = RasMsg::new(
        RasCmd::GetErrorCounter,
        vec![RasAttr::ErrorId(1), RasAttr::ErrorValue(2), RasAttr::ErrorValueU64(2), RasAttr::Severity(0)],
    );
    assert_eq!(msg.kernel_only().attrs, vec![RasAttr::ErrorId(1), RasAttr::ErrorValue(2)]);
}

#[test]
fn the_controller_describes_the_family() {
    let (cmd, attrs) = ctrl_decode(&ctrl_family(5, 0)).unwrap();
    assert_eq!(cmd, GenlCtrlCmd::NewFamily);
    assert!(attrs.contains(&GenlCtrlAttrs::FamilyId(FAMILY_ID)));
    assert!(attrs.contains(&GenlCtrlAttrs::FamilyName(FAMILY_NAME.into())));
    let (cmd, attrs) = ctrl_decode(&ctrl_get_family(FAMILY_NAME, 1)).unwrap();
    assert_eq!((cmd, attrs), (GenlCtrlCmd::GetFamily, vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.into())]));
}

#[test]
fn a_drm_ras_list_nodes_request_is_understood() {
    // What a drm-ras client sends: nlmsghdr(type=family, flags=REQUEST|DUMP) + genlmsghdr(cmd=1, version=1).
    let mut bytes = vec![0u8; 20];
    bytes[0..4].copy_from_slice(&20u32.to_ne_bytes());
    bytes[4..6].copy_from_slice(&FAMILY_ID.to_ne_bytes());
    bytes[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    bytes[8..12].copy_from_slice(&9u32.to_ne_bytes());
    bytes[16] = 1; // DRM_RAS_CMD_LIST_NODES
    bytes[17] = 1; // version
    match decode(&bytes).unwrap() {
        Parsed::Msg { msg, flags, seq } => {
            assert_eq!((msg.cmd, msg.attrs.len(), is_dump(flags), seq), (RasCmd::ListNodes, 0, true, 9))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fuzzed_controller_message_does_not_panic() {
    let bytes = [
        0x1d, 0, 0, 0, 0xfc, 0xfc, 0xfc, 0xfc, 0xfc, 0xff, 0xff, 0xff, 0x02, 0, 0xff, 0x01, 0x03, 0, 0, 0, 0x04, 0,
        0x09, 0, 0, 0, 0, 0, 0, 0x14, 0, 0x29, 0x85, 0xfc, 0xff, 0x28,
    ];
    let _ = ctrl_decode(&bytes);
    let _ = decode(&bytes);
}

#[test]
fn garbage_never_panics() {
    for len in 0..64 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let _ = decode(&bytes);
        let _ = ctrl_decode(&bytes);
        let _ = request_header(&bytes);
    }
}

/// A family message as netlink-packet's generic layers encode it: the reference the
/// direct encoder is held to.
fn reference_encode(msg: RasMsg, flags: u16, seq: u32) -> Vec<u8> {
    to_bytes(NetlinkMessage::from(GenlMessage::from_payload(msg)), flags, seq)
}

/// Any attribute of `set` (or of another set: those are not emitted) with any value.
fn any_attr() -> impl proptest::strategy::Strategy<Value = RasAttr> {
    use proptest::prelude::*;
    (0..ATTRIBUTES.len(), any::<u64>(), "[a-z0-9-]{0,24}").prop_map(|(i, n, text)| {
        let (_, name, _, ty) = ATTRIBUTES[i];
        RasAttr::parser(name)(&payload(ty, n, &text)).unwrap()
    })
}

proptest::proptest! {
    #[test]
    fn the_direct_encoder_writes_what_netlink_packet_writes(
        cmd in proptest::sample::select(COMMANDS.iter().map(|c| c.1).collect::<Vec<u8>>()),
        attrs in proptest::collection::vec(any_attr(), 0..16),
        flags: u16,
        seq: u32,
    ) {
        let msg = RasMsg::new(RasCmd::from_id(cmd).unwrap(), attrs);
        let bytes = encode(msg.clone(), flags, seq);
        proptest::prop_assert_eq!(&bytes, &reference_encode(msg.clone(), flags, seq));
        let set = msg.cmd.attr_set();
        let emitted: Vec<RasAttr> = msg.attrs.iter().filter(|a| a.id(set).is_some()).cloned().collect();
        let expect = Parsed::Msg { msg: RasMsg::new(msg.cmd, emitted), flags, seq };
        proptest::prop_assert_eq!(decode(&bytes).unwrap(), expect.clone());
        proptest::prop_assert_eq!(decode_netlink(&bytes).unwrap(), expect);
    }

    #[test]
    fn the_direct_decoder_agrees_with_netlink_packet_on_any_frame(
        len_delta in -8i32..8,
        cmd in proptest::prop_oneof![proptest::sample::select(COMMANDS.iter().map(|c| c.1).collect::<Vec<u8>>()), proptest::prelude::any::<u8>()],
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
        attrs in proptest::collection::vec(any_attr(), 0..6),
        mangle in proptest::option::of((0usize..128, proptest::prelude::any::<u8>())),
        cut in 0usize..8,
    ) {
        // A well-formed frame of the family, then damaged: its length field, its command,
        // bytes overwritten, bytes appended, the end cut off.
        let cmd_ok = RasCmd::from_id(cmd).unwrap_or(RasCmd::ListNodes);
        let mut bytes = encode(RasMsg::new(cmd_ok, attrs), 0, 9);
        bytes[NLMSG_HDRLEN] = cmd;
        bytes.extend_from_slice(&body);
        let len = (bytes.len() as i32 - body.len() as i32 + len_delta).max(0) as u32;
        bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        if let Some((at, byte)) = mangle {
            if at < bytes.len() && !(4..6).contains(&at) {
                bytes[at] = byte;
            }
        }
        bytes.truncate(bytes.len().saturating_sub(cut).max(6));
        let (direct, generic) = (decode_family(&bytes), decode_netlink(&bytes));
        proptest::prop_assert_eq!(direct.is_ok(), generic.is_ok(), "{:?} vs {:?} on {:?}", direct, generic, bytes);
        if let (Ok(d), Ok(g)) = (direct, generic) {
            proptest::prop_assert_eq!(d, g);
        }
    }
}

/// Names, ids and numbers of an event ([`any_event`] makes it).
type EventParts = ((String, String, String), (u32, u32, u32, u32), (u64, u64, u64, u64));

fn event_parts() -> impl proptest::strategy::Strategy<Value = EventParts> {
    use proptest::prelude::*;
    (
        ("[a-z0-9]{0,12}", "[a-z0-9-]{0,20}", "[a-z0-9-]{0,24}"),
        any::<(u32, u32, u32, u32)>(),
        any::<(u64, u64, u64, u64)>(),
    )
}

/// An event of the given names and numbers (values of any width).
fn any_event((names, ids, numbers): &EventParts) -> ErrorEvent<'_> {
    let (ids, numbers) = (*ids, *numbers);
    ErrorEvent {
        device_name: &names.0,
        node_id: ids.0,
        node_name: &names.1,
        error_id: ids.1,
        error_name: &names.2,
        value: numbers.0 >> (numbers.1 % 64),
        severity: ids.2,
        seq: numbers.1,
        timestamp_ns: numbers.2,
        kind: ids.3,
        delta: numbers.3,
    }
}

proptest::proptest! {
    #[test]
    fn an_error_event_encodes_as_its_message_does(
        parts in event_parts(),
        ext: bool,
        dump: bool,
        header: (u16, u32),
    ) {
        let (flags, seq) = header;
        let ev = any_event(&parts);
        let cmd = if dump { RasCmd::DumpEvents } else { RasCmd::ErrorEvent };
        let msg = if ext { ev.msg(cmd) } else { ev.msg(cmd).kernel_only() };
        let bytes = ev.encode(cmd, ext, flags, seq);
        proptest::prop_assert_eq!(&bytes, &reference_encode(msg, flags, seq));
        // Framed after other bytes in one buffer, it is the same message.
        let before = format!("{:?}", parts.1).into_bytes();
        let both = ev.encode_after(before.clone(), cmd, ext, flags, seq);
        proptest::prop_assert_eq!(&both[..before.len()], &before[..]);
        proptest::prop_assert_eq!(&both[before.len()..], &bytes[..]);
    }
}

proptest::proptest! {
    #[test]
    fn an_error_event_reads_in_place_as_it_was_written(
        parts in event_parts(),
        ext: bool,
        cut in proptest::option::of(0usize..160),
    ) {
        let ev = any_event(&parts);
        let mut bytes = ev.encode(RasCmd::ErrorEvent, ext, 0, 1);
        if let Some(at) = cut {
            // A damaged frame fails here exactly when it fails the full decoder.
            bytes.truncate(at);
            if bytes.len() >= 4 {
                let len = (bytes.len() as u32).to_ne_bytes();
                bytes[..4].copy_from_slice(&len);
            }
            proptest::prop_assert_eq!(ErrorEvent::decode(&bytes).is_ok(), decode(&bytes).is_ok());
            return Ok(());
        }
        let read = ErrorEvent::decode(&bytes).unwrap();
        if ext {
            proptest::prop_assert_eq!(read, ev);
        } else {
            // The kernel's attributes only: a 32-bit value, no accel fields.
            let value = ev.value.min(u32::MAX as u64);
            let kernel = ErrorEvent { value, severity: 0, seq: 0, timestamp_ns: 0, kind: 0, delta: 0, ..ev };
            proptest::prop_assert_eq!(read, kernel);
        }
    }
}

#[test]
fn only_events_read_as_events() {
    let list = encode(RasMsg::new(RasCmd::ListNodes, vec![RasAttr::NodeId(1)]), 0, 0);
    assert!(ErrorEvent::decode(&list).unwrap_err().to_string().contains("no event"));
    assert!(ErrorEvent::decode(&done(1)).is_err());
    assert!(ErrorEvent::decode(&[]).is_err());
}
