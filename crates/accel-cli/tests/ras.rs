//! RAS end to end: the drm-ras netlink family on the daemon socket, events, the
//! persistent log across a daemon crash, and the Prometheus exposition.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use accel::ras::{Ras, RasAttr, RasCmd, RasMsg};
use accel::Errno;
use accel_uapi::ras as nl;
use common::Daemon;

fn counter(ras: &mut Ras, node: u32, error: u32) -> u64 {
    let ids = vec![RasAttr::NodeId(node), RasAttr::ErrorId(error), RasAttr::AccelExt];
    let r = ras.request(RasMsg::new(RasCmd::GetErrorCounter, ids), false).unwrap();
    r[0].value().unwrap()
}

fn inject(ras: &mut Ras, node: u32, error: u32, count: u64) -> accel::Result<Vec<RasMsg>> {
    ras.request(
        RasMsg::new(RasCmd::InjectError, vec![RasAttr::NodeId(node), RasAttr::ErrorId(error), RasAttr::Count(count)]),
        false,
    )
}

/// (node id, error id) of testdev's memory/ecc-uncorrected on accel0 (nodes are numbered in
/// registration order: memory is node 1, its counters ecc-corrected 1, ecc-uncorrected 2).
const ECC_CE: (u32, u32) = (1, 1);
const ECC_UE: (u32, u32) = (1, 2);

#[test]
fn injected_errors_show_in_counters_health_and_events() {
    let d = Daemon::start(&["testdev", "cpu"]);
    let mut ras = Ras::connect(d.socket()).unwrap();
    let nodes = ras.request(RasMsg::new(RasCmd::ListNodes, vec![RasAttr::AccelExt]), true).unwrap();
    // testdev: memory, compute, interconnect, firmware, thermal; cpu: memory, thermal.
    assert_eq!(nodes.len(), 7);
    let first = &nodes[0].attrs;
    assert!(
        first.contains(&RasAttr::NodeName("memory".into())) && first.contains(&RasAttr::DeviceName("accel0".into()))
    );

    let events = Ras::connect(d.socket()).unwrap().subscribe_ext().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut events = events;
        while let Ok(e) = events.next_event() {
            if tx.send(e).is_err() {
                return;
            }
        }
    });

    inject(&mut ras, ECC_CE.0, ECC_CE.1, 5).unwrap();
    inject(&mut ras, ECC_UE.0, ECC_UE.1, 1).unwrap();
    assert_eq!(counter(&mut ras, ECC_CE.0, ECC_CE.1), 5);
    assert_eq!(counter(&mut ras, ECC_UE.0, ECC_UE.1), 1);
    let health = ras.request(RasMsg::new(RasCmd::GetHealth, vec![RasAttr::NodeId(1)]), false).unwrap();
    assert!(health[0].attrs.contains(&RasAttr::NodeHealth(2)), "uncorrected error degrades: {:?}", health[0].attrs);
    assert!(health[0].attrs.contains(&RasAttr::ErrorCount(1)));
    // Each error is an event; the uncorrected one also triggered an automatic recovery.
    let got: Vec<RasMsg> = (0..3).map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap()).collect();
    let seqs: Vec<u64> = got.iter().map(|e| e.event_seq().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3], "consecutive sequence numbers");
    assert!(got[0].attrs.contains(&RasAttr::EventDelta(5)) && got[0].attrs.contains(&RasAttr::ErrorValueU64(5)));
    assert!(got[2].attrs.contains(&RasAttr::EventKind(3)), "recovered");
    // The dump is the resync path: the same events, in order.
    let dump = ras.request(RasMsg::new(RasCmd::DumpEvents, vec![RasAttr::AccelExt]), true).unwrap();
    assert_eq!(dump.iter().map(|e| e.event_seq().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3]);

    // Thresholds and clearing.
    ras.request(
        RasMsg::new(
            RasCmd::SetErrorThreshold,
            vec![RasAttr::NodeId(1), RasAttr::ErrorId(1), RasAttr::ErrorThreshold(4)],
        ),
        false,
    )
    .unwrap();
    let t = ras
        .request(RasMsg::new(RasCmd::GetErrorThreshold, vec![RasAttr::NodeId(1), RasAttr::ErrorId(1)]), false)
        .unwrap();
    assert_eq!(
        t[0].attrs,
        vec![RasAttr::ErrorId(1), RasAttr::ErrorName("ecc-corrected".into()), RasAttr::ErrorThreshold(4)]
    );
    ras.request(RasMsg::new(RasCmd::ClearErrorCounter, vec![RasAttr::NodeId(1), RasAttr::ErrorId(2)]), false).unwrap();
    assert_eq!(counter(&mut ras, ECC_UE.0, ECC_UE.1), 0);
    let nodes = ras.request(RasMsg::new(RasCmd::ListNodes, vec![RasAttr::AccelExt]), true).unwrap();
    assert!(nodes[0].attrs.contains(&RasAttr::NodeHealth(1)), "5 corrected ≥ threshold 4: predicted failure");
}

