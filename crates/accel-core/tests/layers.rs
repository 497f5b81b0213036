//! The core is layered: a module may use only modules of lower layers, never its own layer
//! or an upper one, so there are no import cycles. The driver interface is a crate below it
//! (`accel-hal`, layered the same way), so drivers cannot reach clients at all. This test
//! reads every source file of both crates and checks each `crate::` path outside test code
//! against their tables.

use std::path::{Path, PathBuf};

/// accel-hal's layers, bottom first. A module missing here fails the test: place it.
const HAL: &[&[&str]] =
    &[&["error", "handles", "counters", "files", "mem", "turns"], &["fence", "bo"], &["ras"], &["driver"], &["lib"]];

/// accel-core's layers, bottom first; the first holds what it re-exports from accel-hal.
const CORE: &[&[&str]] = &[
    &["bo", "counters", "driver", "fence", "files", "handles", "mem", "ras", "spin"],
    &["credentials", "limits"],
    &["syncobj", "syncfile"],
    &["ops", "program", "sched"],
    &["device"],
    &["ring", "namespace"],
    &["client"],
    &["lib"],
];

/// Items of a crate root every module may use (error helpers).
const ROOT_ITEMS: &[&str] = &["lock", "bail", "Error", "Result", "testing", "Subsystem"];

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_only_use_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut violations = check(&root.join("src"), CORE);
    violations.extend(check(&root.join("../accel-hal/src"), HAL));
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}

#[test]
fn drivers_depend_on_the_hal_not_the_core() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut drivers = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("accel-driver-") {
            continue;
        }
        drivers += 1;
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("accel-hal"), "{name} must build on accel-hal");
        for upper in ["accel-core", "acceld", "accel-cli"] {
            assert!(!manifest.contains(&format!("{upper}.workspace")), "{name} depends on {upper}");
        }
    }
    assert!(drivers >= 3, "found {drivers} driver crates");
}

fn check(src: &Path, layers: &[&[&str]]) -> Vec<String> {
    let layer = |module: &str| layers.iter().position(|l| l.contains(&module));
    let mut all = Vec::new();
    files(src, &mut all);
    let mut violations = Vec::new();
    for file in all {
        if file.file_name().is_some_and(|n| n == "tests.rs" || n == "testing.rs") {
            continue;
        }
        let module = module_of(src, &file);
        let Some(mine) = layer(&module) else {
            violations.push(format!("{}: module {module} is in no layer", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                // Test code comes last in a file: nothing after it is checked, so nothing
                // but tests may follow.
                let rest = text.lines().skip(n + 1);
                if let Some(item) = rest
                    .filter(|l| !l.starts_with(' ') && !l.is_empty())
                    .find(|l| !(l.starts_with('}') || l.contains("mod ") || l.starts_with("#[") || l.starts_with("//")))
                {
                    violations.push(format!("{}: {item:?} follows the test module", file.display()));
                }
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name.is_empty() || ROOT_ITEMS.contains(&name.as_str()) || name == module {
                    continue;
                }
                match layer(&name) {
                    Some(theirs) if theirs < mine => {}
                    Some(_) => violations.push(format!(
                        "{}:{}: {module} (layer {mine}) uses {name}, which is not below it",
                        file.display(),
                        n + 1
                    )),
                    None => violations.push(format!("{}:{}: unknown module {name}", file.display(), n + 1)),
                }
            }
        }
    }
    violations
}
