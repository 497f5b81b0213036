//! Health and sensors through NVML, in the daemon (NVML opens no CUDA context, so it runs
//! beside the worker and outlives its restarts).
//!
//! A monitor thread per GPU reads the error counters every poll (1 s; `$ACCEL_NVML_POLL_MS`)
//! and reports what grew since the last read into the drm-ras nodes of [`ras_nodes`]: ECC
//! (volatile counts: they grow while the daemon watches), retired pages (before Ampere),
//! remapped rows (Ampere on: rows remapped for correctable and uncorrectable errors, and the
//! start of a pending remap — it takes effect at the next GPU reset — or of a failed one,
//! after which the GPU has no spare rows left: fatal), the PCIe replay counter, NVLink
//! CRC/replay/recovery counters where there are links, and the start of each
//! thermal or power throttling episode. Critical XID events arrive through an NVML event set
//! and count in the `xid` node under their code; the XIDs a client's own kernel causes (13,
//! 31, 43, 45: exceptions and MMU faults, contained by the worker) count as corrected — the
//! device goes on — the hardware ones as uncorrected or fatal. Temperature, power and
//! throttle reasons are kept for `/metrics` ([`Monitor::telemetry`]). Without NVML (no
//! `libnvidia-ml.so.1`) the device works and reports no health.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accel_hal::driver::Telemetry;
use accel_hal::lock;
use accel_hal::ras::{RasNodeDesc, RasSink};
use accel_uapi::Severity;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, RetirementCause, TemperatureSensor};
use nvml_wrapper::enum_wrappers::nv_link::ErrorCounter;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

/// XID codes with a counter of their own, and their severity.
const XIDS: &[(u64, Severity)] = &[
    (13, Severity::Corrected),   // graphics engine exception: a client's kernel
    (31, Severity::Corrected),   // MMU fault: a client's kernel's bad address
    (43, Severity::Corrected),   // GPU stopped processing: a client's context torn down
    (45, Severity::Corrected),   // preemptive cleanup: a context ended (our worker restarts)
    (48, Severity::Uncorrected), // double-bit ECC error
    (63, Severity::Uncorrected), // row remapping pending
    (64, Severity::Uncorrected), // row remapping failed
    (74, Severity::Uncorrected), // NVLink error
    (79, Severity::Fatal),       // fallen off the bus
    (92, Severity::Uncorrected), // high single-bit ECC rate
    (94, Severity::Uncorrected), // contained ECC error
    (95, Severity::Fatal),       // uncontained ECC error
    (119, Severity::Fatal),      // GSP RPC timeout
    (120, Severity::Fatal),      // GSP error
];

/// The drm-ras blocks of a cuda device.
pub(crate) fn ras_nodes() -> Vec<RasNodeDesc> {
    use Severity::*;
    let xid_names: Vec<String> = XIDS.iter().map(|(x, _)| format!("xid-{x}")).collect();
    let mut xid: Vec<(&str, Severity)> = xid_names.iter().map(String::as_str).zip(XIDS.iter().map(|x| x.1)).collect();
    xid.push(("xid-other", Uncorrected));
    vec![
        RasNodeDesc::new(
            "memory",
            &[
                ("ecc-corrected", Corrected),
                ("ecc-uncorrected", Uncorrected),
                ("retired-pages", Corrected),
                ("remapped-rows-corrected", Corrected),
                ("remapped-rows-uncorrected", Uncorrected),
                ("row-remap-pending", Uncorrected),
                ("row-remap-failure", Fatal),
            ],
        ),
        RasNodeDesc::new("pcie", &[("replay", Corrected)]),
        RasNodeDesc::new("nvlink", &[("crc", Corrected), ("replay", Corrected), ("recovery", Uncorrected)]),
        RasNodeDesc::new("thermal", &[("thermal-throttle", Corrected)]),
        RasNodeDesc::new("power", &[("power-throttle", Corrected)]),
        RasNodeDesc::new("xid", &xid),
    ]
}

/// One GPU's monitor.
pub(crate) struct Monitor {
    telemetry: Arc<Mutex<Telemetry>>,
    stop: Arc<AtomicBool>,
}

