//! The vulkan driver end to end, on whatever Vulkan device the machine has (Mesa's lavapipe in
//! CI, where `ACCEL_REQUIRE_VULKAN=1` makes a missing Vulkan a failure instead of a skip):
//! device info, fills and copies between regions, GEMM against the cpu driver, SPIR-V programs
//! compiled by naga and launched with buffer and scalar arguments, bad programs refused with
//! the driver's reason, scrubbing, PRIME export/import of device memory, `visible` memory
//! clients map, another Vulkan instance's memory imported, object counts
//! after a client is killed mid-launch, and device loss (injected through RAS): the device
//! re-created, what lived on it gone, the culprit found by running alone.

mod common;
#[path = "common/vk.rs"]
mod vk;
#[path = "common/vk_peer.rs"]
mod vk_peer;

use std::time::Duration;

use accel::{Buffer, Device, Errno, Float16, GemmF32, LaunchArg, Op, OpKind, ParamKind, RegionKind};
use common::{spawn_role, tenant, wait_ready, Daemon};
use vk::{f32s, host_f32s, spirv, sync_file_status, vulkan, SAXPY};

/// The `vram` region of a vulkan device.
const VRAM: u32 = 1;

/// Entry point of child client processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    if let Ok(role) = std::env::var("ACCEL_TEST_ROLE") {
        if role == "vk-launch-then-die" {
            let socket = std::env::var("ACCEL_SOCKET").unwrap();
            let dev = Device::open_at(std::path::Path::new(&socket), 0).unwrap();
            let q = dev.create_queue().unwrap();
            let p = dev.load_program("spirv", &spirv(SAXPY)).unwrap();
            let (x, y) = (dev.alloc_in(1 << 20, VRAM).unwrap(), dev.alloc_in(1 << 20, VRAM).unwrap());
            let args = [
                LaunchArg::Buffer(x.whole()),
                LaunchArg::Buffer(y.whole()),
                LaunchArg::U32(1 << 18),
                LaunchArg::F32(2.0),
            ];
            for _ in 0..16 {
                q.submit(p.launch("main", [1 << 12, 1, 1], &args).unwrap()).unwrap();
            }
            println!("ready");
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    common::child_entry();
}

