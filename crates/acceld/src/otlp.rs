//! OTLP metrics export: the families `/metrics` serves, pushed to an OpenTelemetry collector
//! over OTLP/HTTP with protobuf bodies, for operators whose pipeline is OpenTelemetry rather
//! than Prometheus.
//!
//! Configured as OpenTelemetry SDKs are, from the environment: the endpoint from
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (the whole URL) or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (`/v1/metrics` appended), the interval from `OTEL_METRIC_EXPORT_INTERVAL` (ms, default
//! 60,000), the timeout from `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT`
//! (ms, default 10,000), headers from `OTEL_EXPORTER_OTLP_METRICS_HEADERS` or
//! `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,…`), the resource from `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES`; `accel daemon --otlp-endpoint URL` overrides the endpoint. The
//! protocol is `http/protobuf` (`OTEL_EXPORTER_OTLP_PROTOCOL` naming another is refused) over
//! plain HTTP: a collector on the node or a sidecar terminates TLS.
//!
//! Each family keeps its OpenTelemetry name: the Prometheus name with its unit suffix taken
//! off into the unit and `_` read as `.` (`hw_gpu_memory_usage_bytes` → `hw.gpu.memory.usage`
//! in `By`, `hw_errors` → `hw.errors`), labels likewise (`hw_id` → `hw.id`, `error_type` →
//! `error.type`). Counters are cumulative monotonic sums, gauges gauges. A failed export is
//! logged (once, until one succeeds again) and not retried: the next one carries the same
//! cumulative values.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use accel_core::Subsystem;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::metrics::{Exposition, Kind, Value};

/// Where and how often to export.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The collector's metrics URL (`http://host:4318/v1/metrics`).
    pub url: String,
    /// Time between exports.
    pub interval: Duration,
    /// How long one export may take.
    pub timeout: Duration,
    /// Extra request headers (authentication, tenancy).
    pub headers: Vec<(String, String)>,
    /// Resource attributes: `service.name` and the rest.
    pub resource: Vec<(String, String)>,
}

fn millis(env: &dyn Fn(&str) -> Option<String>, names: &[&str], default: u64) -> Result<Duration, String> {
    for name in names {
        if let Some(v) = env(name) {
            let ms = v.trim().parse::<u64>().map_err(|_| format!("{name}={v:?} is not a number of milliseconds"))?;
            return Ok(Duration::from_millis(ms.max(1)));
        }
    }
    Ok(Duration::from_millis(default))
}

