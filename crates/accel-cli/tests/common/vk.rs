//! What the vulkan tests share: whether Vulkan is there, a SPIR-V kernel compiled by naga,
//! inputs, and a kernel sync file's status.

use accel::{Buffer, Device};

/// Whether the tests can run: a Vulkan loader and device, or a skip with the reason
/// (a failure where CI requires Vulkan).
pub fn vulkan() -> bool {
    crate::common::device_or_skip(accel_driver_vulkan::device_count(), "ACCEL_REQUIRE_VULKAN")
}

/// y = a·x + y over n elements, 64 per work group.
pub const SAXPY: &str = r#"
struct Params { n: u32, a: f32 }
var<push_constant> p: Params;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < p.n) { y[id.x] = p.a * x[id.x] + y[id.x]; }
}
"#;

/// SPIR-V of a WGSL module, compiled by naga (as a frontend compiler would hand it over).
pub fn spirv(wgsl: &str) -> Vec<u8> {
    let module = naga::front::wgsl::parse_str(wgsl).unwrap();
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .unwrap();
    let words = naga::back::spv::write_vec(&module, &info, &Default::default(), None).unwrap();
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// `n` values in [-1, 1) from `seed`.
pub fn f32s(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0).collect()
}

/// A host buffer holding `values`.
pub fn host_f32s(dev: &Device, values: &[f32]) -> Buffer {
    let b = dev.alloc((values.len() * 4) as u64).unwrap();
    b.write_f32(0, values).unwrap();
    b
}

/// `struct sync_file_info` (linux/sync_file.h), for `SYNC_IOC_FILE_INFO`.
#[repr(C)]
#[derive(Default)]
struct SyncFileInfo {
    name: [u8; 32],
    status: i32,
    flags: u32,
    num_fences: u32,
    pad: u32,
    sync_fence_info: u64,
}

/// `SYNC_IOC_FILE_INFO` on `fd`: `Some(status)` (1 signalled, 0 active, < 0 error) when it
/// is a kernel sync_file, `None` when the kernel says it is not.
pub fn sync_file_status(fd: &std::os::fd::OwnedFd) -> Option<i32> {
    use rustix::ioctl::{opcode, Updater};
    let mut info = SyncFileInfo::default();
    // SAFETY: SYNC_IOC_FILE_INFO takes a sync_file_info (with no fence array: num_fences 0).
    let r = unsafe {
        rustix::ioctl::ioctl(fd, Updater::<{ opcode::read_write::<SyncFileInfo>(b'>', 4) }, _>::new(&mut info))
    };
    r.ok().map(|()| info.status)
}
