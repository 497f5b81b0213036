//! Namespaces: creation, assignment, quotas, persistence.

use super::*;
use crate::credentials::AdminPolicy;
use crate::credentials::PeerCred;
use crate::testing::{device, FakeDriver};

fn devices(n: usize) -> Vec<Arc<Device>> {
    (0..n).map(|i| Arc::new(Device::new(i as u32, device(&Arc::new(FakeDriver::default()))).unwrap())).collect()
}

#[test]
fn each_share_is_a_scheduler_group_with_its_weight() {
    let d = NsDevice::new(devices(1).remove(0), Share { weight: 300, ..Default::default() });
    let other = NsDevice::new(devices(1).remove(0), Share::default());
    assert_eq!(d.group().weight, 300);
    assert_eq!(other.group().weight, DEFAULT_SHARE_WEIGHT, "no weight is the default");
    assert_ne!(d.group().id, other.group().id);
    assert_eq!(d.group().id, d.group().id);
}

#[test]
fn rules_match_only_when_every_given_field_matches() {
    let peer = PeerInfo {
        cred: PeerCred { pid: 1, uid: 1000, gid: 100 },
        groups: Vec::new(),
        cgroup: Some("/user.slice/user-1000.slice/app.scope".into()),
        userns: Some(7),
        pidns: Some(8),
    };
    let rule = |f: fn(&mut PlacementRule)| {
        let mut r = PlacementRule { namespace: "x".into(), ..Default::default() };
        f(&mut r);
        r
    };
    assert!(rule(|r| r.uid = Some(1000)).matches(&peer, None));
    assert!(!rule(|r| r.uid = Some(0)).matches(&peer, None));
    assert!(rule(|r| r.cgroup_prefix = Some("/user.slice/".into())).matches(&peer, None));
    assert!(!rule(|r| r.cgroup_prefix = Some("/system.slice/".into())).matches(&peer, None));
    assert!(rule(|r| {
        r.userns = Some(7);
        r.pidns = Some(8);
        r.gid = Some(100)
    })
    .matches(&peer, None));
    assert!(!rule(|r| r.token = Some("t".into())).matches(&peer, None));
    assert!(rule(|r| r.token = Some("t".into())).matches(&peer, Some("t")));
}

#[test]
fn state_is_private_atomic_hashed_and_restored() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let devs = devices(2);
    let ns = Namespaces::new(&devs, PlacementConfig::default(), Some(&state)).unwrap();
    ns.create("a", Some("tok".into())).unwrap();
    ns.assign("a", 1, Share { memory_limit: 4096, weight: 50, max_clients: 3 }, Revoke::Refuse).unwrap();
    assert_eq!(ns.create("a", None).unwrap_err().code, Errno::EEXIST);
    assert_eq!(ns.create("b", Some("tok".into())).unwrap_err().code, Errno::EEXIST, "tokens are unique");
    assert_eq!(ns.create("root", None).unwrap_err().code, Errno::EINVAL);
    assert_eq!(ns.assign("a", 9, Share::default(), Revoke::Refuse).unwrap_err().code, Errno::ENODEV);
    assert!(!state.join(".namespaces.toml.tmp").exists(), "no temp file left behind");
    let file = state.join("namespaces.toml");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&state), mode(&file)), (0o700, 0o600));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("\"tok\"") && text.contains("$argon2id$"), "{text}");

    let again = Namespaces::new(&devs, PlacementConfig::default(), Some(&state)).unwrap();
    let a = again.get("a").unwrap();
    assert!(a.has_token());
    assert_eq!(a.devices()[0].device.minor, 1);
    assert_eq!(a.devices()[0].share(), Share { memory_limit: 4096, weight: 50, max_clients: 3 });
    let peer = PeerInfo::default();
    assert_eq!(again.place(&peer, Some("tok")).unwrap().ns.name, "a");
    assert!(again.place(&peer, None).unwrap().ns.is_root(), "uid 0 is an admin");
    again.delete("a", Revoke::Refuse).unwrap();
    let names: Vec<String> = Namespaces::new(&devs, PlacementConfig::default(), Some(&state))
        .unwrap()
        .list()
        .iter()
        .map(|n| n.name.clone())
        .collect();
    assert_eq!(names, vec![DEFAULT.to_string()]);
}