#[test]
fn the_device_shows_its_driver_regions_and_formats() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let dev = d.open(0);
    let info = dev.info();
    assert_eq!(info.driver, "vulkan");
    assert!(info.name.contains("Vulkan 1."), "{}", info.name);
    let kinds: Vec<_> = info.regions.iter().map(|r| (r.name.as_str(), r.kind, r.mappable)).collect();
    // A `visible` region where the device's exports map (lavapipe's; not NVIDIA's).
    let mut want = vec![("host", RegionKind::Host, true), ("vram", RegionKind::Device, false)];
    if info.name.contains("llvmpipe") {
        want.push(("visible", RegionKind::DeviceMappable, true));
    }
    assert_eq!(kinds[..2], want[..2]);
    assert!(kinds.len() == 2 || kinds[2..] == [("visible", RegionKind::DeviceMappable, true)], "{kinds:?}");
    assert!(kinds.len() >= want.len(), "{kinds:?}");
    assert!(info.regions.iter().skip(1).all(|r| r.size > 0));
    assert_eq!(info.program_formats, vec!["spirv".to_string()]);
    // Its engines complete jobs on a completion thread each: no slot thread waits per job
    // (with ACCEL_VULKAN_ASYNC=0, the slot threads run them).
    let buf = dev.alloc(4096).unwrap();
    dev.create_queue().unwrap().submit(Op::Fill { dst: buf.whole(), pattern: 1 }).unwrap().wait().unwrap();
    let threads = d.thread_names();
    let slots = threads.iter().filter(|t| t.contains("-e0s")).count();
    let completers = threads.iter().filter(|t| t.starts_with("vk-complete")).count();
    if std::env::var("ACCEL_VULKAN_ASYNC").is_ok_and(|v| v.trim() == "0") {
        assert!(slots > 0 && completers == 0, "{threads:?}");
    } else {
        assert!(slots == 0 && completers >= 1, "{threads:?}");
    }
    // A device that is not there is a clear error at start-up.
    let out = std::process::Command::new(common::accel_bin())
        .args(["daemon", "--socket", "/nonexistent/s", "--device", "vulkan:99"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no device 99"), "{err}");
}

#[test]
fn fills_and_copies_move_data_between_regions() {
    if !vulkan() {
        return;
    }
    // Completions waited for by blocking (this machine's default on few CPUs) and by polling
    // the timeline first (the default with cores to spare); then with every host operand
    // staged through host-visible memory instead of imported (devices without
    // VK_EXT_external_memory_host): copied in before the job and back after it.
    for env in
        [("ACCEL_VULKAN_WAIT_SPIN_US", "0"), ("ACCEL_VULKAN_WAIT_SPIN_US", "2000"), ("ACCEL_VULKAN_HOST_IMPORT", "0")]
    {
        let d = Daemon::start_env(&["vulkan:0"], &[], &[env]);
        fills_and_copies_on(&d.open(0));
    }
}

fn fills_and_copies_on(dev: &Device) {
    let q = dev.create_queue().unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let (h, v, out) = (dev.alloc(65536).unwrap(), dev.alloc_in(65536, VRAM).unwrap(), dev.alloc(65536).unwrap());
    h.write(0, &data).unwrap();
    // Mapping device memory is refused.
    assert_eq!(common::code(dev.request(&accel_uapi::Request::BoMmap { handle: v.handle() })), Errno::EINVAL);
    q.submit(Op::Copy { src: h.whole(), dst: v.whole() }).unwrap();
    q.submit(Op::Fill { dst: v.view(4096, 8192), pattern: 0xdead_beef }).unwrap();
    // An overlapping copy inside one buffer keeps memmove semantics.
    q.submit(Op::Copy { src: v.view(0, 1024), dst: v.view(512, 1024) }).unwrap();
    q.submit(Op::Copy { src: v.whole(), dst: out.whole() }).unwrap().wait().unwrap();
    let mut want = data.clone();
    for w in want[4096..12288].chunks_mut(4) {
        w.copy_from_slice(&0xdead_beefu32.to_le_bytes());
    }
    let head = want[0..1024].to_vec();
    want[512..1536].copy_from_slice(&head);
    let mut got = vec![0u8; 65536];
    out.read(0, &mut got).unwrap();
    assert!(got == want, "device round trip differs");
    // Host to host at unaligned offsets works too (staged or imported in place).
    q.submit(Op::Copy { src: h.view(3, 1001), dst: out.view(17, 1001) }).unwrap().wait().unwrap();
    out.read(0, &mut got).unwrap();
    assert_eq!(&got[17..1018], &data[3..1004]);
}

#[test]
fn gemm_matches_the_cpu_driver_in_every_region_with_either_shader() {
    if !vulkan() {
        return;
    }
    // Shapes inside one tile of either shader, and across the tiled shader's 128×128 tiles
    // and its steps of 8 along K (partial tiles on every edge).
    let shapes = [(37usize, 53usize, 29usize), (130, 19, 259)];
    for (shader, poll_us) in [("blocked", "0"), ("tiled", "2000")] {
        let envs = [("ACCEL_VULKAN_GEMM", shader), ("ACCEL_VULKAN_WAIT_SPIN_US", poll_us)];
        let d = Daemon::start_env(&["vulkan:0", "cpu"], &[], &envs);
        let (vk, cpu) = (d.open(0), d.open(1));
        for (m, k, n) in shapes {
            let want = gemm_in(&cpu, (m, k, n), 0, 0);
            for (region, offset) in [(0, 0), (VRAM, 0), (0, 4), (VRAM, 20)] {
                let got = gemm_in(&vk, (m, k, n), region, offset);
                let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-3, "{shader} {m}x{k}x{n}, region {region} offset {offset}: off by {worst}");
            }
        }
    }
}

#[test]
fn gemm_in_f16_and_bf16_equals_the_cpu_driver_to_the_bit_with_either_shader() {
    if !vulkan() {
        return;
    }
    for shader in ["blocked", "tiled"] {
        let d = Daemon::start_env(&["vulkan:0", "cpu"], &[], &[("ACCEL_VULKAN_GEMM", shader)]);
        let (vk, cpu) = (d.open(0), d.open(1));
        let ops = vk.info().ops.clone();
        assert!(ops.contains(&OpKind::GemmF16) && ops.contains(&OpKind::GemmBf16), "{ops:?}");
        common::gemm16_equals_the_cpu_drivers(&vk, &cpu, &[0, VRAM], &[Float16::F16, Float16::Bf16]);
    }
}

/// C = 1.5·A·B + 0.5·C for an m×k A and a k×n B (fixed pseudo-random values) on `dev`, the
/// operands in `region` at `offset` bytes from their buffers' starts; C read back.
fn gemm_in(dev: &Device, (m, k, n): (usize, usize, usize), region: u32, offset: u64) -> Vec<f32> {
    let (a, b, c0) = (f32s(m * k, 1), f32s(k * n, 2), f32s(m * n, 3));
    let q = dev.create_queue().unwrap();
    let up = |values: &[f32]| common::uploaded(dev, &q, &common::f32_bytes(values), offset, region);
    let (da, db, dc) = (up(&a), up(&b), up(&c0));
    let op = GemmF32 {
        m: m as u64,
        n: n as u64,
        k: k as u64,
        a: da.matrix(offset, k as u64),
        b: db.matrix(offset, n as u64),
        c: dc.matrix(offset, n as u64),
        alpha: 1.5,
        beta: 0.5,
    };
    q.submit(Op::GemmF32(op)).unwrap().wait().unwrap();
    let out = dev.alloc(dc.size()).unwrap();
    q.submit(Op::Copy { src: dc.whole(), dst: out.whole() }).unwrap().wait().unwrap();
    out.read_f32(offset as usize, m * n).unwrap()
}

