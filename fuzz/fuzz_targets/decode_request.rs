//! Every byte string a client can send reaches this decoder first: it must never
//! panic, and whatever it accepts must re-encode to the same bytes.
#![no_main]

use accel_uapi::wire::{decode, encode, Kind};
use accel_uapi::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((seq, req)) = decode::<Request>(Kind::Request, data) {
        let again = encode(Kind::Request, seq, &req).expect("a decoded request re-encodes");
        let (seq2, req2) = decode::<Request>(Kind::Request, &again).expect("re-encoded request decodes");
        assert_eq!((seq, req), (seq2, req2));
    }
});
