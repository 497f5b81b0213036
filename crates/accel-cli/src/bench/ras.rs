//! `accel bench ras`: a RAS event's latency to a subscriber, a storm's, the codec's share of
//! it, and the scrape of many devices' metrics.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accel::{Device, Op};
use anyhow::{Context, Result};

use super::{floor, percentiles, sample};
use crate::spawn::SpawnedDaemon;

/// A free loopback port for a daemon's `/metrics`, and the `--metrics` argument naming it.
fn metrics_addr() -> Result<(u16, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok((port, format!("127.0.0.1:{port}")))
}

/// One HTTP GET of `/metrics` on `port`: the whole response, headers included.
fn get_metrics(port: u16) -> Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    Ok(body)
}

/// One `write` + `fdatasync` of a small record in `dir`: the floor of a durable event there.
fn fsync_floor(dir: &Path, samples: usize) -> Result<Vec<u64>> {
    use std::io::Write;
    let path = dir.join(format!("accel-fsync-{}", std::process::id()));
    let mut f = std::fs::File::create(&path)?;
    let out = (0..samples)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&[0u8; 48])?;
            f.sync_data()?;
            Ok(t.elapsed().as_nanos() as u64)
        })
        .collect::<Result<Vec<u64>>>();
    let _ = std::fs::remove_file(&path);
    out
}

/// A storm of `events` RAS errors reported one by one by the driver (testdev's
/// `OP_RAS_STORM`, through `RasSink::report_async`), the log in `dir`: each event's latency
/// from its report to a subscriber (event timestamp to arrival, both `CLOCK_MONOTONIC`), when
/// the last was synced to disk, and the fdatasyncs the storm cost (from the daemon's `/metrics`).
pub(super) fn burst(fs: &str, dir: &Path, events: usize) -> Result<()> {
    let (port, metrics) = metrics_addr()?;
    let daemon = SpawnedDaemon::start_in(dir, &["testdev"], &["--metrics", &metrics])?;
    let metric = |name: &str| -> Result<u64> {
        let body = String::from_utf8(get_metrics(port)?)?;
        let line = body.lines().find(|l| l.split(' ').next() == Some(name)).with_context(|| format!("no {name}"))?;
        Ok(line.rsplit(' ').next().unwrap_or("0").parse()?)
    };
    let syncs = || metric("accel_ras_log_syncs_total");
    let mut sub = accel::ras::Ras::connect(daemon.socket())?.subscribe_ext()?;
    // The subscriber reads on its own thread, as a monitoring agent does.
    let reader = std::thread::spawn(move || -> Result<Vec<u64>> {
        let mut lat = Vec::with_capacity(events);
        while lat.len() < events {
            let e = sub.next_error_event()?;
            let arrived = accel_core::fence::monotonic_ns();
            lat.push(arrived.saturating_sub(e.timestamp_ns));
        }
        Ok(lat)
    });
    let dev = Device::open_at(daemon.socket(), 0)?;
    let q = dev.create_queue()?;
    let before = syncs()?;
    let storm = Op::Driver { code: accel_driver_testdev::OP_RAS_STORM, args: [events as u64, 0, 0, 0] };
    let t0 = Instant::now();
    q.submit(storm)?.wait()?;
    let storm_ns = t0.elapsed().as_nanos() as u64;
    let lat = reader.join().map_err(|_| anyhow::anyhow!("subscriber thread panicked"))??;
    // Events are told once written; the log is synced behind them. When the last is on disk
    // (an upper bound: polled through /metrics, a few hundred µs apart).
    while metric("accel_ras_log_unsynced_events")? > 0 {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "the RAS log was not synced within 10 s");
    }
    let durable_ns = t0.elapsed().as_nanos() as u64;
    let storm_syncs = syncs()? - before;
    let (p50, p99, all) = percentiles(lat);
    let (f50, _, _) = percentiles(fsync_floor(dir, 200)?);
    println!(
        "{{\"bench\":\"ras-burst\",\"fs\":\"{fs}\",\"dir\":\"{}\",\"events\":{events},\"event_latency_ns\":{all},\
\"storm_ns\":{storm_ns},\"all_synced_ns\":{durable_ns},\"fsyncs\":{storm_syncs},\"events_per_fsync\":{:.1},\"fsync_p50_ns\":{f50},\"p50_vs_fsync\":{:.2},\"p99_under_1ms\":{}}}",
        dir.display(),
        events as f64 / storm_syncs.max(1) as f64,
        p50 as f64 / f50.max(1) as f64,
        p99 < 1_000_000,
    );
    Ok(())
}