#[test]
fn a_job_exports_the_devices_own_sync_file_where_the_device_can() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    // Mesa's lavapipe has no VK_KHR_external_semaphore_fd; NVIDIA's driver under gVisor (no
    // kernel sync files) has it but exports none. Asked of Vulkan apart from the daemon.
    let native = vk_peer::exports_sync_files();
    // Jobs long enough to be caught running on a GPU: 2048³ GEMMs back to back on one queue
    // (~0.7 ms each at 26 TFLOP/s). Where the export is refused at once, one small job does.
    let (n, jobs) = if native { (2048u64, 16) } else { (64u64, 1) };
    let bufs: Vec<Buffer> = (0..3).map(|_| dev.alloc_in(n * n * 4, VRAM).unwrap()).collect();
    let gemm = GemmF32 {
        m: n,
        n,
        k: n,
        a: bufs[0].matrix(0, n),
        b: bufs[1].matrix(0, n),
        c: bufs[2].matrix(0, n),
        alpha: 1.0,
        beta: 0.0,
    };
    let fences: Vec<_> = (0..jobs).map(|_| q.submit(Op::GemmF32(gemm)).unwrap()).collect();
    let last = fences.last().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let file = loop {
        match last.native_sync_file() {
            // Until the job reaches the device.
            Err(e) if e.code == Errno::EAGAIN && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200))
            }
            other => break other,
        }
    };
    if !native {
        assert_eq!(file.unwrap_err().code, Errno::EOPNOTSUPP);
        last.wait().unwrap();
        return;
    }
    let file = file.expect("a device that exports SYNC_FD semaphores exports a job's sync file");
    let file = file.expect("the GEMMs still running (make the jobs longer if this GPU is that fast)");
    let status = sync_file_status(&file).expect("a kernel sync_file (SYNC_IOC_FILE_INFO answers)");
    println!("sync file status while the job ran: {status}");
    last.wait().unwrap();
    let mut fds = [rustix::event::PollFd::new(&file, rustix::event::PollFlags::IN)];
    let ready = rustix::event::poll(&mut fds, Some(&rustix::time::Timespec { tv_sec: 5, tv_nsec: 0 })).unwrap();
    assert_eq!(ready, 1, "the sync file signals once the job is done");
    assert_eq!(sync_file_status(&file), Some(1), "signalled without error");
    assert!(last.native_sync_file().unwrap().is_none(), "a done job needs none");
}

#[test]
fn spirv_programs_launch_with_buffers_and_scalars() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let p = dev.load_program("spirv", &spirv(SAXPY)).unwrap();
    let e = &p.entries()[0];
    assert_eq!(
        (e.name.as_str(), e.params.as_slice()),
        ("main", &[ParamKind::Buffer, ParamKind::Buffer, ParamKind::U32, ParamKind::F32][..])
    );
    let n = 1000;
    let (x, y) = (f32s(n, 5), f32s(n, 6));
    let (hx, hy) = (host_f32s(&dev, &x), host_f32s(&dev, &y));
    let vy = dev.alloc_in((n * 4) as u64, VRAM).unwrap();
    q.submit(Op::Copy { src: hy.whole(), dst: vy.whole() }).unwrap();
    let args =
        [LaunchArg::Buffer(hx.whole()), LaunchArg::Buffer(vy.whole()), LaunchArg::U32(n as u32), LaunchArg::F32(3.0)];
    q.submit(p.launch("main", [(n as u32).div_ceil(64), 1, 1], &args).unwrap()).unwrap();
    q.submit(Op::Copy { src: vy.whole(), dst: hy.whole() }).unwrap().wait().unwrap();
    let got = hy.read_f32(0, n).unwrap();
    assert!(got.iter().zip(x.iter().zip(&y)).all(|(g, (x, y))| (g - (3.0 * x + y)).abs() < 1e-5));

    // Bad programs get EINVAL with the driver's reason; nothing is loaded.
    let garbage = dev.load_program("spirv", &[0u8; 64]).unwrap_err();
    assert_eq!(garbage.code, Errno::EINVAL);
    assert!(garbage.message.starts_with("spirv:"), "{}", garbage.message);
    let no_entry = dev.load_program("spirv", &spirv("fn f() {}")).unwrap_err();
    assert_eq!(no_entry.code, Errno::EINVAL);
    assert!(no_entry.message.contains("no compute entry point"), "{}", no_entry.message);
    let uniform = "@group(0) @binding(0) var<uniform> u: vec4<f32>;\n@compute @workgroup_size(1) fn main() { _ = u; }";
    assert!(dev.load_program("spirv", &spirv(uniform)).unwrap_err().message.contains("uniform"));
    assert_eq!(dev.load_program("ptx", b"x").unwrap_err().code, Errno::EOPNOTSUPP);
    // Launches are checked before they run: argument kinds, a binding offset the device
    // cannot take, a grid beyond the device's limits.
    assert_eq!(common::code(q.submit(p.launch("main", [1, 1, 1], &args[..3]).unwrap())), Errno::EINVAL);
    let skewed = [LaunchArg::Buffer(hx.view(4, 64)), args[1], args[2], args[3]];
    assert_eq!(common::code(q.submit(p.launch("main", [1, 1, 1], &skewed).unwrap())), Errno::EINVAL);
    assert_eq!(common::code(q.submit(p.launch("main", [u32::MAX, 1, 1], &args).unwrap())), Errno::EINVAL);
}

