//! Ring entries are bytes a client writes into shared memory: decoding any 128 bytes
//! must not panic, and what decodes must re-encode to an entry that decodes the same.
#![no_main]

use accel_uapi::ring::{Sqe, SQE_SIZE};
use libfuzzer_sys::fuzz_target;
use zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
    let mut bytes = [0u8; SQE_SIZE];
    let n = data.len().min(SQE_SIZE);
    bytes[..n].copy_from_slice(&data[..n]);
    let sqe = Sqe::read_from_bytes(&bytes).expect("SQE_SIZE bytes");
    if let Ok(op) = sqe.decode() {
        // Compared through the encoding: a GEMM's alpha or beta may be NaN.
        let again = Sqe::encode(&op, sqe.user_data);
        assert_eq!(Sqe::encode(&again.decode().expect("re-encoded entry decodes"), sqe.user_data), again);
    }
    if let Ok((waits, signals)) = sqe.decode_sync() {
        let again = Sqe::sync(&waits, &signals, sqe.user_data).expect("decoded counts fit");
        assert_eq!(again.decode_sync().expect("re-encoded sync entry decodes"), (waits, signals));
    }
});
