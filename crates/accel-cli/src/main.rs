//! `accel`: run the daemon, inspect devices, run the demo and the benchmarks.

mod bench;
mod cdi;
mod demo;
mod device_plugin;
mod dra_plugin;
mod k8s;
mod ns;
mod ras;
mod spawn;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "accel", version, about = "accel: userspace accelerator subsystem")]
struct Cli {
    /// Daemon socket (default: $ACCEL_SOCKET, else $XDG_RUNTIME_DIR/accel/accel.sock, else /run/accel/accel.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Log lines as text (plain when stderr is not a terminal) or JSON objects for log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `accel cdi …`.
#[derive(Subcommand)]
enum CdiCommand {
    /// Write the spec (admin): each namespace becomes `accel.dev/device=NAME`, giving a
    /// container the daemon's socket and a fresh token of that namespace.
    Generate {
        /// Namespaces to include (default: every namespace with devices). Repeatable.
        #[arg(long = "namespace")]
        namespaces: Vec<String>,
        /// Where to write the spec (mode 0600: it holds tokens).
        #[arg(long, default_value = "/etc/cdi/accel.json")]
        output: PathBuf,
    },
}

/// `accel k8s …`.
#[derive(Subcommand)]
enum K8sCommand {
    /// Write the node's devices as a DRA ResourceSlice (resource.k8s.io/v1beta1, driver
    /// accel.dev): attributes (driver, model, vendor, engines, …) and memory capacity per region.
    ResourceSlice {
        /// The Kubernetes node these devices are on.
        #[arg(long)]
        node: String,
        /// The pool generation (raise it when the devices change).
        #[arg(long, default_value_t = 1)]
        generation: u64,
        /// Where to write it (`-`: stdout).
        #[arg(long, default_value = "-")]
        output: PathBuf,
    },
    /// Serve the kubelet device plugin API (v1beta1): one resource `accel.dev/<driver>` per
    /// driver on the node, health from RAS, allocations as namespaces (CDI devices and env).
    DevicePlugin {
        /// The kubelet's device plugin directory.
        #[arg(long, default_value = "/var/lib/kubelet/device-plugins")]
        plugin_dir: PathBuf,
        /// Where the CDI spec of allocations is written.
        #[arg(long, default_value = "/var/run/cdi")]
        cdi_dir: PathBuf,
        /// How often device health is re-read, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        poll_ms: u64,
        /// Also advertise a driver's devices in N shares each, `DRIVER=N` (repeatable):
        /// resource `accel.dev/<driver>-share`, each share 1/N of memory and compute weight.
        #[arg(long = "share", value_parser = parse_share)]
        shares: Vec<(String, u32)>,
    },
    /// Serve the kubelet DRA plugin API (v1beta1): NodePrepareResources makes a namespace of
    /// the claim's devices (memory limit and weight from its `accel.dev` parameters) and
    /// returns its CDI device; NodeUnprepareResources deletes it and evicts its clients.
    DraPlugin {
        /// This node's name (the pool of its devices in the ResourceSlice).
        #[arg(long)]
        node: String,
        /// The API server, `http://host:port` (e.g. a `kubectl proxy` sidecar).
        #[arg(long, default_value = "http://127.0.0.1:8001")]
        kube_api: String,
        /// A file holding a bearer token for the API server.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Where the DRA socket goes.
        #[arg(long, default_value = "/var/lib/kubelet/plugins/accel.dev")]
        plugin_dir: PathBuf,
        /// The kubelet's plugin watcher directory.
        #[arg(long, default_value = "/var/lib/kubelet/plugins_registry")]
        registry_dir: PathBuf,
        /// Where the CDI spec of prepared claims is written.
        #[arg(long, default_value = "/var/run/cdi")]
        cdi_dir: PathBuf,
        /// Where prepared claims are remembered across restarts.
        #[arg(long, default_value = "/var/lib/accel/dra")]
        state_dir: PathBuf,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per event.
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: the process that owns a cuda device's context, started by the daemon with
    /// its channels at descriptors 3–5.
    #[command(hide = true)]
    CudaWorker {
        /// The GPU's CUDA ordinal.
        ordinal: usize,
        /// Compute streams (one channel each).
        #[arg(default_value_t = 1)]
        streams: usize,
    },
    /// Run the daemon in the foreground.
    Daemon {
        /// Device to register, `DRIVER[:INDEX][:CATEGORY]` (cpu, testdev, testdev-async, vulkan, cuda — every such device, or `vulkan:N`/`cuda:N`; shared, exclusive, oneshot). Repeatable.
        #[arg(long = "device", default_values = ["cpu"])]
        devices: Vec<String>,
        /// Default job timeout in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        job_timeout_ms: u64,
        /// Hung jobs after which a queue is banned.
        #[arg(long, default_value_t = 2)]
        hang_limit: u32,
        /// Where persistent state (the RAS log) lives (default: $XDG_STATE_HOME/accel, else /var/lib/accel).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Push the same metrics to an OpenTelemetry collector over OTLP/HTTP (protobuf), e.g.
        /// http://127.0.0.1:4318/v1/metrics; without it, OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT and
        /// the other OTEL_* variables configure it as for any OpenTelemetry SDK.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// TOML config file (namespace placement rules).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Device namespaces: create, assign devices or shares, list, delete (root or the daemon's user).
    Ns {
        #[command(subcommand)]
        cmd: ns::NsCommand,
    },
    /// RAS: error counters and health; subcommands watch events, inject (test devices), clear, set thresholds.
    Ras {
        #[command(subcommand)]
        cmd: Option<ras::RasCommand>,
    },
    /// Container Device Interface: write a CDI spec with one device per namespace.
    Cdi {
        #[command(subcommand)]
        cmd: CdiCommand,
    },
    /// Kubernetes: documents for dynamic resource allocation.
    K8s {
        #[command(subcommand)]
        cmd: K8sCommand,
    },
    /// List devices.
    List {
        /// Print JSON-like debug output instead of a table.
        #[arg(long)]
        verbose: bool,
    },
    /// Show one device.
    Info {
        /// Minor number N of accelN.
        minor: u32,
    },
    /// Show live object counts and per-client usage.
    Stats,
    /// Live per-device and per-client usage, refreshed like top (engine time, jobs, memory).
    Top {
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many refreshes (0: until interrupted).
        #[arg(short = 'n', long, default_value_t = 0)]
        iterations: u64,
    },
    /// Start a daemon with the cpu device, run a GEMM through it and verify the result.
    Demo {
        /// Matrix size n (n×n GEMM).
        #[arg(long, default_value_t = 512)]
        n: usize,
    },
    /// Benchmarks; each prints one JSON object per line.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> std::process::ExitCode {
    // Like other command-line tools: a closed pipe (`accel ras | head`) ends the process
    // quietly instead of failing the next write. Rust sets SIGPIPE to ignored before main.
    // SAFETY: restoring a signal's default disposition at start-up, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, like other system tools; the chain of causes is joined with ": ".
            eprintln!("accel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `DRIVER=N` of `accel k8s device-plugin --share`.
fn parse_share(s: &str) -> Result<(String, u32), String> {
    let (driver, n) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected DRIVER=N"))?;
    let n: u32 = n.parse().map_err(|_| format!("{s:?}: N must be a number"))?;
    if !(2..=64).contains(&n) {
        return Err(format!("{s:?}: N must be 2 to 64"));
    }
    Ok((driver.to_string(), n))
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    // naga (the vulkan driver's SPIR-V reader) narrates every module it reads: errors only.
    let spec = std::env::var("ACCEL_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("naga") { spec } else { format!("{spec},naga=error") };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| "info,naga=error".into());
    // Colours only on a terminal: journald and log files get plain lines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let socket = cli.socket.unwrap_or_else(accel::default_socket_path);
    match cli.cmd {
        Cmd::Daemon { devices, job_timeout_ms, hang_limit, state_dir, metrics, otlp_endpoint, config } => {
            let telemetry = Telemetry {
                metrics,
                otlp: acceld::otlp::Config::from_env(otlp_endpoint.as_deref()).map_err(anyhow::Error::msg)?,
            };
            run_daemon(socket, &devices, job_timeout_ms, hang_limit, state_dir, telemetry, config)
        }
        Cmd::Ns { cmd } => ns::run(&socket, cmd),
        Cmd::Cdi { cmd: CdiCommand::Generate { namespaces, output } } => cdi::generate(&socket, &namespaces, &output),
        Cmd::K8s { cmd: K8sCommand::ResourceSlice { node, generation, output } } => {
            k8s::write(&socket, &node, generation, &output)
        }
        Cmd::K8s {
            cmd: K8sCommand::DraPlugin { node, kube_api, token_file, plugin_dir, registry_dir, cdi_dir, state_dir },
        } => dra_plugin::run(dra_plugin::Options {
            socket,
            node,
            plugin_dir,
            registry_dir,
            cdi_dir,
            state_dir,
            kube_api,
            token_file,
        }),
        Cmd::K8s { cmd: K8sCommand::DevicePlugin { plugin_dir, cdi_dir, poll_ms, shares } } => {
            device_plugin::run(device_plugin::Options {
                socket,
                plugin_dir,
                cdi_dir,
                poll: std::time::Duration::from_millis(poll_ms.max(100)),
                shares: shares.into_iter().collect(),
            })
        }
        Cmd::Ras { cmd } => ras::run(&socket, cmd),
        Cmd::List { verbose } => list(&socket, verbose),
        Cmd::Info { minor } => info(&socket, minor),
        Cmd::Stats => stats(&socket),
        Cmd::Top { interval_ms, iterations } => top(&socket, interval_ms.max(100), iterations),
        Cmd::Demo { n } => demo::run(n),
        Cmd::Bench { which } => bench::run(which),
        Cmd::CudaWorker { ordinal, streams } => std::process::exit(accel_driver_cuda::worker::main(ordinal, streams)),
    }
}

fn default_state_dir() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(d) => PathBuf::from(d).join("accel"),
        None => PathBuf::from("/var/lib/accel"),
    }
}

/// Where the daemon's metrics go: served for Prometheus, pushed over OTLP.
struct Telemetry {
    metrics: Option<std::net::SocketAddr>,
    otlp: Option<acceld::otlp::Config>,
}

fn run_daemon(
    socket: PathBuf,
    specs: &[String],
    job_timeout_ms: u64,
    hang_limit: u32,
    state_dir: Option<PathBuf>,
    telemetry: Telemetry,
    config_path: Option<PathBuf>,
) -> Result<()> {
    let config = config_path.as_deref().map(acceld::Config::load).transpose()?.unwrap_or_default();
    let mut devices = Vec::new();
    for spec in specs {
        for mut cfg in acceld::parse_device_specs(spec)? {
            cfg.job_timeout = std::time::Duration::from_millis(job_timeout_ms.max(1));
            cfg.hang_limit = hang_limit.max(1);
            devices.push(cfg);
        }
    }
    let state_dir = state_dir.unwrap_or_else(default_state_dir);
    // Socket activation: systemd bound the socket (accel.socket) and passes it; else bind it.
    let activated = acceld::systemd::listen_fd().context("socket activation")?;
    let bound_here = activated.is_none();
    let daemon = match activated {
        Some(listener) => acceld::Daemon::adopt(listener, &socket, devices, Some(&state_dir), config)?,
        None => acceld::Daemon::bind_with_config(&socket, devices, Some(&state_dir), config)?,
    };
    let daemon = std::sync::Arc::new(daemon);
    tracing::info!("state in {}", state_dir.display());
    tracing::debug!("descriptor budget {}", daemon.subsystem().limits().fds_total);
    if let Some(addr) = telemetry.metrics {
        let bound = acceld::metrics::serve(daemon.subsystem().clone(), addr)?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    if let Some(otlp) = telemetry.otlp {
        tracing::info!("OTLP metrics to {} every {:?}", otlp.url, otlp.interval);
        acceld::otlp::start(daemon.subsystem().clone(), otlp)?;
    }
    let (reloading, stopping) = (daemon.clone(), daemon.clone());
    let reload = move || match &config_path {
        Some(path) => {
            match acceld::Config::load(path).map_err(anyhow::Error::from).and_then(|c| Ok(reloading.reload(c)?)) {
                Ok(()) => tracing::info!("reloaded {}", path.display()),
                Err(e) => tracing::error!("reload of {} failed, keeping the old rules: {e:#}", path.display()),
            }
        }
        None => tracing::info!("SIGHUP: no config file to reload"),
    };
    // RAS events a driver's monitor reported that are not yet on disk are written first.
    let stop = move || {
        if !stopping.subsystem().ras().flush(std::time::Duration::from_secs(2)) {
            tracing::warn!("the RAS log was not flushed within 2 s; recent events may be lost");
        }
    };
    acceld::handle_signals(bound_here.then(|| socket.clone()), reload, stop)?;
    acceld::start_watchdog()?;
    for d in daemon.subsystem().list_devices() {
        tracing::info!("accel{}: {} ({}), {}", d.minor, d.driver, d.name, d.category.name());
    }
    tracing::info!("listening on {}{}", socket.display(), if bound_here { "" } else { " (socket activation)" });
    acceld::systemd::notify("READY=1");
    daemon.serve().context("accept loop failed")
}

fn connect(socket: &std::path::Path) -> Result<accel::Connection> {
    Ok(accel::Connection::connect(socket)?)
}

fn list(socket: &std::path::Path, verbose: bool) -> Result<()> {
    let devices = connect(socket)?.list_devices()?;
    if verbose {
        for d in &devices {
            println!("{d:#?}");
        }
        return Ok(());
    }
    println!("{:<8} {:<8} {:<10} {:>8} {:>12}  NAME", "DEVICE", "DRIVER", "CATEGORY", "CLIENTS", "MEMORY");
    for d in devices {
        println!(
            "accel{:<3} {:<8} {:<10} {:>8} {:>9} MiB  {}",
            d.minor,
            d.driver,
            d.category.name(),
            d.open_clients,
            d.memory_bytes >> 20,
            d.name
        );
    }
    Ok(())
}

fn info(socket: &std::path::Path, minor: u32) -> Result<()> {
    let d = connect(socket)?.device_info(minor)?;
    let names = |v: Vec<&str>| v.join(", ");
    println!("accel{}", d.minor);
    println!("  driver:      {}", d.driver);
    println!("  name:        {}", d.name);
    println!("  vendor:      {}", d.vendor);
    println!(
        "  category:    {} (supports {})",
        d.category.name(),
        names(d.supported_categories.iter().map(|c| c.name()).collect())
    );
    println!("  ops:         {}", names(d.ops.iter().map(|o| o.name()).collect()));
    println!("  memory:      {} MiB", d.memory_bytes >> 20);
    println!("  compute:     {} units", d.compute_units);
    let engines: Vec<String> = d.engines.iter().map(|e| format!("{} ({} credits)", e.name, e.credits)).collect();
    println!("  engines:     {}", engines.join(", "));
    for r in &d.regions {
        let flags: Vec<&str> = [(r.mappable, "mappable"), (r.exportable, "exportable"), (r.coherent, "coherent")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
        println!(
            "  region {}:    {} ({:?}): {} of {} MiB used{}",
            r.id,
            r.name,
            r.kind,
            r.used >> 20,
            r.size >> 20,
            if flags.is_empty() { String::new() } else { format!(", {}", flags.join(", ")) }
        );
    }
    if !d.program_formats.is_empty() {
        println!("  programs:    {}", d.program_formats.join(", "));
    }
    println!("  queued:      {} jobs", d.queued_jobs);
    println!(
        "  resets:      {}{}",
        d.resets,
        if d.wedged { "  (WEDGED: a reset failed; device refuses work)" } else { "" }
    );
    println!("  clients:     {}", d.open_clients);
    if let Some(owner) = d.exclusive_owner {
        println!("  held by:     client {owner}");
    }
    Ok(())
}

fn stats(socket: &std::path::Path) -> Result<()> {
    let mut conn = connect(socket)?;
    let s = conn.stats()?;
    println!(
        "clients {}  buffers {} ({} bytes)  fences {}  syncobjs {}  queues {}  jobs {}  programs {}",
        s.clients, s.buffers, s.buffer_bytes, s.fences, s.syncobjs, s.queues, s.jobs, s.programs
    );
    println!(
        "{:>6} {:>8} {:<16} {:>7} {:>14} {:>10} {:>12} {:>12}",
        "CLIENT", "PID", "NAME", "DEVICE", "ENGINE-NS", "JOBS", "HOST-MEM", "DEVICE-MEM"
    );
    for c in conn.clients()? {
        let dev = c.device.map_or("-".to_string(), |d| format!("accel{d}"));
        println!(
            "{:>6} {:>8} {:<16} {:>7} {:>14} {:>10} {:>12} {:>12}",
            c.client_id, c.pid, c.name, dev, c.engine_ns, c.jobs_completed, c.memory_bytes, c.device_memory_bytes
        );
    }
    Ok(())
}

fn top(socket: &std::path::Path, interval_ms: u64, iterations: u64) -> Result<()> {
    use std::collections::HashMap;
    let mut conn = connect(socket)?;
    let interval = std::time::Duration::from_millis(interval_ms);
    let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut last_t = std::time::Instant::now();
    let mut n = 0;
    loop {
        let devices = conn.list_devices()?;
        let clients = conn.clients()?;
        let dt = last_t.elapsed().as_secs_f64().max(1e-3);
        last_t = std::time::Instant::now();
        if iterations != 1 {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "{:<8} {:<8} {:<10} {:>7} {:>7} {:>7} {:>6}",
            "DEVICE", "DRIVER", "CATEGORY", "CLIENTS", "QUEUED", "RESETS", "STATE"
        );
        for d in &devices {
            let state = if d.wedged { "WEDGED" } else { "ok" };
            println!(
                "accel{:<3} {:<8} {:<10} {:>7} {:>7} {:>7} {:>6}",
                d.minor,
                d.driver,
                d.category.name(),
                d.open_clients,
                d.queued_jobs,
                d.resets,
                state
            );
        }
        println!();
        println!(
            "{:>6} {:>8} {:<16} {:>7} {:>7} {:>9} {:>12} {:>12}",
            "CLIENT", "PID", "NAME", "DEVICE", "ENGINE%", "JOBS/S", "HOST-MEM", "DEVICE-MEM"
        );
        let mut rows: Vec<_> = clients
            .iter()
            .map(|c| {
                let (ns0, jobs0) = last.get(&c.client_id).copied().unwrap_or((c.engine_ns, c.jobs_completed));
                let util = (c.engine_ns - ns0) as f64 / 1e9 / dt * 100.0;
                let rate = (c.jobs_completed - jobs0) as f64 / dt;
                (util, rate, c)
            })
            .collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (util, rate, c) in rows {
            let dev = c.device.map_or("-".to_string(), |d| format!("accel{d}"));
            println!(
                "{:>6} {:>8} {:<16} {:>7} {:>6.1}% {:>9.0} {:>12} {:>12}",
                c.client_id, c.pid, c.name, dev, util, rate, c.memory_bytes, c.device_memory_bytes
            );
        }
        last = clients.iter().map(|c| (c.client_id, (c.engine_ns, c.jobs_completed))).collect();
        n += 1;
        if iterations != 0 && n >= iterations {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}
