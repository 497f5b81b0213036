//! A client's testdev command buffer is read and bounds-checked when it loads: no input may
//! panic there.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = accel_driver_testdev::cmdbuf::CmdBuf::load(data);
});
