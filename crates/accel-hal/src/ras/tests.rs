use super::commit::coalesced;
use super::*;
use std::fs::OpenOptions;

/// A device that recovers and injects nothing (what the tests below need of a driver).
struct Quiet;

impl RasHooks for Quiet {
    fn ras_attach(&self, _sink: RasSink) {}
    fn ras_recover(&self, _node: &str) -> std::result::Result<(), Errno> {
        Ok(())
    }
    fn ras_inject(&self, _node: &str, _error: &str, _count: u64) -> std::result::Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
}
use std::io::Write;

fn core(log: Option<&Path>) -> Arc<RasCore> {
    core_at(log, log::DEFAULT_MAX_BYTES)
}

fn core_at(log: Option<&Path>, max_bytes: u64) -> Arc<RasCore> {
    let desc = vec![
        RasNodeDesc::new(
            "memory",
            &[("ecc-corrected", Severity::Corrected), ("ecc-uncorrected", Severity::Uncorrected)],
        ),
        RasNodeDesc::new("compute", &[("hang", Severity::Fatal)]),
    ];
    let driver: Arc<dyn RasHooks> = Arc::new(Quiet);
    RasCore::with_log_limit(&[(driver, desc)], log, max_bytes).unwrap()
}

#[test]
fn health_follows_counters_and_thresholds() {
    let ras = core(None);
    assert_eq!(ras.device_health(0), Health::Ok);
    ras.set_threshold(1, 1, 3).unwrap();
    ras.report(1, 1, 2).unwrap();
    assert_eq!(ras.device_health(0), Health::Ok);
    ras.report(1, 1, 1).unwrap();
    assert_eq!(ras.device_health(0), Health::PredictedFailure);
    ras.report(1, 2, 1).unwrap();
    assert_eq!(ras.device_health(0), Health::Degraded);
    ras.report(2, 1, 1).unwrap();
    assert_eq!(ras.device_health(0), Health::Failed);
    ras.clear(2, 1).unwrap();
    assert_eq!(ras.device_health(0), Health::Degraded);
}

#[test]
fn events_are_sequenced_and_subscribers_see_them() {
    let ras = core(None);
    let rx = ras.subscribe();
    ras.report(1, 1, 5).unwrap();
    ras.report(1, 2, 1).unwrap();
    let mut got = rx.try_iter().flatten();
    let a = got.next().unwrap();
    let b = got.next().unwrap();
    assert_eq!((a.seq, a.value, a.delta), (1, 5, 5));
    assert_eq!(b.seq, 2);
    // The uncorrected error triggered an automatic recovery (grace period allows the first).
    let c = got.next().unwrap();
    assert_eq!((c.kind, c.seq, c.value), (EventKind::Recovered, 3, 1));
    assert_eq!(ras.node(1).unwrap().reporter().recovery_count, 1);
}

#[test]
fn a_damaged_record_mid_log_loses_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ras.log");
    let (after_first, last_seq) = {
        let ras = core(Some(&path));
        ras.report(1, 1, 7).unwrap();
        let len = lock(&ras.log.as_ref().unwrap().log).len();
        for _ in 0..100 {
            ras.report(2, 1, 1).unwrap();
        }
        (len, ras.last_seq())
    };
    // Flip a byte inside the second record: its checksum no longer matches.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[after_first as usize + log::FRAME_HEADER + 2] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let ras = core(Some(&path));
    assert_eq!(ras.node(1).unwrap().counters[0].value(), 7);
    assert_eq!(ras.node(2).unwrap().counters[0].value(), 100, "the 99 records after the damage are kept");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes.len() as u64, "nothing valid was cut");
    assert_eq!(ras.report(1, 1, 1).unwrap().seq, last_seq + 1);
}

#[test]
fn appends_overwrite_the_reserved_zeros_and_a_record_ending_in_zeros_survives() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ras.log");
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let (reserved, records_end) = {
        let ras = core(Some(&path));
        let reserved = size(&path);
        assert!(reserved >= log::RESERVE_BYTES, "a new log reserves its first {} bytes", log::RESERVE_BYTES);
        for _ in 0..50 {
            ras.report(1, 1, 1).unwrap();
        }
        assert_eq!(size(&path), reserved, "appends do not grow the file");
        // A cleared counter's record ends in a zero byte (its value), like the reserve.
        ras.clear(1, 1).unwrap();
        let len = lock(&ras.log.as_ref().unwrap().log).len();
        (reserved, len)
    };
    let ras = core(Some(&path));
    assert_eq!(size(&path), reserved, "the reserve is no torn tail");
    assert_eq!(ras.node(1).unwrap().counters[0].value(), 0);
    assert_eq!(ras.recent().last().unwrap().kind, EventKind::Cleared, "the record ending in zeros was read");
    assert_eq!(lock(&ras.log.as_ref().unwrap().log).len(), records_end);
    let seq = ras.report(1, 1, 5).unwrap().seq;
    drop(ras);
    // A crash mid-append inside the reserve: half a frame, zeros after it.
    let end = {
        let ras = core(Some(&path));
        let end = lock(&ras.log.as_ref().unwrap().log).len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&[40, 0, 0, 0, 9, 9], end).unwrap();
        drop(ras);
        end
    };
    let ras = core(Some(&path));
    assert_eq!(ras.node(1).unwrap().counters[0].value(), 5);
    assert_eq!(ras.last_seq(), seq);
    assert_eq!(lock(&ras.log.as_ref().unwrap().log).len(), end, "the torn frame was cut");
    ras.report(1, 1, 1).unwrap();
    drop(ras);
    assert_eq!(core(Some(&path)).node(1).unwrap().counters[0].value(), 6, "the next append replaced it");
}

