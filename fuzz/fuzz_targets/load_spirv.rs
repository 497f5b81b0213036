//! A client's SPIR-V reaches naga's parser and validator and the vulkan driver's reading of
//! its interface before any Vulkan call. naga's parser panics on some malformed modules; the
//! driver catches that and refuses the module (`EINVAL`), so what must hold is that nothing
//! escapes `check_spirv` — and that a module it accepts has a compute entry point.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

static QUIET: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts at any panic, even one the driver catches; without
    // it, a panic that escapes still reaches libfuzzer-sys's own catch, which aborts.
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    if let Ok(names) = accel_driver_vulkan::check_spirv(data) {
        assert!(!names.is_empty(), "an accepted module has a compute entry point");
    }
});
