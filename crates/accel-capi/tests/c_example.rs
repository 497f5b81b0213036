//! libaccel from C, for real: `include/accel.h` is what cbindgen generates now, and
//! `examples/c/demo.c`, compiled with `cc` through the pkg-config file, runs against a
//! real daemon (served from this test process) and checks its own results.

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>, where cargo put libaccel.so and libaccel.a.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

#[test]
fn header_is_what_cbindgen_generates() {
    let config = cbindgen::Config::from_file(crate_dir().join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir().join("src/lib.rs"))
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    let path = crate_dir().join("include/accel.h");
    if std::env::var_os("ACCEL_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).expect("include/accel.h");
    assert!(
        committed == generated,
        "include/accel.h is stale: run ACCEL_BLESS=1 cargo test -p accel-capi --test c_example"
    );
}

#[test]
fn c_example_runs_against_a_real_daemon() {
    let lib = lib_dir();
    // `cargo test` builds no cdylib for integration tests: build libaccel itself, with the
    // same cargo, profile and target directory (the build lock is free while tests run).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "accel-capi", "--lib"]).current_dir(crate_dir());
    if lib.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    if let Some(target) = lib.parent() {
        build.arg("--target-dir").arg(target);
    }
    let built = build.status().expect("running cargo");
    assert!(built.success(), "building libaccel failed");
    let dir = tempfile::tempdir().unwrap();
    // A pkg-config file for this build, from the same template an install uses.
    let pc = std::fs::read_to_string(crate_dir().join("accel.pc.in"))
        .unwrap()
        .replace("@PREFIX@", lib.to_str().unwrap())
        .replace("@LIBDIR@", lib.to_str().unwrap())
        .replace("@INCLUDEDIR@", crate_dir().join("include").to_str().unwrap())
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(dir.path().join("accel.pc"), pc).unwrap();
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "accel"])
        .env("PKG_CONFIG_PATH", dir.path())
        .output()
        .expect("pkg-config is installed");
    assert!(flags.status.success(), "pkg-config: {}", String::from_utf8_lossy(&flags.stderr));
    let flags = String::from_utf8(flags.stdout).unwrap();
    let demo = dir.path().join("demo");
    let cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-D_DEFAULT_SOURCE"])
        .arg(crate_dir().join("../../examples/c/demo.c"))
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lm")
        .arg("-o")
        .arg(&demo)
        .output()
        .expect("cc is installed");
    assert!(cc.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&cc.stderr));

    let socket = dir.path().join("accel.sock");
    let daemon = acceld::Daemon::bind(&socket, vec![acceld::parse_device_spec("cpu").unwrap()]).unwrap();
    let sub = daemon.subsystem().clone();
    std::thread::spawn(move || daemon.serve());
    let out = Command::new(&demo).env("ACCEL_SOCKET", &socket).env_remove("ACCEL_NS_TOKEN").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {}\n{stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("gemm 64x64x64 behind a fill: correct")
            && stdout.contains("gemm bf16 64x64x64: correct to the bit")
            && stdout.contains("syncobjs: out-of-order points, wait-for-submit, a ring sync entry, a sync file")
            && stdout.contains("launch: builtin axpy over 64 floats")
            && stdout.ends_with("demo OK\n"),
        "{stdout}"
    );
    assert!(stdout.contains("errors: EINVAL"), "{stdout}");
    // The C client freed everything it held.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while sub.stats() != Default::default() {
        assert!(std::time::Instant::now() < deadline, "left behind: {:?}", sub.stats());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
