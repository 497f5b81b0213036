//! `accel ras …`: counters and health, live events, injection (test devices), clear, thresholds.

use std::path::Path;

use accel::ras::{Ras, RasAttr, RasCmd, RasMsg};
use accel_uapi::{Health, Severity};
use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};

/// What `accel ras` does.
#[derive(Subcommand)]
pub enum RasCommand {
    /// Error counters and health of every node (the default).
    Show,
    /// Reporters: error and recovery counts, grace period, auto-recover (devlink health style).
    Health,
    /// Print error events as they happen (one line each; gaps in seq mean missed events).
    Watch,
    /// Inject errors into a test device's counter (root or the daemon's user).
    Inject {
        #[command(flatten)]
        at: CounterRef,
        /// Errors to inject.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Set a counter to zero.
    Clear {
        #[command(flatten)]
        at: CounterRef,
    },
    /// Set a counter's threshold (0 removes it).
    Threshold {
        #[command(flatten)]
        at: CounterRef,
        /// The threshold.
        value: u32,
    },
}

/// A counter named by device, node and error.
#[derive(Args)]
pub struct CounterRef {
    /// Device minor (N of accelN).
    #[arg(long, default_value_t = 0)]
    device: u32,
    /// Node (block) name, e.g. memory.
    #[arg(long)]
    node: String,
    /// Error counter name, e.g. ecc-corrected.
    #[arg(long)]
    error: String,
}

fn node_id(m: &RasMsg) -> u32 {
    m.node_id().unwrap_or(0)
}

fn health_name(i: u32) -> &'static str {
    Health::ALL.get(i as usize).map_or("?", |h| h.name())
}

struct Node {
    id: u32,
    device: String,
    name: String,
    health: u32,
}

fn nodes(ras: &mut Ras) -> Result<Vec<Node>> {
    Ok(ras
        .request(RasMsg::new(RasCmd::ListNodes, vec![RasAttr::AccelExt]), true)?
        .iter()
        .map(|m| Node {
            id: node_id(m),
            device: m.device_name().unwrap_or_default(),
            name: m.node_name().unwrap_or_default(),
            health: m.node_health().unwrap_or(0),
        })
        .collect())
}

fn resolve(ras: &mut Ras, at: &CounterRef) -> Result<(u32, u32)> {
    let device = format!("accel{}", at.device);
    let node = nodes(ras)?
        .into_iter()
        .find(|n| n.device == device && n.name == at.node)
        .ok_or_else(|| anyhow!("{device} has no RAS node {:?}", at.node))?;
    let counters = ras.request(RasMsg::new(RasCmd::GetErrorCounter, vec![RasAttr::NodeId(node.id)]), true)?;
    let error = counters
        .iter()
        .find(|c| c.error_name().unwrap_or_default() == at.error)
        .ok_or_else(|| anyhow!("{device} {} has no error counter {:?}", at.node, at.error))?;
    Ok((node.id, error.error_id().unwrap_or(0)))
}

fn show(ras: &mut Ras) -> Result<()> {
    println!(
        "{:<8} {:<13} {:<18} {:<20} {:<12} {:>12} {:>10}",
        "DEVICE", "NODE", "HEALTH", "ERROR", "SEVERITY", "COUNT", "THRESHOLD"
    );
    for n in nodes(ras)? {
        let get = RasMsg::new(RasCmd::GetErrorCounter, vec![RasAttr::NodeId(n.id), RasAttr::AccelExt]);
        for c in ras.request(get, true)? {
            let sev = c.severity().unwrap_or(0);
            let ids = vec![RasAttr::NodeId(n.id), RasAttr::ErrorId(c.error_id().unwrap_or(0))];
            let threshold = ras.request(RasMsg::new(RasCmd::GetErrorThreshold, ids), false)?;
            println!(
                "{:<8} {:<13} {:<18} {:<20} {:<12} {:>12} {:>10}",
                n.device,
                n.name,
                health_name(n.health),
                c.error_name().unwrap_or_default(),
                Severity::ALL.get(sev as usize).map_or("?", |s| s.name()),
                c.value().unwrap_or(0),
                threshold.first().and_then(RasMsg::threshold).unwrap_or(0),
            );
        }
    }
    Ok(())
}