/// `key=value,key2=value2`, values percent-decoded as the OpenTelemetry spec has them.
fn pairs(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), percent_decode(v.trim())))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%').then(|| b.get(i + 1..i + 3)).flatten();
        match hex.and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Config {
    /// The configuration from the process environment, `endpoint` (the daemon's flag) taking
    /// the place of the environment's; `None` when no endpoint is set.
    pub fn from_env(endpoint: Option<&str>) -> Result<Option<Config>, String> {
        Self::from(endpoint, &|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// As [`Config::from_env`], reading variables through `env`.
    pub fn from(endpoint: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Config>, String> {
        let url = match (
            endpoint.map(str::to_string),
            env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
            env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _, _) | (None, Some(url), _) => url,
            (None, None, Some(base)) => format!("{}/v1/metrics", base.trim_end_matches('/')),
            (None, None, None) => return Ok(None),
        };
        if !url.starts_with("http://") {
            return Err(format!(
                "OTLP endpoint {url:?}: only http:// is supported (a collector on the node or a sidecar terminates TLS)"
            ));
        }
        for name in ["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(p) = env(name) {
                if p != "http/protobuf" {
                    return Err(format!("{name}={p:?}: accel exports OTLP metrics as http/protobuf only"));
                }
                break;
            }
        }
        let headers = env("OTEL_EXPORTER_OTLP_METRICS_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"));
        let mut resource = vec![
            ("service.name".to_string(), "accel".to_string()),
            ("service.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("host.name".to_string(), host_name()),
        ];
        for (k, v) in env("OTEL_RESOURCE_ATTRIBUTES").as_deref().map(pairs).unwrap_or_default() {
            match resource.iter_mut().find(|(key, _)| *key == k) {
                Some(kv) => kv.1 = v,
                None => resource.push((k, v)),
            }
        }
        if let Some(name) = env("OTEL_SERVICE_NAME") {
            resource[0].1 = name;
        }
        Ok(Some(Config {
            url,
            interval: millis(env, &["OTEL_METRIC_EXPORT_INTERVAL"], 60_000)?,
            timeout: millis(env, &["OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"], 10_000)?,
            headers: headers.as_deref().map(pairs).unwrap_or_default(),
            resource,
        }))
    }
}

/// This machine's name (`host.name`), as `uname -n` says it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// A family's OpenTelemetry name and unit.
fn otel_name(prometheus: &str) -> (String, &'static str) {
    const UNITS: [(&str, &str); 5] =
        [("_bytes", "By"), ("_seconds", "s"), ("_celsius", "Cel"), ("_watts", "W"), ("_ratio", "1")];
    let (base, unit) = UNITS
        .iter()
        .find_map(|(suffix, unit)| prometheus.strip_suffix(suffix).map(|b| (b, *unit)))
        .unwrap_or((prometheus, ""));
    (base.replace('_', "."), unit)
}

/// A label's OpenTelemetry attribute key.
fn otel_key(label: &str) -> String {
    match label {
        "error_type" => "error.type".to_string(),
        l if l.starts_with("hw_") => l.replace('_', "."),
        l => l.to_string(),
    }
}

fn kv(key: String, value: String) -> KeyValue {
    KeyValue { key, value: Some(AnyValue { value: Some(any_value::Value::StringValue(value)) }) }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The export request for `x`, the metrics at `now`, counted since `start`.
pub(crate) fn request(x: Exposition, cfg: &Config, start: SystemTime, now: SystemTime) -> ExportMetricsServiceRequest {
    let (start, now) = (unix_ns(start), unix_ns(now));
    let metrics = x
        .families
        .into_iter()
        .filter(|f| !f.points.is_empty())
        .map(|f| {
            let (name, unit) = otel_name(f.name);
            let data_points = f
                .points
                .into_iter()
                .map(|(labels, value)| NumberDataPoint {
                    attributes: labels.into_iter().map(|(k, v)| kv(otel_key(&k), v)).collect(),
                    start_time_unix_nano: if f.kind == Kind::Counter { start } else { 0 },
                    time_unix_nano: now,
                    value: Some(match value {
                        Value::Int(v) => number_data_point::Value::AsInt(v.min(i64::MAX as u64) as i64),
                        Value::Float(v) => number_data_point::Value::AsDouble(v),
                    }),
                    ..Default::default()
                })
                .collect();
            let data = match f.kind {
                Kind::Counter => metric::Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                Kind::Gauge => metric::Data::Gauge(Gauge { data_points }),
            };
            Metric {
                name,
                description: f.help.to_string(),
                unit: unit.to_string(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: cfg.resource.iter().map(|(k, v)| kv(k.clone(), v.clone())).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "accel".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The body of one export of `sub`'s metrics now, counted since `start`.
pub fn body(sub: &Subsystem, cfg: &Config, start: SystemTime) -> Vec<u8> {
    request(crate::metrics::points(sub), cfg, start, SystemTime::now()).encode_to_vec()
}

/// One export: POSTs `body`; what the collector refused, if anything.
fn post(agent: &ureq::Agent, cfg: &Config, body: &[u8]) -> Result<(), String> {
    let mut req = agent.post(&cfg.url).set("Content-Type", "application/x-protobuf");
    for (k, v) in &cfg.headers {
        req = req.set(k, v);
    }
    let resp = req.send_bytes(body).map_err(|e| match e {
        ureq::Error::Status(code, r) => format!("HTTP {code} {}", r.status_text()),
        e => e.to_string(),
    })?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut bytes).map_err(|e| e.to_string())?;
    let partial = ExportMetricsServiceResponse::decode(bytes.as_slice()).ok().and_then(|r| r.partial_success);
    match partial {
        Some(p) if p.rejected_data_points > 0 => {
            Err(format!("the collector rejected {} data points: {}", p.rejected_data_points, p.error_message))
        }
        _ => Ok(()),
    }
}

/// Exports every `cfg.interval` from a thread of its own, the first export at once.
pub fn start(sub: Arc<Subsystem>, cfg: Config) -> std::io::Result<()> {
    let agent = ureq::AgentBuilder::new().timeout(cfg.timeout).build();
    let start = SystemTime::now();
    std::thread::Builder::new().name("otlp".into()).spawn(move || {
        let mut failing = false;
        loop {
            let body = body(&sub, &cfg, start);
            match post(&agent, &cfg, &body) {
                Ok(()) if failing => {
                    tracing::info!("OTLP export to {} works again", cfg.url);
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!("OTLP export to {} failed (retried every {:?}): {e}", cfg.url, cfg.interval);
                    failing = true;
                }
                Err(e) => tracing::debug!("OTLP export to {} failed: {e}", cfg.url),
            }
            std::thread::sleep(cfg.interval);
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn configuration_follows_the_opentelemetry_environment() {
        assert_eq!(Config::from(None, &env(&[])).unwrap(), None, "no endpoint, no exporter");
        let c = Config::from(
            None,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20x, tenant=a"),
                ("OTEL_RESOURCE_ATTRIBUTES", "k8s.node.name=n1,service.name=ignored"),
                ("OTEL_SERVICE_NAME", "accel-node"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.url, "http://collector:4318/v1/metrics");
        assert_eq!((c.interval, c.timeout), (Duration::from_secs(5), Duration::from_secs(10)));
        assert_eq!(c.headers, [("authorization".into(), "Bearer x".into()), ("tenant".into(), "a".into())]);
        assert_eq!(c.resource[0], ("service.name".into(), "accel-node".into()));
        assert!(c.resource.contains(&("k8s.node.name".into(), "n1".into())));
        // The signal's own endpoint is used whole; the flag wins over both.
        let e =
            [("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://c:4318/m"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x")];
        assert_eq!(Config::from(None, &env(&e)).unwrap().unwrap().url, "http://c:4318/m");
        assert_eq!(
            Config::from(Some("http://flag/v1/metrics"), &env(&e)).unwrap().unwrap().url,
            "http://flag/v1/metrics"
        );
        for bad in [
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_METRIC_EXPORT_INTERVAL", "10s")],
        ] {
            assert!(Config::from(None, &env(&bad)).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn names_and_labels_take_their_opentelemetry_spelling() {
        assert_eq!(otel_name("hw_gpu_memory_usage_bytes"), ("hw.gpu.memory.usage".into(), "By"));
        assert_eq!(otel_name("hw_temperature_celsius"), ("hw.temperature".into(), "Cel"));
        assert_eq!(otel_name("hw_gpu_utilization_ratio"), ("hw.gpu.utilization".into(), "1"));
        assert_eq!(otel_name("hw_errors"), ("hw.errors".into(), ""));
        assert_eq!(otel_name("accel_engine_busy_seconds"), ("accel.engine.busy".into(), "s"));
        assert_eq!(
            (otel_key("hw_id"), otel_key("error_type"), otel_key("block")),
            ("hw.id".into(), "error.type".into(), "block".into())
        );
    }
}
