//! [`MachineControl`]: the API's [`VmControl`] over a running machine.
//! Every answer is read from what the VMM already keeps, without a lock a
//! vCPU takes and without a system call: the stats document's counters,
//! the frame table (counted a word at a time, `crate::frames::census`), the
//! reclaimer's [`BudgetControl`] and the cgroup figures its last round
//! recorded.
//!
//! The budget goes through the same [`BudgetControl`] that `--host-budget`
//! sets at start: the reclaimer reads it every round and is woken by a
//! change. A stop goes through `crate::signals::request_api_stop`, the same
//! path SIGTERM takes. This module must never touch guest memory other than
//! through the table's counts, nor stop anything itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pagehint_abi::PAGE_SIZE;
use serde_json::{json, Value};

use super::routes::VmControl;
use crate::config::{HintMode, Kernel, VmConfig};
use crate::frames::{FrameCounts, FrameTable};
use crate::metrics::Metrics;
use crate::reclaim::budget::BudgetControl;
use crate::stats::StatsSource;

/// What the API may read and change of one running machine.
pub struct MachineControl {
    stats: StatsSource,
    table: Arc<FrameTable>,
    metrics: Arc<Metrics>,
    budget: Arc<BudgetControl>,
    /// `GET /vm`'s `config`, fixed at start.
    config: Value,
    /// Does the reclaimer drop anything (hinting on)? Without it a budget
    /// could never be reached.
    reclaims: bool,
    /// Does it take Potentially volatile frames (`--potentially-volatile`)?
    takes_pv: bool,
    stopping: AtomicBool,
}

impl MachineControl {
    /// The control of the machine `config` describes, over its counters.
    pub fn new(
        config: &VmConfig,
        vcpus: u8,
        stats: StatsSource,
        table: Arc<FrameTable>,
        metrics: Arc<Metrics>,
        budget: Arc<BudgetControl>,
    ) -> Self {
        Self {
            config: config_json(config, vcpus),
            reclaims: config.hints.reclaims(),
            takes_pv: config.potentially_volatile,
            stats,
            table,
            metrics,
            budget,
            stopping: AtomicBool::new(false),
        }
    }

    /// The budget's floor: what stays resident even if the reclaimer took
    /// every frame the guest lets it take (Unused, Volatile, and
    /// Potentially volatile where it takes those), i.e. the last measured
    /// resident bytes less all of those frames, resident or not. A lower
    /// bound: a budget under it can never be reached, one above it may
    /// still not be, if some droppable frames were never resident.
    fn floor_bytes(&self, c: &FrameCounts) -> u64 {
        let pv = if self.takes_pv {
            c.potentially_volatile
        } else {
            0
        };
        let droppable = c.unused.saturating_add(c.volatile).saturating_add(pv);
        self.metrics
            .memory
            .resident_bytes
            .get()
            .saturating_sub(droppable.saturating_mul(PAGE_SIZE))
    }
}

/// `GET /vm`'s `config` object.
fn config_json(c: &VmConfig, vcpus: u8) -> Value {
    let hints = match c.hints {
        HintMode::Off => "off".to_string(),
        HintMode::FreePageReporting => "free-page-reporting".to_string(),
        HintMode::Hinting {
            discard_faults,
            transport,
        } => format!(
            "{}{}",
            transport.name(),
            if discard_faults {
                ""
            } else {
                ", no discard faults"
            }
        ),
    };
    let r = &c.reclaim;
    json!({
        "kernel": match &c.kernel {
            Kernel::Path(p) => p.display().to_string(),
            Kernel::Image(_) => "bundled".to_string(),
        },
        "mem_bytes": c.mem,
        "vcpus": vcpus,
        "disk": c.disk.as_ref().map(|d| json!({
            "path": d.path.display().to_string(),
            "writable": d.writable,
        })),
        "hints": hints,
        "potentially_volatile": c.potentially_volatile,
        "host_budget_bytes": r.host_budget,
        "reclaim_interval_ms": u64::try_from(r.interval.as_millis()).unwrap_or(u64::MAX),
        "unused_delay_ms": r.unused_delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "psi_threshold": r.psi_threshold,
        "cgroup_budget": r.cgroup_budget,
        "victim_order": r.victim_order.name(),
        "timeout_ms": c.timeout.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    })
}

/// `None` for a gauge never set.
fn gauge(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

impl VmControl for MachineControl {
    fn vm(&self) -> Value {
        json!({
            "state": if self.stopping.load(Ordering::SeqCst) { "stopping" } else { "running" },
            "uptime_ms": self.stats.elapsed_ms(),
            "vmm_version": env!("CARGO_PKG_VERSION"),
            "config": self.config,
        })
    }

    fn stats(&self) -> Value {
        serde_json::to_value(self.stats.document())
            .unwrap_or_else(|e| json!({ "error": e.to_string() }))
    }

    fn memory(&self) -> Value {
        let c = self.table.counts();
        let m = &self.metrics;
        let page = |frames: u64| frames.saturating_mul(PAGE_SIZE);
        json!({
            "page_size": PAGE_SIZE,
            "guest_bytes": self.stats.guest_bytes(),
            "frames": {
                "stable": c.stable,
                "unused": c.unused,
                "volatile": c.volatile,
                "potentially_volatile": c.potentially_volatile,
                "discarded_now": c.discarded,
            },
            "bytes": {
                "stable": page(c.stable),
                "unused": page(c.unused),
                "volatile": page(c.volatile),
                "potentially_volatile": page(c.potentially_volatile),
                "discarded_now": page(c.discarded),
            },
            "resident_bytes": m.memory.resident_bytes.get(),
            "resident_peak_bytes": m.memory.resident_peak_bytes.get(),
            "floor_bytes": self.floor_bytes(&c),
            "discarded_total": self.table.total_discards(),
            "zero_fills": self.table.zero_fills(),
            "discard_faults": m.discard_faults.injected.get(),
            "disk_reads": m.block.reads.get(),
            "disk_bytes_read": m.block.bytes_read.get(),
            "budget_bytes": self.budget.get(),
            "budget_progress": self.budget.progress(),
            "reclaim_rounds": m.reclaim.rounds.get(),
            "cgroup": {
                "limit_bytes": gauge(m.memory.cgroup_limit_bytes.get()),
                "budget_bytes": gauge(m.memory.cgroup_budget_bytes.get()),
                "reserve_bytes": gauge(m.memory.cgroup_reserve_bytes.get()),
            },
            "elapsed_ms": self.stats.elapsed_ms(),
        })
    }

    fn set_budget(&self, bytes: Option<u64>) -> Result<(), String> {
        if let Some(b) = bytes {
            if !self.reclaims {
                return Err(
                    "this VM's reclaimer drops nothing (hinting is off or free page reporting is on); a budget could never be reached".into(),
                );
            }
            let floor = self.floor_bytes(&self.table.counts());
            if b < floor {
                return Err(format!(
                    "budget {b} bytes is below the guest's floor of {floor} bytes (resident memory less every frame the guest lets the host drop)"
                ));
            }
        }
        self.budget.set(bytes);
        log::info!(
            "api: budget set to {}",
            bytes.map_or("none".to_string(), |b| format!("{b} bytes"))
        );
        Ok(())
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        log::info!("api: stop asked for");
        crate::signals::request_api_stop();
    }
}
