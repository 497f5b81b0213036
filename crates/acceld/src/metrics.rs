//! Prometheus / OpenMetrics exposition on `/metrics` (loopback by default).
//!
//! Device metrics are named after the OpenTelemetry hardware semantic conventions, as
//! Prometheus spells them (`hw.errors` → `hw_errors_total{hw_id,hw_type,block,error_type,…}`,
//! `hw.status` → `hw_status{hw_id,hw_state}`, `hw.gpu.memory.usage`, `hw.temperature`, …);
//! accel's own (queues, namespaces, workloads, the RAS log) keep the `accel_` prefix. RAS
//! blocks are labelled `block`, never `node` (Kubernetes' label). Every RAS series exists
//! from the start with value 0: zeros, not blanks, so an alert on a rate works before the
//! first error.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use accel_core::Subsystem;
use accel_uapi::Health;

/// A metric's type.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

/// A sample's value: counts and sizes as integers, measurements as floats.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value {
    Int(u64),
    Float(f64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => v.fmt(f),
            Value::Float(v) => v.fmt(f),
        }
    }
}

macro_rules! int_values {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(v as u64)
            }
        }
    )*};
}
int_values!(u8, u32, u64, usize);

impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(v.max(0) as u64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

/// One family: its samples with their rendered label sets (and, for OTLP, the labels as
/// pairs).
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) help: &'static str,
    samples: Vec<(String, Value)>,
    pub(crate) points: Vec<(Vec<(String, String)>, Value)>,
}

/// The exposition being built: families in registration order. Written by hand because a
/// scrape of 64 devices must stay within a few milliseconds (a registry of label-set hash
/// maps cost four times as much per series).
#[derive(Default)]
pub(crate) struct Exposition {
    pub(crate) families: Vec<Family>,
    /// Keep each sample's labels as pairs (for OTLP) instead of rendering them.
    pairs: bool,
}

fn escape(v: &str, out: &mut String) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `{a="x",b="y"}`, or nothing for no labels.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::with_capacity(16 * pairs.len());
    out.push('{');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape(v, &mut out);
        out.push('"');
    }
    out.push('}');
    out
}

impl Exposition {
    /// Registers a family; returns its index.
    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) -> usize {
        self.families.push(Family { name, kind, help, samples: Vec::new(), points: Vec::new() });
        self.families.len() - 1
    }

    fn sample(&mut self, family: usize, pairs: &[(&str, &str)], value: impl Into<Value>) {
        let f = &mut self.families[family];
        if self.pairs {
            f.points.push((pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), value.into()));
        } else {
            f.samples.push((labels(pairs), value.into()));
        }
    }

    /// OpenMetrics 1.0 (`openmetrics`) or the Prometheus text format 0.0.4: counter samples
    /// are `name_total` in both; the text format names the family after them too, and has
    /// no `# EOF`.
    fn write(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(self.families.iter().map(|f| f.samples.len() * 96 + 128).sum());
        for f in &self.families {
            let (kind, total) = match f.kind {
                Kind::Counter => ("counter", "_total"),
                Kind::Gauge => ("gauge", ""),
            };
            let family = if openmetrics { f.name.to_string() } else { format!("{}{total}", f.name) };
            let _ = writeln!(out, "# HELP {family} {}.", f.help);
            let _ = writeln!(out, "# TYPE {family} {kind}");
            for (l, v) in &f.samples {
                let _ = writeln!(out, "{}{total}{l} {v}", f.name);
            }
        }
        if openmetrics {
            out.push_str("# EOF\n");
        }
        out
    }
}

/// A workload: device minor, namespace, pod and container.
type Workload = (u32, String, String, String);

/// The pod and container a process runs in, from its cgroup path as the kubelet lays it
/// out (systemd: `…kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope`; cgroupfs:
/// `/kubepods/<qos>/pod<uid>/<id>`). Empty strings outside Kubernetes.
pub fn pod_and_container(cgroup: &str) -> (String, String) {
    let mut pod = String::new();
    let mut container = String::new();
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or_default();
        if !path.contains("kubepods") {
            continue;
        }
        for part in path.split('/') {
            let part = part.trim_end_matches(".slice").trim_end_matches(".scope");
            if let Some(uid) =
                part.rsplit('-').next().and_then(|p| p.strip_prefix("pod")).or_else(|| part.strip_prefix("pod"))
            {
                pod = uid.replace('_', "-");
            } else if let Some(id) =
                part.rsplit('-').next().filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                container = id.to_string();
            }
        }
        if !pod.is_empty() {
            break;
        }
    }
    (pod, container)
}

