//! Every byte string a client can send reaches this decoder first: it must never
//! panic, and whatever it accepts must re-encode to bytes that decode and re-encode
//! identically (values are compared as bytes: a GEMM's alpha or beta may be NaN).
#![no_main]

use accel_uapi::wire::{decode, encode, Kind};
use accel_uapi::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((seq, req)) = decode::<Request>(Kind::Request, data) {
        let once = encode(Kind::Request, seq, &req).expect("a decoded request re-encodes");
        let (seq2, req2) = decode::<Request>(Kind::Request, &once).expect("re-encoded request decodes");
        assert_eq!(seq, seq2);
        assert_eq!(encode(Kind::Request, seq2, &req2).expect("re-encodes"), once);
    }
});