#[test]
fn bad_requests_get_netlink_errors() {
    let d = Daemon::start(&["testdev", "cpu"]);
    let mut ras = Ras::connect(d.socket()).unwrap();
    let code = |r: accel::Result<Vec<RasMsg>>| r.unwrap_err().code;
    assert_eq!(
        code(ras.request(RasMsg::new(RasCmd::GetErrorCounter, vec![RasAttr::NodeId(99), RasAttr::ErrorId(1)]), false)),
        Errno::ENOENT
    );
    assert_eq!(code(ras.request(RasMsg::new(RasCmd::GetErrorCounter, vec![RasAttr::NodeId(1)]), false)), Errno::EINVAL);
    // An error id outside the node's range is EINVAL, as the kernel's.
    let e = ras.request(RasMsg::new(RasCmd::GetErrorCounter, vec![RasAttr::NodeId(1), RasAttr::ErrorId(9)]), false);
    let e = e.unwrap_err();
    assert_eq!(e.code, Errno::EINVAL);
    assert!(e.message.contains("outside node 1"), "the extended ACK's message: {}", e.message);
    // A do of a dump-only command, and a do or dump of the notification, are EOPNOTSUPP.
    assert_eq!(code(ras.request(RasMsg::new(RasCmd::ListNodes, vec![]), false)), Errno::EOPNOTSUPP);
    assert_eq!(code(ras.request(RasMsg::new(RasCmd::ErrorEvent, vec![]), true)), Errno::EOPNOTSUPP);
    // accel1 is the cpu device: its driver cannot inject (node 6 is its memory node).
    assert_eq!(code(inject(&mut ras, 6, 1, 1)), Errno::EOPNOTSUPP);
    // Garbage inside a Netlink request gets an NLMSG_ERROR, and the connection goes on.
    let mut conn = accel::Connection::connect(d.socket()).unwrap();
    match conn.call(&accel_uapi::Request::Netlink(vec![1, 2, 3])).unwrap() {
        accel_uapi::Reply::Netlink(frames) => {
            assert!(matches!(nl::decode(&frames[0]).unwrap(), nl::Parsed::Error(Some(-22), Some(_))))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.list_devices().unwrap().len(), 2);
}

#[test]
fn tenants_see_their_own_devices_renumbered_and_change_nothing() {
    let d = Daemon::start(&["cpu", "testdev"]);
    common::tenant(&d, "a", "tok-a", 1, 0, 0);
    let mut root = Ras::connect(d.socket()).unwrap();
    let conn = || accel::Connection::connect_with_token(d.socket(), Some("tok-a")).unwrap();
    let mut ras = Ras::over(conn()).unwrap();
    let nodes = ras.request(RasMsg::new(RasCmd::ListNodes, vec![]), true).unwrap();
    let names: Vec<_> = nodes.iter().map(|n| (n.device_name().unwrap(), n.node_name().unwrap())).collect();
    let want = ["memory", "compute", "interconnect", "firmware", "thermal"];
    assert_eq!(names, want.iter().map(|n| ("accel0".to_string(), n.to_string())).collect::<Vec<_>>());
    // The cpu device's nodes (1, 2) do not exist for the tenant; testdev's memory (3) does.
    let get = |node| RasMsg::new(RasCmd::GetErrorCounter, vec![RasAttr::NodeId(node), RasAttr::ErrorId(1)]);
    assert_eq!(ras.request(get(1), false).unwrap_err().code, Errno::ENOENT);
    assert_eq!(ras.request(get(3), false).unwrap()[0].error_name().as_deref(), Some("ecc-corrected"));
    for cmd in [RasCmd::ClearErrorCounter, RasCmd::InjectError, RasCmd::SetErrorThreshold, RasCmd::Recover] {
        let msg = RasMsg::new(cmd, vec![RasAttr::NodeId(3), RasAttr::ErrorId(1), RasAttr::ErrorThreshold(1)]);
        assert_eq!(ras.request(msg, false).unwrap_err().code, Errno::EPERM, "{}", cmd.name());
    }
    // Events: the tenant's subscription gets its device's, renamed; not the cpu device's.
    let mut events = Ras::over(conn()).unwrap().subscribe().unwrap();
    inject(&mut root, 1, 1, 1).unwrap_err(); // the cpu driver cannot inject: no event
    inject(&mut root, 3, 2, 1).unwrap();
    let e = events.next_event().unwrap();
    assert_eq!(e.cmd, RasCmd::ErrorEvent);
    assert_eq!(
        e.attrs,
        vec![
            RasAttr::DeviceName("accel0".into()),
            RasAttr::NodeId(3),
            RasAttr::NodeName("memory".into()),
            RasAttr::ErrorId(2),
            RasAttr::ErrorName("ecc-uncorrected".into()),
            RasAttr::ErrorValue(1),
        ],
        "exactly the kernel's error-event attributes"
    );
    // Read in place: the recovery the uncorrected error set off (node-wide: no counter; its
    // value the recovery count), then a corrected error, with the kernel's fields (accel's 0).
    let e = events.next_error_event().unwrap();
    assert_eq!(
        (e.device_name, e.node_id, e.node_name, e.error_id, e.error_name, e.value),
        ("accel0", 3, "memory", 0, "", 1)
    );
    inject(&mut root, 3, 1, 2).unwrap();
    let e = events.next_error_event().unwrap();
    assert_eq!(
        (e.device_name, e.node_id, e.node_name, e.error_id, e.error_name, e.value, e.seq),
        ("accel0", 3, "memory", 1, "ecc-corrected", 2, 0)
    );
    let quiet = events.next_error_event_timeout(Duration::from_millis(50)).unwrap_err();
    assert_eq!(quiet.code, Errno::ETIMEDOUT, "{quiet}");
}

#[test]
fn a_drm_ras_client_request_built_by_hand_is_served() {
    let d = Daemon::start(&["testdev"]);
    let mut conn = accel::Connection::connect(d.socket()).unwrap();
    // nlmsghdr + genlmsghdr(cmd = DRM_RAS_CMD_LIST_NODES, version 1), NLM_F_REQUEST | NLM_F_DUMP.
    let mut bytes = vec![0u8; 20];
    bytes[0..4].copy_from_slice(&20u32.to_ne_bytes());
    bytes[4..6].copy_from_slice(&nl::FAMILY_ID.to_ne_bytes());
    bytes[6..8].copy_from_slice(&(0x1u16 | 0x300).to_ne_bytes());
    bytes[8..12].copy_from_slice(&77u32.to_ne_bytes());
    bytes[16] = 1;
    bytes[17] = 1;
    let accel_uapi::Reply::Netlink(frames) = conn.call(&accel_uapi::Request::Netlink(bytes)).unwrap() else { panic!() };
    assert_eq!(frames.len(), 6, "5 nodes and NLMSG_DONE");
    for f in &frames[..5] {
        // Each part: nlmsghdr with NLM_F_MULTI and our sequence number, genlmsghdr cmd 1.
        assert_eq!(u16::from_ne_bytes([f[6], f[7]]) & 0x2, 0x2);
        assert_eq!(u32::from_ne_bytes([f[8], f[9], f[10], f[11]]), 77);
        assert_eq!(f[16], 1);
    }
    assert_eq!(nl::decode(&frames[5]).unwrap(), nl::Parsed::Done);
}

#[test]
fn counters_survive_a_daemon_crash_and_restart() {
    let state = std::env::temp_dir().join(format!("accel-ras-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let state_arg = state.to_str().unwrap();
    let mut d = Daemon::start_with(&["testdev"], &["--state-dir", state_arg]);
    let mut ras = Ras::connect(d.socket()).unwrap();
    inject(&mut ras, ECC_CE.0, ECC_CE.1, 41).unwrap();
    inject(&mut ras, ECC_CE.0, ECC_CE.1, 1).unwrap();
    drop(ras);
    d.kill();
    let d = Daemon::start_with(&["testdev"], &["--state-dir", state_arg]);
    let mut ras = Ras::connect(d.socket()).unwrap();
    assert_eq!(counter(&mut ras, ECC_CE.0, ECC_CE.1), 42);
    let history = ras.request(RasMsg::new(RasCmd::DumpEvents, vec![RasAttr::AccelExt]), true).unwrap();
    assert_eq!(history.len(), 2, "the event history was replayed");
    inject(&mut ras, ECC_CE.0, ECC_CE.1, 1).unwrap();
    let last = ras.request(RasMsg::new(RasCmd::DumpEvents, vec![RasAttr::AccelExt]), true).unwrap().pop().unwrap();
    assert!(last.attrs.contains(&RasAttr::EventSeq(3)), "sequence numbers continue: {:?}", last.attrs);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn counters_survive_log_compaction_a_sigkill_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (state, config) = (dir.path().join("state"), dir.path().join("accel.toml"));
    std::fs::write(&config, "[limits]\nras_log_max_bytes = 4096\n").unwrap();
    let args = ["--state-dir", state.to_str().unwrap(), "--config", config.to_str().unwrap()];
    let mut d = Daemon::start_with(&["testdev"], &args);
    let mut ras = Ras::connect(d.socket()).unwrap();
    for _ in 0..300 {
        inject(&mut ras, ECC_CE.0, ECC_CE.1, 1).unwrap();
    }
    // The records end at the last non-zero byte (zeros are reserved after them).
    let bytes = std::fs::read(state.join("ras.log")).unwrap();
    let log = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    assert!(log <= 4096 + 64, "300 events in a log of {log} bytes: it was compacted");
    assert!(bytes.len() <= 2 * 4096, "the reserve is bounded too: {} bytes", bytes.len());
    drop(ras);
    d.kill();
    let d = Daemon::start_with(&["testdev"], &args);
    let mut ras = Ras::connect(d.socket()).unwrap();
    assert_eq!(counter(&mut ras, ECC_CE.0, ECC_CE.1), 300);
    let history = ras.request(RasMsg::new(RasCmd::DumpEvents, vec![RasAttr::AccelExt]), true).unwrap();
    assert_eq!(history.last().unwrap().event_seq(), Some(300), "the newest events survive compaction");
    inject(&mut ras, ECC_CE.0, ECC_CE.1, 1).unwrap();
    assert_eq!(counter(&mut ras, ECC_CE.0, ECC_CE.1), 301);
}

/// A monitor's storm (reports that do not wait for the disk) is told to subscribers once
/// written to the log: every event a subscriber saw survives a SIGKILL right after.
#[test]
fn every_event_of_a_storm_a_subscriber_saw_survives_a_sigkill() {
    const EVENTS: u64 = 5000;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    let mut d = Daemon::start_with(&["testdev"], &args);
    let mut sub = Ras::connect(d.socket()).unwrap().subscribe_ext().unwrap();
    let dev = accel::Device::open_at(d.socket(), 0).unwrap();
    let q = dev.create_queue().unwrap();
    let storm = accel::Op::Driver { code: accel_driver_testdev::OP_RAS_STORM, args: [EVENTS, 0, 0, 0] };
    let job = q.submit(storm).unwrap();
    let (mut seen, mut value) = (0, 0);
    while seen < EVENTS {
        let e = sub.next_error_event_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((e.seq, e.error_name), (seen + 1, "ecc-corrected"), "in order, none missed");
        (seen, value) = (e.seq, e.value);
    }
    d.kill();
    drop((job, q, dev, sub));
    let d = Daemon::start_with(&["testdev"], &args);
    let mut ras = Ras::connect(d.socket()).unwrap();
    assert_eq!((value, counter(&mut ras, ECC_CE.0, ECC_CE.1)), (EVENTS, EVENTS), "every event seen was kept");
}

/// The daemon pushes its metrics over OTLP/HTTP to a collector (here a loopback server that
/// decodes each export with the protocol's generated types): OpenTelemetry names and units,
/// counters as cumulative monotonic sums, an injected error's count, the resource, and it
/// keeps exporting after the collector failed one.
#[test]
fn metrics_reach_an_opentelemetry_collector_over_otlp() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value, Metric};
    use prost::Message;

    let collector = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/metrics", collector.server_addr().to_ip().unwrap());
    let envs = [("OTEL_METRIC_EXPORT_INTERVAL", "100"), ("OTEL_RESOURCE_ATTRIBUTES", "k8s.node.name=n1")];
    let d = Daemon::start_env(&["testdev"], &["--otlp-endpoint", &url], &envs);
    let mut ras = Ras::connect(d.socket()).unwrap();
    inject(&mut ras, ECC_CE.0, ECC_CE.1, 3).unwrap();

    let text = |kv: &[KeyValue], key: &str| {
        kv.iter().find(|a| a.key == key).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
    };
    let find = |req: &ExportMetricsServiceRequest, name: &str| -> Option<Metric> {
        req.resource_metrics[0].scope_metrics[0].metrics.iter().find(|m| m.name == name).cloned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut exports, mut refused) = (0, false);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut req = collector.recv_timeout(left).unwrap().expect("an export within 20 s");
        assert_eq!((req.method(), req.url()), (&tiny_http::Method::Post, "/v1/metrics"));
        let ctype = req.headers().iter().find(|h| h.field.equiv("Content-Type")).map(|h| h.value.to_string());
        assert_eq!(ctype.as_deref(), Some("application/x-protobuf"));
        let mut body = Vec::new();
        req.as_reader().read_to_end(&mut body).unwrap();
        if !refused {
            // The first export fails; the exporter must go on.
            refused = true;
            req.respond(tiny_http::Response::empty(503)).unwrap();
            continue;
        }
        req.respond(tiny_http::Response::empty(200)).unwrap();
        exports += 1;
        let export = ExportMetricsServiceRequest::decode(body.as_slice()).unwrap();
        let resource = export.resource_metrics[0].resource.as_ref().unwrap();
        assert_eq!(text(&resource.attributes, "service.name").as_deref(), Some("accel"));
        assert_eq!(text(&resource.attributes, "k8s.node.name").as_deref(), Some("n1"));
        let limit = find(&export, "hw.gpu.memory.limit").expect("hw.gpu.memory.limit");
        assert_eq!(limit.unit, "By");
        assert!(matches!(limit.data, Some(Data::Gauge(ref g)) if !g.data_points.is_empty()));
        let Some(Data::Sum(errors)) = find(&export, "hw.errors").and_then(|m| m.data) else {
            panic!("hw.errors is a sum")
        };
        assert!(errors.is_monotonic);
        assert_eq!(errors.aggregation_temporality, 2, "cumulative");
        let ecc = errors
            .data_points
            .iter()
            .find(|p| {
                text(&p.attributes, "hw.id").as_deref() == Some("accel0")
                    && text(&p.attributes, "block").as_deref() == Some("memory")
                    && text(&p.attributes, "error.type").as_deref() == Some("ecc-corrected")
            })
            .expect("accel0 memory ecc-corrected");
        assert!(ecc.start_time_unix_nano > 0 && ecc.time_unix_nano >= ecc.start_time_unix_nano);
        if ecc.value == Some(Value::AsInt(3)) {
            break;
        }
        assert_eq!(ecc.value, Some(Value::AsInt(0)), "before the injection");
    }
    assert!(exports >= 1);
}