#[test]
fn unplaced_non_admins_land_in_the_empty_default_namespace() {
    let me = rustix::process::getuid().as_raw();
    let stranger =
        PeerInfo { cred: PeerCred { pid: 1, uid: me.wrapping_add(4242).max(1), gid: 7 }, ..Default::default() };
    let ns = Namespaces::new(&devices(1), PlacementConfig::default(), None).unwrap();
    let p = ns.place(&stranger, None).unwrap();
    assert_eq!((p.ns.name.as_str(), p.admin, p.ns.devices().len()), (DEFAULT, false, 0));
    assert!(p.ns.is_default());
    // A rule may not send a non-admin to root; an admin group member goes there.
    let rule = PlacementRule { namespace: ROOT.into(), gid: Some(7), ..Default::default() };
    let ns = Namespaces::new(&devices(1), PlacementConfig { rules: vec![rule], ..Default::default() }, None).unwrap();
    assert_eq!(ns.place(&stranger, None).unwrap_err().code, Errno::EACCES);
    let admins = PlacementConfig { admin: AdminPolicy { groups: vec![7] }, ..Default::default() };
    let ns = Namespaces::new(&devices(1), admins, None).unwrap();
    let p = ns.place(&stranger, None).unwrap();
    assert!(p.admin && p.ns.is_root());
    // The default may be any namespace but root.
    let to_root = PlacementConfig { default_namespace: Some(ROOT.into()), ..Default::default() };
    assert_eq!(Namespaces::new(&devices(1), to_root, None).err().unwrap().code, Errno::EINVAL);
}

#[test]
fn plaintext_tokens_of_an_older_daemon_are_hashed_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("namespaces.toml"), "[namespaces.old]\ntoken = \"legacy\"\ndevices = []\n").unwrap();
    let ns = Namespaces::new(&devices(1), PlacementConfig::default(), Some(dir.path())).unwrap();
    assert_eq!(ns.place(&PeerInfo::default(), Some("legacy")).unwrap().ns.name, "old");
    let text = std::fs::read_to_string(dir.path().join("namespaces.toml")).unwrap();
    assert!(!text.contains("legacy") && text.contains("$argon2id$"), "{text}");
}

#[test]
fn token_rotation_keeps_old_tokens_until_retired() {
    let ns = Namespaces::new(&devices(1), PlacementConfig::default(), None).unwrap();
    let peer = PeerInfo::default();
    ns.create("t", Some("first".into())).unwrap();
    let second = ns.rotate_token("t", None, true).unwrap();
    assert!(second.starts_with("accel_"));
    assert_eq!(ns.place(&peer, Some("first")).unwrap().ns.name, "t");
    assert_eq!(ns.place(&peer, Some(&second)).unwrap().ns.name, "t");
    assert_eq!(ns.retire_tokens("t").unwrap(), 1);
    assert_eq!(ns.place(&peer, Some("first")).unwrap_err().code, Errno::EACCES, "cache cleared on retire");
    assert_eq!(ns.place(&peer, Some(&second)).unwrap().ns.name, "t");
    // Without keep_old, the new token replaces every other.
    ns.rotate_token("t", Some("third".into()), false).unwrap();
    assert_eq!(ns.place(&peer, Some(&second)).unwrap_err().code, Errno::EACCES);
    assert_eq!(ns.rotate_token(ROOT, None, false).unwrap_err().code, Errno::EINVAL);
}

#[test]
fn a_change_that_cannot_be_saved_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ns = Namespaces::new(&devices(1), PlacementConfig::default(), Some(&state)).unwrap();
    ns.create("kept", None).unwrap();
    // A directory where the temp file must go makes every save fail.
    std::fs::create_dir(state.join(".namespaces.toml.tmp")).unwrap();
    assert_eq!(ns.create("lost", Some("x".into())).unwrap_err().code, Errno::EIO);
    assert!(ns.get("lost").is_err());
    let share = Share { memory_limit: 1 << 20, ..Default::default() };
    assert_eq!(ns.assign("kept", 0, share, Revoke::Refuse).unwrap_err().code, Errno::EIO);
    assert!(ns.get("kept").unwrap().devices().is_empty());
    assert_eq!(ns.delete("kept", Revoke::Refuse).unwrap_err().code, Errno::EIO);
    assert!(ns.get("kept").is_ok());
    assert_eq!(ns.rotate_token("kept", None, false).unwrap_err().code, Errno::EIO);
    assert!(!ns.get("kept").unwrap().has_token());
}
