//! `accel ns …`: device namespaces.

use std::path::Path;

use accel_uapi::{Reply, Request};
use anyhow::{bail, Result};
use clap::Subcommand;

/// What `accel ns` does.
#[derive(Subcommand)]
pub enum NsCommand {
    /// Create a namespace.
    Create {
        /// Name ([A-Za-z0-9._-], up to 64).
        name: String,
        /// Token that places a client in this namespace (clients set ACCEL_NS_TOKEN).
        #[arg(long)]
        token: Option<String>,
    },
    /// Give a namespace a device, or a share of one (run again to change the share).
    Assign {
        /// Namespace.
        name: String,
        /// Device minor as the root namespace numbers it.
        #[arg(long)]
        device: u32,
        /// Memory limit in bytes (0: no limit).
        #[arg(long, default_value_t = 0)]
        memory: u64,
        /// Compute weight (100 = 1×).
        #[arg(long, default_value_t = 100)]
        weight: u32,
        /// Most clients at once (0: no limit).
        #[arg(long, default_value_t = 0)]
        max_clients: u32,
    },
    /// List namespaces with their devices and usage.
    List,
    /// Delete a namespace.
    Delete {
        /// Name.
        name: String,
    },
}

pub fn run(socket: &Path, cmd: NsCommand) -> Result<()> {
    let mut conn = accel::Connection::connect(socket)?;
    let req = match cmd {
        NsCommand::Create { name, token } => Request::NsCreate { name, token },
        NsCommand::Assign { name, device, memory, weight, max_clients } => {
            Request::NsAssign { name, device, memory_limit: memory, weight, max_clients }
        }
        NsCommand::Delete { name } => Request::NsDelete { name },
        NsCommand::List => {
            let Reply::Namespaces(list) = conn.call(&Request::NsList)? else { bail!("unexpected reply") };
            println!(
                "{:<16} {:<6} {:<8} {:>8} {:>14} {:>14} {:>7} {:>8}",
                "NAMESPACE", "TOKEN", "DEVICE", "AS", "MEMORY", "LIMIT", "WEIGHT", "CLIENTS"
            );
            for ns in list {
                if ns.devices.is_empty() {
                    println!("{:<16} {:<6} {:<8}", ns.name, if ns.has_token { "yes" } else { "no" }, "-");
                }
                for (i, d) in ns.devices.iter().enumerate() {
                    let max = if d.max_clients == 0 { "-".to_string() } else { d.max_clients.to_string() };
                    println!(
                        "{:<16} {:<6} {:<8} {:>8} {:>14} {:>14} {:>7} {:>8}",
                        ns.name,
                        if ns.has_token { "yes" } else { "no" },
                        format!("accel{}", d.device),
                        format!("accel{i}"),
                        d.memory_used,
                        if d.memory_limit == 0 { "-".to_string() } else { d.memory_limit.to_string() },
                        d.weight,
                        format!("{}/{max}", d.clients),
                    );
                }
            }
            return Ok(());
        }
    };
    conn.call(&req)?;
    Ok(())
}
