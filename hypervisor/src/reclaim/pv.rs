//! The reclaimer's pass over Potentially volatile frames: clean page-cache
//! pages the guest maps writable, which the host may drop only when KVM's
//! dirty log proves the guest has not written them since they were last
//! clean (`docs/reclaim.md`, "Potentially volatile frames and the dirty
//! log").
//!
//! After the Unused and Volatile passes, if the round still wants pages and
//! the guest has Potentially volatile frames, [`pv_pass`] pauses every vCPU
//! ([`VcpuPauser`]: all out of `KVM_RUN`, parked; a pause that times out
//! skips the pass), reads the dirty log once ([`DirtySource`]), and walks
//! the resident frames as the Volatile pass does: a frame whose bit is set
//! goes back to Stable (`FrameTable::demote_written`), a clean one is
//! claimed, armed for discard faults like a volatile frame and dropped by
//! the same `Discarder::settle`; then the vCPUs resume. While they are
//! paused no guest write can land between the reading and the drop. This
//! module must never drop a Potentially volatile frame without a pause
//! held and a dirty-log reading taken inside it, nor without arming it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pagehint_abi::page_state::PageState;

use crate::frames::{Arming, Discarder, FrameTable, Method, PassReport};
use crate::metrics::PotentiallyVolatileMetrics;
use crate::reclaim::policy::Pass;
use crate::reclaim::resident::ResidentMap;
use crate::vstate::dirty_log::{DirtyBitmap, DirtyLog, DirtyLogError};
use crate::vstate::pause::{PauseError, VcpuGate};

/// How long a pass waits for every vCPU to leave `KVM_RUN`.
pub const PAUSE_TIMEOUT: Duration = Duration::from_millis(200);

/// Why a pass did not run (counted and logged, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum PvError {
    #[error(transparent)]
    Pause(#[from] PauseError),
    #[error(transparent)]
    DirtyLog(#[from] DirtyLogError),
}

/// What stops every vCPU while a pass runs.
pub trait VcpuPauser: Send + Sync {
    /// Runs `f` with every vCPU out of `KVM_RUN` and parked, or fails
    /// without running it if they could not all be stopped in `timeout`.
    fn while_paused(&self, timeout: Duration, f: &mut dyn FnMut()) -> Result<(), PauseError>;
}

impl VcpuPauser for VcpuGate {
    fn while_paused(&self, timeout: Duration, f: &mut dyn FnMut()) -> Result<(), PauseError> {
        let _paused = self.pause(timeout)?;
        f();
        Ok(())
    }
}

/// What tells which frames the guest wrote since they were last clean.
pub trait DirtySource: Send + Sync {
    /// One reading of every RAM slot.
    fn read(&self) -> Result<DirtyBitmap, DirtyLogError>;
}

impl DirtySource for DirtyLog {
    fn read(&self) -> Result<DirtyBitmap, DirtyLogError> {
        DirtyLog::read(self)
    }
}

/// The reclaimer's means for Potentially volatile frames.
#[derive(Clone)]
pub struct PvReclaim {
    pub pauser: Arc<dyn VcpuPauser>,
    pub dirty: Arc<dyn DirtySource>,
    pub timeout: Duration,
}

impl std::fmt::Debug for PvReclaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvReclaim")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What one pass works on.
#[derive(Clone, Copy)]
pub struct PvInputs<'a> {
    pub table: &'a FrameTable,
    /// Only resident frames are candidates.
    pub resident: &'a ResidentMap,
    /// Most frames to drop.
    pub want: u64,
    pub method: Method,
    /// Arms dropped frames for discard faults; without it nothing drops.
    pub arming: Option<&'a dyn Arming>,
}

/// The walk itself, with the vCPUs paused and the log read.
fn walk(
    i: PvInputs<'_>,
    arming: &dyn Arming,
    discarder: &mut Discarder,
    bits: &DirtyBitmap,
    m: &PotentiallyVolatileMetrics,
) -> PassReport {
    let (table, resident, want) = (i.table, i.resident, i.want);
    let class = PageState::PotentiallyVolatile;
    let mut pass = Pass::new(table, discarder, i.method);
    for pfn in resident.resident_below(table.len().min(resident.pages())) {
        if pass.pages() >= want {
            break;
        }
        if !table.looks_claimable(pfn, class) {
            continue;
        }
        if bits.written(pfn) {
            if table.demote_written(pfn) {
                m.found_written.inc();
            }
            continue;
        }
        pass.take(pfn, class, Some(arming));
    }
    pass.settle(Some(arming));
    pass.into_report()
}

/// Drops up to `want` resident Potentially volatile frames that the dirty
/// log proves clean, and makes the written ones Stable, with every vCPU
/// paused. Without `arming` (no discard faults) nothing is dropped: these
/// frames are mapped, and a touch of a dropped one must be a discard fault.
pub fn pv_pass(
    i: PvInputs<'_>,
    discarder: &mut Discarder,
    pv: &PvReclaim,
    m: &PotentiallyVolatileMetrics,
) -> Result<PassReport, PvError> {
    let Some(arming) = i.arming else {
        return Ok(PassReport::default());
    };
    let table = i.table;
    let mut out: Result<PassReport, PvError> = Ok(PassReport::default());
    m.pauses.inc();
    let t = Instant::now();
    let paused = pv.pauser.while_paused(pv.timeout, &mut || {
        // Taken with the vCPUs parked: none of them can be waiting for
        // the switch to the shared table.
        let _pass = table.pass_guard();
        let read = Instant::now();
        let bits = pv.dirty.read();
        m.dirty_log_reads.inc();
        m.dirty_log_us_total.add(micros(read.elapsed()));
        out = bits.map_err(PvError::from).map(|bits| {
            m.passes.inc();
            walk(i, arming, discarder, &bits, m)
        });
    });
    m.pause_us_total.add(micros(t.elapsed()));
    if let Err(e) = paused {
        m.pause_timeouts.inc();
        return Err(e.into());
    }
    if let Ok(r) = &out {
        m.discarded.add(r.pages);
    }
    out
}

#[cfg(test)]
#[path = "pv_tests.rs"]
mod tests;
