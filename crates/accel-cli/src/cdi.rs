//! `accel cdi generate`: a Container Device Interface spec with one device per namespace, so
//! a container runtime (`podman run --device accel.dev/device=team-a`) gives a container the
//! daemon's socket and a credential that places it in that namespace.

use std::io::Write;
use std::path::Path;

use accel_uapi::{Reply, Request};
use anyhow::{bail, Context, Result};
use serde::Serialize;

/// The CDI kind of accel devices.
pub const KIND: &str = "accel.dev/device";

/// The lowest CDI version whose features the spec uses: devices with environment
/// variables and mounts (CDI 0.3.0). Older runtimes refuse newer versions.
pub const CDI_VERSION: &str = "0.3.0";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    cdi_version: &'static str,
    kind: &'static str,
    devices: Vec<Device>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Device {
    name: String,
    container_edits: Edits,
}

#[derive(Serialize)]
struct Edits {
    env: Vec<String>,
    mounts: Vec<Mount>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Mount {
    host_path: String,
    container_path: String,
    options: Vec<&'static str>,
}

/// Writes the spec for `names` (every namespace with devices when empty) to `output` (mode
/// 0600: it holds namespace tokens), minting a token per namespace beside its current ones.
pub fn generate(socket: &Path, names: &[String], output: &Path) -> Result<()> {
    let mut conn = accel::Connection::connect_with_token(socket, None)?;
    let Reply::Namespaces(all) = conn.call(&Request::NsList)? else { bail!("unexpected reply to NsList") };
    let chosen: Vec<_> = if names.is_empty() {
        all.into_iter().filter(|n| !n.devices.is_empty()).collect()
    } else {
        let mut out = Vec::new();
        for name in names {
            out.push(all.iter().find(|n| &n.name == name).cloned().with_context(|| format!("no namespace {name:?}"))?);
        }
        out
    };
    let mut shares = Vec::new();
    for ns in chosen {
        let Reply::Token(token) =
            conn.call(&Request::NsToken { name: ns.name.clone(), token: None, keep_old: true })?
        else {
            bail!("unexpected reply to NsToken");
        };
        shares.push((ns.name, token));
    }
    let n = write_spec(socket, &shares, output)?;
    eprintln!("wrote {n} CDI device(s) of kind {KIND} to {}", output.display());
    Ok(())
}

/// Writes a CDI spec with one device per (namespace, token) share to `output` (mode 0600: it
/// holds the tokens); returns how many. Each device mounts the daemon's socket at
/// `/run/accel/accel.sock` and sets `ACCEL_SOCKET` and `ACCEL_NS_TOKEN`.
pub fn write_spec(socket: &Path, shares: &[(String, String)], output: &Path) -> Result<usize> {
    let sock = socket.to_str().context("the socket path is not UTF-8")?;
    let container_sock = "/run/accel/accel.sock";
    let devices: Vec<Device> = shares
        .iter()
        .map(|(name, token)| Device {
            name: name.clone(),
            container_edits: Edits {
                env: vec![format!("ACCEL_SOCKET={container_sock}"), format!("ACCEL_NS_TOKEN={token}")],
                mounts: vec![Mount {
                    host_path: sock.to_string(),
                    container_path: container_sock.to_string(),
                    options: vec!["bind"],
                }],
            },
        })
        .collect();
    let spec = Spec { cdi_version: CDI_VERSION, kind: KIND, devices };
    let json = serde_json::to_string_pretty(&spec)?;
    // Written beside, then renamed: a runtime reading the spec never sees half of it.
    let tmp = output.with_extension("tmp");
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(json.as_bytes())?;
    f.write_all(b"\n")?;
    drop(f);
    std::fs::rename(&tmp, output)?;
    Ok(spec.devices.len())
}
