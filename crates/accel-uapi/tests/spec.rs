//! The YNL spec in `specs/drm-ras.yaml` must describe exactly what the encoder emits, be a
//! valid spec by the kernel's own schema (`specs/kernel/genetlink-legacy.yaml`), and keep every
//! id the kernel's spec (`specs/kernel/drm_ras.yaml`) defines.

use accel_uapi::ras::{AttrSet, ATTRIBUTES, COMMANDS, FAMILY_NAME, MCGRP_ERROR_REPORT};
use accel_uapi::{Health, Severity};
use serde_yaml_ng::Value;

fn load(rel: &str) -> Value {
    let path = format!("{}/../../specs/{rel}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("spec file")).expect("valid YAML")
}

fn spec() -> Value {
    load("drm-ras.yaml")
}

/// (name, id) of each entry of a YNL list, numbered as YNL numbers them: from 1, each the
/// previous plus one unless it gives its own `value`.
fn numbered(list: &Value) -> Vec<(String, u64, Value)> {
    let mut next = 1;
    let mut out = Vec::new();
    for e in list.as_sequence().unwrap() {
        let id = e["value"].as_u64().unwrap_or(next);
        next = id + 1;
        out.push((e["name"].as_str().unwrap().to_string(), id, e.clone()));
    }
    out
}

fn names(v: &Value) -> Vec<String> {
    v.as_sequence().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect()
}

fn set_of(name: &str) -> AttrSet {
    AttrSet::ALL.into_iter().find(|s| s.name() == name).expect("known set")
}

#[test]
fn family_name_and_groups_match() {
    let spec = spec();
    assert_eq!(spec["name"].as_str(), Some(FAMILY_NAME));
    assert_eq!(spec["protocol"].as_str(), Some("genetlink"));
    let groups: Vec<&str> =
        spec["mcast-groups"]["list"].as_sequence().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(groups, vec![MCGRP_ERROR_REPORT]);
}

#[test]
fn attribute_sets_match_the_encoder_table() {
    let spec = spec();
    let sets = spec["attribute-sets"].as_sequence().unwrap();
    let mut seen = 0;
    for set in sets {
        let which = set_of(set["name"].as_str().unwrap());
        for (name, id, attr) in numbered(&set["attributes"]) {
            let (name, id) = (name.as_str(), id as u16);
            let ty = attr["type"].as_str().unwrap();
            let entry = ATTRIBUTES
                .iter()
                .find(|a| a.0 == which && a.2 == id)
                .unwrap_or_else(|| panic!("{name} ({id}) is not encoded"));
            assert_eq!((entry.1, entry.3.name()), (name, ty), "{} id {id}", which.name());
            seen += 1;
        }
    }
    assert_eq!(seen, ATTRIBUTES.len(), "the encoder has attributes the spec lacks");
}

#[test]
fn operations_match_the_encoder_and_use_their_sets_attributes() {
    let spec = spec();
    let ops = numbered(&spec["operations"]["list"]);
    assert_eq!(ops.len(), COMMANDS.len());
    for (i, (op_name, op_id, op)) in ops.iter().enumerate() {
        let (name, id, set) = COMMANDS[i];
        assert_eq!(op_name, name);
        assert_eq!(*op_id, u64::from(id), "{name}");
        let caps = accel_uapi::ras::RasCmd::from_id(id).unwrap().caps();
        assert_eq!((op["do"].is_mapping(), op["dump"].is_mapping()), (caps.doit, caps.dump), "{name}: do/dump");
        let admin = op["flags"].as_sequence().is_some_and(|f| f.iter().any(|x| x.as_str() == Some("admin-perm")));
        assert_eq!(admin, caps.admin, "{name}: admin-perm");
        assert_eq!(op["attribute-set"].as_str(), Some(set.name()), "{name}");
        for kind in ["do", "dump"] {
            for dir in ["request", "reply"] {
                let attrs = &op[kind][dir]["attributes"];
                if attrs.is_sequence() {
                    for a in names(attrs) {
                        assert!(
                            ATTRIBUTES.iter().any(|x| x.0 == set && x.1 == a),
                            "{name} {kind} {dir}: {a} is not in {}",
                            set.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn enums_match_the_abi() {
    let spec = spec();
    let defs = spec["definitions"].as_sequence().unwrap();
    let entries = |n: &str| names(&defs.iter().find(|d| d["name"].as_str() == Some(n)).unwrap()["entries"]);
    assert_eq!(entries("severity"), Severity::ALL.iter().map(|s| s.name()).collect::<Vec<_>>());
    assert_eq!(entries("health"), Health::ALL.iter().map(|h| h.name()).collect::<Vec<_>>());
    assert_eq!(entries("node-type"), vec!["error-counter"]);
}

#[test]
fn the_spec_is_valid_by_the_kernels_genetlink_schema() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../specs/drm-ras.yaml")).unwrap();
    assert!(text.starts_with("# SPDX-License-Identifier: "), "YNL refuses a spec without an SPDX line");
    let to_json = |v: Value| -> serde_json::Value { serde_json::to_value(v).unwrap() };
    let schema = to_json(load("kernel/genetlink-legacy.yaml"));
    let validator = jsonschema::validator_for(&schema).expect("the kernel's schema compiles");
    for (what, doc) in [("accel's spec", spec()), ("the kernel's own spec", load("kernel/drm_ras.yaml"))] {
        let instance = to_json(doc);
        let errors: Vec<String> =
            validator.iter_errors(&instance).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{what} fails the genetlink-legacy schema:\n{}", errors.join("\n"));
    }
    // The schema is not vacuous: an operation without `doc` is refused.
    let mut broken = to_json(spec());
    broken["operations"]["list"][0].as_object_mut().unwrap().remove("doc");
    assert!(!validator.is_valid(&broken));
}

#[test]
fn every_kernel_id_is_kept() {
    let (ours, kernel) = (spec(), load("kernel/drm_ras.yaml"));
    assert_eq!(kernel["name"], ours["name"]);
    for kset in kernel["attribute-sets"].as_sequence().unwrap() {
        let oset = ours["attribute-sets"].as_sequence().unwrap().iter().find(|s| s["name"] == kset["name"]).unwrap();
        let mine = numbered(&oset["attributes"]);
        for (name, id, attr) in numbered(&kset["attributes"]) {
            let m = mine.iter().find(|m| m.0 == name).unwrap_or_else(|| panic!("{name} is missing"));
            assert_eq!((m.1, &m.2["type"]), (id, &attr["type"]), "{name}");
        }
    }
    let mine = numbered(&ours["operations"]["list"]);
    for (name, id, op) in numbered(&kernel["operations"]["list"]) {
        let m = mine.iter().find(|m| m.0 == name).unwrap_or_else(|| panic!("{name} is missing"));
        assert_eq!(m.1, id, "{name}");
        // The kernel's replies are ours without accel's extensions.
        for kind in ["do", "dump"] {
            let theirs = &op[kind]["reply"]["attributes"];
            if theirs.is_sequence() {
                let base: Vec<String> = names(&m.2[kind]["reply"]["attributes"])
                    .into_iter()
                    .filter(|a| {
                        let set = set_of(m.2["attribute-set"].as_str().unwrap());
                        ATTRIBUTES.iter().any(|x| x.0 == set && x.1 == a && x.2 < accel_uapi::ras::ACCEL_ATTR_BASE)
                    })
                    .collect();
                assert_eq!(base, names(theirs), "{name} {kind} reply");
            }
        }
    }
}
