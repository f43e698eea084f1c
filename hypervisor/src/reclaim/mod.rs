//! Host-side reclaim of guest memory: the reclaimer thread that measures
//! resident guest memory and drops hinted frames when the host wants memory
//! back, its policy, its residency measurement and its cgroup budget.
//!
//! Every interval the thread measures residency (`resident::Residency`:
//! from `/proc/self/pagemap`, with the `PAGEMAP_SCAN` ioctl where the
//! kernel has it (`pagemap_scan`), else `pread`, read again only when
//! something may have changed; a round whose reading fails is skipped,
//! counted, and the next one reads all of it); drops the resident frames that have stayed Unused
//! for the unused delay, whatever the budget (`eager`); then, if a budget is set
//! and resident memory exceeds it, or host memory pressure (PSI) passes
//! the threshold, it drops resident Unused frames, then Volatile ones,
//! never Stable ones, until the estimate is under the budget; with
//! `--potentially-volatile`, then the Potentially volatile frames KVM's
//! dirty log proves clean, with every vCPU paused (`pv`). A memory
//! cgroup with a limit (`cgroup`) lowers the budget to the headroom it
//! leaves. With free page reporting the thread only measures:
//! reports are dropped on the hint path (`crate::hypercall::reporting`),
//! and nothing else is. Frames are claimed, dropped and settled through the
//! frame-state core (`crate::frames`); discarded Volatile frames are armed
//! for discard faults through its `Arming` trait. The thread
//! is stopped and joined by [`Reclaimer::stop`] or when the handle drops, so
//! every way out of `run` ends it. This module must never drop a frame the
//! guest has not hinted droppable, and never let the thread outlive its
//! handle.

pub mod age;
pub mod budget;
pub mod cgroup;
pub mod eager;
pub mod headroom;
pub mod pagemap_scan;
pub mod policy;
pub mod pv;
pub mod resident;
#[cfg(test)]
mod shared_stress;
pub mod usage_event;

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagehint_abi::PAGE_SIZE as PAGE;

use crate::frames::discard::DiscardError;
use crate::frames::{Arming, Discarder, FrameTable, Method, PassReport};
use crate::memory::GuestRam;
use crate::metrics::Metrics;
use crate::periodic::{Periodic, PeriodicThread, WAKE_SOURCES};
use age::{Ages, VictimOrder};
use budget::BudgetControl;
use cgroup::CgroupMemory;
use eager::{rounds_for, EagerUnused};
use headroom::Headroom;
use policy::{discard_pass_ordered, pages_to_drop, parse_psi_some_avg10, PSI_MEMORY};
use pv::{pv_pass, PvInputs, PvReclaim};
use resident::Residency;
use usage_event::UsageEvent;

/// Why the reclaimer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    #[error(transparent)]
    Discard(#[from] DiscardError),
    #[error("cannot spawn the reclaimer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// What the reclaimer is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct ReclaimConfig {
    /// Time between rounds.
    pub interval: Duration,
    /// Target for resident guest memory, in bytes.
    pub budget_bytes: Option<u64>,
    /// The budget may be set later (the API's `PATCH /memory`): keep what
    /// a budget round needs (the ages) from the start.
    pub budget_may_change: bool,
    /// Reclaim when host PSI "some avg10" exceeds this percentage.
    pub psi_threshold: Option<f64>,
    /// Drop hinted frames at all (false with free page reporting, where
    /// the thread only measures).
    pub discard: bool,
    /// A memory cgroup whose headroom is a second budget.
    pub cgroup: Option<CgroupMemory>,
    /// Drop every resident frame Unused for this long, whatever the
    /// budget (`eager`); `None`: only the budget and PSI drop frames.
    /// Only with `discard`.
    pub unused_delay: Option<Duration>,
    /// Which Volatile frames a budget or PSI round takes first.
    pub victim_order: VictimOrder,
}

impl ReclaimConfig {
    /// Whether a round may ever take Volatile frames (a budget, now or
    /// later through the API, a cgroup's headroom, PSI), and so keeps
    /// their ages. Without one nobody reads the ages a guest publishes:
    /// the VMM offers CPUID `GUEST_AGES` only when this holds, and a guest
    /// is spared the accessed-bit walks behind them.
    pub fn takes_volatile(&self) -> bool {
        self.discard
            && (self.budget_bytes.is_some()
                || self.budget_may_change
                || self.cgroup.is_some()
                || self.psi_threshold.is_some())
    }
}