fn pod_of(pid: i32) -> (String, String) {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map(|c| pod_and_container(&c)).unwrap_or_default()
}

/// Engine busy time at the previous scrape, per device and engine, for the utilisation gauge.
static LAST_BUSY: std::sync::Mutex<Vec<(u32, usize, u64, std::time::Instant)>> = std::sync::Mutex::new(Vec::new());

fn utilisation(minor: u32, engine: usize, busy_ns: u64) -> f64 {
    let now = std::time::Instant::now();
    let mut last = LAST_BUSY.lock().unwrap_or_else(|e| e.into_inner());
    let ratio = match last.iter_mut().find(|l| l.0 == minor && l.1 == engine) {
        Some(l) => {
            let wall = now.duration_since(l.3).as_nanos() as f64;
            let r = if wall > 0.0 { busy_ns.saturating_sub(l.2) as f64 / wall } else { 0.0 };
            *l = (minor, engine, busy_ns, now);
            r
        }
        None => {
            last.push((minor, engine, busy_ns, now));
            0.0
        }
    };
    ratio.min(1.0)
}

/// The current exposition, OpenMetrics text.
pub fn render(sub: &Subsystem) -> String {
    exposition(sub).write(true)
}

/// The current exposition, Prometheus text format 0.0.4 (what `promtool check metrics` and
/// scrapers that do not ask for OpenMetrics read).
pub fn render_text(sub: &Subsystem) -> String {
    exposition(sub).write(false)
}

/// Device metrics follow the OpenTelemetry hardware semantic conventions (`hw.*`, device
/// `hw_id` = `accelN`, `hw_type` = `accelerator`); accel's own keep the `accel_` prefix.
/// docs/OPERATING.md maps each to its OpenTelemetry and dcgm-exporter counterpart.
fn exposition(sub: &Subsystem) -> Exposition {
    build(sub, false)
}

/// The same metrics with each sample's labels as pairs, for the OTLP exporter.
pub(crate) fn points(sub: &Subsystem) -> Exposition {
    build(sub, true)
}