/// 40 bytes of SPIR-V on which naga 25's parser panics instead of answering (found by the
/// fuzz target `load_spirv`): a header, an `OpTypeFloat` of width 0, then an `OpTypeStruct`,
/// whose layout of that float is unwrapped.
const PANICS_NAGA: [u8; 40] = [
    0x03, 0x02, 0x23, 0x07, 0x00, 0x03, 0x04, 0x00, 0x03, 0x00, 0x00, 0x1e, 0x00, 0x0e, 0xfd, 0x00, 0x01, 0x00, 0x00,
    0x00, 0x16, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1e, 0x00, 0x0e, 0xfd, 0x00, 0x01,
    0x00, 0x00,
];

#[test]
fn a_module_the_parser_panics_on_is_refused_and_the_daemon_serves_on() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let (dev, other) = (d.open(0), d.open(0));
    for _ in 0..3 {
        let e = dev.load_program("spirv", &PANICS_NAGA).unwrap_err();
        assert_eq!(e.code, Errno::EINVAL, "{e}");
        assert!(e.message.starts_with("spirv:") && e.message.contains("parser"), "{}", e.message);
    }
    // The same client, and another, are served as before.
    for dev in [&dev, &other] {
        let p = dev.load_program("spirv", &spirv(SAXPY)).unwrap();
        assert_eq!(p.entries()[0].name, "main");
        let q = dev.create_queue().unwrap();
        let b = dev.alloc(4096).unwrap();
        q.submit(Op::Fill { dst: b.whole(), pattern: 7 }).unwrap().wait().unwrap();
        assert_eq!(read_u32(&b), 7);
    }
    assert!(d.open(0).load_program("spirv", &spirv(SAXPY)).is_ok());
}

