//! The daemon decodes RAS netlink messages (and generic netlink controller requests) from
//! clients, and clients read events in place: any bytes, no panic, and what decodes re-encodes
//! to a message that decodes the same.
#![no_main]

use accel_uapi::ras::{ctrl_decode, decode, encode, request_header, ErrorEvent, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = request_header(data);
    let _ = ctrl_decode(data);
    let _ = ErrorEvent::decode(data);
    if let Ok(Parsed::Msg { msg, flags, seq }) = decode(data) {
        let again = encode(msg.clone(), flags, seq);
        assert_eq!(decode(&again).expect("re-encoded message decodes"), Parsed::Msg { msg, flags, seq });
    }
});
