//! Helpers shared by the end-to-end test binaries: a daemon process, client processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use accel::{Buffer, Connection, Device, Errno, Float16, Gemm16, ObjectCounts, Op, Queue};
use accel_driver_testdev::OP_HANG;

/// An admin connection (the tests run as root or as the daemon's user).
pub fn admin(d: &Daemon) -> Connection {
    Connection::connect_with_token(d.socket(), None).unwrap()
}

/// Creates namespace `name` with `token`, holding global device `device` with the given
/// memory limit and client cap (0: none).
pub fn tenant(d: &Daemon, name: &str, token: &str, device: u32, memory_limit: u64, max_clients: u32) {
    let mut a = admin(d);
    a.call(&accel_uapi::Request::NsCreate { name: name.into(), token: Some(token.into()) }).unwrap();
    let assign = accel_uapi::Request::NsAssign {
        name: name.into(),
        device,
        memory_limit,
        weight: 100,
        max_clients,
        evict: false,
    };
    a.call(&assign).unwrap();
}

/// The `accel` binary the tests run: `ACCEL_BIN` where a test binary runs away from its
/// build tree (scripts/gpu-check.sh on the lent GPU machine), else the one cargo built.
pub fn accel_bin() -> PathBuf {
    std::env::var_os("ACCEL_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_accel")))
}

/// Whether a GPU-class driver's tests can run: `count` found a device, or they skip saying
/// why — a failure instead where `require` (an environment variable) is set.
pub fn device_or_skip(count: Result<usize, accel_core::driver::DriverError>, require: &str) -> bool {
    let why = match count {
        Ok(n) if n > 0 => return true,
        Ok(_) => "no such device on this machine".to_string(),
        Err(e) => e.message,
    };
    assert!(std::env::var_os(require).is_none(), "{require} is set, yet: {why}");
    eprintln!("skipping: {why}");
    false
}

