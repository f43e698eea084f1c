//! The stats document (`vmm run --stats FILE`, and the `metrics:` line at
//! `VMM_LOG=info`): one JSON object gathering the counters of every
//! component, the frame states, the reclaimer's work and measured memory.
//!
//! Shape (names are read by the integration tests; keep them):
//! `{"hypercalls": {...}, "exits": {...}, "frames": {...}, "reclaim":
//! {...}, "memory": {...}, "block": {...}, "bus": {...}, "serial": {...},
//! "discard_faults": {...}, "potentially_volatile": {...},
//! "host_failures": {...}, "injected_faults": {...}, "elapsed_ms": n}`. The file is written to `FILE.tmp` and renamed, so a
//! reader never sees half a document. A write that fails is counted
//! (`host_failures.stats_write`) and returned for the caller to log: the
//! periodic writer logs the run's first failure only and goes on, the
//! final write is tried twice. This module must never change another counter,
//! and never fail the run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fault_inject::{self, Injected};
use crate::frames::{FrameCounts, FrameTable};
use crate::metrics::{
    BlockMetrics, BusMetrics, DiscardFaultMetrics, ExitMetrics, HostFailureMetrics,
    HypercallMetrics, Metrics, PotentiallyVolatileMetrics, SerialMetrics,
};
use crate::periodic::{Periodic, PeriodicThread};
use crate::reclaim::budget::BudgetControl;

/// Why the stats file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("cannot serialise the stats: {0}")]
    Json(#[source] serde_json::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The `reclaim` object.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReclaimDoc {
    /// Rounds in which the reclaimer had something to drop.
    pub rounds: u64,
    /// Frames dropped since the start.
    pub pages_discarded: u64,
    /// Frames a stable-making hint found dropped (handed back as zeroes).
    pub zero_fills: u64,
    pub madvise_calls: u64,
    pub process_madvise_calls: u64,
    /// Time spent dropping, total and longest round, in microseconds.
    pub time_us: u64,
    pub max_round_us: u64,
    /// Time spent noting which entries changed, for the victim order.
    pub age_us: u64,
    /// Rounds the cgroup's usage event woke, and those that dropped.
    pub event_wakes: u64,
    pub event_drops: u64,
    /// Time spent measuring residency, in microseconds, and how many
    /// measurements read pagemap (the rest found nothing changed).
    pub measure_us: u64,
    pub pagemap_reads: u64,
    /// Rounds where host memory pressure passed `--psi-threshold`.
    pub psi_triggers: u64,
    /// Free page reporting: reports honoured and frames they dropped.
    pub reports: u64,
    pub reported_pages: u64,
    /// The eager unused policy: frames dropped because they stayed Unused
    /// for `--unused-delay` (also in `pages_discarded`), those of them the
    /// guest took back since, and the time its passes took.
    pub unused_eager_pages: u64,
    pub unused_eager_refaults: u64,
    pub unused_eager_us: u64,
}

/// The `memory` object.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MemoryDoc {
    pub guest_bytes: u64,
    /// Last measured resident guest memory.
    pub resident_bytes: u64,
    pub resident_peak_bytes: u64,
    /// The budget now (`--host-budget`, or what the API set last), or
    /// null.
    pub budget_bytes: Option<u64>,
    /// The memory cgroup's limit and the budget its headroom gave at the
    /// last reclaimer round (`--cgroup-budget`), or null.
    pub cgroup_limit_bytes: Option<u64>,
    pub cgroup_budget_bytes: Option<u64>,
    /// What that budget kept free below the limit (the measured reserve),
    /// or null.
    pub cgroup_reserve_bytes: Option<u64>,
}

/// The whole document.
#[derive(Debug, Serialize)]
pub struct StatsDoc<'a> {
    pub hypercalls: &'a HypercallMetrics,
    pub exits: &'a ExitMetrics,
    pub frames: FrameCounts,
    pub reclaim: ReclaimDoc,
    pub memory: MemoryDoc,
    pub block: &'a BlockMetrics,
    pub bus: &'a BusMetrics,
    pub serial: &'a SerialMetrics,
    pub discard_faults: &'a DiscardFaultMetrics,
    /// `--potentially-volatile`'s counters (all zero without it).
    pub potentially_volatile: &'a PotentiallyVolatileMetrics,
    /// Host calls that failed, by site.
    pub host_failures: &'a HostFailureMetrics,
    /// Faults the `--inject-fault` test hook injected, by point (all zero
    /// without it).
    pub injected_faults: Injected,
    pub elapsed_ms: u64,
}

