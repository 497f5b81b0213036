//! Prometheus / OpenMetrics exposition on `/metrics` (loopback by default).
//!
//! Names are cross-vendor and stable: `accel_ras_errors_total{device,node,error,severity}`,
//! `accel_device_health{device,state}` (one series per state, 1 for the current one),
//! … Every series exists from the start with value 0: zeros, not blanks, so an
//! alert on a rate works before the first error.

use std::net::SocketAddr;
use std::sync::Arc;

use accel_core::Subsystem;
use accel_uapi::Health;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    device: String,
    node: String,
    error: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabels {
    device: String,
    node: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    device: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    device: String,
    region: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    device: String,
    driver: String,
    category: String,
    name: String,
}

/// Registers a labelled metric family and returns a handle to fill it.
fn family<L, M>(reg: &mut Registry, name: &str, help: &str) -> Family<L, M>
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let f = Family::<L, M>::default();
    reg.register(name, help, f.clone());
    f
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: counter families
/// are named after their `_total` samples, and `# EOF` / `# UNIT` lines go. This is what
/// scrapers that do not ask for OpenMetrics, and `promtool check metrics`, expect.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let name = rest.split(' ').next()?;
            counters.contains(&name).then(|| format!("{p}{name}_total{}", &rest[name.len()..]))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The current exposition, OpenMetrics text.
pub fn render(sub: &Subsystem) -> String {
    let mut reg = Registry::default();
    let errors = family::<ErrorLabels, Counter>(
        &mut reg,
        "accel_ras_errors",
        "RAS errors counted, by device, node, error and severity",
    );
    let thresholds =
        family::<CounterLabels, Gauge>(&mut reg, "accel_ras_error_threshold", "RAS counter threshold (0: none)");
    let health = family::<StateLabels, Gauge>(
        &mut reg,
        "accel_device_health",
        "Device health: 1 for the current state, 0 for the others",
    );
    let info = family::<InfoLabels, Gauge>(&mut reg, "accel_device_info", "Device description (always 1)");
    let resets = family::<DeviceLabels, Counter>(&mut reg, "accel_device_resets", "Engine resets after job timeouts");
    let queued = family::<DeviceLabels, Gauge>(&mut reg, "accel_device_queued_jobs", "Jobs waiting to be dispatched");
    let clients = family::<DeviceLabels, Gauge>(&mut reg, "accel_device_open_clients", "Clients with the device open");
    let wedged = family::<DeviceLabels, Gauge>(&mut reg, "accel_device_wedged", "1 if an engine reset failed");
    let region_size =
        family::<RegionLabels, Gauge>(&mut reg, "accel_region_size_bytes", "Capacity of a device memory region");
    let region_used =
        family::<RegionLabels, Gauge>(&mut reg, "accel_region_used_bytes", "Bytes allocated in a device memory region");
    let events = Counter::<u64>::default();
    reg.register("accel_ras_events", "RAS events since the log began", events.clone());
    let objects =
        family::<Vec<(String, String)>, Gauge>(&mut reg, "accel_objects", "Live objects in the daemon, by kind");

    let ras = sub.ras();
    for n in ras.nodes() {
        for c in &n.counters {
            let l = ErrorLabels {
                device: n.device_name.clone(),
                node: n.name.clone(),
                error: c.name.clone(),
                severity: c.severity.name().into(),
            };
            errors.get_or_create(&l).inc_by(c.value());
            let l = CounterLabels { device: n.device_name.clone(), node: n.name.clone(), error: c.name.clone() };
            thresholds.get_or_create(&l).set(c.threshold() as i64);
        }
    }
    for d in sub.list_devices() {
        let device = format!("accel{}", d.minor);
        let current = ras.device_health(d.minor);
        for h in Health::ALL {
            let l = StateLabels { device: device.clone(), state: h.name().into() };
            health.get_or_create(&l).set(i64::from(h == current));
        }
        let l = InfoLabels {
            device: device.clone(),
            driver: d.driver.clone(),
            category: d.category.name().into(),
            name: d.name.clone(),
        };
        info.get_or_create(&l).set(1);
        for r in &d.regions {
            let l = RegionLabels {
                device: device.clone(),
                region: r.name.clone(),
                kind: format!("{:?}", r.kind).to_lowercase(),
            };
            region_size.get_or_create(&l).set(r.size as i64);
            region_used.get_or_create(&l).set(r.used as i64);
        }
        let dl = DeviceLabels { device };
        resets.get_or_create(&dl).inc_by(d.resets);
        queued.get_or_create(&dl).set(d.queued_jobs as i64);
        clients.get_or_create(&dl).set(i64::from(d.open_clients));
        wedged.get_or_create(&dl).set(i64::from(d.wedged));
    }
    events.inc_by(ras.last_seq());
    let s = sub.stats();
    for (kind, v) in s.fields() {
        objects.get_or_create(&vec![("kind".to_string(), kind.to_string())]).set(v as i64);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
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
                    (to_prometheus_text(&render(&sub)), "text/plain; version=0.0.4; charset=utf-8")
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
