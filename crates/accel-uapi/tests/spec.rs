//! The YNL spec in `specs/drm-ras.yaml` must describe exactly what the encoder emits.

use accel_uapi::ras::{AttrSet, ATTRIBUTES, COMMANDS, FAMILY_NAME, MCGRP_ERROR_REPORT};
use accel_uapi::{Health, Severity};
use serde_yaml_ng::Value;

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../specs/drm-ras.yaml");
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).expect("spec file")).expect("valid YAML")
}

fn names(v: &Value) -> Vec<String> {
    v.as_sequence().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect()
}

fn set_of(name: &str) -> AttrSet {
    [AttrSet::Node, AttrSet::ErrorCounter, AttrSet::Reporter].into_iter().find(|s| s.name() == name).expect("known set")
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
        for (i, attr) in set["attributes"].as_sequence().unwrap().iter().enumerate() {
            // YNL numbers attributes from 1 in order unless a value is given.
            let id = attr["value"].as_u64().unwrap_or(i as u64 + 1) as u16;
            let name = attr["name"].as_str().unwrap();
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
    let ops = spec["operations"]["list"].as_sequence().unwrap();
    assert_eq!(ops.len(), COMMANDS.len());
    for (i, op) in ops.iter().enumerate() {
        let (name, id, set) = COMMANDS[i];
        assert_eq!(op["name"].as_str(), Some(name));
        assert_eq!(op["value"].as_u64().unwrap_or(i as u64 + 1), u64::from(id), "{name}");
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