#[test]
fn a_buffer_larger_than_one_binding_of_the_device_is_refused_with_the_limit() {
    if !vulkan() {
        return;
    }
    // What one storage binding covers (lavapipe: 128 MiB); past it a binding is undefined
    // behaviour in the Vulkan driver, so accel refuses it with the limit in the message.
    let max = accel_driver_vulkan::VulkanDevice::open(0).unwrap().max_binding();
    if max > 1 << 30 {
        println!("skipped: this device binds up to {max} bytes, more than this test allocates");
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let big = dev.alloc_in(max + (1 << 20), VRAM).unwrap();
    let small = dev.alloc_in(4096, VRAM).unwrap();
    let p = dev.load_program("spirv", &spirv(SAXPY)).unwrap();
    // A launch: refused at submit, naming the argument.
    let args =
        [LaunchArg::Buffer(small.whole()), LaunchArg::Buffer(big.whole()), LaunchArg::U32(4), LaunchArg::F32(1.0)];
    let e = q.submit(p.launch("main", [1, 1, 1], &args).unwrap()).unwrap_err();
    assert_eq!(e.code, Errno::E2BIG, "{e}");
    assert!(e.message.contains(&format!("argument 1 spans {} bytes", max + (1 << 20))), "{e}");
    assert!(e.message.contains(&format!("at most {max} bytes")), "{e}");
    // Its first `max` bytes are fine.
    let args =
        [LaunchArg::Buffer(small.whole()), LaunchArg::Buffer(big.view(0, max)), LaunchArg::U32(4), LaunchArg::F32(1.0)];
    q.submit(p.launch("main", [1, 1, 1], &args).unwrap()).unwrap().wait().unwrap();
    // A GEMM whose B spans more than one binding: the job fails with the same reason.
    let cols = 4096u64;
    let rows = (max / 4).div_ceil(cols) + 1;
    let (a, c) = (dev.alloc_in(rows * 4, VRAM).unwrap(), dev.alloc_in(cols * 4, VRAM).unwrap());
    let op = GemmF32 {
        m: 1,
        n: cols,
        k: rows,
        a: a.matrix(0, rows),
        b: big.matrix(0, cols),
        c: c.matrix(0, cols),
        alpha: 1.0,
        beta: 0.0,
    };
    let code = q.submit(Op::GemmF32(op)).map(|f| f.wait());
    let e = match code {
        Ok(r) => r.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(e.code, Errno::E2BIG, "{e}");
    assert!(e.message.contains(&format!("at most {max} bytes")), "{e}");
}

#[test]
fn device_memory_is_scrubbed_and_exported_with_prime_semantics() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    tenant(&d, "other", "tok-other", 0, 0, 0);
    let (alice, bob) = (d.open(0), d.open(0));
    let (qa, qb) = (alice.create_queue().unwrap(), bob.create_queue().unwrap());
    // Sizes that are not whole 32-bit words too: Vulkan fills whole words only.
    for size in [1 << 20, 4099, 1 << 20 | 2] {
        let secret = alice.alloc_in(size, VRAM).unwrap();
        let host = alice.alloc(size).unwrap();
        host.write(0, &vec![0xa5; size as usize]).unwrap();
        qa.submit(Op::Copy { src: host.whole(), dst: secret.whole() }).unwrap().wait().unwrap();
        drop(secret);
        let fresh = bob.alloc_in(size, VRAM).unwrap();
        let out = bob.alloc(size).unwrap();
        qb.submit(Op::Copy { src: fresh.whole(), dst: out.whole() }).unwrap().wait().unwrap();
        let mut seen = vec![1u8; size as usize];
        out.read(0, &mut seen).unwrap();
        let dirty: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] != 0).collect();
        assert!(dirty.is_empty(), "a new device buffer of {size} bytes must read as zeros; not at {dirty:?}");
    }

    // PRIME: alice exports device memory, bob imports the same memory (not a copy).
    let shared = alice.alloc_in(4096, VRAM).unwrap();
    let exportable = alice.info().regions[1].exportable;
    match shared.export() {
        Ok(fd) => {
            let imported = bob.import(&fd).unwrap();
            assert_eq!(imported.region(), VRAM);
            qa.submit(Op::Fill { dst: shared.whole(), pattern: 7 }).unwrap().wait().unwrap();
            let back = bob.alloc(4096).unwrap();
            qb.submit(Op::Copy { src: imported.whole(), dst: back.whole() }).unwrap().wait().unwrap();
            assert_eq!(back.read_f32(0, 1).unwrap()[0].to_bits(), 7);
            // Another namespace cannot import it.
            let stranger = Device::open_with_token(d.socket(), 0, "tok-other").unwrap();
            assert_eq!(common::code(stranger.import(&fd)), Errno::ENOENT);
            // Where the export is a memfd (lavapipe's memory), its holder cannot shrink it
            // under the device's mapping (the daemon would fault on the next job).
            if rustix::fs::fcntl_get_seals(&fd).is_ok() {
                assert_eq!(rustix::fs::ftruncate(&fd, 0), Err(rustix::io::Errno::PERM), "sealed against shrinking");
                qa.submit(Op::Fill { dst: shared.whole(), pattern: 8 }).unwrap().wait().unwrap();
            }
        }
        Err(e) => assert!(!exportable && e.code == Errno::EOPNOTSUPP, "{e:?}"),
    }
}

