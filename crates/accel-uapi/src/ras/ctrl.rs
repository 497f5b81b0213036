//! The generic netlink controller (`nlctrl`): how tools resolve the family's id and groups.

use super::*;

/// A controller message (`nlctrl`).
pub type CtrlNetlink = NetlinkMessage<GenlMessage<GenlCtrl>>;

/// `CTRL_CMD_GETFAMILY` for `name`: how tools resolve a family's id.
pub fn ctrl_get_family(name: &str, seq: u32) -> Vec<u8> {
    let msg = GenlCtrl { cmd: GenlCtrlCmd::GetFamily, nlas: vec![GenlCtrlAttrs::FamilyName(name.into())] };
    let mut nl = NetlinkMessage::from(GenlMessage::from_payload(msg));
    nl.header.message_type = GENL_ID_CTRL;
    to_bytes(nl, NLM_F_REQUEST | NLM_F_ACK, seq)
}

/// The controller's description of the family (`CTRL_CMD_NEWFAMILY`): id, name, version,
/// header size, largest attribute id, every operation with its flags
/// (`GENL_ADMIN_PERM`, `GENL_CMD_CAP_DO`, `GENL_CMD_CAP_DUMP`), and the multicast group.
pub fn ctrl_family(seq: u32, pid: u32) -> Vec<u8> {
    const ADMIN_PERM: u32 = 0x1;
    const CAP_DO: u32 = 0x2;
    const CAP_DUMP: u32 = 0x4;
    let ops = COMMANDS
        .iter()
        .filter_map(|&(_, id, _)| {
            let caps = RasCmd::from_id(id)?.caps();
            let flags = [(caps.admin, ADMIN_PERM), (caps.doit, CAP_DO), (caps.dump, CAP_DUMP)]
                .iter()
                .filter(|(on, _)| *on)
                .fold(0, |acc, (_, bit)| acc | bit);
            (flags & (CAP_DO | CAP_DUMP) != 0).then(|| vec![OpAttrs::Id(u32::from(id)), OpAttrs::Flags(flags)])
        })
        .collect();
    let max_attr = ATTRIBUTES.iter().map(|a| a.2).max().unwrap_or(0);
    let msg = GenlCtrl {
        cmd: GenlCtrlCmd::NewFamily,
        nlas: vec![
            GenlCtrlAttrs::FamilyId(FAMILY_ID),
            GenlCtrlAttrs::FamilyName(FAMILY_NAME.into()),
            GenlCtrlAttrs::Version(u32::from(FAMILY_VERSION)),
            GenlCtrlAttrs::HdrSize(0),
            GenlCtrlAttrs::MaxAttr(u32::from(max_attr)),
            GenlCtrlAttrs::Ops(ops),
            GenlCtrlAttrs::McastGroups(vec![vec![
                McastGrpAttrs::Name(MCGRP_ERROR_REPORT.into()),
                McastGrpAttrs::Id(MCGRP_ERROR_REPORT_ID),
            ]]),
        ],
    };
    let mut nl = NetlinkMessage::from(GenlMessage::from_payload(msg));
    nl.header.message_type = GENL_ID_CTRL;
    nl.header.port_number = pid;
    to_bytes(nl, 0, seq)
}

/// Whether every attribute in `buf` is well framed, nested ones `depth` levels down.
fn well_framed(buf: &[u8], depth: u8) -> bool {
    NlasIterator::new(buf).all(|nla: Result<NlaBuffer<&[u8]>, DecodeError>| match nla {
        Ok(nla) => depth == 0 || well_framed(nla.value(), depth - 1),
        Err(_) => false,
    })
}

/// A decoded controller message: its command and attributes. Only the attributes a family
/// description has (id, name, version, header size, largest attribute, ops, groups) are
/// accepted, each checked for framing before the generic parser sees it (it indexes nested
/// policy attributes without checks).
pub fn ctrl_decode(bytes: &[u8]) -> Result<(GenlCtrlCmd, Vec<GenlCtrlAttrs>), DecodeError> {
    const CTRL_ATTR_OPS: u16 = 6;
    const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
    let attrs = bytes.get(20..).ok_or_else(|| DecodeError::from("short controller message"))?;
    for nla in NlasIterator::new(attrs) {
        let nla: NlaBuffer<&[u8]> = nla.context("malformed controller attribute")?;
        let ok = match nla.kind() & 0x3fff {
            1..=5 => true,
            CTRL_ATTR_OPS | CTRL_ATTR_MCAST_GROUPS => well_framed(nla.value(), 1),
            _ => false,
        };
        if !ok {
            return Err(DecodeError::from(format!("controller attribute {} is not accepted here", nla.kind())));
        }
    }
    let nl = CtrlNetlink::deserialize(bytes)?;
    match nl.payload {
        NetlinkPayload::InnerMessage(genl) => Ok((genl.payload.cmd, genl.payload.nlas)),
        _ => Err(DecodeError::from("not a controller message")),
    }
}
