//! Multi-tenant security and resource limits, attacked end to end: deny by default,
//! hashed tokens in private files, quota bypass by import, descriptor and connection
//! exhaustion, honest errors on a full disk, dead-daemon detection and eviction.
//! Tests that must switch users or mount a tmpfs need root (CI runs as root); elsewhere
//! they print why they skip.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use accel::ras::{Ras, RasAttr, RasCmd, RasMsg};
use accel::{Connection, Device, Errno, Op};
use accel_driver_testdev::OP_HANG;
use accel_uapi::{NamespaceInfo, Reply, Request};
use common::{admin, assert_child_ok, code, driver_op, spawn_role_as, tenant, Daemon};

/// A uid and gid no test process has: an ordinary local user.
const STRANGER: u32 = 65534;
/// A group the tests make an admin group.
const OPERATORS: u32 = 4242;

fn is_root() -> bool {
    rustix::process::getuid().as_raw() == 0
}

fn skip(why: &str) {
    println!("skipped: {why}");
}

fn namespace(d: &Daemon, name: &str) -> NamespaceInfo {
    match admin(d).call(&Request::NsList).unwrap() {
        Reply::Namespaces(list) => list.into_iter().find(|n| n.name == name).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accel.toml");
    std::fs::write(&path, text).unwrap();
    let arg = path.to_str().unwrap().to_string();
    (dir, arg)
}

/// Entry point of child client processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("ACCEL_TEST_ROLE") else { return };
    let socket = std::path::PathBuf::from(std::env::var("ACCEL_SOCKET").unwrap());
    match role.as_str() {
        // An ordinary user that no token or rule places.
        "stranger" => {
            let mut c = Connection::connect_with_token(&socket, None).unwrap();
            assert_eq!(c.list_devices().unwrap(), vec![], "the default namespace has no devices");
            assert_eq!(Device::open_at(&socket, 0).unwrap_err().code, Errno::ENODEV);
            assert_eq!(code(c.stats()), Errno::EPERM, "daemon-wide counts are the admins' view");
            let me = std::process::id() as i32;
            assert!(c.clients().unwrap().iter().all(|u| u.pid == me), "sees only its own user's clients");
            assert_eq!(code(c.call(&Request::NsCreate { name: "mine".into(), token: None })), Errno::EPERM);
            // RAS shows a namespace its own devices' nodes: none here.
            let mut ras = accel::ras::Ras::over(c).unwrap();
            assert_eq!(ras.request(RasMsg::new(RasCmd::ListNodes, vec![]), true).unwrap(), vec![]);
        }
        // A member of an admin group: placed in root, sees everything.
        "operator" => {
            let mut c = Connection::connect_with_token(&socket, None).unwrap();
            assert_eq!(c.list_devices().unwrap().len(), 1);
            c.stats().unwrap();
            c.call(&Request::NsCreate { name: "by-operator".into(), token: None }).unwrap();
        }
        // A non-admin user opening connections until its cap refuses one.
        "connection-flood" => {
            let max: usize = std::env::var("ACCEL_TEST_MAX").unwrap().parse().unwrap();
            let held: Vec<Connection> =
                (0..max).map(|_| Connection::connect_with_token(&socket, None).unwrap()).collect();
            let err = Connection::connect_with_token(&socket, None).unwrap_err();
            assert_eq!(err.code, Errno::EUSERS, "{err}");
            assert!(err.message.contains("connections"), "{err}");
            drop(held);
            // The slots come back once the connections close.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Connection::connect_with_token(&socket, None).is_err() {
                assert!(Instant::now() < deadline, "slots were not returned");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // A non-admin user opening connections faster than its rate (burst 4, 2 per second).
        "connection-rate" => {
            let burst: Vec<Connection> =
                (0..4).map(|_| Connection::connect_with_token(&socket, None).unwrap()).collect();
            drop(burst);
            // Until the daemon has seen the four close, the cap (EUSERS) answers first.
            let err = loop {
                match Connection::connect_with_token(&socket, None) {
                    Err(e) if e.code == Errno::EUSERS => std::thread::sleep(Duration::from_millis(5)),
                    other => break other.unwrap_err(),
                }
            };
            assert_eq!(err.code, Errno::EAGAIN, "{err}");
            std::thread::sleep(Duration::from_millis(700));
            Connection::connect_with_token(&socket, None).unwrap();
        }
        // A non-admin user sending garbage: served at once at first, then ever more slowly.
        "garbage" => {
            let mut c = Connection::connect_with_token(&socket, None).unwrap();
            let start = Instant::now();
            for i in 0..80u8 {
                assert!(c.call_raw(&[i; 24], &[]).is_err());
            }
            let slow = start.elapsed();
            assert!(slow >= Duration::from_millis(800), "80 garbage messages took only {slow:?}");
            // The connection still works, and success clears the strikes.
            c.list_devices().unwrap();
            let start = Instant::now();
            for i in 0..30u8 {
                assert!(c.call_raw(&[i; 24], &[]).is_err());
            }
            assert!(start.elapsed() < Duration::from_millis(500), "strikes were not cleared");
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

#[test]
fn a_stranger_gets_an_empty_namespace_and_admin_groups_get_root() {
    if !is_root() {
        return skip("switching to another user needs root");
    }
    let (_dir, config) = config_file(&format!("admin_groups = [{OPERATORS}]\n"));
    let d = Daemon::start_with(&["cpu"], &["--config", &config]);
    assert_child_ok(spawn_role_as("stranger", d.socket(), STRANGER, STRANGER, &[]).unwrap());
    assert_child_ok(spawn_role_as("operator", d.socket(), STRANGER, OPERATORS, &[]).unwrap());
    assert!(namespace(&d, "by-operator").devices.is_empty());
    // The default namespace is an ordinary one: an admin can give every stranger a share.
    let assign = Request::NsAssign {
        name: "default".into(),
        device: 0,
        memory_limit: 1 << 20,
        weight: 50,
        max_clients: 2,
        evict: false,
    };
    admin(&d).call(&assign).unwrap();
    assert_eq!(namespace(&d, "default").devices[0].memory_limit, 1 << 20);
}

#[test]
fn tokens_are_kept_as_salted_hashes_in_private_files_and_rotate_without_downtime() {
    let d = Daemon::start(&["cpu"]);
    tenant(&d, "t", "first-token", 0, 0, 0);
    let state = d.socket().parent().unwrap().join("state");
    let file = state.join("namespaces.toml");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&state), mode(&file)), (0o700, 0o600));
    assert_eq!(mode(&state.join("ras.log")), 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("first-token") && text.contains("$argon2id$"), "{text}");

    // Roll a generated token out while the old one still works, then retire the old one.
    let held = Device::open_with_token(d.socket(), 0, "first-token").unwrap();
    let rotate = Request::NsToken { name: "t".into(), token: None, keep_old: true };
    let Reply::Token(new) = admin(&d).call(&rotate).unwrap() else { panic!() };
    assert!(new.starts_with("accel_") && new.len() == 70, "{new}");
    Device::open_with_token(d.socket(), 0, "first-token").unwrap();
    Device::open_with_token(d.socket(), 0, &new).unwrap();
    assert_eq!(admin(&d).call(&Request::NsRetireTokens { name: "t".into() }).unwrap(), Reply::Point(1));
    assert_eq!(Device::open_with_token(d.socket(), 0, "first-token").unwrap_err().code, Errno::EACCES);
    Device::open_with_token(d.socket(), 0, &new).unwrap();
    // Clients already placed keep working.
    held.create_queue().unwrap().submit(Op::Nop).unwrap().wait().unwrap();
    assert!(!std::fs::read_to_string(&file).unwrap().contains(&new));
    // Tenants cannot rotate tokens.
    let mut tenant_conn = Connection::connect_with_token(d.socket(), Some(&new)).unwrap();
    let steal = Request::NsToken { name: "t".into(), token: Some("mine".into()), keep_old: false };
    assert_eq!(code(tenant_conn.call(&steal)), Errno::EPERM);
}

#[test]
fn imported_memfds_are_charged_to_the_quota_and_capped_in_size() {
    let d = Daemon::start(&["cpu"]);
    tenant(&d, "small", "tok", 0, 1 << 20, 0);
    let dev = Device::open_with_token(d.socket(), 0, "tok").unwrap();
    let big = accel_uapi::shm::sealed_memfd("big", 4 << 20).unwrap();
    let err = dev.import(&big).unwrap_err();
    assert_eq!(err.code, Errno::ENOSPC, "{err}");
    let half = accel_uapi::shm::sealed_memfd("half", 512 << 10).unwrap();
    let imported = dev.import(&half).unwrap();
    assert_eq!(namespace(&d, "small").devices[0].memory_used, 512 << 10);
    assert_eq!(dev.alloc(768 << 10).unwrap_err().code, Errno::ENOSPC, "the import counts against the quota");
    drop(imported);
    let deadline = Instant::now() + Duration::from_secs(5);
    while namespace(&d, "small").devices[0].memory_used != 0 {
        assert!(Instant::now() < deadline, "the charge was not returned");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Rings are charged too: 16 MiB of ring entries do not fit a 1 MiB quota... (a ring of
    // 4096 entries is a few hundred KiB, so fill the quota first).
    let _fill = dev.alloc(1 << 20).unwrap();
    let err = dev.create_queue().unwrap().into_ring(4096).unwrap_err();
    assert_eq!(err.code, Errno::ENOSPC, "{err}");

    // The single-buffer cap applies to every namespace, root included.
    let (_dir, config) = config_file("[limits]\nmax_buffer_bytes = 1048576\n");
    let d = Daemon::start_with(&["cpu"], &["--config", &config]);
    let dev = d.open(0);
    assert_eq!(dev.import(&big).unwrap_err().code, Errno::ENOMEM);
    assert_eq!(dev.alloc(2 << 20).unwrap_err().code, Errno::ENOMEM);
    dev.alloc(1 << 20).unwrap();
}

#[test]
fn a_tenant_at_its_descriptor_caps_leaves_others_unharmed() {
    let (_dir, config) = config_file("[limits]\nfds_per_client = 64\nfds_per_namespace = 100\n");
    let d = Daemon::start_with(&["cpu"], &["--config", &config]);
    tenant(&d, "hostile", "tok-h", 0, 0, 0);
    tenant(&d, "good", "tok-g", 0, 0, 0);
    let h1 = Device::open_with_token(d.socket(), 0, "tok-h").unwrap();
    let h2 = Device::open_with_token(d.socket(), 0, "tok-h").unwrap();
    let mut held = Vec::new();
    let err = loop {
        match h1.alloc(4096) {
            Ok(b) => held.push(b),
            Err(e) => break e,
        }
    };
    assert_eq!((err.code, held.len()), (Errno::EMFILE, 64), "{err}");
    assert!(err.message.contains("client"), "{err}");
    let err = loop {
        match h2.alloc(4096) {
            Ok(b) => held.push(b),
            Err(e) => break e,
        }
    };
    assert_eq!((err.code, held.len()), (Errno::EMFILE, 100), "{err}");
    assert!(err.message.contains("namespace"), "{err}");
    // Exported fences hold a descriptor in the daemon too.
    let q = h2.create_queue().unwrap();
    let hang = q.submit(driver_op(OP_HANG, 0));
    if let Ok(f) = hang {
        assert_eq!(f.sync_fd().unwrap_err().code, Errno::EMFILE);
    }
    // The other tenant allocates, opens and computes as if nothing happened.
    let good = Device::open_with_token(d.socket(), 0, "tok-g").unwrap();
    let bufs: Vec<_> = (0..50).map(|_| good.alloc(4096).unwrap()).collect();
    let gq = good.create_queue().unwrap();
    gq.submit(Op::Fill { dst: bufs[0].whole(), pattern: 9 }).unwrap().wait().unwrap();
    let mut ring = gq.into_ring(16).unwrap();
    ring.submit_wait(&Op::Nop, Duration::from_secs(5)).unwrap().status().unwrap();
    // Freed descriptors come back.
    drop(held);
    h1.alloc(4096).unwrap();
}

#[test]
fn idle_handshakes_time_out_and_each_user_has_a_connection_cap() {
    let (_dir, config) = config_file("[connections]\nmax_per_uid = 8\nhandshake_timeout_ms = 300\n");
    let d = Daemon::start_with(&["cpu"], &["--config", &config]);
    let silent = accel_uapi::transport::connect(d.socket()).unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    // The daemon closes a connection that never says Hello.
    let got = accel_uapi::transport::recv(std::os::fd::AsFd::as_fd(&silent), &mut buf).unwrap();
    assert!(got.is_none(), "expected the daemon to hang up");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "{waited:?}");
    if !is_root() {
        return skip("the per-user cap exempts admins; testing it needs another user (root)");
    }
    let flood = spawn_role_as("connection-flood", d.socket(), STRANGER, STRANGER, &[("ACCEL_TEST_MAX", "8".into())]);
    assert_child_ok(flood.unwrap());
    // Admins are not capped.
    let many: Vec<Connection> = (0..20).map(|_| admin(&d)).collect();
    assert_eq!(many.len(), 20);
}

#[test]
fn connection_rates_are_limited_and_garbage_is_tarpitted() {
    if !is_root() {
        return skip("both limits exempt admins; testing them needs another user (root)");
    }
    let (_dir, config) = config_file("[connections]\nmax_per_uid = 4\nrate_per_uid = 2\n");
    let d = Daemon::start_with(&["cpu"], &["--config", &config]);
    assert_child_ok(spawn_role_as("connection-rate", d.socket(), STRANGER, STRANGER, &[]).unwrap());
    std::thread::sleep(Duration::from_millis(600)); // the same user's bucket refills
    assert_child_ok(spawn_role_as("garbage", d.socket(), STRANGER, STRANGER, &[]).unwrap());
    // An admin's garbage is answered at full speed.
    let mut c = admin(&d);
    let start = Instant::now();
    for i in 0..80u8 {
        assert!(c.call_raw(&[i; 24], &[]).is_err());
    }
    assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
}

#[test]
fn a_dead_daemon_ends_ring_waits_with_epipe() {
    let mut d = Daemon::start(&["testdev"]);
    let dev = d.open(0);
    let mut ring = dev.create_queue_with_timeout(Duration::from_secs(60)).unwrap().into_ring(8).unwrap();
    ring.push(&driver_op(OP_HANG, 0), 1).unwrap();
    ring.flush().unwrap();
    let waiter = std::thread::spawn(move || {
        let mut out = Vec::new();
        let start = Instant::now();
        let r = ring.wait(&mut out, 1, Duration::from_secs(60));
        (r.map(|_| out.len()), start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    d.kill();
    let (result, waited) = waiter.join().unwrap();
    assert_eq!(result.unwrap_err().code, Errno::EPIPE);
    assert!(waited < Duration::from_secs(3), "noticed after {waited:?}");
    // Socket calls notice too.
    assert_eq!(code(dev.create_queue()), Errno::EPIPE);
}

#[test]
fn deleting_a_namespace_or_shrinking_a_share_refuses_or_evicts() {
    let d = Daemon::start(&["testdev"]);
    tenant(&d, "t", "tok", 0, 1 << 20, 0);
    let dev = Device::open_with_token(d.socket(), 0, "tok").unwrap();
    let _buf = dev.alloc(512 << 10).unwrap();
    let mut ring = dev.create_queue_with_timeout(Duration::from_secs(60)).unwrap().into_ring(8).unwrap();
    ring.push(&driver_op(OP_HANG, 0), 7).unwrap();
    ring.flush().unwrap();

    let shrink = |evict| Request::NsAssign {
        name: "t".into(),
        device: 0,
        memory_limit: 4096,
        weight: 100,
        max_clients: 0,
        evict,
    };
    let err = admin(&d).call(&shrink(false)).unwrap_err();
    assert_eq!(err.code, Errno::EBUSY, "{err}");
    assert_eq!(namespace(&d, "t").devices[0].memory_limit, 1 << 20, "the refused change was not made");
    let err = admin(&d).call(&Request::NsDelete { name: "t".into(), evict: false }).unwrap_err();
    assert_eq!(err.code, Errno::EBUSY, "{err}");
    // Growing a share never needs eviction.
    let grow = Request::NsAssign {
        name: "t".into(),
        device: 0,
        memory_limit: 2 << 20,
        weight: 100,
        max_clients: 0,
        evict: false,
    };
    admin(&d).call(&grow).unwrap();

    admin(&d).call(&shrink(true)).unwrap();
    let mut out = Vec::new();
    ring.wait(&mut out, 1, Duration::from_secs(10)).unwrap();
    assert_eq!((out[0].user_data, out[0].status()), (7, Err(Errno::ENODEV)), "the evicted job fails with ENODEV");
    // Until its connection closes, an evicted client's requests fail with ENODEV.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match code(dev.alloc(4096)) {
            Errno::EPIPE => break,
            Errno::ENODEV if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            other => panic!("evicted client got {other:?}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while namespace(&d, "t").devices[0].memory_used != 0 {
        assert!(Instant::now() < deadline, "the evicted client's memory was not freed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(namespace(&d, "t").devices[0].memory_limit, 4096);

    // Delete with eviction: clients gone, namespace gone, token no longer places anyone.
    let again = Device::open_with_token(d.socket(), 0, "tok").unwrap();
    admin(&d).call(&Request::NsDelete { name: "t".into(), evict: true }).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match code(again.create_queue()) {
            Errno::EPIPE => break,
            Errno::ENODEV if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            other => panic!("evicted client got {other:?}"),
        }
    }
    assert_eq!(Connection::connect_with_token(d.socket(), Some("tok")).unwrap_err().code, Errno::EACCES);
    let counts = d.wait_for_counts(Default::default());
    assert_eq!(counts, Default::default(), "everything the evicted clients held was freed");
}

/// Mounts a tmpfs of `bytes` at `dir`; unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 4096];
    while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
    // Single bytes too: nothing is left.
    while f.write_all(&[0]).and_then(|_| f.sync_all()).is_ok() {}
    path
}

fn counter(ras: &mut Ras) -> u64 {
    let msg = RasMsg::new(RasCmd::GetErrorCounter, vec![RasAttr::NodeId(1), RasAttr::ErrorId(1), RasAttr::AccelExt]);
    ras.request(msg, false).unwrap()[0].value().unwrap()
}

fn inject(ras: &mut Ras) -> accel::Result<Vec<RasMsg>> {
    let msg = RasMsg::new(RasCmd::InjectError, vec![RasAttr::NodeId(1), RasAttr::ErrorId(1), RasAttr::Count(1)]);
    ras.request(msg, false)
}

#[test]
fn a_full_disk_fails_requests_honestly_and_loses_nothing_after_restart() {
    if !is_root() {
        return skip("mounting a small tmpfs needs root");
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let Some(_tmpfs) = Tmpfs::mount(&state, 256 << 10) else {
        return skip("mount -t tmpfs failed (no CAP_SYS_ADMIN in this container?)");
    };
    let args = ["--state-dir", state.to_str().unwrap()];
    let mut d = Daemon::start_with(&["testdev"], &args);
    let mut ras = Ras::connect(d.socket()).unwrap();
    let mut succeeded = 0u64;
    for _ in 0..10 {
        inject(&mut ras).unwrap();
        succeeded += 1;
    }
    let filler = fill(&state);
    // Appends that still fit the log's last page succeed; then one fails and changes nothing.
    let failed = loop {
        let before = counter(&mut ras);
        match inject(&mut ras) {
            Ok(_) => {
                succeeded += 1;
                assert_eq!(counter(&mut ras), before + 1);
            }
            Err(e) => break (e, before),
        }
        assert!(succeeded < 10_000, "the log never filled up");
    };
    assert_eq!(failed.0.code, Errno::EIO, "{}", failed.0);
    assert_eq!(counter(&mut ras), failed.1, "a change that was not logged did not happen");
    let mut a = admin(&d);
    let err = a.call(&Request::NsCreate { name: "lost".into(), token: None }).unwrap_err();
    assert_eq!(err.code, Errno::EIO, "{err}");
    let Reply::Namespaces(list) = a.call(&Request::NsList).unwrap() else { panic!() };
    assert!(list.iter().all(|n| n.name != "lost"), "the namespace that was not saved does not exist");

    // Space comes back: later records follow whole ones, and a restart keeps every one.
    std::fs::remove_file(filler).unwrap();
    for _ in 0..100 {
        inject(&mut ras).unwrap();
        succeeded += 1;
    }
    a.call(&Request::NsCreate { name: "kept".into(), token: Some("k".into()) }).unwrap();
    drop((ras, a));
    d.kill();
    let d = Daemon::start_with(&["testdev"], &args);
    let mut ras = Ras::connect(d.socket()).unwrap();
    assert_eq!(counter(&mut ras), succeeded, "every acknowledged error survived the restart");
    namespace(&d, "kept");
    Connection::connect_with_token(d.socket(), Some("k")).unwrap();
    drop(d);
}