fn build(sub: &Subsystem, pairs: bool) -> Exposition {
    use Kind::{Counter, Gauge};
    let mut x = Exposition { pairs, ..Exposition::default() };
    let errors =
        x.family("hw_errors", Counter, "Hardware errors counted (OTel hw.errors), by block, error type and severity");
    let thresholds = x.family("accel_ras_error_threshold", Gauge, "RAS counter threshold (0: none)");
    let status =
        x.family("hw_status", Gauge, "Device health (OTel hw.status): 1 for the current hw_state, 0 for the others");
    let block_health =
        x.family("accel_ras_block_health", Gauge, "RAS block health: 0 ok, 1 predicted failure, 2 degraded, 3 failed");
    let temperature = x.family("hw_temperature_celsius", Gauge, "Device temperature (OTel hw.temperature)");
    let power = x.family("hw_power_watts", Gauge, "Device power draw (OTel hw.power)");
    let util = x.family(
        "hw_gpu_utilization_ratio",
        Gauge,
        "Share of time an engine ran jobs since the previous scrape (OTel hw.gpu.utilization)",
    );
    let busy = x.family("accel_engine_busy_seconds", Counter, "Time an engine spent running jobs");
    let mem_used = x.family(
        "hw_gpu_memory_usage_bytes",
        Gauge,
        "Bytes allocated in a device memory region (OTel hw.gpu.memory.usage)",
    );
    let mem_limit =
        x.family("hw_gpu_memory_limit_bytes", Gauge, "Capacity of a device memory region (OTel hw.gpu.memory.limit)");
    let info = x.family("accel_device_info", Gauge, "Device identity (always 1)");
    let throttled = x.family("accel_device_throttled", Gauge, "1 for each reason the device is throttled now");
    let last_code =
        x.family("accel_device_last_error_code", Gauge, "errno of the last job the driver failed (0: none)");
    let last_time = x.family(
        "accel_device_last_error_timestamp_seconds",
        Gauge,
        "When the last job the driver failed ended (Unix time; 0: none)",
    );
    let resets = x.family("accel_device_resets", Counter, "Engine resets after job timeouts");
    let queued = x.family("accel_device_queued_jobs", Gauge, "Jobs waiting to be dispatched");
    let clients = x.family("accel_device_open_clients", Gauge, "Clients with the device open");
    let wedged = x.family("accel_device_wedged", Gauge, "1 if the device is wedged");
    let ns_mem = x.family(
        "accel_namespace_memory_used_bytes",
        Gauge,
        "Bytes a namespace's clients hold in a region of a device",
    );
    let wl_mem = x.family(
        "accel_workload_memory_bytes",
        Gauge,
        "Bytes held by the connected clients of a namespace, pod and container, on a device",
    );
    let wl_engine = x.family(
        "accel_workload_engine_seconds",
        Gauge,
        "Engine time used by the connected clients of a namespace, pod and container, on a device",
    );
    let wl_clients =
        x.family("accel_workload_clients", Gauge, "Connected clients of a namespace, pod and container, by device");
    let events = x.family("accel_ras_events", Counter, "RAS events since the log began");
    let syncs = x.family("accel_ras_log_syncs", Counter, "fdatasync calls of the RAS log (one per batch of events)");
    let unsynced = x.family(
        "accel_ras_log_unsynced_events",
        Gauge,
        "RAS events written to the log but not yet synced to disk (growing: the disk does not keep up)",
    );
    let compactions = x.family("accel_ras_log_compactions", Counter, "Compactions of the RAS log");
    let objects = x.family("accel_objects", Gauge, "Live objects in the daemon, by kind");

    const TYPE: (&str, &str) = ("hw_type", "accelerator");
    let ras = sub.ras();
    for n in ras.nodes() {
        let id = n.device_name.as_str();
        for c in &n.counters {
            let base = [("hw_id", id), TYPE, ("block", n.name.as_str()), ("error_type", c.name.as_str())];
            let with_sev = [base[0], base[1], base[2], base[3], ("severity", c.severity.name())];
            x.sample(errors, &with_sev, c.value());
            x.sample(thresholds, &base, c.threshold());
        }
        let level = Health::ALL.iter().position(|h| *h == n.health()).unwrap_or(0);
        x.sample(block_health, &[("hw_id", id), TYPE, ("block", n.name.as_str())], level);
    }
    let devices = sub.list_devices();
    for d in &devices {
        let id = format!("accel{}", d.minor);
        let hw = [("hw_id", id.as_str()), TYPE];
        let current = ras.device_health(d.minor);
        for h in Health::ALL {
            let state = h.name().replace('-', "_");
            x.sample(status, &[hw[0], hw[1], ("hw_state", state.as_str())], u8::from(h == current));
        }
        let Ok(dev) = sub.device(d.minor) else { continue };
        let t = dev.driver.telemetry();
        let identity = [
            hw[0],
            hw[1],
            ("hw_name", d.name.as_str()),
            ("hw_vendor", d.vendor.as_str()),
            ("driver", d.driver.as_str()),
            ("serial", t.serial.as_deref().unwrap_or("")),
            ("pci_address", t.pci_address.as_deref().unwrap_or("")),
            ("category", d.category.name()),
        ];
        x.sample(info, &identity, 1);
        if let Some(c) = t.temperature_c {
            x.sample(temperature, &hw, c);
        }
        if let Some(w) = t.power_w {
            x.sample(power, &hw, w);
        }
        for reason in &t.throttle_reasons {
            x.sample(throttled, &[hw[0], hw[1], ("reason", reason.as_str())], 1);
        }
        for (i, ns) in dev.sched.busy_ns().into_iter().enumerate() {
            let engine = d.engines.get(i).map_or_else(|| format!("engine{i}"), |e| e.name.clone());
            let l = [hw[0], hw[1], ("engine", engine.as_str())];
            x.sample(busy, &l, ns as f64 / 1e9);
            x.sample(util, &l, utilisation(d.minor, i, ns));
        }
        let (code, at) = dev.sched.last_error();
        x.sample(last_code, &hw, code);
        x.sample(last_time, &hw, at / 1_000_000_000);
        for r in &d.regions {
            let l = [hw[0], hw[1], ("region", r.name.as_str())];
            x.sample(mem_limit, &l, r.size);
            x.sample(mem_used, &l, r.used);
        }
        x.sample(resets, &hw, d.resets);
        x.sample(queued, &hw, d.queued_jobs);
        x.sample(clients, &hw, d.open_clients);
        x.sample(wedged, &hw, u8::from(d.wedged));
    }
    for ns in sub.namespaces().list() {
        for nd in ns.devices() {
            let minor = nd.device.minor;
            let id = format!("accel{minor}");
            let Some(d) = devices.iter().find(|d| d.minor == minor) else { continue };
            for (r, used) in d.regions.iter().zip(nd.region_used()) {
                let l = [("hw_id", id.as_str()), TYPE, ("namespace", ns.name.as_str()), ("region", r.name.as_str())];
                x.sample(ns_mem, &l, used);
            }
        }
    }
    // Workloads: connected clients summed by device, namespace, pod and container.
    let mut workloads: std::collections::BTreeMap<Workload, (u64, u64, u64)> = Default::default();
    for (ns, u) in sub.client_usage_by_namespace() {
        let Some(minor) = u.device else { continue };
        let (pod, container) = pod_of(u.pid);
        let w = workloads.entry((minor, ns, pod, container)).or_default();
        w.0 += u.memory_bytes + u.device_memory_bytes;
        w.1 += u.engine_ns;
        w.2 += 1;
    }
    for ((minor, ns, pod, container), (mem, engine_ns, n)) in &workloads {
        let id = format!("accel{minor}");
        let l = [("hw_id", id.as_str()), TYPE, ("namespace", ns), ("pod", pod), ("container", container)];
        x.sample(wl_mem, &l, *mem);
        x.sample(wl_engine, &l, *engine_ns as f64 / 1e9);
        x.sample(wl_clients, &l, *n);
    }
    x.sample(events, &[], ras.last_seq());
    let (s, c) = ras.log_stats();
    x.sample(syncs, &[], s);
    x.sample(unsynced, &[], ras.log_unsynced());
    x.sample(compactions, &[], c);
    for (kind, v) in sub.stats().fields() {
        x.sample(objects, &[("kind", kind)], v);
    }
    x
}

