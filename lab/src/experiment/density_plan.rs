//! The density experiment's plan and what it records: the modes and
//! sizes tried (`DensityPlan`), each guest's figures and verdict
//! (`Guest`, `guest`), one run of N guests (`GroupRun`) and the answer per
//! mode (`largest`). `density` runs the plan and `density_report` formats
//! its runs; both take these types from here. This module only computes:
//! it must never start a child, touch a cgroup or write a file.

use std::collections::BTreeMap;

use serde::Serialize;

use super::child::Outcome;
use super::figures::{throughput, time_average};
use super::plan::{self, Plan, Workload};
use crate::args::{ExperimentArgs, Mode};

/// The modes compared when none is asked for.
pub const MODES: [Mode; 3] = [Mode::HostSwap, Mode::FreePageReporting, Mode::Hinting];
/// The default bound on a guest's slowdown against the same N unlimited.
pub const MAX_SLOWDOWN: f64 = 2.0;

/// What one density experiment tries.
#[derive(Debug, Clone, PartialEq)]
pub struct DensityPlan {
    pub modes: Vec<Mode>,
    /// The most guests tried.
    pub max_guests: u32,
    /// The one limit all guests of a run share.
    pub limit: u64,
    pub max_slowdown: f64,
    /// Each guest's sizes (the key-value workload).
    pub params: plan::Params,
}

