//! A client's CUDA program: `ptx` text is read in the daemon (its entries and parameters),
//! a `cubin` or fatbin's header is checked there and its kernels' stated blocks read in the
//! worker. The first byte picks the format. None of it may panic; accepted PTX entries are
//! launchable (at most 8 buffer parameters) and every stated block is non-zero.
#![no_main]

use accel_uapi::ParamKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, image)) = data.split_first() else { return };
    let format = if pick & 1 == 0 { accel_driver_cuda::FORMAT } else { accel_driver_cuda::CUBIN };
    if let Ok(Some(entries)) = accel_driver_cuda::check_program(format, image) {
        for e in entries {
            assert!(e.params.iter().filter(|p| **p == ParamKind::Buffer).count() <= 8);
        }
    }
    for (_, block) in accel_driver_cuda::cubin::blocks(image) {
        assert!(!block.shape().contains(&0), "a stated block has no zero dimension");
    }
});