/// Serves `/metrics` on `addr` from a background thread; returns the bound address.
pub fn serve(sub: Arc<Subsystem>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let bound =
        server.server_addr().to_ip().ok_or_else(|| std::io::Error::other("metrics server has no IP address"))?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for req in server.incoming_requests() {
            let response = if req.url() == "/metrics" {
                let openmetrics = req
                    .headers()
                    .iter()
                    .any(|h| h.field.equiv("Accept") && h.value.as_str().contains("application/openmetrics-text"));
                let (body, ctype) = if openmetrics {
                    (render(&sub), "application/openmetrics-text; version=1.0.0; charset=utf-8")
                } else {
                    (render_text(&sub), "text/plain; version=0.0.4; charset=utf-8")
                };
                let header = tiny_http::Header::from_bytes("Content-Type", ctype).expect("static header is valid");
                tiny_http::Response::from_string(body).with_header(header)
            } else {
                tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404)
            };
            let _ = req.respond(response);
        }
    })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::pod_and_container;

    #[test]
    fn pods_and_containers_come_from_the_kubelets_cgroup_layouts() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6b1e2a8f_1c2d_4e5f_a6b7_c8d9e0f1a2b3.slice/cri-containerd-{id}.scope\n"
        );
        let pod = "6b1e2a8f-1c2d-4e5f-a6b7-c8d9e0f1a2b3".to_string();
        assert_eq!(pod_and_container(&systemd), (pod.clone(), id.to_string()));
        let cgroupfs = format!("12:memory:/kubepods/besteffort/pod{pod}/{id}\n0::/\n");
        assert_eq!(pod_and_container(&cgroupfs), (pod, id.to_string()));
        assert_eq!(pod_and_container("0::/user.slice/user-0.slice/session-1.scope\n"), (String::new(), String::new()));
    }
}