#[test]
fn visible_memory_is_mapped_by_clients_and_reached_by_the_device_in_place() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let dev = d.open(0);
    let lavapipe = dev.info().name.contains("llvmpipe");
    let Some(region) = dev.info().regions.iter().find(|r| r.name == "visible").cloned() else {
        // NVIDIA's opaque descriptors map nothing: no region clients could map.
        assert!(!lavapipe, "lavapipe's exports are memfds: it has a visible region");
        eprintln!("the device's memory exports cannot be mapped: no visible region");
        return;
    };
    let flags = (region.kind, region.mappable, region.exportable, region.coherent);
    assert_eq!(flags, (RegionKind::DeviceMappable, true, true, true));
    let q = dev.create_queue().unwrap();
    // Zeroed and mapped, a length that is not whole words too.
    let n = 1000;
    let size = (n * 4 + 2) as u64;
    let y = dev.alloc_in(size, region.id).unwrap();
    assert_eq!(y.region(), region.id);
    let mut bytes = vec![1u8; size as usize];
    y.read(0, &mut bytes).unwrap();
    assert!(bytes.iter().all(|b| *b == 0), "a new buffer reads as zeros through the mapping");
    assert_eq!(d.open(0).info().regions[region.id as usize].used, y.size(), "charged to the region, in whole pages");
    // The client writes through its mapping, a kernel updates the memory in place, and the
    // client reads the result through its mapping: no copy job anywhere.
    let (xs, ys) = (f32s(n, 7), f32s(n, 8));
    let x = host_f32s(&dev, &xs);
    y.write_f32(0, &ys).unwrap();
    let p = dev.load_program("spirv", &spirv(SAXPY)).unwrap();
    let args =
        [LaunchArg::Buffer(x.whole()), LaunchArg::Buffer(y.whole()), LaunchArg::U32(n as u32), LaunchArg::F32(2.0)];
    q.submit(p.launch("main", [(n as u32).div_ceil(64), 1, 1], &args).unwrap()).unwrap().wait().unwrap();
    let got = y.read_f32(0, n).unwrap();
    assert!(got.iter().zip(xs.iter().zip(&ys)).all(|(g, (x, y))| (g - (2.0 * x + y)).abs() < 1e-5));
    // Device writes (a fill) and copies to and from other regions reach the same memory.
    q.submit(Op::Fill { dst: y.view(16, 8), pattern: 0x5eed }).unwrap().wait().unwrap();
    let filled: Vec<u32> = y.read_f32(16, 2).unwrap().iter().map(|f| f.to_bits()).collect();
    assert_eq!(filled, [0x5eed, 0x5eed]);
    let v = dev.alloc_in(size, VRAM).unwrap();
    q.submit(Op::Copy { src: y.whole(), dst: v.whole() }).unwrap();
    q.submit(Op::Fill { dst: y.view(0, 4000), pattern: 0 }).unwrap();
    q.submit(Op::Copy { src: v.view(0, 16), dst: y.view(3984, 16) }).unwrap().wait().unwrap();
    assert_eq!(y.read_f32(3984, 4).unwrap(), got[..4]);
    assert!(y.read_f32(0, 996).unwrap().iter().all(|f| *f == 0.0), "the fill before the copy");
    // BoMmap hands out only memory that starts at its descriptor's first byte: not
    // lavapipe's, which starts past the driver's header in its memfd (BoMapping says where).
    if lavapipe {
        let e = dev.request(&accel_uapi::Request::BoMmap { handle: y.handle() }).unwrap_err();
        assert_eq!(e.code, Errno::EINVAL, "{e}");
        assert!(e.message.contains("BoMapping"), "{e}");
    }
    // Another client imports its export and maps the same pages; neither can shrink them.
    let fd = y.export().unwrap();
    let other = d.open(0);
    let theirs = other.import(&fd).unwrap();
    assert_eq!(theirs.region(), region.id);
    theirs.write_f32(0, &[6.5]).unwrap();
    assert_eq!(y.read_f32(0, 1).unwrap(), [6.5]);
    assert_eq!(rustix::fs::ftruncate(&fd, 0), Err(rustix::io::Errno::PERM));
    // Only vram takes other runtimes' memory.
    let stranger = accel_uapi::shm::sealed_memfd("stranger", 4096).unwrap();
    assert_eq!(common::code(dev.import_external(&stranger, region.id, 4096)), Errno::EINVAL);
    // Closed by both clients (the export too), the memory is the region's again.
    drop((y, theirs, fd));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let used = || d.open(0).info().regions[region.id as usize].used;
    while used() != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(used(), 0);
}

#[test]
fn a_client_killed_mid_launch_leaves_exact_counts() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let mut child = spawn_role("vk-launch-then-die", d.socket(), &[]);
    wait_ready(&mut child);
    let during = d.stats();
    assert_eq!((during.programs, during.buffers), (1, 2));
    child.kill().unwrap();
    child.wait().unwrap();
    let after = d.wait_for_counts(Default::default());
    assert_eq!(after, Default::default());
    // The device still works for the next client.
    let dev = d.open(0);
    dev.create_queue()
        .unwrap()
        .submit(Op::Fill { dst: dev.alloc(4096).unwrap().whole(), pattern: 1 })
        .unwrap()
        .wait()
        .unwrap();
}

/// The vulkan device's drm-ras counter `device`/`device-lost` (its only node and counter).
const DEVICE_LOST: (u32, u32) = (1, 1);

fn lose_device(d: &Daemon, times: u64) {
    use accel::ras::{Ras, RasAttr, RasCmd, RasMsg};
    let mut ras = Ras::connect(d.socket()).unwrap();
    let ids = vec![RasAttr::NodeId(DEVICE_LOST.0), RasAttr::ErrorId(DEVICE_LOST.1), RasAttr::Count(times)];
    ras.request(RasMsg::new(RasCmd::InjectError, ids), false).unwrap();
}

fn losses(d: &Daemon) -> u64 {
    use accel::ras::{Ras, RasAttr, RasCmd, RasMsg};
    let mut ras = Ras::connect(d.socket()).unwrap();
    let ids = vec![RasAttr::NodeId(DEVICE_LOST.0), RasAttr::ErrorId(DEVICE_LOST.1), RasAttr::AccelExt];
    ras.request(RasMsg::new(RasCmd::GetErrorCounter, ids), false).unwrap()[0].value().unwrap()
}

fn read_u32(b: &Buffer) -> u32 {
    let mut w = [0u8; 4];
    b.read(0, &mut w).unwrap();
    u32::from_ne_bytes(w)
}

