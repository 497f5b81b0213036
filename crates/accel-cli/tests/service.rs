//! Running as a system service: the systemd units verify, socket activation and sd_notify
//! work with a real daemon process, SIGHUP reloads the config, logs are plain or JSON.

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use accel::Connection;

mod common;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_example_config_parses_and_documents_the_defaults() {
    let config = acceld::Config::load(&root().join("dist/accel.toml")).unwrap();
    assert_eq!(config.limits, accel_core::limits::Limits::default());
    assert_eq!(config.connections, acceld::ConnectionLimits::default());
    assert_eq!(config.default_namespace.as_deref(), Some("default"));
}

#[test]
fn systemd_units_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    };
    assert!(out.status.success());
    // The units name /usr/bin/accel; verify them against the binary built here.
    let dir = tempfile::tempdir().unwrap();
    for unit in ["accel.socket", "accel.service"] {
        let text = std::fs::read_to_string(root().join("dist/systemd").join(unit)).unwrap();
        std::fs::write(dir.path().join(unit), text.replace("/usr/bin/accel", env!("CARGO_BIN_EXE_accel"))).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("accel.socket"))
        .arg(dir.path().join("accel.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

/// A datagram socket standing in for systemd's notification socket.
fn notify_socket(dir: &Path) -> (OwnedFd, PathBuf) {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let path = dir.join("notify");
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None).unwrap();
    rustix::net::bind(&sock, &SocketAddrUnix::new(&path).unwrap()).unwrap();
    (sock, path)
}

/// The next notification, within `timeout`.
fn next_notification(sock: &OwnedFd, timeout: Duration) -> Option<String> {
    let mut pfd = [rustix::event::PollFd::new(sock, rustix::event::PollFlags::IN)];
    let ts = rustix::time::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: 0 };
    if rustix::event::poll(&mut pfd, Some(&ts)).ok()? == 0 {
        return None;
    }
    let mut buf = [0u8; 256];
    let (n, _) = rustix::net::recv(sock, &mut buf, rustix::net::RecvFlags::empty()).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn socket_activation_notify_reload_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("accel.sock");
    // What accel.socket does: bind and listen, then pass the socket as descriptor 3.
    let listener = accel_uapi::transport::socket().unwrap();
    rustix::net::bind(&listener, &rustix::net::SocketAddrUnix::new(&socket).unwrap()).unwrap();
    rustix::net::listen(&listener, 16).unwrap();
    let (notify, notify_path) = notify_socket(dir.path());
    let config = dir.path().join("accel.toml");
    std::fs::write(&config, "admin_groups = []\n").unwrap();
    let raw = listener.as_raw_fd();
    // `sh` execs the daemon in its own process, so `$$` is the daemon's pid: LISTEN_PID.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_accel")])
        .args(["--log-format", "json", "daemon", "--device", "cpu", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("LISTEN_FDS", "1")
        .env_remove("ACCEL_LOG")
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only dup2 / fcntl, which are async-signal-safe; the new
    // descriptor 3 is not close-on-exec, as systemd passes it.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it by hand then.
            let ok = if raw == 3 { libc::fcntl(3, libc::F_SETFD, 0) == 0 } else { libc::dup2(raw, 3) == 3 };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    assert_eq!(next_notification(&notify, Duration::from_secs(10)).as_deref(), Some("READY=1"));
    // The adopted socket serves clients.
    let mut conn = Connection::connect_with_token(&socket, None).unwrap();
    assert_eq!(conn.list_devices().unwrap()[0].driver, "cpu");
    // SIGHUP reloads the config: a broken one is refused and the daemon keeps serving.
    std::fs::write(&config, "default_namespace = \"elsewhere\"\n").unwrap();
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::HUP).unwrap();
    assert_eq!(next_notification(&notify, Duration::from_secs(5)).as_deref(), Some("RELOADING=1"));
    assert_eq!(next_notification(&notify, Duration::from_secs(5)).as_deref(), Some("READY=1"));
    assert!(conn.list_devices().is_ok());
    // SIGTERM: STOPPING=1, and the socket file stays (it is systemd's, not the daemon's).
    rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::TERM).unwrap();
    assert_eq!(next_notification(&notify, Duration::from_secs(5)).as_deref(), Some("STOPPING=1"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every log line is a JSON object (no colours, no text lines).
    let lines: Vec<String> = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok).collect();
    assert!(socket.exists(), "the daemon removed systemd's socket: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("socket activation")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("reload of") && l.contains("failed")), "{lines:?}");
    for l in &lines {
        assert!(l.starts_with('{') && l.ends_with('}') && l.contains("\"level\""), "not a JSON log line: {l}");
    }
}

#[test]
fn logs_are_plain_text_when_stderr_is_not_a_terminal() {
    let out = Command::new(env!("CARGO_BIN_EXE_accel"))
        .args(["daemon", "--device", "nosuch"])
        .env_remove("ACCEL_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains('\u{1b}'), "ANSI escapes in {stderr:?}");
}

#[test]
fn cdi_spec_gives_a_container_its_namespace() {
    let d = common::Daemon::start(&["cpu", "testdev"]);
    common::tenant(&d, "team-a", "tok-a", 1, 0, 0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("accel.json");
    let status = Command::new(env!("CARGO_BIN_EXE_accel"))
        .arg("--socket")
        .arg(d.socket())
        .args(["cdi", "generate", "--output"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600, "it holds tokens");
    let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let errors: Vec<String> = cdi_schema().iter_errors(&spec).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "the spec does not follow CDI's schema: {errors:?}");
    assert_eq!(spec["cdiVersion"], "0.3.0");
    assert_eq!(spec["kind"], "accel.dev/device");
    let devices = spec["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "only namespaces with devices: {spec}");
    assert_eq!(devices[0]["name"], "team-a");
    let edits = &devices[0]["containerEdits"];
    let mount = &edits["mounts"][0];
    assert_eq!(mount["hostPath"], d.socket().to_str().unwrap());
    assert_eq!(mount["containerPath"], "/run/accel/accel.sock");
    // Apply the edits as a runtime would: the mounted socket and the environment.
    let env: Vec<&str> = edits["env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert!(env.contains(&"ACCEL_SOCKET=/run/accel/accel.sock"));
    let token = env.iter().find_map(|e| e.strip_prefix("ACCEL_NS_TOKEN=")).unwrap();
    let mut inside =
        Connection::connect_with_token(Path::new(mount["hostPath"].as_str().unwrap()), Some(token)).unwrap();
    let seen = inside.list_devices().unwrap();
    assert_eq!(seen.iter().map(|d| (d.minor, d.driver.as_str())).collect::<Vec<_>>(), vec![(0, "testdev")]);
}

/// The node's devices as a DRA ResourceSlice: the shape resource.k8s.io/v1beta1 takes (one
/// typed value per attribute, quantities as strings, DNS-label names), every device there.
#[test]
fn resource_slice_describes_the_nodes_devices() {
    let d = common::Daemon::start(&["cpu", "testdev"]);
    let run = |node: &str| {
        Command::new(env!("CARGO_BIN_EXE_accel"))
            .arg("--socket")
            .arg(d.socket())
            .args(["k8s", "resource-slice", "--node", node, "--generation", "3"])
            .output()
            .unwrap()
    };
    let out = run("worker-1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let slice: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (slice["apiVersion"].as_str(), slice["kind"].as_str()),
        (Some("resource.k8s.io/v1beta1"), Some("ResourceSlice"))
    );
    assert_eq!(slice["metadata"]["name"], "worker-1-accel-dev");
    let spec = &slice["spec"];
    assert_eq!((spec["driver"].as_str(), spec["nodeName"].as_str()), (Some("accel.dev"), Some("worker-1")));
    assert_eq!(spec["pool"], serde_json::json!({"name": "worker-1", "generation": 3, "resourceSliceCount": 1}));
    let devices = spec["devices"].as_array().unwrap();
    let names: Vec<&str> = devices.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["accel0", "accel1"]);
    let dns_label = |s: &str| {
        !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    for dev in devices {
        let basic = &dev["basic"];
        for (name, value) in basic["attributes"].as_object().unwrap() {
            let v = value.as_object().unwrap();
            assert_eq!(v.len(), 1, "{name}: exactly one of string/int/bool/version");
            assert!(["string", "int", "bool", "version"].contains(&v.keys().next().unwrap().as_str()));
        }
        for (name, q) in basic["capacity"].as_object().unwrap() {
            assert!(dns_label(name), "capacity name {name}");
            assert!(q["value"].as_str().unwrap().parse::<u64>().unwrap() > 0, "{name}: a quantity string");
        }
    }
    assert_eq!(devices[1]["basic"]["attributes"]["driver"], serde_json::json!({"string": "testdev"}));
    assert!(devices[1]["basic"]["capacity"]["memory-vram"].is_object(), "testdev's vram is capacity");
    // A node name Kubernetes would refuse is refused here.
    let bad = run("Worker_1");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a DNS label"));
}

/// A real container runtime applies the spec: Debian's podman with runc (crun fails here:
/// cgroups are in hybrid mode) and cgroupfs, on an image imported from a rootfs holding
/// busybox and the `accel` binary with its shared libraries (no registry is reachable). The
/// container started with `--device accel.dev/device=team-a` reaches the daemon through the
/// mounted socket and sees only its namespace's device. Skips (saying why) without podman,
/// runc or root, unless `ACCEL_REQUIRE_PODMAN` is set (CI sets it).
#[test]
fn podman_runs_a_container_with_the_cdi_device_in_its_namespace() {
    let required = std::env::var_os("ACCEL_REQUIRE_PODMAN").is_some();
    let skip = |why: &str| {
        assert!(!required, "ACCEL_REQUIRE_PODMAN is set, yet: {why}");
        eprintln!("skipping: {why}");
    };
    let have = |tool: &str| {
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
    };
    if !have("podman") || !have("runc") || !have("busybox") {
        return skip("podman, runc or busybox is not installed (Debian: podman runc busybox-static)");
    }
    if !rustix::process::geteuid().is_root() {
        return skip("rootful podman needs root");
    }
    let d = common::Daemon::start(&["cpu", "testdev"]);
    common::tenant(&d, "team-a", "tok-a", 1, 0, 0);
    let dir = tempfile::tempdir().unwrap();

    // The image: busybox, and accel with the libraries ldd names, at their host paths.
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox =
        String::from_utf8(Command::new("sh").args(["-c", "command -v busybox"]).output().unwrap().stdout).unwrap();
    std::fs::copy(busybox.trim(), rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_accel"), rootfs.join("accel")).unwrap();
    let ldd = String::from_utf8(Command::new("ldd").arg(env!("CARGO_BIN_EXE_accel")).output().unwrap().stdout).unwrap();
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    let tar = dir.path().join("rootfs.tar");
    assert!(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".").status().unwrap().success());
    let image = format!("localhost/accel-cdi-test-{}:latest", std::process::id());
    let podman = |args: &[&str]| {
        Command::new("podman").args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]).args(args).output().unwrap()
    };
    let imported = podman(&["import", tar.to_str().unwrap(), &image]);
    assert!(imported.status.success(), "podman import: {}", String::from_utf8_lossy(&imported.stderr));

    // The spec where podman looks for CDI specs, removed afterwards.
    let spec = PathBuf::from(format!("/var/run/cdi/accel-test-{}.json", std::process::id()));
    std::fs::create_dir_all(spec.parent().unwrap()).unwrap();
    let generated = Command::new(env!("CARGO_BIN_EXE_accel"))
        .arg("--socket")
        .arg(d.socket())
        .args(["cdi", "generate", "--output"])
        .arg(&spec)
        .status()
        .unwrap();
    assert!(generated.success());
    // Lower rlimits than the defaults podman asks for: this container may not raise them.
    let run = podman(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1000:1000",
        "--device",
        "accel.dev/device=team-a",
        &image,
        "/accel",
        "list",
    ]);
    let _ = std::fs::remove_file(&spec);
    let _ = podman(&["rmi", "-f", &image]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "podman run: {}{stdout}", String::from_utf8_lossy(&run.stderr));
    let devices: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(devices.len(), 1, "only the namespace's device: {stdout}");
    assert!(devices[0].starts_with("accel0") && devices[0].contains("testdev"), "{stdout}");
}

/// CDI's JSON schema (specs/cdi/: `schema.json` whose references point into `defs.json`),
/// merged into one document as the CDI project's own validator does.
fn cdi_schema() -> jsonschema::Validator {
    fn local_refs(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::String(r)) = o.get_mut("$ref") {
                    if let Some(def) = r.strip_prefix("defs.json#/definitions/") {
                        *r = format!("#/definitions/{def}");
                    }
                }
                o.values_mut().for_each(local_refs);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(local_refs),
            _ => {}
        }
    }
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(root().join("specs/cdi").join(f)).unwrap()).unwrap()
    };
    let mut schema = read("schema.json");
    local_refs(&mut schema);
    let defs = read("defs.json")["definitions"].clone();
    schema.as_object_mut().unwrap().insert("definitions".into(), defs);
    jsonschema::options().with_draft(jsonschema::Draft::Draft7).build(&schema).unwrap()
}

#[test]
fn the_cdi_schema_rejects_what_runtimes_reject() {
    // The check above could pass vacuously: show the schema refuses a broken spec.
    let bad = serde_json::json!({"cdiVersion": "0.3.0", "kind": "accel.dev/device", "devices": [{"name": "x"}]});
    assert!(!cdi_schema().is_valid(&bad), "a device without containerEdits must be refused");
}

#[test]
fn a_benchmark_cut_short_by_a_closed_pipe_takes_its_daemon_with_it() {
    // `accel bench … | head -1`: the bench dies of SIGPIPE at its next line (the CLI keeps
    // the default action), so nothing of it runs Drop; its daemon must not stay behind.
    let mut bench = Command::new(common::accel_bin())
        .args(["bench", "gemm", "--sizes", "64,512,512,512", "--reps", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(bench.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("\"bench\":\"gemm\""), "{first}");
    let status = bench.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGPIPE));
    let tag = format!("accel-{}-", bench.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&tag)))
    };
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(), "the bench's daemon ({tag}) outlived it");
}