/// A daemon stopped by SIGTERM right after a storm was reported writes what was still queued
/// before it exits: the restarted daemon has every error.
#[test]
fn a_storm_reported_just_before_sigterm_is_kept() {
    const EVENTS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    for round in 1..=3 {
        let mut d = Daemon::start_with(&["testdev"], &args);
        let dev = accel::Device::open_at(d.socket(), 0).unwrap();
        let q = dev.create_queue().unwrap();
        let storm = accel::Op::Driver { code: accel_driver_testdev::OP_RAS_STORM, args: [EVENTS, 0, 0, 0] };
        q.submit(storm).unwrap().wait().unwrap();
        d.terminate();
        drop((q, dev));
        let d = Daemon::start_with(&["testdev"], &args);
        let mut ras = Ras::connect(d.socket()).unwrap();
        assert_eq!(counter(&mut ras, ECC_CE.0, ECC_CE.1), EVENTS * round, "round {round}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, accept: Option<&str>) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET /metrics HTTP/1.0\r\n{accept}\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn metrics_exposition_is_valid_and_complete() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(&["testdev", "cpu"], &["--metrics", &addr]);
    let mut ras = Ras::connect(d.socket()).unwrap();
    inject(&mut ras, ECC_CE.0, ECC_CE.1, 3).unwrap();
    // A client with a buffer in device memory, and a job on the copy engine.
    let dev = d.open(0);
    let vram = dev.alloc_in(4096, 1).unwrap();
    dev.create_queue().unwrap().submit(accel::Op::Fill { dst: vram.whole(), pattern: 1 }).unwrap().wait().unwrap();
    // A tenant's share, for the per-namespace series.
    common::tenant(&d, "team-a", "tok-a", 0, 0, 0);
    let tenant = accel::Device::open_with_token(d.socket(), 0, "tok-a").unwrap();
    let _held = tenant.alloc(8192).unwrap();
    let (head, body) = http_get(port, None);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let hw = |minor: u32| format!(r#"hw_id="accel{minor}",hw_type="accelerator""#);
    let errors =
        format!(r#"hw_errors_total{{{},block="memory",error_type="ecc-corrected",severity="corrected"}} 3"#, hw(0));
    assert!(body.contains(&errors), "{body}");
    // Zeros, not blanks: every counter of every device exists before its first error.
    let zero =
        format!(r#"hw_errors_total{{{},block="memory",error_type="ecc-uncorrected",severity="uncorrected"}} 0"#, hw(1));
    assert!(body.contains(&zero));
    assert!(body.contains(&format!(r#"hw_status{{{},hw_state="ok"}} 1"#, hw(1))));
    assert!(body.contains(&format!(r#"hw_status{{{},hw_state="failed"}} 0"#, hw(1))));
    // What operators graph: memory per region, engine time and utilisation, identity, the
    // last failed job, and usage by namespace and workload (this test's client: no pod).
    for needle in [
        format!(r#"hw_gpu_memory_limit_bytes{{{},region="host"}}"#, hw(0)),
        format!(r#"hw_gpu_memory_usage_bytes{{{},region="vram"}}"#, hw(0)),
        format!(r#"accel_engine_busy_seconds_total{{{},engine="copy"}}"#, hw(0)),
        format!(r#"hw_gpu_utilization_ratio{{{},engine="compute"}}"#, hw(0)),
        format!(r#"accel_device_last_error_code{{{}}} 0"#, hw(1)),
        format!(r#"accel_namespace_memory_used_bytes{{{},namespace="team-a",region="host"}} 8192"#, hw(0)),
        format!(r#"accel_workload_clients{{{},namespace="root",pod="",container=""}} 1"#, hw(0)),
        r#"accel_device_info{hw_id="accel1",hw_type="accelerator",hw_name="#.to_string(),
    ] {
        assert!(body.contains(&needle), "{needle} missing from:\n{body}");
    }
    // RAS blocks are `block`: a `node` label would clash with Kubernetes' own.
    assert!(!body.contains("node=\""), "no node label");
    let (head, om) = http_get(port, Some("application/openmetrics-text; version=1.0.0"));
    assert!(head.contains("application/openmetrics-text") && om.trim_end().ends_with("# EOF"));
    // The OpenMetrics exposition through a strict parser (prometheus_client's, as CI installs).
    let parser = "import sys; from prometheus_client.openmetrics.parser import text_string_to_metric_families as p; \
                  n = sum(1 for _ in p(sys.stdin.read())); print(n)";
    match std::process::Command::new("python3")
        .args(["-c", parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child.stdin.take().unwrap().write_all(om.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No module named 'prometheus_client'") && std::env::var_os("CI").is_none() {
                eprintln!("prometheus_client not installed: OpenMetrics not parsed (CI installs it)");
            } else {
                assert!(out.status.success(), "OpenMetrics parser: {err}");
            }
        }
        Err(e) => panic!("python3: {e}"),
    }

    // The real promtool, as in CI (Debian package prometheus); CI must have it.
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not installed: exposition not linted (CI installs it)")
        }
        Err(e) => panic!("CI must provide promtool (Debian package prometheus): {e}"),
    }
}

/// A subscriber that does not read loses events, as a netlink socket's reader does, and is
/// told so with `ENOBUFS`; the daemon keeps a bounded backlog for it, not the storm.
#[test]
fn a_subscriber_that_does_not_keep_up_gets_enobufs_and_the_daemon_stays_bounded() {
    const EVENTS: u64 = 300_000;
    let d = Daemon::start(&["testdev"]);
    let mut sub = Ras::connect(d.socket()).unwrap().subscribe_ext().unwrap();
    let rss = || common::rss_kib(d.pid());
    let before = rss();
    let dev = accel::Device::open_at(d.socket(), 0).unwrap();
    let q = dev.create_queue().unwrap();
    let storm = |n: u64| accel::Op::Driver { code: accel_driver_testdev::OP_RAS_STORM, args: [n, 0, 0, 0] };
    q.submit(storm(EVENTS)).unwrap().wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss().saturating_sub(before);
    eprintln!("{EVENTS} events to a subscriber that reads none: the daemon grew by {grown} KiB");
    assert!(grown < 32 << 10, "the daemon grew by {grown} KiB");
    // What was kept comes in order, then the overrun, then events go on.
    let mut last = 0;
    let lost = loop {
        match sub.next_error_event_timeout(Duration::from_secs(10)) {
            Ok(e) => {
                assert!(e.seq > last, "in order");
                last = e.seq;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(lost.code, Errno::ENOBUFS, "{lost}");
    assert!(last < EVENTS, "only a backlog's worth was kept ({last} of {EVENTS})");
    q.submit(storm(1)).unwrap().wait().unwrap();
    let next = sub.next_error_event_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(next.seq, EVENTS + 1, "the stream goes on after the overrun");
}
