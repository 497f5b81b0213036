//! The Python package's pytest suite (python/tests) against this build's daemon binary.
//! It needs the package installed (`pip install ./python[test]`, as .ci/run does); without
//! it the test prints why it skips.

use std::process::Command;

#[test]
fn python_suite_passes() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let probe = Command::new(&python).args(["-c", "import accel._accel, numpy, pytest"]).current_dir("/").output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr);
            println!("skipped: the accel Python package, numpy or pytest is not installed: {}", why.trim());
            return;
        }
        Err(e) => {
            println!("skipped: no {python}: {e}");
            return;
        }
    }
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "python/tests"])
        .current_dir(&root)
        .env("ACCEL_BIN", env!("CARGO_BIN_EXE_accel"))
        .env_remove("ACCEL_SOCKET")
        .env_remove("ACCEL_NS_TOKEN")
        .output()
        .expect("running pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "pytest failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