/// Reads host memory pressure; warns once and gives up if it cannot.
#[derive(Debug)]
struct Psi {
    threshold: Option<f64>,
}

impl Psi {
    fn fired(&mut self, metrics: &Metrics) -> bool {
        let Some(threshold) = self.threshold else {
            return false;
        };
        let text = match std::fs::read_to_string(PSI_MEMORY) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("reclaim: cannot read {PSI_MEMORY} ({e}); --psi ignored");
                self.threshold = None;
                return false;
            }
        };
        match parse_psi_some_avg10(&text) {
            Ok(avg10) if avg10 > threshold => {
                metrics.reclaim.psi_triggers.inc();
                true
            }
            Ok(_) => false,
            Err(e) => {
                log::warn!("reclaim: {PSI_MEMORY}: {e}; --psi ignored");
                self.threshold = None;
                false
            }
        }
    }
}

/// The state of the reclaimer thread.
struct Worker {
    ram_base: u64,
    frames: u64,
    table: Arc<FrameTable>,
    metrics: Arc<Metrics>,
    discarder: Discarder,
    residency: Option<Residency>,
    /// The budget (`--host-budget`, moved by the API), read every round.
    control: Option<Arc<BudgetControl>>,
    psi: Psi,
    arming: Option<Arc<dyn Arming>>,
    discard: bool,
    cgroup: Option<CgroupMemory>,
    eager: Option<EagerUnused>,
    /// `--potentially-volatile`: the pause and the dirty log of the pass
    /// over Potentially volatile frames.
    pv: Option<PvReclaim>,
    /// When each entry last changed (only where a budget or PSI may make
    /// the reclaimer choose).
    ages: Option<Ages>,
    /// How fast the guest grew between rounds: the cgroup reserve.
    headroom: Headroom,
    /// Wakes a round when the cgroup's usage nears the limit.
    usage_event: Option<UsageEvent>,
}

impl Worker {
    /// Measures resident guest memory; records it.
    fn measure(&mut self) -> Option<u64> {
        let r = self.residency.as_mut()?;
        let t = Instant::now();
        let measured = r.measure(self.ram_base, self.frames);
        self.metrics.reclaim.measure_us.add(micros(t.elapsed()));
        match measured {
            Ok(m) => {
                if m.read_pagemap {
                    self.metrics.reclaim.pagemap_reads.inc();
                }
                self.record_resident(m.pages);
                Some(m.pages)
            }
            Err(e) => {
                // No reading, no drop: the round is skipped and the next
                // one reads all of pagemap again.
                r.invalidate();
                let f = &self.metrics.host_failures.pagemap;
                if f.get() == 0 {
                    log::warn!("reclaim: {e}; rounds are skipped until pagemap reads again");
                }
                f.inc();
                None
            }
        }
    }

    fn record_resident(&self, pages: u64) {
        let bytes = pages.saturating_mul(PAGE);
        self.metrics.memory.resident_bytes.set(bytes);
        self.metrics.memory.resident_peak_bytes.raise(bytes);
    }

    /// Tells the budget's record where a round left resident memory (not
    /// where residency cannot be measured: the figure would be stale).
    fn note_progress(&self) {
        if let (Some(c), Some(_)) = (&self.control, &self.residency) {
            c.note_round(self.metrics.memory.resident_bytes.get());
        }
    }

    /// The budget the control holds now, in pages.
    fn fixed_budget(&self) -> Option<u64> {
        self.control
            .as_ref()
            .and_then(|c| c.get())
            .map(|b| b / PAGE)
    }

    /// The budget in pages this round: the control's, lowered to the
    /// cgroup's headroom when there is a cgroup limit.
    fn budget(&mut self, resident: u64) -> Option<u64> {
        let Some(cg) = &self.cgroup else {
            return self.fixed_budget();
        };
        let read = cg
            .limit()
            .and_then(|l| Ok((l, cg.usage_without_file_cache()?, cg.sharers()?)));
        let (limit, usage, sharers) = match read {
            Ok((Some(limit), usage, sharers)) => (limit, usage, sharers),
            Ok((None, _, _)) => {
                log::warn!("reclaim: the memory cgroup has no limit any more; --cgroup-budget off");
                self.cgroup = None;
                return self.fixed_budget();
            }
            Err(e) => {
                log::warn!("reclaim: {e}; --cgroup-budget off");
                self.cgroup = None;
                return self.fixed_budget();
            }
        };
        let reserve = self.headroom.reserve(limit, sharers);
        let headroom = cgroup::shared_budget(
            limit,
            usage,
            resident.saturating_mul(PAGE),
            sharers,
            reserve,
        );
        self.move_threshold(limit.saturating_sub(reserve));
        let m = &self.metrics.memory;
        m.cgroup_reserve_bytes.set(reserve);
        m.cgroup_limit_bytes.set(limit);
        m.cgroup_budget_bytes.set(headroom);
        let pages = headroom / PAGE;
        Some(self.fixed_budget().map_or(pages, |b| b.min(pages)))
    }