#[test]
fn a_lost_device_is_recreated_and_only_what_lived_on_it_is_gone() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let old_vram = dev.alloc_in(4096, VRAM).unwrap();
    let old_program = dev.load_program("spirv", &spirv(SAXPY)).unwrap();
    let host = dev.alloc(4096).unwrap();
    q.submit(Op::Fill { dst: old_vram.whole(), pattern: 1 }).unwrap().wait().unwrap();

    lose_device(&d, 1);
    // The next job finds the device lost, runs again alone on a new one, and completes.
    q.submit(Op::Fill { dst: host.whole(), pattern: 7 }).unwrap().wait().unwrap();
    assert_eq!(read_u32(&host), 7);
    assert_eq!(losses(&d), 1, "one device-lost event in RAS");

    // What lived on the lost device is gone, with the reason.
    let e = q.submit(Op::Copy { src: old_vram.whole(), dst: host.whole() }).unwrap().wait().unwrap_err();
    assert_eq!(e.code, Errno::ENODEV, "{e}");
    let args = [
        LaunchArg::Buffer(host.view(0, 64)),
        LaunchArg::Buffer(host.view(64, 64)),
        LaunchArg::U32(16),
        LaunchArg::F32(2.0),
    ];
    let e = q.submit(old_program.launch("main", [1, 1, 1], &args).unwrap()).unwrap().wait().unwrap_err();
    assert_eq!(e.code, Errno::ENODEV, "{e}");

    // New memory and programs work on the new device, which is not wedged.
    let vram = dev.alloc_in(4096, VRAM).unwrap();
    q.submit(Op::Fill { dst: vram.whole(), pattern: 9 }).unwrap().wait().unwrap();
    q.submit(Op::Copy { src: vram.whole(), dst: host.whole() }).unwrap().wait().unwrap();
    assert_eq!(read_u32(&host), 9);
    let program = dev.load_program("spirv", &spirv(SAXPY)).unwrap();
    q.submit(program.launch("main", [1, 1, 1], &args).unwrap()).unwrap().wait().unwrap();
    let info = accel::Connection::connect(d.socket()).unwrap().device_info(0).unwrap();
    assert!(!info.wedged);
}

#[test]
fn a_job_that_loses_the_device_again_alone_is_the_culprit() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let dev = d.open(0);
    let q = dev.create_queue().unwrap();
    let host = dev.alloc(4096).unwrap();
    // The device is lost, and so is the next one: the job that meets both, the second time
    // alone on the device, is taken for the culprit.
    lose_device(&d, 2);
    let e = q.submit(Op::Fill { dst: host.whole(), pattern: 3 }).unwrap().wait().unwrap_err();
    assert_eq!(e.code, Errno::EIO, "{e}");
    assert!(e.message.contains("alone"), "{e}");
    assert_eq!(losses(&d), 2);
    // The third device is fine, and so is the queue.
    q.submit(Op::Fill { dst: host.whole(), pattern: 4 }).unwrap().wait().unwrap();
    assert_eq!(read_u32(&host), 4);
}

/// A kernel that does not end in any time a test waits when launched over 65,535² work
/// groups: each adds one to memory the client can see 65,535 times (a side effect every
/// step, so no compiler shortens the loop; lavapipe ends any loop after 65,535 trips).
const HANG: &str = r#"
@group(0) @binding(0) var<storage, read_write> counter: array<atomic<u32>>;
@compute @workgroup_size(1)
fn main() {
    for (var k = 0u; k < 65535u; k++) { atomicAdd(&counter[0], 1u); }
}
"#;

/// The grid that makes [`HANG`] last (about 2^32 work groups).
const HANG_GRID: [u32; 3] = [65535, 65535, 1];

