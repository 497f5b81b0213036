//! A tenant's whole conversation, past the decoder: the input is a sequence of request
//! messages (each a little-endian u16 length, then its bytes) that one client of no admin
//! group sends, after its `Hello`, to an in-process daemon with the `cpu` device (its
//! namespace holds 16 MiB of it), served through the same dispatch as a socket's
//! (`acceld::loopback`). Nothing may panic (the daemon would catch it; libFuzzer's hook sees
//! it first), every reply must decode, and once the client hangs up the daemon's object counts
//! must return to what they were: what it allocated, queued or waited on is all gone.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use accel_core::Subsystem;
use accel_uapi::wire::{decode, encode, Kind, ABI_MAJOR, ABI_MINOR};
use accel_uapi::{ObjectCounts, Reply, Request};
use acceld::loopback::{tenant_peer, tenant_subsystem, unframe, Loopback};
use libfuzzer_sys::fuzz_target;

static SUB: OnceLock<(Arc<Subsystem>, ObjectCounts)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (sub, idle) = SUB.get_or_init(|| {
        let sub = tenant_subsystem("cpu", 16 << 20).expect("a subsystem with the cpu device");
        let idle = sub.stats();
        (sub, idle)
    });
    let mut client = Loopback::new(sub, tenant_peer()).with_wait_limit(Duration::from_millis(20));
    let hello = Request::Hello { abi_major: ABI_MAJOR, abi_minor: ABI_MINOR, name: "fuzz".into(), token: None };
    let replies = client.serve(&encode(Kind::Request, 0, &hello).expect("a hello encodes"));
    assert!(matches!(decode::<Reply>(Kind::Reply, &replies[0]), Ok((0, Reply::Hello { .. }))));
    for message in unframe(data) {
        for reply in client.serve(message) {
            decode::<Reply>(Kind::Reply, &reply).expect("every reply decodes");
        }
    }
    drop(client);
    // Jobs still running (a GEMM) end first; then nothing of the client may remain.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sub.stats() != *idle && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(sub.stats(), *idle, "objects left behind by a client that hung up");
});