    /// Keeps the usage event at the edge of the reserve, where the guest
    /// starts to eat into what the limit keeps free; a failed move keeps
    /// the old threshold (warned once, then the event is given up).
    fn move_threshold(&mut self, bytes: u64) {
        let Some(event) = self.usage_event.as_mut() else {
            return;
        };
        if let Err(e) = event.rearm(bytes) {
            log::warn!("reclaim: {e}; rounds only every interval from now on");
            self.usage_event = None;
        }
    }

    /// Drops the frames Unused for the delay; returns how many.
    fn eager_round(&mut self) -> u64 {
        let (Some(eager), Some(residency)) = (self.eager.as_mut(), self.residency.as_mut()) else {
            return 0;
        };
        let t = Instant::now();
        let done = eager.pass(
            &self.table,
            &mut self.discarder,
            residency.map(),
            Method::Auto,
        );
        let r = &self.metrics.reclaim;
        r.unused_eager_us.add(micros(t.elapsed()));
        r.unused_eager_pages.add(done.pass.pages);
        r.unused_eager_refaults.add(done.refaults);
        count_calls(&self.metrics, &done.pass);
        if done.pass.pages > 0 || done.pass.failed > 0 {
            residency.invalidate();
        }
        done.pass.pages
    }

    /// Counts the eagerly dropped frames the guest has taken back since.
    fn sweep_refaults(&mut self) {
        if let Some(eager) = self.eager.as_mut() {
            let n = eager.sweep(&self.table);
            self.metrics.reclaim.unused_eager_refaults.add(n);
        }
    }

    /// One interval's work: measure, and drop frames if asked to; returns
    /// how many frames the budget or PSI pass dropped.
    fn round(&mut self) -> u64 {
        let Some(measured) = self.measure() else {
            return 0;
        };
        if !self.discard {
            return 0;
        }
        if let (Some(ages), Some(residency)) = (self.ages.as_mut(), self.residency.as_ref()) {
            let t = Instant::now();
            ages.observe(&self.table, residency.map());
            self.metrics.reclaim.age_us.add(micros(t.elapsed()));
        }
        let resident = measured.saturating_sub(self.eager_round());
        self.record_resident(resident);
        self.headroom.observe(resident.saturating_mul(PAGE));
        let pressure = self.psi.fired(&self.metrics);
        let budget = self.budget(resident);
        let want = pages_to_drop(resident, budget, pressure);
        if want == 0 {
            return 0;
        }
        let c = self.table.counts();
        let pv_frames = self.pv.as_ref().map_or(0, |_| c.potentially_volatile);
        if c.unused
            .saturating_add(c.volatile)
            .saturating_add(pv_frames)
            == 0
        {
            // Nothing the guest lets us drop.
            return 0;
        }
        // Eagerly dropped frames the guest took back may be dropped again
        // by this pass: count them first.
        self.sweep_refaults();
        let Some(residency) = self.residency.as_mut() else {
            return 0;
        };
        let t = Instant::now();
        let mut pass = discard_pass_ordered(
            &self.table,
            &mut self.discarder,
            residency.map(),
            want,
            Method::Auto,
            self.arming.as_deref(),
            self.ages.as_ref(),
        );
        if let Some(pv) = self
            .pv
            .as_ref()
            .filter(|_| pv_frames > 0 && pass.pages < want)
        {
            let inputs = PvInputs {
                table: &self.table,
                resident: residency.map(),
                want: want - pass.pages,
                method: Method::Auto,
                arming: self.arming.as_deref(),
            };
            let m = &self.metrics.potentially_volatile;
            match pv_pass(inputs, &mut self.discarder, pv, m) {
                Ok(r) => pass.add(&r),
                Err(e) => log::debug!("reclaim: potentially volatile pass skipped: {e}"),
            }
        }
        let us = micros(t.elapsed());
        let r = &self.metrics.reclaim;
        r.rounds.inc();
        r.time_us.add(us);
        r.max_round_us.raise(us);
        count_calls(&self.metrics, &pass);
        // Each dropped frame was resident a moment ago; the reading no
        // longer holds.
        if pass.pages > 0 || pass.failed > 0 {
            residency.invalidate();
        }
        self.record_resident(resident.saturating_sub(pass.pages));
        self.headroom.dropped(pass.pages.saturating_mul(PAGE));
        if pass.pages > 0 {
            log::debug!(
                "reclaim: dropped {} of {want} wanted frames in {us} us ({} failed)",
                pass.pages,
                pass.failed
            );
        }
        pass.pages
    }
}