#[test]
fn a_kernel_that_never_ends_fails_only_its_own_job_and_the_device_is_recreated() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let dev = d.open(0);
    let bad = dev.create_queue_with_timeout(Duration::from_millis(300)).unwrap();
    let hang = dev.load_program("spirv", &spirv(HANG)).unwrap();
    let flag = dev.alloc(4096).unwrap();
    // An innocent client keeps filling its own host memory meanwhile.
    let innocent = d.open(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let q = innocent.create_queue().unwrap();
            let host = innocent.alloc(4096).unwrap();
            let mut done = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || done < 10 {
                q.submit(Op::Fill { dst: host.whole(), pattern: done }).unwrap().wait().unwrap();
                assert_eq!(read_u32(&host), done);
                done += 1;
            }
            done
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let job = bad.submit(hang.launch("main", HANG_GRID, &[LaunchArg::Buffer(flag.whole())]).unwrap()).unwrap();
    assert_eq!(job.wait().unwrap_err().code, Errno::ETIME);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(worker.join().unwrap() >= 10, "the innocent client's jobs all completed");
    // The device was re-created, not wedged; the culprit's queue and others work on it.
    let info = accel::Connection::connect(d.socket()).unwrap().device_info(0).unwrap();
    assert!(!info.wedged);
    assert_eq!(info.resets, 1);
    let host = dev.alloc(4096).unwrap();
    dev.create_queue().unwrap().submit(Op::Fill { dst: host.whole(), pattern: 5 }).unwrap().wait().unwrap();
    assert_eq!(read_u32(&host), 5);
    assert_eq!(losses(&d), 1, "the reset is in RAS");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn memory_another_vulkan_instance_exported_is_shared_not_copied() {
    if !vulkan() {
        return;
    }
    let d = Daemon::start(&["vulkan:0"]);
    let dev = d.open(0);
    let size = 1 << 20;
    let stranger = accel_uapi::shm::sealed_memfd("not-vulkan", 4096).unwrap();
    let Some(peer) = vk_peer::Peer::new(size) else {
        eprintln!("the device exports no opaque descriptors: checking the refusal only");
        assert_eq!(dev.import_external(&stranger, VRAM, 4096).unwrap_err().code, Errno::EOPNOTSUPP);
        return;
    };
    peer.fill(0, size, 0x0bad_cafe);
    let buf = dev.import_external(peer.export(), VRAM, size).unwrap();
    assert_eq!((buf.region(), buf.size()), (VRAM, size));
    let q = dev.create_queue().unwrap();
    let out = dev.alloc(4096).unwrap();
    q.submit(Op::Copy { src: buf.view(size - 4096, 4096), dst: out.whole() }).unwrap().wait().unwrap();
    assert_eq!(read_u32(&out), 0x0bad_cafe, "accel reads what the peer wrote: not zeroed, not a copy");
    q.submit(Op::Fill { dst: buf.view(4096, 4), pattern: 0x600d }).unwrap().wait().unwrap();
    assert_eq!(peer.read(4096), 0x600d, "the peer reads what accel wrote");
    // A kernel runs on it as on any vram buffer: y = 2·x + y over the first 64 words.
    let program = dev.load_program("spirv", &spirv(SAXPY)).unwrap();
    let x = dev.alloc(256).unwrap();
    x.write_f32(0, &[1.0; 64]).unwrap();
    peer.fill(8192, 256, 1.5f32.to_bits());
    let args =
        [LaunchArg::Buffer(x.whole()), LaunchArg::Buffer(buf.view(8192, 256)), LaunchArg::U32(64), LaunchArg::F32(2.0)];
    q.submit(program.launch("main", [1, 1, 1], &args).unwrap()).unwrap().wait().unwrap();
    assert_eq!(f32::from_bits(peer.read(8192 + 63 * 4)), 3.5);
    // Another client imports accel's export of it: the same memory again.
    let other = d.open(0);
    let theirs = other.import(buf.export().unwrap()).unwrap();
    other.create_queue().unwrap().submit(Op::Fill { dst: theirs.view(0, 4), pattern: 0xc0de }).unwrap().wait().unwrap();
    assert_eq!(peer.read(0), 0xc0de);
    assert_eq!(d.open(0).info().regions[1].used, size, "charged once, like a created buffer");

    // Refusals, and no descriptor left behind in the daemon by any of them.
    // (The daemon's own descriptors may change by one or two meanwhile — a connection reaped,
    // a file opened lazily — so after a warm-up round the check is that 40 refusals leave
    // no trace beyond that, where one kept descriptor each would leave 40.)
    let refuse = |rounds: usize| {
        for _ in 0..rounds {
            let e = dev.import_external(&stranger, VRAM, 4096).unwrap_err();
            assert_eq!(e.code, Errno::EINVAL, "{e}");
            let e = dev.import_external(peer.export(), VRAM, size * 2).unwrap_err();
            assert!(matches!(e.code, Errno::EINVAL | Errno::ENOMEM), "{e}");
        }
    };
    refuse(2);
    let before = open_fds(d.pid());
    refuse(20);
    assert_eq!(dev.import_external(peer.export(), 0, size).unwrap_err().code, Errno::EINVAL, "host is BoImport's");
    let after = open_fds(d.pid());
    assert!(after <= before + 2, "failed imports close what they took: {before} descriptors before, {after} after");
    // Freed by accel, the memory stays the peer's.
    drop((buf, theirs));
    assert_eq!(peer.read(size - 4), 0x0bad_cafe);
}

#[test]
fn the_benchmarks_direct_baseline_dispatches_on_the_same_device() {
    if !vulkan() {
        return;
    }
    // `accel bench vulkan`'s baseline: the empty kernel through Vulkan alone, in-process.
    let mut direct = accel_driver_vulkan::direct::Direct::new(0).unwrap();
    for _ in 0..3 {
        direct.launch_sync().unwrap();
    }
    assert_eq!(accel_driver_vulkan::direct::Direct::new(99).err().unwrap().code, Errno::ENODEV);
}