fn health(ras: &mut Ras) -> Result<()> {
    let names: Vec<Node> = nodes(ras)?;
    println!(
        "{:<8} {:<13} {:<18} {:<8} {:>7} {:>9} {:>9} {:>5}",
        "DEVICE", "NODE", "HEALTH", "STATE", "ERRORS", "RECOVERED", "GRACE-MS", "AUTO"
    );
    for r in ras.request(RasMsg::new(RasCmd::GetHealth, vec![]), true)? {
        let id = node_id(&r);
        let n = names.iter().find(|n| n.id == id);
        println!(
            "{:<8} {:<13} {:<18} {:<8} {:>7} {:>9} {:>9} {:>5}",
            n.map_or("?", |n| n.device.as_str()),
            n.map_or("?", |n| n.name.as_str()),
            health_name(r.node_health().unwrap_or(0)),
            if r.healthy().unwrap_or(0) != 0 { "healthy" } else { "error" },
            r.error_count().unwrap_or(0),
            r.recovery_count().unwrap_or(0),
            r.grace_period_ms().unwrap_or(0),
            r.auto_recover().unwrap_or(0) != 0,
        );
    }
    Ok(())
}

fn watch(socket: &Path) -> Result<()> {
    let mut ras = Ras::connect(socket)?;
    let names = nodes(&mut ras)?;
    let mut events = ras.subscribe_ext()?;
    let mut last_seq = None;
    loop {
        let e = match events.next_event() {
            Ok(e) => e,
            // The daemon dropped events while this terminal was not keeping up: say so and go
            // on (the gap in seq says which).
            Err(e) if e.code == accel::Errno::ENOBUFS => {
                println!("# {}", e.message);
                continue;
            }
            Err(e) => return Err(e).context("event stream ended"),
        };
        let seq = e.event_seq().unwrap_or(0);
        if let Some(last) = last_seq {
            if seq != last + 1 {
                println!("# missed events {}..{}: run `accel ras` to resync", last + 1, seq.saturating_sub(1));
            }
        }
        last_seq = Some(seq);
        let id = node_id(&e);
        let n = names.iter().find(|n| n.id == id);
        let kind = ["error", "cleared", "threshold", "recovered"]
            .get(e.event_kind().unwrap_or(0) as usize)
            .copied()
            .unwrap_or("?");
        println!(
            "seq={seq} t={}ns {} {} {} {kind} +{} value={}",
            e.event_timestamp().unwrap_or(0),
            n.map_or("?", |n| n.device.as_str()),
            n.map_or("?", |n| n.name.as_str()),
            e.error_name().unwrap_or_default(),
            e.event_delta().unwrap_or(0),
            e.value().unwrap_or(0),
        );
    }
}

pub fn run(socket: &Path, cmd: Option<RasCommand>) -> Result<()> {
    let connect = || Ras::connect(socket).map_err(anyhow::Error::from);
    match cmd.unwrap_or(RasCommand::Show) {
        RasCommand::Show => show(&mut connect()?),
        RasCommand::Health => health(&mut connect()?),
        RasCommand::Watch => watch(socket),
        RasCommand::Inject { at, count } => {
            let mut ras = connect()?;
            let (n, e) = resolve(&mut ras, &at)?;
            ras.request(
                RasMsg::new(RasCmd::InjectError, vec![RasAttr::NodeId(n), RasAttr::ErrorId(e), RasAttr::Count(count)]),
                false,
            )?;
            println!("injected {count} × {} into accel{} {}", at.error, at.device, at.node);
            Ok(())
        }
        RasCommand::Clear { at } => {
            let mut ras = connect()?;
            let (n, e) = resolve(&mut ras, &at)?;
            ras.request(RasMsg::new(RasCmd::ClearErrorCounter, vec![RasAttr::NodeId(n), RasAttr::ErrorId(e)]), false)?;
            Ok(())
        }
        RasCommand::Threshold { at, value } => {
            let mut ras = connect()?;
            let (n, e) = resolve(&mut ras, &at)?;
            let attrs = vec![RasAttr::NodeId(n), RasAttr::ErrorId(e), RasAttr::ErrorThreshold(value)];
            ras.request(RasMsg::new(RasCmd::SetErrorThreshold, attrs), false)?;
            Ok(())
        }
    }
}
