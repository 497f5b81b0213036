//! The client library decodes whatever the daemon socket delivers: never panic.
#![no_main]

use accel_uapi::wire::{decode, Kind};
use accel_uapi::Reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Reply>(Kind::Reply, data);
});