/// Counts a pass's `madvise`/`process_madvise` calls and failures.
fn count_calls(metrics: &Metrics, pass: &PassReport) {
    let r = &metrics.reclaim;
    r.madvise_calls.add(pass.madvise_calls);
    r.process_madvise_calls.add(pass.process_madvise_calls);
    let f = &metrics.host_failures;
    f.madvise.add(pass.madvise_failures);
    f.madvise_kept_pages.add(pass.madvise_kept_pages);
    f.process_madvise.add(pass.process_madvise_failures);
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The running reclaimer; stopping it (or dropping it) joins the thread.
#[derive(Debug)]
pub struct Reclaimer {
    thread: PeriodicThread,
    control: Arc<BudgetControl>,
}

impl Reclaimer {
    /// Starts the thread for `ram`. With `arming`, dropped Volatile frames
    /// are armed for discard faults first.
    pub fn spawn(
        ram: &GuestRam,
        table: Arc<FrameTable>,
        metrics: Arc<Metrics>,
        config: ReclaimConfig,
        arming: Option<Arc<dyn Arming>>,
    ) -> Result<Self, ReclaimError> {
        let control =
            Arc::new(BudgetControl::new(config.budget_bytes).map_err(ReclaimError::Spawn)?);
        Self::spawn_with_pv(ram, table, metrics, config, arming, None, control)
    }

    /// [`Reclaimer::spawn`]; with `pv` (`--potentially-volatile`) each
    /// budget or PSI round that still wants pages after the Volatile pass
    /// also takes Potentially volatile frames the dirty log proves clean
    /// (`pv`). Those are armed like Volatile ones, so they need `arming`.
    /// The budget is `control`'s (made from `config.budget_bytes` by the
    /// caller, who may share it: the stats and the API read it).
    pub fn spawn_with_pv(
        ram: &GuestRam,
        table: Arc<FrameTable>,
        metrics: Arc<Metrics>,
        config: ReclaimConfig,
        arming: Option<Arc<dyn Arming>>,
        pv: Option<PvReclaim>,
        control: Arc<BudgetControl>,
    ) -> Result<Self, ReclaimError> {
        let residency = match Residency::open() {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("reclaim: {e}; resident memory is not measured, nothing is reclaimed");
                None
            }
        };
        let frames = table.len();
        let usage_event = config
            .cgroup
            .as_ref()
            .filter(|_| config.discard)
            .and_then(first_usage_event);
        let worker = Worker {
            ram_base: ram.host_base(),
            frames: ram.frames(),
            table,
            metrics,
            discarder: Discarder::new(ram)?,
            residency,
            control: Some(control.clone()),
            psi: Psi {
                threshold: config.psi_threshold,
            },
            arming,
            discard: config.discard,
            cgroup: config.cgroup.clone(),
            eager: config
                .unused_delay
                .filter(|_| config.discard)
                .map(|d| EagerUnused::new(frames, rounds_for(d, config.interval))),
            pv,
            ages: config
                .takes_volatile()
                .then(|| Ages::new(frames, config.victim_order)),
            headroom: Headroom::default(),
            usage_event,
        };
        let thread = PeriodicThread::spawn("reclaim", config.interval, worker)
            .map_err(ReclaimError::Spawn)?;
        Ok(Self { thread, control })
    }

    /// The budget the thread reads every round; setting it wakes the
    /// thread for a round at once.
    pub fn budget_control(&self) -> Arc<BudgetControl> {
        self.control.clone()
    }

    /// Stops the thread and waits for it (it measures residency once more).
    pub fn stop(self) {
        self.thread.stop();
    }
}