impl Monitor {
    /// Starts watching the GPU with this UUID (`GPU-…`), reporting into `sink`; `base` is
    /// the identity the telemetry always carries.
    pub(crate) fn start(uuid: String, base: Telemetry, sink: RasSink) -> Monitor {
        let telemetry = Arc::new(Mutex::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (telemetry.clone(), stop.clone());
        let spawned = std::thread::Builder::new().name("accel-nvml".into()).spawn(move || {
            if let Err(e) = watch(&uuid, &t, &s, &sink) {
                tracing::warn!("cuda: no NVML health for {uuid}: {e}");
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("cuda: no NVML monitor thread: {e}");
        }
        Monitor { telemetry, stop }
    }

    /// The latest sensors.
    pub(crate) fn telemetry(&self) -> Telemetry {
        lock(&self.telemetry).clone()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Counter readings; `None` where the GPU does not have the counter.
#[derive(Default, Clone, PartialEq)]
struct Readings {
    ecc_corrected: Option<u64>,
    ecc_uncorrected: Option<u64>,
    retired_pages: Option<u64>,
    remapped: Option<RemappedRows>,
    pcie_replay: Option<u64>,
    nvlink: [Option<u64>; 3],
    thermal: bool,
    power: bool,
}

/// `nvmlDeviceGetRemappedRows`'s answer (Ampere and later).
#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct RemappedRows {
    /// Rows remapped because of correctable errors.
    corrected: u64,
    /// Rows remapped because of uncorrectable errors.
    uncorrected: u64,
    /// A remap waits for the next GPU reset.
    pending: bool,
    /// A remap failed: no spare rows left.
    failed: bool,
}

type GetRemappedRows = unsafe extern "C" fn(*mut std::ffi::c_void, *mut u32, *mut u32, *mut u32, *mut u32) -> u32;

/// `nvmlDeviceGetRemappedRows`, which nvml-wrapper does not wrap: looked up in the library
/// NVML already loaded (`dlopen` of a loaded library hands back the same one).
struct RemapQuery {
    get: libloading::Symbol<'static, GetRemappedRows>,
}

impl RemapQuery {
    /// The query, looked up once per process (every GPU's monitor shares it).
    fn shared() -> Option<&'static RemapQuery> {
        static QUERY: std::sync::OnceLock<Option<RemapQuery>> = std::sync::OnceLock::new();
        QUERY.get_or_init(Self::load).as_ref()
    }

    fn load() -> Option<RemapQuery> {
        // SAFETY: the library is NVML, already loaded and initialised by `Nvml::init`; it is
        // kept for the process's life (one handle, made once), so the symbol stays valid.
        unsafe {
            let lib: &'static libloading::Library =
                Box::leak(Box::new(libloading::Library::new("libnvidia-ml.so.1").ok()?));
            Some(RemapQuery { get: lib.get(b"nvmlDeviceGetRemappedRows\0").ok()? })
        }
    }

    fn read(&self, dev: &Device<'_>) -> Option<RemappedRows> {
        let (mut corrected, mut uncorrected, mut pending, mut failed) = (0u32, 0u32, 0u32, 0u32);
        // SAFETY: the device handle comes from the live `Nvml`; the outputs are plain u32s.
        let rc =
            unsafe { (self.get)(dev.handle().cast(), &mut corrected, &mut uncorrected, &mut pending, &mut failed) };
        (rc == 0).then_some(RemappedRows {
            corrected: u64::from(corrected),
            uncorrected: u64::from(uncorrected),
            pending: pending != 0,
            failed: failed != 0,
        })
    }
}

fn read(dev: &Device<'_>, links: u32, remap: Option<&RemapQuery>) -> Readings {
    let ok = |r: Result<u64, NvmlError>| r.ok();
    let retired = [RetirementCause::MultipleSingleBitEccErrors, RetirementCause::DoubleBitEccError]
        .into_iter()
        .map(|c| dev.retired_pages(c).map(|p| p.len() as u64))
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .map(|v| v.iter().sum());
    let mut nvlink = [None; 3];
    for (slot, counter) in
        nvlink.iter_mut().zip([ErrorCounter::DlCrcFlit, ErrorCounter::DlReplay, ErrorCounter::DlRecovery])
    {
        let per_link: Vec<u64> =
            (0..links).filter_map(|l| dev.link_wrapper_for(l).error_counter(counter).ok()).collect();
        if !per_link.is_empty() {
            *slot = Some(per_link.iter().sum());
        }
    }
    let throttle = dev.current_throttle_reasons().unwrap_or(ThrottleReasons::empty());
    Readings {
        ecc_corrected: ok(dev.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)),
        ecc_uncorrected: ok(dev.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)),
        retired_pages: retired,
        remapped: remap.and_then(|q| q.read(dev)),
        pcie_replay: dev.pcie_replay_counter().ok().map(u64::from),
        nvlink,
        thermal: throttle.intersects(ThrottleReasons::HW_THERMAL_SLOWDOWN | ThrottleReasons::SW_THERMAL_SLOWDOWN),
        power: throttle.intersects(ThrottleReasons::SW_POWER_CAP | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN),
    }
}

/// What grew between two readings, as RAS reports (node, error, count): counters by their
/// growth, conditions (throttling, a pending or failed row remap) when they begin.
fn changes(last: &Readings, now: &Readings) -> Vec<(&'static str, &'static str, u64)> {
    let grew = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => 0,
    };
    let began = |a: bool, b: bool| u64::from(b && !a);
    let rows = |r: &Readings| r.remapped.unwrap_or_default();
    let (was, is) = (rows(last), rows(now));
    let remap = |f: fn(&RemappedRows) -> u64| grew(last.remapped.as_ref().map(f), now.remapped.as_ref().map(f));
    let mut out = vec![
        ("memory", "ecc-corrected", grew(last.ecc_corrected, now.ecc_corrected)),
        ("memory", "ecc-uncorrected", grew(last.ecc_uncorrected, now.ecc_uncorrected)),
        ("memory", "retired-pages", grew(last.retired_pages, now.retired_pages)),
        ("memory", "remapped-rows-corrected", remap(|r| r.corrected)),
        ("memory", "remapped-rows-uncorrected", remap(|r| r.uncorrected)),
        ("memory", "row-remap-pending", began(was.pending, is.pending)),
        ("memory", "row-remap-failure", began(was.failed, is.failed)),
        ("pcie", "replay", grew(last.pcie_replay, now.pcie_replay)),
    ];
    for (i, name) in ["crc", "replay", "recovery"].into_iter().enumerate() {
        out.push(("nvlink", name, grew(last.nvlink[i], now.nvlink[i])));
    }
    out.push(("thermal", "thermal-throttle", began(last.thermal, now.thermal)));
    out.push(("power", "power-throttle", began(last.power, now.power)));
    out.retain(|c| c.2 > 0);
    out
}