/// The plan for `args` (`--guests`, `--limit`, `--mode`, `--max-slowdown`,
/// `--quick`).
pub fn density_plan(args: &ExperimentArgs) -> Result<DensityPlan, plan::PlanError> {
    // Its own default sizes with or without --full (no short plan).
    let size = if args.quick { Plan::Quick } else { Plan::Full };
    let mut params = plan::params(Workload::KeyValue, size);
    // Each guest: 12 MiB of values; a hot set that fits a few MiB.
    params.files = Some((3, 4 << 20));
    if !args.quick {
        params.guest = ["copies=1", "kv", "50000", "99"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    let modes = if args.modes.is_empty() {
        MODES.to_vec()
    } else {
        let mut m = args.modes.clone();
        m.sort();
        m.dedup();
        m
    };
    Ok(DensityPlan {
        modes,
        max_guests: args.guests.unwrap_or(if args.quick { 3 } else { 6 }),
        limit: args
            .limit
            .unwrap_or(if args.quick { 24 << 20 } else { 40 << 20 }),
        max_slowdown: args.max_slowdown.unwrap_or(MAX_SLOWDOWN),
        params,
    })
}

/// One guest of a group run.
#[derive(Debug, Clone, Serialize)]
pub struct Guest {
    pub exit_status: Option<i32>,
    pub wall_ms: u64,
    pub throughput_mib_s: Option<f64>,
    pub slowdown: Option<f64>,
    pub integrity_errors: Option<u64>,
    pub disk_pages_read: Option<u64>,
    pub discard_faults: Option<u64>,
    pub resident_avg_bytes: u64,
    /// Why the guest failed, if it did.
    pub failure: Option<String>,
}

/// One run of N guests under one cgroup.
#[derive(Debug, Clone, Serialize)]
pub struct GroupRun {
    /// `baseline` (no limit, no hints) or the mode.
    pub mode: &'static str,
    pub guests: u32,
    pub limit_bytes: Option<u64>,
    pub footprint_avg_bytes: u64,
    pub footprint_peak_bytes: u64,
    pub swap_out_pages: u64,
    pub swap_in_pages: u64,
    pub oom_kills: u64,
    pub held: bool,
    pub per_guest: Vec<Guest>,
    /// `[elapsed_ms, bytes]` charged to the shared cgroup.
    pub footprint: Vec<(u64, u64)>,
}

fn num(r: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    r.get(key)?.parse().ok()
}

fn stat(out: &Outcome, path: &[&str]) -> Option<u64> {
    let mut v = out.stats.as_ref()?;
    for k in path {
        v = v.get(k)?;
    }
    v.as_u64()
}

/// Why guest `out` failed against `bound`, given its slowdown.
pub fn guest_failure(out: &Outcome, slowdown: Option<f64>, bound: f64) -> Option<String> {
    if out.killed {
        return Some("killed after its timeout".into());
    }
    match out.status {
        None if out.oom_kills.is_some_and(|n| n > 0) => return Some("OOM-killed".into()),
        None => return Some("ended by a signal".into()),
        Some(0) => {}
        Some(s) => return Some(format!("exit status {s}")),
    }
    match num(&out.result, "errors") {
        None => return Some("no result line".into()),
        Some(0) => {}
        Some(n) => return Some(format!("{n} integrity errors")),
    }
    match slowdown {
        Some(s) if s > bound => Some(format!("{s:.2}x slower than the bound {bound}x")),
        _ => None,
    }
}

/// A guest's figures; `base` is its throughput in the unlimited run.
pub fn guest(out: &Outcome, base: Option<f64>, bound: f64) -> Guest {
    let tp = throughput(&out.result);
    let slowdown = match (base, tp) {
        (Some(b), Some(t)) if t > 0.0 => Some(b / t),
        _ => None,
    };
    Guest {
        exit_status: out.status,
        wall_ms: out.wall_ms,
        throughput_mib_s: tp,
        slowdown,
        integrity_errors: num(&out.result, "errors"),
        disk_pages_read: num(&out.result, "disk_pages"),
        discard_faults: stat(out, &["discard_faults", "injected"]),
        resident_avg_bytes: time_average(&out.series),
        failure: guest_failure(out, slowdown, bound),
    }
}

/// The largest N that held, per mode, from the runs in order.
pub fn largest(runs: &[GroupRun], mode: &str) -> u32 {
    runs.iter()
        .filter(|r| r.mode == mode && r.held)
        .map(|r| r.guests)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(status: Option<i32>, errors: Option<u64>) -> Outcome {
        let mut result = BTreeMap::new();
        if let Some(e) = errors {
            result.insert("errors".to_string(), e.to_string());
            result.insert("bytes".to_string(), (1u64 << 20).to_string());
            result.insert("ms".to_string(), "1000".to_string());
        }
        Outcome {
            status,
            result,
            ..Outcome::default()
        }
    }

    #[test]
    fn a_guest_fails_by_oom_errors_status_or_the_bound() {
        assert_eq!(guest(&out(Some(0), Some(0)), Some(1.5), 2.0).failure, None);
        let slow = guest(&out(Some(0), Some(0)), Some(3.0), 2.0);
        assert_eq!(slow.slowdown, Some(3.0));
        assert!(slow.failure.unwrap().contains("bound"));
        assert!(guest(&out(Some(0), Some(4)), None, 2.0)
            .failure
            .unwrap()
            .contains("4 integrity"));
        assert!(guest(&out(Some(0), None), None, 2.0)
            .failure
            .unwrap()
            .contains("no result"));
        let mut oom = out(None, None);
        oom.oom_kills = Some(1);
        assert_eq!(
            guest(&oom, None, 2.0).failure.as_deref(),
            Some("OOM-killed")
        );
        assert!(guest(&out(Some(83), Some(0)), None, 2.0).failure.is_some());
    }

    #[test]
    fn the_answer_is_the_largest_n_that_held() {
        let r = |mode, guests, held| GroupRun {
            mode,
            guests,
            limit_bytes: Some(1),
            footprint_avg_bytes: 0,
            footprint_peak_bytes: 0,
            swap_out_pages: 0,
            swap_in_pages: 0,
            oom_kills: 0,
            held,
            per_guest: Vec::new(),
            footprint: Vec::new(),
        };
        let runs = [
            r("hinting", 1, true),
            r("hinting", 2, true),
            r("hinting", 3, false),
            r("host-swap", 1, false),
        ];
        assert_eq!(largest(&runs, "hinting"), 2);
        assert_eq!(largest(&runs, "host-swap"), 0);
        assert_eq!(largest(&runs, "free-page-reporting"), 0);
    }
}