/// The cgroup's usage event, at the edge of the reserve the headroom starts
/// with (moved by each round to the one it measures); `None`, with a note
/// in the log, where it cannot be registered (no limit, no permission):
/// then rounds run only every interval.
fn first_usage_event(cg: &CgroupMemory) -> Option<UsageEvent> {
    let limit = cg.limit().ok().flatten()?;
    let at = limit.saturating_sub(Headroom::default().reserve(limit, 1));
    match UsageEvent::register(cg, at) {
        Ok(e) => Some(e),
        Err(e) => {
            log::info!("reclaim: {e}; rounds only every interval");
            None
        }
    }
}

/// Each interval a round; at the end a last round with the guest stopped
/// (it may have freed memory since the previous one), then the final
/// figure for the stats written at exit.
impl Periodic for Worker {
    fn start(&mut self) {
        self.measure();
    }

    fn tick(&mut self) {
        self.round();
        self.note_progress();
    }

    fn wake_sources(&self) -> [Option<(RawFd, i16)>; WAKE_SOURCES] {
        [
            self.usage_event.as_ref().map(UsageEvent::source),
            self.control.as_ref().map(|c| c.source()),
        ]
    }

    /// The cgroup neared its limit (source 0): a round now rather than at
    /// the next interval. The budget was changed (source 1): a round now,
    /// toward the new target.
    fn woken(&mut self, source: usize) {
        if source == 1 {
            if let Some(c) = &self.control {
                c.consume();
            }
            self.round();
            self.note_progress();
            return;
        }
        if let Some(event) = self.usage_event.as_mut() {
            event.consume();
        }
        let r = &self.metrics.reclaim;
        r.event_wakes.inc();
        if self.round() > 0 {
            self.metrics.reclaim.event_drops.inc();
        }
        self.note_progress();
    }

    fn finish(&mut self) {
        self.round();
        self.sweep_refaults();
        self.measure();
        log::debug!("reclaim: stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::hypercall::HintOp;
    use vm_memory::{Bytes, GuestAddress};

    /// 16 MiB of guest RAM with every frame written (all resident), and
    /// its frame count.
    fn resident_ram() -> (GuestRam, u64) {
        let ram = GuestRam::new(16 << 20).unwrap();
        let frames = ram.frames();
        for p in 0..frames {
            ram.mem().write_obj(1u8, GuestAddress(p * PAGE)).unwrap();
        }
        (ram, frames)
    }

    /// A discarding, uncapped config with no cgroup and no PSI: what the
    /// tests below start from, changing a field or two.
    fn config(interval_ms: u64, budget_bytes: Option<u64>) -> ReclaimConfig {
        ReclaimConfig {
            interval: Duration::from_millis(interval_ms),
            budget_bytes,
            budget_may_change: false,
            psi_threshold: None,
            discard: true,
            cgroup: None,
            unused_delay: None,
            victim_order: VictimOrder::default(),
        }
    }

    #[test]
    fn only_a_reclaimer_that_may_take_volatile_frames_wants_ages() {
        let none = ReclaimConfig {
            interval: Duration::from_millis(50),
            budget_bytes: None,
            budget_may_change: false,
            psi_threshold: None,
            discard: true,
            cgroup: None,
            unused_delay: Some(Duration::from_millis(50)),
            victim_order: VictimOrder::default(),
        };
        assert!(!none.takes_volatile(), "the eager policy takes Unused only");
        for c in [
            ReclaimConfig {
                budget_bytes: Some(12 << 20),
                ..none.clone()
            },
            ReclaimConfig {
                budget_may_change: true,
                ..none.clone()
            },
            ReclaimConfig {
                psi_threshold: Some(10.0),
                ..none.clone()
            },
        ] {
            assert!(c.takes_volatile(), "{c:?}");
            let measuring = ReclaimConfig {
                discard: false,
                ..c
            };
            assert!(!measuring.takes_volatile(), "free page reporting");
        }
    }

    #[test]
    fn a_budget_set_while_running_is_reached_at_once_not_at_the_interval() {
        let (ram, frames) = resident_ram();
        let table = Arc::new(FrameTable::new(frames as usize, false));
        table.apply_range(0, frames / 2, HintOp::SetUnused).unwrap();
        let metrics = Arc::new(Metrics::default());
        // An interval far longer than the test: only the wake can run a
        // round before the end.
        let config = config(3_600_000, None);
        let r = Reclaimer::spawn(&ram, table.clone(), metrics.clone(), config, None).unwrap();
        let control = r.budget_control();
        assert_eq!(control.get(), None);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            table.total_discards(),
            0,
            "no budget, no round: nothing dropped"
        );
        control.set(Some(12 << 20));
        let t = Instant::now();
        while table.total_discards() < 1024 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            table.total_discards(),
            1024,
            "16 MiB down to 12 MiB in one woken round"
        );
        control.set(Some(10 << 20));
        let t = Instant::now();
        while table.total_discards() < 1536 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        r.stop();
        assert_eq!(table.total_discards(), 1536);
        assert_eq!(metrics.memory.resident_bytes.get(), 10 << 20);
    }

