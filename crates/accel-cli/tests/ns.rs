//! Device namespaces end to end: visibility, renumbering, quotas, isolation, placement, persistence.

mod common;

use accel::{Connection, Device, Errno};
use accel_uapi::{NamespaceInfo, Reply, Request};
use common::{admin, code, tenant, Daemon};

/// The namespaces an admin created (the built-in, empty `default` left out).
fn namespaces(d: &Daemon) -> Vec<NamespaceInfo> {
    match admin(d).call(&Request::NsList).unwrap() {
        Reply::Namespaces(n) => n.into_iter().filter(|n| n.name != "default").collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_namespace_sees_only_its_devices_numbered_from_zero() {
    let d = Daemon::start(&["cpu", "testdev", "testdev"]);
    tenant(&d, "team-a", "tok-a", 2, 0, 0);
    let mut c = Connection::connect_with_token(d.socket(), Some("tok-a")).unwrap();
    let devices = c.list_devices().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!((devices[0].minor, devices[0].driver.as_str()), (0, "testdev"));
    assert_eq!(c.device_info(1).unwrap_err().code, Errno::ENODEV);
    let dev = Device::open_with_token(d.socket(), 0, "tok-a").unwrap();
    assert_eq!(dev.info().minor, 0);
    assert_eq!(Device::open_with_token(d.socket(), 1, "tok-a").unwrap_err().code, Errno::ENODEV);
    // The root namespace still sees all three.
    assert_eq!(admin(&d).list_devices().unwrap().len(), 3);
}

#[test]
fn quotas_are_enforced_by_the_daemon() {
    let d = Daemon::start(&["testdev"]);
    tenant(&d, "small", "tok-s", 0, 1 << 20, 1);
    let dev = Device::open_with_token(d.socket(), 0, "tok-s").unwrap();
    let half = dev.alloc(512 << 10).unwrap();
    assert_eq!(dev.alloc(768 << 10).unwrap_err().code, Errno::ENOSPC);
    let _rest = dev.alloc(512 << 10).unwrap();
    assert_eq!(dev.alloc(4096).unwrap_err().code, Errno::ENOSPC);
    drop(half);
    let _small = dev.alloc(4096).unwrap();
    assert_eq!(namespaces(&d)[0].devices[0].memory_used, (512 << 10) + 4096);
    // One client at a time.
    assert_eq!(Device::open_with_token(d.socket(), 0, "tok-s").unwrap_err().code, Errno::EUSERS);
    // Buffers keep their connection (the client) alive: drop them all.
    drop((dev, _rest, _small));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Device::open_with_token(d.socket(), 0, "tok-s").is_err() {
        assert!(std::time::Instant::now() < deadline, "client slot not released");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn objects_of_another_namespace_cannot_be_imported() {
    let d = Daemon::start(&["testdev"]);
    tenant(&d, "a", "tok-a", 0, 0, 0);
    tenant(&d, "b", "tok-b", 0, 0, 0);
    let (a, b) = (
        Device::open_with_token(d.socket(), 0, "tok-a").unwrap(),
        Device::open_with_token(d.socket(), 0, "tok-b").unwrap(),
    );
    let root = Device::open_at(d.socket(), 0).unwrap();
    let secret = a.alloc(4096).unwrap();
    secret.write(0, b"tenant a's data").unwrap();
    let fd = secret.export().unwrap();
    assert_eq!(b.import(&fd).unwrap_err().code, Errno::ENOENT);
    assert_eq!(root.import(&fd).unwrap_err().code, Errno::ENOENT);
    // The same namespace still shares.
    let a2 = Device::open_with_token(d.socket(), 0, "tok-a").unwrap();
    let mut seen = [0u8; 15];
    a2.import(&fd).unwrap().read(0, &mut seen).unwrap();
    assert_eq!(&seen, b"tenant a's data");
    // Syncobjs and sync files answer as DRM's FD_TO_HANDLE does for a foreign descriptor.
    let so = a.create_syncobj_signaled().unwrap();
    assert_eq!(b.import_syncobj(so.export().unwrap()).unwrap_err().code, Errno::EINVAL);
    let file = so.export_sync_file(0).unwrap();
    let theirs = b.create_syncobj(false).unwrap();
    assert_eq!(theirs.import_sync_file(0, &file).unwrap_err().code, Errno::EINVAL);
    a2.create_syncobj(false).unwrap().import_sync_file(0, &file).unwrap();
}

#[test]
fn other_namespaces_and_the_admin_view_are_invisible() {
    let d = Daemon::start(&["testdev"]);
    tenant(&d, "a", "tok-a", 0, 0, 0);
    let _root_client = Device::open_at(d.socket(), 0).unwrap();
    let _a = Device::open_with_token(d.socket(), 0, "tok-a").unwrap();
    let mut c = Connection::connect_with_token(d.socket(), Some("tok-a")).unwrap();
    let clients = c.clients().unwrap();
    assert!(clients.len() == 2 && clients.iter().all(|u| u.device == Some(0) || u.device.is_none()), "{clients:?}");
    assert_eq!(admin(&d).clients().unwrap().len(), 4, "root sees every client");
    assert_eq!(c.stats().unwrap_err().code, Errno::EPERM);
    assert_eq!(code(c.call(&Request::NsList)), Errno::EPERM);
    assert_eq!(code(c.call(&Request::NsCreate { name: "x".into(), token: None })), Errno::EPERM);
    let mut ras = accel::ras::Ras::connect(d.socket()).unwrap();
    drop(ras.request(accel::ras::RasMsg::new(accel::ras::RasCmd::ListNodes, vec![]), true).unwrap());
    // RAS: the tenant sees its own device's nodes and changes nothing.
    let mut tenant_ras = accel::ras::Ras::over(c).unwrap();
    let list = accel::ras::RasMsg::new(accel::ras::RasCmd::ListNodes, vec![]);
    assert_eq!(tenant_ras.request(list, true).unwrap().len(), 5, "testdev's five nodes");
    let clear = accel::ras::RasMsg::new(
        accel::ras::RasCmd::ClearErrorCounter,
        vec![accel::ras::RasAttr::NodeId(1), accel::ras::RasAttr::ErrorId(1)],
    );
    assert_eq!(tenant_ras.request(clear, false).unwrap_err().code, Errno::EPERM);
    // An unknown token is refused, not silently placed in root.
    assert_eq!(Connection::connect_with_token(d.socket(), Some("nope")).unwrap_err().code, Errno::EACCES);
}

#[test]
fn placement_rules_from_the_config_file() {
    let dir = std::env::temp_dir().join(format!("accel-ns-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("accel.toml");
    // Rules match on every field given: uid and token here (the tests run as one user).
    std::fs::write(
        &config,
        "[[placement]]\nnamespace = \"ruled\"\nuid = 4294967295\ntoken = \"never\"\n\n[[placement]]\nnamespace = \"ruled\"\nuid = 0\ntoken = \"by-rule\"\n",
    )
    .unwrap();
    let uid = rustix::process::getuid().as_raw();
    if uid != 0 {
        std::fs::write(&config, format!("[[placement]]\nnamespace = \"ruled\"\nuid = {uid}\ntoken = \"by-rule\"\n"))
            .unwrap();
    }
    let d = Daemon::start_with(&["cpu", "testdev"], &["--config", config.to_str().unwrap()]);
    let mut a = admin(&d);
    a.call(&Request::NsCreate { name: "ruled".into(), token: None }).unwrap();
    a.call(&Request::NsAssign {
        name: "ruled".into(),
        device: 1,
        memory_limit: 0,
        weight: 100,
        max_clients: 0,
        evict: false,
    })
    .unwrap();
    let mut placed = Connection::connect_with_token(d.socket(), Some("by-rule")).unwrap();
    let devices = placed.list_devices().unwrap();
    assert_eq!((devices.len(), devices[0].driver.as_str()), (1, "testdev"));
    assert_eq!(Connection::connect_with_token(d.socket(), Some("never")).unwrap_err().code, Errno::EACCES);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn namespaces_survive_a_restart() {
    let state = std::env::temp_dir().join(format!("accel-ns-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let args = ["--state-dir", state.to_str().unwrap()];
    let mut d = Daemon::start_with(&["cpu", "testdev"], &args);
    tenant(&d, "kept", "tok-k", 1, 1 << 20, 2);
    d.kill();
    let d = Daemon::start_with(&["cpu", "testdev"], &args);
    let list = namespaces(&d);
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].name.as_str(), list[0].devices[0].device, list[0].devices[0].memory_limit),
        ("kept", 1, 1 << 20)
    );
    let dev = Device::open_with_token(d.socket(), 0, "tok-k").unwrap();
    assert_eq!(dev.info().driver, "testdev");
    assert_eq!(dev.alloc(2 << 20).unwrap_err().code, Errno::ENOSPC);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn memory_is_zeroed_for_the_next_tenant() {
    let d = Daemon::start(&["testdev"]);
    tenant(&d, "first", "tok-1", 0, 0, 0);
    tenant(&d, "second", "tok-2", 0, 0, 0);
    let first = Device::open_with_token(d.socket(), 0, "tok-1").unwrap();
    let bufs: Vec<_> = (0..8).map(|_| first.alloc(1 << 20).unwrap()).collect();
    for b in &bufs {
        b.write(0, &vec![0xa5; 1 << 20]).unwrap();
    }
    drop(bufs);
    drop(first);
    let second = Device::open_with_token(d.socket(), 0, "tok-2").unwrap();
    for _ in 0..8 {
        let b = second.alloc(1 << 20).unwrap();
        let mut bytes = vec![1u8; 1 << 20];
        b.read(0, &mut bytes).unwrap();
        assert!(bytes.iter().all(|x| *x == 0), "the second tenant saw the first one's data");
    }
}

/// Engine time two namespaces got over 1.2 s, each a client keeping `queues` in-order queues
/// busy with 2 ms jobs on a testdev (two slots), with the namespace's compute weight.
fn engine_time_of(tenants: [(&str, u32, usize); 2]) -> (f64, f64) {
    use accel_driver_testdev::OP_DELAY;
    use std::collections::VecDeque;
    let d = Daemon::start(&["testdev"]);
    let mut a = admin(&d);
    for (name, weight, _) in tenants {
        a.call(&Request::NsCreate { name: name.into(), token: Some(name.into()) }).unwrap();
        a.call(&Request::NsAssign {
            name: name.into(),
            device: 0,
            memory_limit: 0,
            weight,
            max_clients: 0,
            evict: false,
        })
        .unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = tenants
        .into_iter()
        .map(|(token, _, queues)| {
            let dev = Device::open_with_token(d.socket(), 0, token).unwrap();
            let id = dev.client_id();
            let stop = stop.clone();
            let t = std::thread::spawn(move || {
                // Equal queue weights; at least two in-order queues fill the device's two slots.
                let qs: Vec<_> = (0..queues).map(|_| dev.create_queue().unwrap()).collect();
                let mut pending: Vec<VecDeque<accel::Fence>> = (0..queues).map(|_| VecDeque::new()).collect();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (q, p) in qs.iter().zip(&mut pending) {
                        if p.len() < 3 {
                            p.push_back(q.submit(accel::Op::Driver { code: OP_DELAY, args: [2, 0, 0, 0] }).unwrap());
                        } else {
                            p.pop_front().unwrap().wait().unwrap();
                        }
                    }
                }
            });
            (id, t)
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let usage = |a: &mut Connection| -> Vec<u64> {
        let all = a.clients().unwrap();
        workers.iter().map(|(id, _)| all.iter().find(|c| c.client_id == *id).unwrap().engine_ns).collect()
    };
    let before = usage(&mut a);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let after = usage(&mut a);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (_, t) in workers {
        t.join().unwrap();
    }
    ((after[0] - before[0]) as f64, (after[1] - before[1]) as f64)
}

#[test]
fn share_weights_divide_the_device_between_namespaces() {
    let (light, heavy) = engine_time_of([("light", 100, 2), ("heavy", 300, 2)]);
    let ratio = heavy / light;
    assert!((2.6..3.4).contains(&ratio), "heavy/light engine time {ratio:.2}, want 3 (weights 300:100)");
}

#[test]
fn a_namespace_does_not_get_more_by_opening_more_queues() {
    // Equal weights; one tenant opens four times the queues. Each queue on its own would
    // get an equal part: 8 to 2, so 4x the engine time. The namespaces share it evenly.
    let (few, many) = engine_time_of([("few", 100, 2), ("many", 100, 8)]);
    let ratio = many / few;
    assert!((0.8..1.25).contains(&ratio), "8 queues against 2 got {ratio:.2}x the engine time, want 1");
}