/// `None` for a gauge that was never set.
fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

/// Everything the document is made from; cheap to clone into threads.
#[derive(Debug, Clone)]
pub struct StatsSource {
    metrics: Arc<Metrics>,
    table: Arc<FrameTable>,
    guest_bytes: u64,
    budget: Arc<BudgetControl>,
    start: Instant,
}

impl StatsSource {
    /// A source over the run's counters and the reclaimer's `budget`;
    /// `elapsed_ms` counts from now.
    pub fn new(
        metrics: Arc<Metrics>,
        table: Arc<FrameTable>,
        guest_bytes: u64,
        budget: Arc<BudgetControl>,
    ) -> Self {
        Self {
            metrics,
            table,
            guest_bytes,
            budget,
            start: Instant::now(),
        }
    }

    /// Guest RAM in bytes.
    pub fn guest_bytes(&self) -> u64 {
        self.guest_bytes
    }

    /// Time since the source was made (the run's start), in milliseconds.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The document as of now.
    pub fn document(&self) -> StatsDoc<'_> {
        let m = &self.metrics;
        let r = &m.reclaim;
        StatsDoc {
            hypercalls: &m.hypercalls,
            exits: &m.exits,
            frames: self.table.counts(),
            reclaim: ReclaimDoc {
                rounds: r.rounds.get(),
                pages_discarded: self.table.total_discards(),
                zero_fills: self.table.zero_fills(),
                madvise_calls: r.madvise_calls.get(),
                process_madvise_calls: r.process_madvise_calls.get(),
                time_us: r.time_us.get(),
                max_round_us: r.max_round_us.get(),
                age_us: r.age_us.get(),
                event_wakes: r.event_wakes.get(),
                event_drops: r.event_drops.get(),
                measure_us: r.measure_us.get(),
                pagemap_reads: r.pagemap_reads.get(),
                psi_triggers: r.psi_triggers.get(),
                reports: r.reports.get(),
                reported_pages: r.reported_pages.get(),
                unused_eager_pages: r.unused_eager_pages.get(),
                unused_eager_refaults: r.unused_eager_refaults.get(),
                unused_eager_us: r.unused_eager_us.get(),
            },
            memory: MemoryDoc {
                guest_bytes: self.guest_bytes,
                resident_bytes: m.memory.resident_bytes.get(),
                resident_peak_bytes: m.memory.resident_peak_bytes.get(),
                budget_bytes: self.budget.get(),
                cgroup_limit_bytes: nonzero(m.memory.cgroup_limit_bytes.get()),
                cgroup_budget_bytes: nonzero(m.memory.cgroup_budget_bytes.get()),
                cgroup_reserve_bytes: nonzero(m.memory.cgroup_reserve_bytes.get()),
            },
            block: &m.block,
            bus: &m.bus,
            serial: &m.serial,
            discard_faults: &m.discard_faults,
            potentially_volatile: &m.potentially_volatile,
            host_failures: &m.host_failures,
            injected_faults: fault_inject::injected(),
            elapsed_ms: self.elapsed_ms(),
        }
    }

    /// The document as one line of JSON.
    pub fn to_json(&self) -> Result<String, StatsError> {
        serde_json::to_string(&self.document()).map_err(StatsError::Json)
    }

    /// Writes the document to `path` (through `path.tmp` and a rename);
    /// a failure is counted.
    pub fn write(&self, path: &Path) -> Result<(), StatsError> {
        let r = self.write_once(path);
        if r.is_err() {
            self.metrics.host_failures.stats_write.inc();
        }
        r
    }

    fn write_once(&self, path: &Path) -> Result<(), StatsError> {
        let mut json = self.to_json()?;
        json.push('\n');
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let err = |source| StatsError::Write {
            path: path.to_path_buf(),
            source,
        };
        fault_inject::check_io(fault_inject::Point::StatsWrite).map_err(err)?;
        std::fs::write(&tmp, json).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

/// Writes the stats file each interval.
struct Writer {
    source: StatsSource,
    path: PathBuf,
    /// A failed write was logged (later ones are only counted).
    warned: bool,
}

impl Periodic for Writer {
    fn tick(&mut self) {
        if let Err(e) = self.source.write(&self.path) {
            if !self.warned {
                log::warn!(
                    "stats: {e}; retrying every interval (further failures are only counted)"
                );
                self.warned = true;
            }
        }
    }
}

/// The thread that writes the stats file every interval while the guest
/// runs; stopping it (or dropping it) joins it. The final write, after
/// every other thread has stopped, is the machine's.
#[derive(Debug)]
pub struct StatsWriter {
    thread: PeriodicThread,
}

impl StatsWriter {
    /// Starts writing `source` to `path` every `interval`.
    pub fn spawn(source: StatsSource, path: PathBuf, interval: Duration) -> std::io::Result<Self> {
        let thread = PeriodicThread::spawn(
            "stats",
            interval,
            Writer {
                source,
                path,
                warned: false,
            },
        )?;
        Ok(Self { thread })
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.thread.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::hypercall::HintOp;

    fn budget(bytes: Option<u64>) -> Arc<BudgetControl> {
        Arc::new(BudgetControl::new(bytes).unwrap())
    }

    #[test]
    fn the_document_has_the_names_the_tests_read() {
        let metrics = Arc::new(Metrics::default());
        let table = Arc::new(FrameTable::new(16, false));
        table.apply_range(0, 4, HintOp::SetUnused).unwrap();
        metrics.hypercalls.hint_batch.inc();
        metrics.memory.resident_bytes.set(8192);
        metrics.memory.resident_peak_bytes.raise(12288);
        let s = StatsSource::new(metrics, table, 65536, budget(None));
        let v: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(v["memory"]["resident_bytes"], 8192);
        assert_eq!(v["memory"]["resident_peak_bytes"], 12288);
        assert_eq!(v["memory"]["guest_bytes"], 65536);
        assert!(v["memory"]["budget_bytes"].is_null());
        assert_eq!(v["reclaim"]["pages_discarded"], 0);
        assert_eq!(v["reclaim"]["reported_pages"], 0);
        for k in [
            "unused_eager_pages",
            "unused_eager_refaults",
            "unused_eager_us",
        ] {
            assert_eq!(v["reclaim"][k], 0, "reclaim.{k}");
        }
        assert!(v["memory"]["cgroup_budget_bytes"].is_null());
        assert!(v["memory"]["cgroup_reserve_bytes"].is_null());
        assert_eq!(v["frames"]["unused"], 4);
        assert_eq!(v["frames"]["stable"], 12);
        assert_eq!(v["frames"]["potentially_volatile"], 0);
        assert_eq!(v["hypercalls"]["hint_batch"], 1);
        assert_eq!(v["hypercalls"]["errors"]["illegal_transition"], 0);
        assert!(v["exits"]["io_out"].is_u64());
        assert!(v["block"]["reads"].is_u64());
        assert!(v["elapsed_ms"].is_u64());
        let d = &v["discard_faults"];
        for k in [
            "injected",
            "zero_fills_not_volatile",
            "zero_fills_marked",
            "livelocks_broken",
            "protocol_violations",
            "uffd_registered_pages",
            "events",
        ] {
            assert!(d[k].is_u64(), "discard_faults.{k}");
        }
        assert!(d["round_trip_us"]["p50_us"].is_u64());
        assert!(d["stages"]["total"]["p50_us"].is_f64());
        assert_eq!(d["stages"]["kick_to_exit"]["count"], 0);
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("vmm-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        let s = StatsSource::new(
            Arc::new(Metrics::default()),
            Arc::new(FrameTable::new(1, false)),
            4096,
            budget(Some(4096)),
        );
        s.write(&path).unwrap();
        s.write(&path).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["memory"]["budget_bytes"], 4096);
        assert!(!dir.join("s.json.tmp").exists());
        assert!(s.write(&dir.join("missing/s.json")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_writer_writes_every_interval_until_stopped() {
        let metrics = Arc::new(Metrics::default());
        let table = Arc::new(FrameTable::new(16, false));
        let dir = std::env::temp_dir().join(format!("vmm-stats-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.json");
        let source = StatsSource::new(metrics.clone(), table, 65536, budget(None));
        let w = StatsWriter::spawn(source, path.clone(), Duration::from_millis(5)).unwrap();
        let t = Instant::now();
        while !path.exists() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        w.stop();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["memory"]["guest_bytes"], 65536);
        std::fs::remove_file(&path).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!path.exists(), "a stopped writer writes no more");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
