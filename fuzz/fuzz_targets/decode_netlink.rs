//! The daemon decodes RAS netlink messages from clients: any bytes, no panic, and what
//! decodes re-encodes to a message that decodes the same.
#![no_main]

use accel_uapi::ras::{decode, encode, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Msg { msg, flags, seq }) = decode(data) {
        let again = encode(msg.clone(), flags, seq);
        assert_eq!(decode(&again).expect("re-encoded message decodes"), Parsed::Msg { msg, flags, seq });
    }
});