#[test]
fn log_survives_restart_and_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ras.log");
    {
        let ras = core(Some(&path));
        ras.report(1, 1, 7).unwrap();
        ras.set_threshold(1, 1, 100).unwrap();
        ras.report(2, 1, 1).unwrap();
    }
    // A crash mid-append leaves half a frame behind.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let ras = core(Some(&path));
    assert_eq!(ras.node(1).unwrap().counters[0].value(), 7);
    assert_eq!(ras.node(1).unwrap().counters[0].threshold(), 100);
    assert_eq!(ras.node(2).unwrap().counters[0].value(), 1);
    assert_eq!(ras.device_health(0), Health::Failed);
    let next = ras.report(1, 1, 1).unwrap();
    assert!(next.seq > 3, "sequence numbers continue after restart");
    assert_eq!(ras.recent().first().unwrap().seq, 1);
}

#[test]
fn compaction_bounds_the_log_and_keeps_every_counter_and_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ras.log");
    let last = {
        let ras = core_at(Some(&path), 4096);
        ras.set_threshold(1, 1, 1000).unwrap();
        for i in 0..600 {
            ras.report(1 + (i % 2), 1, 1).unwrap();
        }
        let (syncs, rotations) = ras.log_stats();
        assert!((4..syncs / 4).contains(&rotations), "compacted {rotations} times in {syncs} appends");
        let log = lock(&ras.log.as_ref().unwrap().log);
        assert!(log.len() <= 4096 + 64, "the log stays within its bound");
        assert!(std::fs::metadata(&path).unwrap().len() <= 2 * 4096, "and so does its reserve");
        ras.last_seq()
    };
    let ras = core_at(Some(&path), 4096);
    assert_eq!(ras.node(1).unwrap().counters[0].value(), 300);
    assert_eq!(ras.node(2).unwrap().counters[0].value(), 300);
    assert_eq!(ras.node(1).unwrap().counters[0].threshold(), 1000);
    assert_eq!(ras.last_seq(), last, "sequence numbers continue");
    let recent = ras.recent();
    assert!(!recent.is_empty() && recent.last().unwrap().seq == last, "the history survives compaction");
    assert!(recent.iter().all(|e| e.kind == EventKind::Error), "snapshots are not events");
}

#[test]
fn a_crash_mid_compaction_leaves_the_old_log_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ras.log");
    {
        let ras = core(Some(&path));
        ras.report(1, 1, 42).unwrap();
    }
    // A compaction that died before its rename leaves a partial file beside the log.
    std::fs::write(path.with_extension("log.new"), [1, 2, 3]).unwrap();
    let ras = core(Some(&path));
    assert_eq!(ras.node(1).unwrap().counters[0].value(), 42);
}

#[test]
fn a_monitors_storm_across_compactions_keeps_every_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ras.log");
    let last = {
        let ras = core_at(Some(&path), 4096);
        // A waiting report every 25 cuts the storm into batches, so the log grows past its
        // bound again and again while the sync thread syncs behind the writes.
        for i in 0..3000 {
            if i % 25 == 0 {
                ras.report(1, 2, 1).unwrap();
            }
            ras.report_with(1 + (i % 2), 1, 1, false).unwrap();
        }
        assert!(ras.flush(std::time::Duration::from_secs(10)), "flushed");
        assert_eq!(ras.log_unsynced(), 0);
        assert!(ras.log_stats().1 > 1, "compacted meanwhile: {:?}", ras.log_stats());
        ras.last_seq()
    };
    let ras = core_at(Some(&path), 4096);
    let values: Vec<u64> = [(1, 0), (2, 0), (1, 1)].map(|(n, c)| ras.node(n).unwrap().counters[c].value()).into();
    assert_eq!((values, ras.last_seq()), (vec![1500, 1500, 120], last));
}

