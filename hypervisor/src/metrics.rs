//! Counters of what the VMM saw, grouped per component; each group
//! serialises (serde) as one JSON object of the stats document
//! (`crate::stats`).
//!
//! Every counter is a relaxed atomic so that vCPU threads, the block worker
//! and the reclaimer bump them without locks. This module only counts: it
//! must never decide anything, never block and never fail, whatever the
//! guest does.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Serialize, Serializer};

use crate::latency::FineHistogram;

/// One monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

/// A value that goes up and down (a measurement), with its own maximum kept
/// by the caller through [`Gauge::raise`].
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Raises the value to `v` if `v` is larger (a running maximum).
    pub fn raise(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }

    /// Adds `n` (saturating).
    pub fn add(&self, n: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add(n))
            });
    }

    /// Subtracts `n`, stopping at zero.
    pub fn sub(&self, n: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Gauge {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

/// Buckets of a [`Histogram`]: bucket `i` holds values in `[2^i, 2^(i+1))`
/// microseconds (bucket 0 also holds 0).
const HISTOGRAM_BUCKETS: usize = 32;

/// A lock-free histogram of durations in microseconds, power-of-two
/// buckets; serialises as a summary (`count`, `mean_us`, `p50_us`,
/// `p99_us`, `max_us`; the percentiles are bucket upper bounds).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; HISTOGRAM_BUCKETS],
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

/// What a [`Histogram`] serialises as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HistogramSummary {
    pub count: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, us: u64) {
        let i = (u64::BITS - us.leading_zeros()).saturating_sub(1) as usize;
        self.buckets[i.min(HISTOGRAM_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The summary as of now.
    pub fn summary(&self) -> HistogramSummary {
        let count = self.count.load(Ordering::Relaxed);
        let max_us = self.max_us.load(Ordering::Relaxed);
        let quantile = |q: u64| {
            // The smallest bucket bound covering q percent of the values.
            let want = count.saturating_mul(q).div_ceil(100).max(1);
            let mut seen = 0u64;
            for (i, b) in self.buckets.iter().enumerate() {
                seen = seen.saturating_add(b.load(Ordering::Relaxed));
                if seen >= want {
                    return ((1u64 << (i + 1)) - 1).min(max_us);
                }
            }
            max_us
        };
        HistogramSummary {
            count,
            mean_us: self
                .sum_us
                .load(Ordering::Relaxed)
                .checked_div(count)
                .unwrap_or(0),
            p50_us: if count == 0 { 0 } else { quantile(50) },
            p99_us: if count == 0 { 0 } else { quantile(99) },
            max_us,
        }
    }
}

impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.summary().serialize(s)
    }
}

/// Discard faults (`crate::discard_fault`).
#[derive(Debug, Default, Serialize)]
pub struct DiscardFaultMetrics {
    /// userfaultfd page-fault events read.
    pub events: Counter,
    /// Discard faults (vector 20) injected into a vCPU.
    pub injected: Counter,
    /// Faults on registered frames no longer volatile (made stable or
    /// unused meanwhile): backed with a zero page.
    pub zero_fills_not_volatile: Counter,
    /// Faults by a thread that runs no vCPU (the block worker, say):
    /// backed with a zero page.
    pub zero_fills_other_thread: Counter,
    /// Livelocks broken: a vCPU kept faulting on a dropped frame (a
    /// kernel-mode access on a host whose KVM emulates it, or a discard
    /// fault the guest did not handle), so the frame was backed with
    /// zeroes; its entry still says discarded. Also counted in
    /// `protocol_violations`.
    pub livelocks_broken: Counter,
    /// Zero fills (of any kind above) that found the frame's entry neither
    /// stable, discarded nor busy and set DISCARDED on it, before the fill
    /// and only while the frame was registered (so still missing), so that
    /// the guest learns of the drop (a frame it had made volatile or unused
    /// again after being told, say).
    pub zero_fills_marked: Counter,
    /// Faults the guest handled wrongly or could not be told of: a
    /// repeating fault broken by backing the page, or a fault on a vCPU
    /// without a registered info area.
    pub protocol_violations: Counter,
    /// Kicks that found an event in flight, so no discard fault could be
    /// injected then (the access faults again).
    pub deferred: Counter,
    /// Guest frames registered with userfaultfd now.
    pub uffd_registered_pages: Gauge,
    /// `SET_FAULT_INFO` registrations accepted.
    pub info_areas: Counter,
    /// From publishing the fault (just before the kick) to its injection
    /// on the vCPU thread.
    pub round_trip_us: Histogram,
    /// The round trip stage by stage (`docs/stats.md`).
    pub stages: DiscardStages,
}

/// The stages of one discard fault's round trip, each timed on its own
/// (`crate::discard_fault`): the handler thread's, the kick's and the vCPU
/// thread's, and the whole VMM side. One sample per injected fault, except
/// `zero_fill` (faults answered with the zero page instead).
#[derive(Debug, Default, Serialize)]
pub struct DiscardStages {
    /// Handler: `poll` returned -> the fault events read.
    pub handler_read: FineHistogram,
    /// Handler: events read -> the fault published to its vCPU (the
    /// checks: vCPU, frame state, livelock).
    pub handler_decide: FineHistogram,
    /// Handler: the `tgkill` of the kick.
    pub kick_send: FineHistogram,
    /// Published -> the vCPU thread back from `KVM_RUN` (`EINTR`): the
    /// signal's delivery, the thread's wake-up, KVM's way out.
    pub kick_to_exit: FineHistogram,
    /// vCPU: back from `KVM_RUN` -> #VE injected (info area written,
    /// `KVM_GET_VCPU_EVENTS`, `KVM_SET_VCPU_EVENTS`).
    pub inject: FineHistogram,
    /// vCPU: injected -> entering `KVM_RUN` again.
    pub reenter: FineHistogram,
    /// The VMM side as a whole: `poll` returned -> entering `KVM_RUN`.
    pub total: FineHistogram,
    /// A fault answered with the zero page (not a discard fault): the
    /// mark, `UFFDIO_ZEROPAGE` (which wakes the thread) and the
    /// unregistration.
    pub zero_fill: FineHistogram,
}

/// vCPU exits, by kind (summed over all vCPUs).
#[derive(Debug, Default, Serialize)]
pub struct ExitMetrics {
    pub io_in: Counter,
    pub io_out: Counter,
    pub mmio_read: Counter,
    pub mmio_write: Counter,
    pub hlt: Counter,
    /// `KVM_RUN` returned `EINTR` (a kick) or `EAGAIN` (an AP woke up).
    pub interrupted: Counter,
    pub shutdown: Counter,
    pub internal_error: Counter,
    pub fail_entry: Counter,
    pub other: Counter,
}

/// The port-I/O bus.
#[derive(Debug, Default, Serialize)]
pub struct BusMetrics {
    /// Reads of a port no device claims (answered with all-ones).
    pub unhandled_reads: Counter,
    /// Writes to a port no device claims (ignored).
    pub unhandled_writes: Counter,
    /// MMIO loads no device claims (answered with all-ones).
    pub unhandled_mmio_reads: Counter,
    /// MMIO stores no device claims (ignored).
    pub unhandled_mmio_writes: Counter,
}

/// The hypercall port: calls by operation, hint entries by hint operation,
/// and errors by kind.
#[derive(Debug, Default, Serialize)]
pub struct HypercallMetrics {
    /// `HELLO` calls, whatever their result.
    pub hello: Counter,
    /// `HINT_BATCH` calls, whatever their result.
    pub hint_batch: Counter,
    /// `SET_FAULT_INFO` calls, whatever their result.
    pub set_fault_info: Counter,
    /// `SET_STATE_TABLE` calls, whatever their result.
    pub set_state_table: Counter,
    /// Hint entries processed, by hint operation (whatever their result).
    pub set_unused: Counter,
    pub set_stable: Counter,
    pub make_volatile: Counter,
    pub make_stable: Counter,
    pub check_writable: Counter,
    /// Everything the guest got wrong.
    pub errors: HypercallErrors,
}

/// Hypercall errors, by kind.
#[derive(Debug, Default, Serialize)]
pub struct HypercallErrors {
    /// Calls with an operation code we do not know.
    pub unknown_op: Counter,
    /// `HELLO` with another ABI version.
    pub bad_version: Counter,
    /// Doorbell writes naming a misaligned block or one outside RAM; hint
    /// batches whose page is misaligned or outside RAM; `SET_STATE_TABLE`
    /// tables and `SET_FAULT_INFO` areas misaligned or misplaced.
    pub bad_block: Counter,
    /// Doorbell writes that were not 32 bits wide, or reads of the port.
    pub bad_access: Counter,
    /// Hint batches with an entry count of 0 or above the maximum.
    pub bad_count: Counter,
    /// Hint entries naming frames outside RAM or a bad frame count; free
    /// page reports not honoured; `SET_STATE_TABLE` with the wrong count or
    /// a second time; `SET_FAULT_INFO` with a vCPU index out of range.
    pub bad_argument: Counter,
    /// Hint entries with an unknown hint operation.
    pub unknown_hint: Counter,
    /// Hint entries asking for a transition the state machine forbids.
    pub illegal_transition: Counter,
    /// `HINT_BATCH` while hinting is turned off (`--no-hinting`),
    /// `SET_FAULT_INFO` while discard faults are, `SET_STATE_TABLE` when
    /// the table is not offered.
    pub hints_disabled: Counter,
}

/// The host-side reclaimer (`crate::reclaim`).
#[derive(Debug, Default, Serialize)]
pub struct ReclaimMetrics {
    /// Rounds that ran a budget or PSI drop pass (not one per interval:
    /// a round with nothing over the budget, or an eager pass, is not
    /// counted).
    pub rounds: Counter,
    /// `madvise(MADV_DONTNEED)` calls.
    pub madvise_calls: Counter,
    /// `process_madvise` calls.
    pub process_madvise_calls: Counter,
    /// Time spent discarding (not measuring), in microseconds.
    pub time_us: Counter,
    /// The longest single round's discarding, in microseconds.
    pub max_round_us: Gauge,
    /// Time spent noting which table entries changed (the victim order's
    /// host age, `crate::reclaim::age`), in microseconds.
    pub age_us: Counter,
    /// Rounds run at once because the cgroup's usage event fired
    /// (`crate::reclaim::usage_event`), and those of them that dropped
    /// frames.
    pub event_wakes: Counter,
    pub event_drops: Counter,
    /// Time spent measuring residency (statm, and pagemap when read), in
    /// microseconds.
    pub measure_us: Counter,
    /// Measurements that read the pagemap of all of guest RAM (the others
    /// found nothing changed and re-read a twentieth of it).
    pub pagemap_reads: Counter,
    /// Rounds where the PSI threshold was exceeded.
    pub psi_triggers: Counter,
    /// Free page reporting: reports (hint entries) honoured, and the
    /// frames they dropped (`crate::reclaim::reporting`).
    pub reports: Counter,
    pub reported_pages: Counter,
    /// The eager unused policy (`crate::reclaim::eager`): frames dropped
    /// because they stayed Unused for the unused delay, whatever the
    /// budget; those of them the guest took back since (each then reads
    /// as zeroes: a host page fault on its next touch); and the time its
    /// passes took, scan and drops, in microseconds.
    pub unused_eager_pages: Counter,
    pub unused_eager_refaults: Counter,
    pub unused_eager_us: Counter,
}

/// Guest memory as measured on the host.
#[derive(Debug, Default)]
pub struct MemoryMetrics {
    /// Bytes of guest RAM resident now (last measurement).
    pub resident_bytes: Gauge,
    /// Largest measured resident size.
    pub resident_peak_bytes: Gauge,
    /// The memory cgroup's limit, and the budget its headroom gave at the
    /// last round (`crate::reclaim::cgroup`); 0 when there is none.
    pub cgroup_limit_bytes: Gauge,
    pub cgroup_budget_bytes: Gauge,
    /// What that budget kept free below the limit: the measured reserve
    /// (`crate::reclaim::headroom`).
    pub cgroup_reserve_bytes: Gauge,
}

/// The serial console.
#[derive(Debug, Default, Serialize)]
pub struct SerialMetrics {
    /// Register writes the UART model refused or could not complete.
    pub write_errors: Counter,
    /// Console bytes dropped: stdout did not take them in time (the
    /// buffer was full, or the VMM stopped), or stdout was gone.
    pub dropped_bytes: Counter,
    /// Times console output found stdout full and waited in the buffer.
    pub stalls: Counter,
}

/// The virtio block device.
#[derive(Debug, Default, Serialize)]
pub struct BlockMetrics {
    /// Requests by type.
    pub reads: Counter,
    pub writes: Counter,
    pub flushes: Counter,
    pub get_id: Counter,
    pub unsupported: Counter,
    /// Bytes moved between the image and guest memory.
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    /// Requests that failed, by why.
    pub err_outside_ram: Counter,
    pub err_past_end: Counter,
    pub err_bad_length: Counter,
    pub err_too_long: Counter,
    pub err_layout: Counter,
    pub err_header: Counter,
    pub err_read_only: Counter,
    pub err_io: Counter,
    /// Chains completed without a status (no writable status byte).
    pub dropped: Counter,
    /// Interrupts raised (used-buffer and configuration-change).
    pub interrupts: Counter,
    /// Times the driver did something illegal and got DEVICE_NEEDS_RESET.
    pub needs_reset: Counter,
    /// Register accesses of the wrong width or at an unknown offset.
    pub bad_access: Counter,
}

/// Potentially volatile frames (`--potentially-volatile`): the reclaimer's
/// dirty-log passes and the block worker's clears of the log.
#[derive(Debug, Default, Serialize)]
pub struct PotentiallyVolatileMetrics {
    /// Passes over Potentially volatile frames that ran (vCPUs paused).
    pub passes: Counter,
    /// Pauses of every vCPU asked for, those that timed out (the pass was
    /// skipped), and the time from asking to resuming, in microseconds.
    pub pauses: Counter,
    pub pause_timeouts: Counter,
    pub pause_us_total: Counter,
    /// `KVM_GET_DIRTY_LOG` readings of every slot, and their time.
    pub dirty_log_reads: Counter,
    pub dirty_log_us_total: Counter,
    /// Frames the log showed written: made Stable again.
    pub found_written: Counter,
    /// Frames the log proved clean and the pass dropped.
    pub discarded: Counter,
    /// `KVM_CLEAR_DIRTY_LOG` rounds of the block worker (one per request
    /// that moved whole pages) and the frames they cleared.
    pub clears: Counter,
    pub cleared_pages: Counter,
}

/// Host calls that failed, by site (the disk's are `block.err_io`). Each
/// counts real failures and injected ones alike (`crate::fault_inject`).
#[derive(Debug, Default, Serialize)]
pub struct HostFailureMetrics {
    /// `madvise(MADV_DONTNEED)` calls that failed, and the frames they
    /// left resident (not marked discarded, contents intact).
    pub madvise: Counter,
    pub madvise_kept_pages: Counter,
    /// `process_madvise` calls that failed (their runs went through
    /// `madvise` instead).
    pub process_madvise: Counter,
    /// `UFFDIO_REGISTER` refused: the run was kept, not dropped.
    pub uffd_register: Counter,
    /// `UFFDIO_UNREGISTER` refused: the frames stay registered with the
    /// kernel; a later touch is answered with the zero page.
    pub uffd_unregister: Counter,
    /// `UFFDIO_ZEROPAGE`/`UFFDIO_WAKE` answered `EAGAIN` and were retried.
    pub uffd_retries: Counter,
    /// `UFFDIO_ZEROPAGE`/`UFFDIO_WAKE` failed for good: the frame was
    /// unregistered instead (the waiter then gets a zero page from the
    /// kernel); and those whose unregistration failed too, which stopped
    /// the run (`crate::fatal`).
    pub uffd_fill: Counter,
    pub uffd_fill_stops: Counter,
    /// The fault handler could not read the userfaultfd: it stopped, and
    /// so did the run (`crate::fatal`).
    pub uffd_read: Counter,
    /// Reclaimer rounds skipped because pagemap could not be read.
    pub pagemap: Counter,
    /// Writes of the stats file that failed.
    pub stats_write: Counter,
}

/// Every counter of one VMM run.
#[derive(Debug, Default)]
pub struct Metrics {
    pub exits: ExitMetrics,
    pub bus: BusMetrics,
    pub hypercalls: HypercallMetrics,
    pub serial: SerialMetrics,
    pub block: BlockMetrics,
    pub reclaim: ReclaimMetrics,
    pub memory: MemoryMetrics,
    pub discard_faults: DiscardFaultMetrics,
    pub potentially_volatile: PotentiallyVolatileMetrics,
    pub host_failures: HostFailureMetrics,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_serialise_as_flat_objects() {
        let m = Metrics::default();
        m.exits.io_out.inc();
        m.exits.io_out.add(2);
        m.hypercalls.hello.inc();
        m.hypercalls.errors.bad_argument.inc();
        let exits = serde_json::to_string(&m.exits).unwrap();
        assert!(exits.starts_with("{\"io_in\":0,\"io_out\":3,"), "{exits}");
        let h = serde_json::to_value(&m.hypercalls).unwrap();
        assert_eq!(h["hello"], 1);
        assert_eq!(h["errors"]["bad_argument"], 1);
        assert_eq!(h["set_unused"], 0);
    }

    #[test]
    fn gauges_keep_a_running_maximum() {
        let g = Gauge::default();
        g.raise(5);
        g.raise(3);
        assert_eq!(g.get(), 5);
        g.set(1);
        assert_eq!(g.get(), 1);
        assert_eq!(serde_json::to_string(&g).unwrap(), "1");
        g.add(4);
        g.sub(2);
        assert_eq!(g.get(), 3);
        g.sub(10);
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn histograms_summarise_by_power_of_two_buckets() {
        let h = Histogram::default();
        assert_eq!(h.summary(), HistogramSummary::default());
        for v in [0, 1, 3, 100, 100, 100, 100, 100, 100, 5000] {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!((s.count, s.max_us, s.mean_us), (10, 5000, 560));
        assert_eq!(s.p50_us, 127, "100 lies in [64, 128)");
        assert_eq!(s.p99_us, 5000, "capped at the maximum");
        h.record(u64::MAX);
        assert_eq!(h.summary().max_us, u64::MAX);
    }
}