/// Throttle reasons by name, for telemetry.
fn reasons(t: ThrottleReasons) -> Vec<String> {
    let named = [
        (ThrottleReasons::SW_POWER_CAP, "power-cap"),
        (ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN, "power-brake"),
        (ThrottleReasons::HW_SLOWDOWN, "hw-slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "thermal"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw-thermal"),
        (ThrottleReasons::SYNC_BOOST, "sync-boost"),
    ];
    named.iter().filter(|(bit, _)| t.contains(*bit)).map(|(_, n)| n.to_string()).collect()
}

fn watch(uuid: &str, telemetry: &Mutex<Telemetry>, stop: &AtomicBool, sink: &RasSink) -> Result<(), NvmlError> {
    let poll = std::env::var("ACCEL_NVML_POLL_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000u32).max(10);
    let nvml = Nvml::init()?;
    let dev = nvml.device_by_uuid(uuid)?;
    let links = if dev.link_wrapper_for(0).is_active().is_ok() { 18 } else { 0 };
    let events = nvml.create_event_set().ok().and_then(|set| {
        dev.register_events(EventTypes::CRITICAL_XID_ERROR, set)
            .map_err(|e| tracing::info!("cuda: no NVML XID events for {uuid}: {}", e.error))
            .ok()
    });
    for (what, kind) in [("corrected", MemoryError::Corrected), ("uncorrected", MemoryError::Uncorrected)] {
        if let Ok(n) = dev.total_ecc_errors(kind, EccCounter::Aggregate) {
            tracing::info!("cuda: {uuid}: {n} {what} ECC errors over the GPU's lifetime (aggregate)");
        }
    }
    let remap = RemapQuery::shared();
    let mut last = read(&dev, links, remap);
    if let Some(r) = last.remapped {
        tracing::info!(
            "cuda: {uuid}: rows remapped {} (correctable) and {} (uncorrectable){}{}",
            r.corrected,
            r.uncorrected,
            if r.pending { ", a remap pending until the next GPU reset" } else { "" },
            if r.failed { ", a remap FAILED: the GPU has no spare rows left" } else { "" }
        );
    }
    tracing::info!(
        "cuda: NVML health for {uuid}, every {poll} ms, XID events {}",
        if events.is_some() { "on" } else { "off" }
    );
    while !stop.load(Ordering::Relaxed) && sink.is_alive() {
        {
            let mut t = lock(telemetry);
            t.temperature_c = dev.temperature(TemperatureSensor::Gpu).ok().map(f64::from);
            t.power_w = dev.power_usage().ok().map(|mw| f64::from(mw) / 1000.0);
            t.throttle_reasons = dev.current_throttle_reasons().map(reasons).unwrap_or_default();
        }
        let report = |node: &str, error: &str, n: u64| {
            if let Err(e) = sink.report_async(node, error, n) {
                tracing::warn!("cuda: RAS {node}/{error}: {e}");
            }
        };
        let now = read(&dev, links, remap);
        for (node, error, n) in changes(&last, &now) {
            report(node, error, n);
        }
        last = now;
        match &events {
            Some(set) => match set.wait(poll) {
                Ok(ev) => {
                    let code = match ev.event_data {
                        Some(XidError::Value(x)) => x,
                        _ => 0,
                    };
                    let name =
                        if XIDS.iter().any(|(x, _)| *x == code) { format!("xid-{code}") } else { "xid-other".into() };
                    tracing::warn!("cuda: {uuid}: XID {code}");
                    report("xid", &name, 1);
                }
                Err(NvmlError::Timeout) => {}
                Err(e) => {
                    tracing::warn!("cuda: NVML event wait: {e}");
                    std::thread::sleep(Duration::from_millis(u64::from(poll)));
                }
            },
            None => std::thread::sleep(Duration::from_millis(u64::from(poll))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(remapped: Option<RemappedRows>) -> Readings {
        Readings {
            ecc_corrected: Some(10),
            ecc_uncorrected: Some(0),
            retired_pages: None,
            remapped,
            pcie_replay: Some(3),
            nvlink: [None; 3],
            thermal: false,
            power: false,
        }
    }

    #[test]
    fn counters_report_their_growth_and_conditions_their_start() {
        let rows = RemappedRows { corrected: 2, uncorrected: 0, pending: false, failed: false };
        let last = readings(Some(rows));
        assert_eq!(changes(&last, &last), vec![], "nothing grew");
        let mut now = readings(Some(RemappedRows { corrected: 3, uncorrected: 1, pending: true, failed: false }));
        now.ecc_corrected = Some(14);
        now.thermal = true;
        assert_eq!(
            changes(&last, &now),
            vec![
                ("memory", "ecc-corrected", 4),
                ("memory", "remapped-rows-corrected", 1),
                ("memory", "remapped-rows-uncorrected", 1),
                ("memory", "row-remap-pending", 1),
                ("thermal", "thermal-throttle", 1),
            ]
        );
        // A condition that goes on is reported once; one that ends and begins again, again.
        assert_eq!(changes(&now, &now), vec![]);
        let mut failed = now.clone();
        failed.remapped = Some(RemappedRows { failed: true, ..now.remapped.unwrap() });
        assert_eq!(changes(&now, &failed), vec![("memory", "row-remap-failure", 1)]);
    }

    #[test]
    fn a_counter_the_gpu_lacks_or_that_went_back_reports_nothing() {
        // No remapping on this GPU (before Ampere), or a query that failed once.
        let rows = RemappedRows { corrected: 5, uncorrected: 5, pending: true, failed: true };
        assert_eq!(
            changes(&readings(None), &readings(Some(rows))),
            vec![("memory", "row-remap-pending", 1), ("memory", "row-remap-failure", 1)]
        );
        assert_eq!(changes(&readings(Some(rows)), &readings(None)), vec![]);
        // Volatile ECC counts start again at a GPU reset: a smaller reading is no error.
        let mut reset = readings(None);
        reset.ecc_corrected = Some(0);
        assert_eq!(changes(&readings(None), &reset), vec![]);
    }

    #[test]
    fn every_reported_error_is_a_registered_one() {
        let nodes = ras_nodes();
        let mut all = readings(Some(RemappedRows { corrected: 1, uncorrected: 1, pending: true, failed: true }));
        all.ecc_corrected = Some(11);
        all.ecc_uncorrected = Some(1);
        all.retired_pages = Some(1);
        all.pcie_replay = Some(4);
        all.nvlink = [Some(1); 3];
        (all.thermal, all.power) = (true, true);
        let mut from = readings(Some(RemappedRows::default()));
        from.retired_pages = Some(0);
        from.nvlink = [Some(0); 3];
        let reported = changes(&from, &all);
        assert_eq!(reported.len(), 13, "every counter and condition");
        for (node, error, _) in reported {
            let n = nodes.iter().find(|n| n.name == node).unwrap_or_else(|| panic!("no node {node}"));
            assert!(n.counters.iter().any(|(e, _)| e == error), "{node}/{error} is not registered");
        }
    }
}