#[test]
fn reports_still_queued_are_written_when_the_core_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ras.log");
    for round in 1..=20u64 {
        let ras = core(Some(&path));
        assert_eq!(ras.node(1).unwrap().counters[0].value(), 200 * (round - 1), "round {round}");
        for _ in 0..200 {
            ras.report_with(1, 1, 1, false).unwrap();
        }
        // Dropped at once, reports still queued: the last holder of the core (this
        // thread, or the log thread finishing a batch) writes them on its way out; the
        // log's threads end after that.
        let committer = Arc::downgrade(ras.log.as_ref().unwrap());
        drop(ras);
        let t = std::time::Instant::now();
        while committer.strong_count() > 0 {
            assert!(t.elapsed().as_secs() < 5, "the log's threads did not end");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    assert_eq!(core(Some(&path)).node(1).unwrap().counters[0].value(), 4000);
}

#[test]
fn a_failed_background_sync_rewrites_the_log_whole() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ras.log");
    let ras = core(Some(&path));
    for _ in 0..10 {
        ras.report_with(1, 1, 1, false).unwrap();
    }
    ras.report(1, 2, 1).unwrap();
    let before = std::fs::metadata(&path).unwrap().ino();
    // The kernel may drop the written pages with the error (and report it once): what the
    // log took is written again, to a new file.
    let eio = Err(std::io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error()));
    lock(&ras.log.as_ref().unwrap().log).synced(&eio);
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), before, "a new file took the log's place");
    assert_eq!(ras.log_stats().1, 1, "counted as a compaction");
    drop(ras);
    let ras = core(Some(&path));
    let values: Vec<u64> = ras.node(1).unwrap().counters.iter().map(|c| c.value()).collect();
    assert_eq!(values, [10, 1]);
}

#[test]
fn a_storm_on_one_counter_logs_its_last_event_and_restores_every_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ras.log");
    let last = {
        let ras = core(Some(&path));
        for _ in 0..1000 {
            ras.report_with(1, 1, 1, false).unwrap();
        }
        ras.report(1, 1, 1).unwrap().seq // durable once this one is: the log is in order
    };
    let ras = core(Some(&path));
    assert_eq!(ras.node(1).unwrap().counters[0].value(), 1001, "every error counted after a restart");
    assert_eq!(ras.last_seq(), last, "sequence numbers continue");
    let recent = ras.recent();
    assert_eq!((recent.last().unwrap().seq, recent.last().unwrap().value), (last, 1001), "the last event");
}

#[test]
fn a_batch_keeps_the_last_error_of_each_counter_and_every_other_record() {
    let ras = core(None);
    // Node 1 is memory (counters 1 and 2), node 2 compute.
    let event = |seq, node_id, error_id, kind, value| RasEvent {
        seq,
        timestamp_ns: seq,
        node_id,
        error_id,
        kind,
        severity: Severity::Corrected,
        delta: 1,
        value,
    };
    let batch = [
        event(1, 1, 1, EventKind::Error, 1),
        event(2, 2, 1, EventKind::Error, 1),
        event(3, 1, 1, EventKind::Error, 2),
        event(4, 1, 1, EventKind::ThresholdSet, 10),
        event(5, 1, 1, EventKind::Error, 3),
        event(6, 1, 1, EventKind::Cleared, 0),
        event(7, 2, 1, EventKind::Error, 2),
        event(8, 1, 2, EventKind::Error, 1),
    ];
    let kept = coalesced(&ras, &batch.iter().collect::<Vec<_>>());
    let seqs: Vec<u64> = kept.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![4, 5, 6, 7, 8]);
    let r = &kept[4];
    assert_eq!((r.device.as_str(), r.node.as_str(), r.error.as_str()), ("accel0", "memory", "ecc-uncorrected"));
    assert_eq!((r.kind, r.value), (LogKind::Error, 1));
    assert_eq!((kept[3].node.as_str(), kept[3].error.as_str()), ("compute", "hang"));
}

#[test]
fn a_monitors_reports_are_told_once_written_and_synced_right_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ras.log");
    let ras = core(Some(&path));
    let rx = ras.subscribe();
    for _ in 0..1000 {
        ras.report_with(1, 1, 1, false).unwrap();
    }
    let mut seen = 0;
    while seen < 1000 {
        seen += rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap().len();
    }
    assert!(ras.flush(std::time::Duration::from_secs(5)), "{} events never synced", ras.log_unsynced());
    let (syncs, _) = ras.log_stats();
    assert!((1..1000).contains(&syncs), "1000 reports took {syncs} background syncs");
    // A waiting emitter's batch is synced before it returns, with everything before it.
    for _ in 0..100 {
        ras.report_with(1, 1, 1, false).unwrap();
    }
    let last = ras.report(1, 1, 1).unwrap();
    assert_eq!((ras.log_unsynced(), last.value), (0, 1101));
    drop((rx, ras));
    let ras = core(Some(&path));
    assert_eq!((ras.node(1).unwrap().counters[0].value(), ras.last_seq()), (1101, 1101));
}

#[test]
fn concurrent_events_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let ras = core(Some(&dir.path().join("ras.log")));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let ras = ras.clone();
            std::thread::spawn(move || {
                for _ in 0..125 {
                    ras.report(1, 1, 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ras.node(1).unwrap().counters[0].value(), 1000);
    let (syncs, _) = ras.log_stats();
    assert!(syncs < 1000, "1000 events from 8 threads took {syncs} fsyncs");
    let seqs: Vec<u64> = ras.recent().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>(), "published in order, none lost");
}