pub(super) fn run(events: usize, devices: usize, scrapes: usize) -> Result<()> {
    use accel::ras::{Ras, RasAttr, RasCmd, RasMsg};

    // Injected error → subscriber. testdev memory/ecc-corrected is node 1, counter 1 (no
    // recovery follows corrected errors, so every event is one injection).
    let daemon = SpawnedDaemon::start(&["testdev"])?;
    let mut ras = Ras::connect(daemon.socket())?;
    let mut sub = Ras::connect(daemon.socket())?.subscribe()?;
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    std::thread::spawn(move || {
        while sub.next_event().is_ok() {
            if tx.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    let inject = RasMsg::new(RasCmd::InjectError, vec![RasAttr::NodeId(1), RasAttr::ErrorId(1), RasAttr::Count(1)]);
    let mut lat = Vec::with_capacity(events);
    for i in 0..events + events / 10 {
        let t0 = Instant::now();
        ras.request(inject.clone(), false)?;
        let t1 = rx.recv_timeout(Duration::from_secs(5)).context("event did not arrive")?;
        if i >= events / 10 {
            lat.push(t1.duration_since(t0).as_nanos() as u64);
        }
    }
    let (ev_p50, ev_p99, ev) = percentiles(lat);
    let (sock_p50, _, _) = percentiles(floor::socket_pingpong(events)?);
    drop(daemon);

    // Scrape of a daemon with many devices, against rendering the same exposition in-process.
    let specs: Vec<&str> = vec!["testdev"; devices];
    let (port, metrics) = metrics_addr()?;
    let _daemon = SpawnedDaemon::start_with(&specs, &["--metrics", &metrics])?;
    let scrape = || -> Result<usize> { Ok(get_metrics(port)?.len()) };
    let bytes = scrape()?;
    let mut failed = None;
    let (scrape_p50, scrape_p99, scrape_lat) = percentiles(sample(scrapes, || {
        if let Err(e) = scrape() {
            failed = Some(e);
        }
    }));
    if let Some(e) = failed {
        return Err(e);
    }
    let local = accel_core::Subsystem::new(
        (0..devices)
            .map(|_| accel_core::device::DeviceConfig::new(Arc::new(accel_driver_testdev::TestDevice::new())))
            .collect(),
    )?;
    let (render_p50, _, _) = percentiles(sample(scrapes, || {
        std::hint::black_box(acceld::metrics::render_text(&local));
    }));
    // The same metrics as one OTLP export's protobuf body.
    let otlp = acceld::otlp::Config::from(Some("http://127.0.0.1:4318/v1/metrics"), &|_| None)
        .map_err(anyhow::Error::msg)?
        .context("an OTLP configuration")?;
    let start = std::time::SystemTime::now();
    let otlp_bytes = acceld::otlp::body(&local, &otlp, start).len();
    let (otlp_p50, _, _) = percentiles(sample(scrapes, || {
        std::hint::black_box(acceld::otlp::body(&local, &otlp, start));
    }));
    println!(
        "{{\"bench\":\"ras\",\"event_latency_ns\":{ev},\"socket_rtt_p50_ns\":{sock_p50},\"event_p50_vs_socket_rtt\":{:.2},\
\"event_p99_under_1ms\":{},\"devices\":{devices},\"scrape_bytes\":{bytes},\"scrape_ns\":{scrape_lat},\
\"render_inproc_p50_ns\":{render_p50},\"scrape_p50_vs_render\":{:.2},\"scrape_p99_under_5ms\":{},\
\"otlp_body_bytes\":{otlp_bytes},\"otlp_body_p50_ns\":{otlp_p50},\"otlp_body_vs_render\":{:.2}}}",
        ev_p50 as f64 / sock_p50 as f64,
        ev_p99 < 1_000_000,
        scrape_p50 as f64 / render_p50 as f64,
        scrape_p99 < 5_000_000,
        otlp_p50 as f64 / render_p50 as f64,
    );
    Ok(())
}

/// The codec's share of delivering one event, per event (median of batches of 1,000): the
/// daemon building and encoding an `error-event` as a subscriber with `accel-ext` gets it, and
/// the client decoding it (into a message, and in place as the storm's subscriber reads it);
/// baseline: copying the encoded bytes into a new buffer.
pub(super) fn codec(batches: usize) -> Result<()> {
    use accel_uapi::ras::{decode, ErrorEvent, Parsed};
    const BATCH: usize = 1000;
    let local = accel_core::Subsystem::new(vec![accel_core::device::DeviceConfig::new(Arc::new(
        accel_driver_testdev::TestDevice::new(),
    ))])?;
    let ras = local.ras();
    let (node, error) = ras.find(0, "memory", "ecc-corrected")?;
    let event = ras.report(node, error, 1)?;
    let view = acceld::ras_nl::View::all(true);
    let make = || acceld::ras_nl::event_frame(ras, &view, &event, true);
    let bytes = make().context("the event is not visible")?;
    let Parsed::Msg { msg, .. } = decode(&bytes)? else { anyhow::bail!("the event does not decode to a message") };
    anyhow::ensure!(msg.event_seq() == Some(event.seq), "the event decodes to {msg:?}");
    let per_event = |f: &mut dyn FnMut()| {
        let (p50, _, _) = percentiles(sample(batches, || (0..BATCH).for_each(|_| f())));
        p50 as f64 / BATCH as f64
    };
    let encode_ns = per_event(&mut || drop(std::hint::black_box(make())));
    let decode_ns = per_event(&mut || drop(std::hint::black_box(decode(std::hint::black_box(&bytes)))));
    let view_ns = per_event(&mut || drop(std::hint::black_box(ErrorEvent::decode(std::hint::black_box(&bytes)))));
    let copy_ns = per_event(&mut || drop(std::hint::black_box(std::hint::black_box(&bytes).to_vec())));
    println!(
        "{{\"bench\":\"ras-codec\",\"event_bytes\":{},\"attrs\":{},\"encode_ns\":{encode_ns:.0},\"decode_ns\":{decode_ns:.0},\
\"decode_in_place_ns\":{view_ns:.0},\"copy_ns\":{copy_ns:.0},\"encode_vs_copy\":{:.1},\"decode_vs_copy\":{:.1},\"decode_in_place_vs_copy\":{:.1}}}",
        bytes.len(),
        msg.attrs.len(),
        encode_ns / copy_ns,
        decode_ns / copy_ns,
        view_ns / copy_ns,
    );
    Ok(())
}
