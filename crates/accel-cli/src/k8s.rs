//! `accel k8s resource-slice`: the node's devices as a Kubernetes DRA `ResourceSlice`
//! (`resource.k8s.io/v1beta1`), the document a DRA driver publishes so the scheduler can
//! place claims: one device per accel device with its driver, model, vendor, engines, regions
//! and health as attributes, and its memory as capacity. Written to a file or stdout, for a
//! DRA plugin (or `kubectl apply`) to publish.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

/// The DRA driver name accel publishes under (a DNS subdomain).
pub const DRIVER: &str = "accel.dev";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSlice {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: SliceSpec,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SliceSpec {
    driver: &'static str,
    node_name: String,
    pool: Pool,
    devices: Vec<Device>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Pool {
    name: String,
    generation: u64,
    resource_slice_count: u32,
}

#[derive(Serialize)]
struct Device {
    name: String,
    basic: Basic,
}

#[derive(Serialize)]
struct Basic {
    attributes: BTreeMap<String, Attribute>,
    capacity: BTreeMap<String, Quantity>,
}

/// One attribute value: exactly one of the fields, as the API requires.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum Attribute {
    String(String),
    Int(i64),
    Bool(bool),
}

#[derive(Serialize)]
struct Quantity {
    value: String,
}

/// A DNS-1123 label from free text (lower case, `-` for anything else, at most 63 bytes).
fn label(s: &str) -> String {
    let l: String = s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    l.trim_matches('-').chars().take(63).collect::<String>().trim_end_matches('-').to_string()
}

/// The slice for `node`, from the daemon's devices (an admin's view: every device).
pub fn resource_slice(socket: &Path, node: &str, generation: u64) -> Result<String> {
    if label(node) != node {
        bail!("node name {node:?} is not a DNS label");
    }
    let mut conn = accel::Connection::connect_with_token(socket, None)?;
    let devices = conn.list_devices()?;
    let mut out = Vec::new();
    for d in devices {
        let mut attributes = BTreeMap::new();
        attributes.insert("driver".into(), Attribute::String(d.driver.clone()));
        attributes.insert("model".into(), Attribute::String(d.name.clone()));
        attributes.insert("vendor".into(), Attribute::String(d.vendor.clone()));
        attributes.insert("category".into(), Attribute::String(d.category.name().into()));
        attributes.insert("computeUnits".into(), Attribute::Int(i64::from(d.compute_units)));
        attributes.insert("engines".into(), Attribute::Int(d.engines.len() as i64));
        attributes.insert("programFormats".into(), Attribute::String(d.program_formats.join(",")));
        attributes.insert("wedged".into(), Attribute::Bool(d.wedged));
        let mut capacity = BTreeMap::new();
        for r in &d.regions {
            capacity.insert(format!("memory-{}", label(&r.name)), Quantity { value: r.size.to_string() });
        }
        out.push(Device { name: format!("accel{}", d.minor), basic: Basic { attributes, capacity } });
    }
    let slice = ResourceSlice {
        api_version: "resource.k8s.io/v1beta1",
        kind: "ResourceSlice",
        metadata: Metadata { name: format!("{node}-{}", label(DRIVER)) },
        spec: SliceSpec {
            driver: DRIVER,
            node_name: node.into(),
            pool: Pool { name: node.into(), generation, resource_slice_count: 1 },
            devices: out,
        },
    };
    Ok(serde_json::to_string_pretty(&slice)?)
}

/// Writes the slice to `output`, or stdout for `-`.
pub fn write(socket: &Path, node: &str, generation: u64, output: &Path) -> Result<()> {
    let json = resource_slice(socket, node, generation)?;
    if output == Path::new("-") {
        println!("{json}");
    } else {
        let mut f = std::fs::File::create(output)?;
        f.write_all(json.as_bytes())?;
        f.write_all(b"\n")?;
    }
    Ok(())
}