    #[test]
    fn the_thread_reclaims_down_to_the_budget_and_stops() {
        let (ram, frames) = resident_ram();
        let table = Arc::new(FrameTable::new(frames as usize, false));
        // Half the frames are free.
        table.apply_range(0, frames / 2, HintOp::SetUnused).unwrap();
        let metrics = Arc::new(Metrics::default());
        let config = config(5, Some(12 << 20));
        let r = Reclaimer::spawn(&ram, table.clone(), metrics.clone(), config, None).unwrap();
        let t = Instant::now();
        while table.total_discards() < 1024 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(30));
        r.stop();
        // 16 MiB resident, budget 12 MiB: exactly 4 MiB of Unused dropped.
        assert_eq!(table.total_discards(), 1024);
        assert_eq!(metrics.memory.resident_bytes.get(), 12 << 20);
        assert_eq!(metrics.memory.resident_peak_bytes.get(), 16 << 20);
    }

    #[test]
    fn without_a_budget_unused_frames_go_after_the_delay_and_only_then() {
        let (ram, frames) = resident_ram();
        for (delay, want) in [(None, 0), (Some(Duration::from_millis(30)), 1024)] {
            let table = Arc::new(FrameTable::new(frames as usize, false));
            table.apply_range(0, 1024, HintOp::SetUnused).unwrap();
            table.apply_range(1024, 16, HintOp::MakeVolatile).unwrap();
            let metrics = Arc::new(Metrics::default());
            let config = ReclaimConfig {
                unused_delay: delay,
                ..config(10, None)
            };
            let t = Instant::now();
            let r = Reclaimer::spawn(&ram, table.clone(), metrics.clone(), config, None).unwrap();
            while table.total_discards() < want && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let took = t.elapsed();
            std::thread::sleep(Duration::from_millis(50));
            // The guest takes ten back: refaults, counted by the last sweep.
            for p in 0..10 {
                assert!(table.apply(p, HintOp::SetStable).is_ok());
            }
            r.stop();
            let refaults = if want > 0 { 10 } else { 0 };
            assert_eq!(metrics.reclaim.unused_eager_refaults.get(), refaults);
            assert_eq!(table.total_discards(), want, "delay {delay:?}");
            assert_eq!(metrics.reclaim.unused_eager_pages.get(), want);
            assert_eq!(metrics.reclaim.rounds.get(), 0, "no budget pass");
            if want > 0 {
                // Three rounds of 10 ms at least: seen, aged, dropped.
                assert!(took >= Duration::from_millis(30), "{took:?}");
            }
            assert!(
                !table.is_discarded(1024),
                "volatile frames wait for a budget"
            );
            let resident = metrics.memory.resident_bytes.get();
            assert_eq!(resident, (16 << 20) - want * PAGE);
        }
    }

    #[test]
    fn without_discarding_the_thread_only_measures() {
        let (ram, frames) = resident_ram();
        let table = Arc::new(FrameTable::new(frames as usize, false));
        table.apply_range(0, frames, HintOp::SetUnused).unwrap();
        let metrics = Arc::new(Metrics::default());
        let config = ReclaimConfig {
            discard: false,
            unused_delay: Some(Duration::ZERO),
            ..config(5, Some(0))
        };
        let r = Reclaimer::spawn(&ram, table.clone(), metrics.clone(), config, None).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        r.stop();
        assert_eq!(
            table.total_discards(),
            0,
            "free page reporting mode drops nothing"
        );
        assert_eq!(metrics.memory.resident_bytes.get(), 16 << 20);
        assert_eq!(metrics.reclaim.rounds.get(), 0);
    }
}