/// A daemon process on a private socket, killed on drop.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    pub fn start(devices: &[&str]) -> Daemon {
        Self::start_with(devices, &[])
    }

    pub fn start_with(devices: &[&str], extra: &[&str]) -> Daemon {
        Self::start_env(devices, extra, &[])
    }

    /// A daemon with `envs` set in its environment.
    #[allow(dead_code)]
    pub fn start_env(devices: &[&str], extra: &[&str], envs: &[(&str, &str)]) -> Daemon {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("accel-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(accel_bin());
        cmd.arg("daemon").arg("--socket").arg(dir.join("s")).args(extra).env("ACCEL_LOG", "warn");
        cmd.envs(envs.iter().copied());
        if !extra.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(dir.join("state"));
        }
        for d in devices {
            cmd.arg("--device").arg(d);
        }
        let child = cmd.spawn().unwrap();
        let socket = dir.join("s");
        let d = Daemon { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Connection::connect(d.socket()).is_err() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn open(&self, minor: u32) -> Device {
        Device::open_at(self.socket(), minor).unwrap()
    }

    /// Kills the daemon with SIGKILL (no chance to clean up) and waits for it.
    /// Stops the daemon as systemd does (SIGTERM) and waits for it to exit.
    #[allow(dead_code)]
    pub fn terminate(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("a child's pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The daemon's process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The names of the daemon's threads.
    #[allow(dead_code)]
    pub fn thread_names(&self) -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).expect("the daemon's threads");
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect()
    }

    pub fn stats(&self) -> ObjectCounts {
        Connection::connect(self.socket()).unwrap().stats().unwrap()
    }

    /// Polls until the object counts equal `want` (minus the polling connection itself).
    pub fn wait_for_counts(&self, want: ObjectCounts) -> ObjectCounts {
        let deadline = Instant::now() + Duration::from_secs(10);
        // One connection throughout: closed connections are reaped asynchronously, so a new
        // one per poll could count the previous one still.
        let mut conn = Connection::connect(self.socket()).unwrap();
        loop {
            let mut s = conn.stats().unwrap();
            s.clients -= 1;
            if s == want || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs this test binary again as a client process playing `role`.
pub fn spawn_role(role: &str, socket: &Path, envs: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1", "--quiet"])
        .env("ACCEL_TEST_ROLE", role)
        .env("ACCEL_SOCKET", socket)
        .stdout(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Like [`spawn_role`], as user `uid` and group `gid` (supplementary groups dropped).
/// `None` when the tests do not run as root, which switching users needs; the caller
/// prints why it skips.
pub fn spawn_role_as(role: &str, socket: &Path, uid: u32, gid: u32, envs: &[(&str, String)]) -> Option<Child> {
    use std::os::unix::process::CommandExt;
    if rustix::process::getuid().as_raw() != 0 {
        return None;
    }
    // The peer must reach the socket: like a render node opened to everyone.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1", "--quiet"])
        .env("ACCEL_TEST_ROLE", role)
        .env("ACCEL_SOCKET", socket)
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Some(cmd.spawn().unwrap())
}

/// Waits for a child and asserts that it succeeded, showing what it printed otherwise.
pub fn assert_child_ok(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "child failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stdout));
}

/// Reads the child's stdout until it prints `ready`.
pub fn wait_ready(child: &mut Child) {
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.trim() == "ready" => break,
            Some(Ok(_)) => continue,
            other => panic!("child ended before ready: {other:?}"),
        }
    }
    // Keep the pipe open (the child may still print) by leaking the reader.
    std::mem::forget(lines);
}

pub fn code<T: std::fmt::Debug>(r: accel::Result<T>) -> Errno {
    r.unwrap_err().code
}

pub fn driver_op(code: u32, arg: u64) -> Op {
    Op::Driver { code, args: [arg, 0, 0, 0] }
}

/// Runs the role named by `ACCEL_TEST_ROLE` and exits; returns at once when unset.
/// Each test binary calls it from a `#[test] fn child_entry`.
pub fn child_entry() {
    let Ok(role) = std::env::var("ACCEL_TEST_ROLE") else {
        return;
    };
    let socket = PathBuf::from(std::env::var("ACCEL_SOCKET").unwrap());
    let dev = Device::open_at(&socket, 0).unwrap();
    match role.as_str() {
        "import-and-write" => {
            let raw: i32 = std::env::var("ACCEL_TEST_FD").unwrap().parse().unwrap();
            // SAFETY: the parent passed this descriptor to us, open and owned by nobody else here.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let buf = dev.import(fd).unwrap();
            let mut seen = vec![0u8; 4096];
            buf.read(0, &mut seen).unwrap();
            assert!(seen.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "child saw different bytes");
            buf.write(4096, b"written by the child").unwrap();
        }
        "hold" => {
            println!("ready");
            std::thread::sleep(Duration::from_secs(60));
        }
        "busy-then-die" => {
            let bufs: Vec<_> = (0..4).map(|_| dev.alloc(1 << 20).unwrap()).collect();
            let q = dev.create_queue().unwrap();
            let tl = dev.create_syncobj(true).unwrap();
            let hang = q.submit_with(driver_op(OP_HANG, 0), &[], &[tl.signal_point(1)]).unwrap();
            let queued = q.submit_with(Op::Fill { dst: bufs[0].whole(), pattern: 7 }, &[hang.point()], &[]).unwrap();
            let _fd = hang.sync_fd().unwrap();
            let _keep = (hang, queued, bufs, tl);
            println!("ready");
            std::thread::sleep(Duration::from_secs(60));
        }
        "launch-then-die" => {
            // Device memory, a program and a long launch in flight when the process dies.
            use accel_driver_testdev::cmdbuf::{encode, Command, CMD_DELAY, CMD_FILL};
            let vram: Vec<_> = (0..3).map(|_| dev.alloc_in(1 << 20, 1).unwrap()).collect();
            let cmds = [
                Command { op: CMD_DELAY, a: 2_000_000, a_off: 0, b: 0, b_off: 0, len: 0 },
                Command { op: CMD_FILL, a: 0, a_off: 0, b: 0, b_off: 7, len: 4096 },
            ];
            let program = dev.load_program("testdev-cmdbuf", &encode(1, &cmds)).unwrap();
            let q = dev.create_queue_with_timeout(Duration::from_secs(30)).unwrap();
            let launch = program.launch("main", [1, 1, 1], &[accel::LaunchArg::Buffer(vram[0].whole())]).unwrap();
            let running = q.submit(launch).unwrap();
            let _keep = (running, vram, program, q);
            println!("ready");
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `bytes` at byte `at` of a new host buffer of `dev` and, for a `region` other than host
/// memory, copied by `q` into a new buffer of the same size there: an operand in that region.
pub fn uploaded(dev: &Device, q: &Queue, bytes: &[u8], at: u64, region: u32) -> Buffer {
    let host = dev.alloc(bytes.len() as u64 + at).unwrap();
    host.write(at as usize, bytes).unwrap();
    if region == 0 {
        return host;
    }
    let there = dev.alloc_in(host.size(), region).unwrap();
    q.submit(Op::Copy { src: host.whole(), dst: there.whole() }).unwrap();
    there
}

/// `values` as little-endian bytes.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// GEMM on f16 and bf16 operands (each of `types`) on `dev`, operands in each of `regions`,
/// equals the cpu device's to the bit: strided, C at a 2-byte offset (elements that share
/// 32-bit words with others), alpha and beta. Multiples of 1/8: every product and sum is
/// exact in f32, so whatever order a device sums in, one rounding gives the same bits.
pub fn gemm16_equals_the_cpu_drivers(dev: &Device, cpu: &Device, regions: &[u32], types: &[Float16]) {
    let (m, n, k, lda, ldb, ldc) = (67usize, 45usize, 39usize, 40usize, 50usize, 47usize);
    let eighths =
        |len: usize, s: usize| -> Vec<f32> { (0..len).map(|i| ((i * 7 + s * 3) % 17) as f32 / 8.0 - 1.0).collect() };
    let (av, bv, cv) = (eighths(m * lda, 1), eighths(k * ldb, 2), eighths(m * ldc, 3));
    for &ty in types {
        let enc = |v: &[f32]| -> Vec<u8> {
            v.iter()
                .flat_map(|x| match ty {
                    Float16::F16 => half::f16::from_f32(*x).to_bits().to_le_bytes(),
                    Float16::Bf16 => half::bf16::from_f32(*x).to_bits().to_le_bytes(),
                })
                .collect()
        };
        let run = |dev: &Device, region: u32| -> Vec<u8> {
            let q = dev.create_queue().unwrap();
            let put = |bytes: &[u8], at: u64| uploaded(dev, &q, bytes, at, region);
            let (ba, bb, bc) = (put(&enc(&av), 0), put(&enc(&bv), 0), put(&enc(&cv), 2));
            let op = Gemm16 {
                m: m as u64,
                n: n as u64,
                k: k as u64,
                a: ba.matrix(0, lda as u64),
                b: bb.matrix(0, ldb as u64),
                c: bc.matrix(2, ldc as u64),
                alpha: 1.5,
                beta: -0.5,
                ty,
            };
            q.submit(Op::Gemm16(op)).unwrap().wait().unwrap();
            let back: Buffer = dev.alloc(bc.size()).unwrap();
            q.submit(Op::Copy { src: bc.whole(), dst: back.whole() }).unwrap().wait().unwrap();
            let mut out = vec![0u8; m * ldc * 2];
            back.read(2, &mut out).unwrap();
            out
        };
        let want = run(cpu, 0);
        assert_ne!(want, enc(&cv), "the cpu driver computed something");
        for &region in regions {
            let got = run(dev, region);
            let differ = got.chunks(2).zip(want.chunks(2)).filter(|(g, w)| g != w).count();
            assert_eq!(differ, 0, "{ty:?} region {region}: {differ} of {} elements differ", m * ldc);
        }
    }
}

/// Two tests of `$run` (a `fn(&str)` given the test device's spec): on `testdev`, whose jobs
/// run on the core's slot threads, and on `testdev-async`, whose engines complete their jobs
/// themselves (the core's asynchronous path: no slot thread waits on a job).
#[macro_export]
macro_rules! on_testdev_and_async {
    ($run:ident: $sync:ident, $asynchronous:ident) => {
        #[test]
        fn $sync() {
            $run("testdev");
        }

        #[test]
        fn $asynchronous() {
            $run("testdev-async");
        }
    };
}
