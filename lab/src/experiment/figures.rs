//! The figures of one run, computed from what the child left (final stats
//! document, resident-memory series, result line), and the terminal table
//! that puts every run of the matrix side by side.
//!
//! Definitions (also in `docs/results.md`): the *footprint* is what the
//! run's memory cgroup was charged (guest RAM, the VMM's own memory, the
//! host page cache of the disk image), sampled every 100 ms while the
//! child ran; its *time average* is the integral of those samples over
//! the run divided by the run's length, its *peak* and *final* the largest
//! and last sample. Guest *resident* memory (peak, final: the stats'
//! `resident_peak_bytes` and last `resident_bytes`) is what the VMM
//! measured of guest RAM; *given back* is its peak − final; *time to give
//! back* runs from the guest's `freed_at_ms` (guest clock) to the first
//! stats sample (`elapsed_ms`, VMM clock, which starts a few ms before the
//! guest) whose resident memory is below (peak + final) / 2, "never" when
//! less than [`MIN_GIVEN_BACK`] came back; *throughput* is the result
//! line's bytes over its ms; *slowdown* is the baseline's throughput over
//! this run's. *Counts* (pages swapped, disk pages read, exits, discard
//! faults) carry over to hardware; *times* (give-back, throughput,
//! slowdown) are this machine's. Pure functions only: this module must
//! never read files or start anything.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::child::{mib, Outcome};

/// Less than this given back (1 MiB) counts as nothing given back.
pub const MIN_GIVEN_BACK: u64 = 1 << 20;
/// Bytes per frame.
const PAGE: u64 = 4096;

/// Why figures could not be formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FiguresError {
    /// The run left no stats document.
    #[error("the run left no stats document")]
    NoStats,
}

/// Time to give memory back after the guest freed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GiveBack {
    /// The workload frees nothing at a known time.
    NotApplicable,
    /// Nothing (or under [`MIN_GIVEN_BACK`]) came back after the free.
    Never,
    /// Milliseconds from the guest's free to the first sample below the
    /// midpoint.
    Ms(u64),
}

/// The figures of one run (the table's row, and part of the run's JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// Time-averaged footprint (the cgroup's usage; guest resident memory
    /// when the run had no cgroup).
    pub footprint_avg_bytes: u64,
    pub footprint_peak_bytes: u64,
    pub footprint_final_bytes: u64,
    /// Pages the host wrote to swap, and read back, during the run.
    pub swap_out_pages: u64,
    pub swap_in_pages: u64,
    /// Pages the VMM read from the guest's disk for it.
    pub disk_pages_read: u64,
    /// Exits made to pass hints (hint batches and single hint calls).
    pub hint_exits: u64,
    /// Processes of the run's cgroup the kernel's OOM killer ended.
    pub oom_kills: u64,
    pub peak_bytes: u64,
    pub final_bytes: u64,
    /// peak − final.
    pub given_back_bytes: u64,
    pub pages_discarded: u64,
    pub reported_pages: u64,
    pub give_back: GiveBack,
    pub throughput_mib_s: Option<f64>,
    /// Baseline throughput over this run's (1.0 = as fast).
    pub slowdown: Option<f64>,
    pub hint_batches: u64,
    /// Every kind of vCPU exit, summed.
    pub exits: u64,
    pub discard_faults: u64,
    /// The result line's `errors=` (integrity errors), if it had one.
    pub integrity_errors: Option<u64>,
    /// Pages the VMM wrote to the guest's disk for it (write-back).
    pub disk_pages_written: u64,
    /// `--potentially-volatile`: clean potentially volatile pages the host
    /// took, written ones it gave back stable, its dirty-log reads and the
    /// vCPU pauses around them (total µs the guest stood still, [t]).
    pub pv_taken: u64,
    pub pv_found_written: u64,
    pub dirty_log_reads: u64,
    pub pv_pauses: u64,
    pub pv_pause_us: u64,
}

fn at(doc: &Value, path: &str) -> u64 {
    path.split('.')
        .try_fold(doc, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn num(result: &BTreeMap<String, String>, key: &str) -> Option<u64> {
    result.get(key)?.parse().ok()
}

/// MiB/s from the result line's `bytes=` and `ms=`.
pub fn throughput(result: &BTreeMap<String, String>) -> Option<f64> {
    let (bytes, ms) = (num(result, "bytes")?, num(result, "ms")?);
    (ms > 0).then(|| mib(bytes) / (ms as f64 / 1000.0))
}

/// When the memory the guest freed at `freed_at_ms` came back.
pub fn give_back(series: &[(u64, u64)], freed_at_ms: u64, peak: u64, last: u64) -> GiveBack {
    if peak.saturating_sub(last) < MIN_GIVEN_BACK {
        return GiveBack::Never;
    }
    let mid = peak / 2 + last / 2;
    series
        .iter()
        .find(|&&(t, b)| t >= freed_at_ms && b < mid)
        .map_or(GiveBack::Never, |&(t, _)| GiveBack::Ms(t - freed_at_ms))
}

/// The time average of a `(ms, value)` series (trapezoids between
/// samples); a single sample is its own average, none is 0.
pub fn time_average(series: &[(u64, u64)]) -> u64 {
    let (Some(first), Some(last)) = (series.first(), series.last()) else {
        return 0;
    };
    let span = last.0.saturating_sub(first.0);
    if span == 0 {
        return last.1;
    }
    let area: u128 = series
        .windows(2)
        .map(|w| {
            let dt = u128::from(w[1].0.saturating_sub(w[0].0));
            dt * (u128::from(w[0].1) + u128::from(w[1].1)) / 2
        })
        .sum();
    u64::try_from(area / u128::from(span)).unwrap_or(u64::MAX)
}

/// Host swap traffic of a run, in pages: (written out, read in).
pub type SwapPages = (u64, u64);

/// The figures of a run from what it left (`out`) and its swap traffic;
/// `baseline` is the unconstrained run's throughput.
pub fn figures(
    out: &Outcome,
    swap: SwapPages,
    baseline: Option<f64>,
) -> Result<Figures, FiguresError> {
    let (series, result) = (&out.series, &out.result);
    let doc = out.stats.as_ref().ok_or(FiguresError::NoStats)?;
    let peak = at(doc, "memory.resident_peak_bytes");
    let last = at(doc, "memory.resident_bytes");
    let exits = doc
        .get("exits")
        .and_then(Value::as_object)
        .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
    let give_back = match num(result, "freed_at_ms") {
        Some(t) => give_back(series, t, peak, last),
        None => GiveBack::NotApplicable,
    };
    let tp = throughput(result);
    let slowdown = match (baseline, tp) {
        (Some(b), Some(t)) if t > 0.0 => Some(b / t),
        _ => None,
    };
    let hint_exits = [
        "hint_batch",
        "set_unused",
        "set_stable",
        "make_volatile",
        "make_stable",
        "check_writable",
    ]
    .iter()
    .map(|k| at(doc, &format!("hypercalls.{k}")))
    .sum();
    let footprint = if out.footprint.is_empty() {
        series
    } else {
        &out.footprint
    };
    Ok(Figures {
        footprint_avg_bytes: time_average(footprint),
        footprint_peak_bytes: footprint.iter().map(|s| s.1).max().unwrap_or(0),
        footprint_final_bytes: footprint.last().map_or(0, |s| s.1),
        swap_out_pages: swap.0,
        swap_in_pages: swap.1,
        disk_pages_read: at(doc, "block.bytes_read") / PAGE,
        hint_exits,
        oom_kills: out.oom_kills.unwrap_or(0),
        peak_bytes: peak,
        final_bytes: last,
        given_back_bytes: peak.saturating_sub(last),
        pages_discarded: at(doc, "reclaim.pages_discarded"),
        reported_pages: at(doc, "reclaim.reported_pages"),
        give_back,
        throughput_mib_s: tp,
        slowdown,
        hint_batches: at(doc, "hypercalls.hint_batch"),
        exits,
        discard_faults: at(doc, "discard_faults.injected"),
        integrity_errors: num(result, "errors"),
        disk_pages_written: at(doc, "block.bytes_written") / PAGE,
        pv_taken: at(doc, "potentially_volatile.discarded"),
        pv_found_written: at(doc, "potentially_volatile.found_written"),
        dirty_log_reads: at(doc, "potentially_volatile.dirty_log_reads"),
        pv_pauses: at(doc, "potentially_volatile.pauses"),
        pv_pause_us: at(doc, "potentially_volatile.pause_us_total"),
    })
}

/// One row of the table: workload, mode and its figures (or why none).
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub mode: String,
    pub figures: Result<Figures, String>,
}

const HEADER: [&str; 19] = [
    "workload",
    "mode",
    "avg MiB",
    "peak MiB",
    "final MiB",
    "back MiB",
    "give-back [t]",
    "MiB/s [t]",
    "slowdown [t]",
    "swap out",
    "swap in",
    "disk pages",
    "disk writes",
    "pv taken/written",
    "hint exits",
    "exits",
    "discard faults",
    "OOM",
    "errors",
];

/// Said under the table.
pub const LEGEND: &str =
    "avg/peak/final: host memory charged to the run's cgroup (time average, largest, last); \
back: guest RAM the host took back (resident peak - final); [t]: a time on this machine \
(guest kernel code is emulated here, host kernel code is not), not a count; \
every other column is a count (pages, exits, faults) that carries over to hardware; \
pv taken/written: potentially volatile pages the host took after its dirty log proved them clean, \
and those it found written and gave back stable (hinting-pv only); \
OOM: the kernel's OOM killer ended the run at the limit (a result of that mode, its figures up to then).";

fn cells(r: &Row) -> Vec<String> {
    let mut c = vec![r.workload.clone(), r.mode.clone()];
    let f = match &r.figures {
        Ok(f) => f,
        Err(why) => {
            c.push(why.clone());
            return c;
        }
    };
    let opt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |x| format!("{x:.d$}"));
    c.extend([
        format!("{:.1}", mib(f.footprint_avg_bytes)),
        format!("{:.1}", mib(f.footprint_peak_bytes)),
        format!("{:.1}", mib(f.footprint_final_bytes)),
        format!("{:.1}", mib(f.given_back_bytes)),
        match f.give_back {
            GiveBack::NotApplicable => "-".into(),
            GiveBack::Never => "never".into(),
            GiveBack::Ms(ms) => format!("{ms} ms"),
        },
        opt(f.throughput_mib_s, 2),
        f.slowdown.map_or("-".into(), |s| format!("{s:.2}x")),
        f.swap_out_pages.to_string(),
        f.swap_in_pages.to_string(),
        f.disk_pages_read.to_string(),
        f.disk_pages_written.to_string(),
        if f.pv_pauses == 0 {
            "-".into()
        } else {
            format!("{}/{}", f.pv_taken, f.pv_found_written)
        },
        f.hint_exits.to_string(),
        f.exits.to_string(),
        f.discard_faults.to_string(),
        f.oom_kills.to_string(),
        match (f.integrity_errors, f.oom_kills) {
            (Some(e), _) => e.to_string(),
            (None, 0) => "?".into(),
            // The workload did not finish: nothing was checked to the end.
            (None, _) => "killed".into(),
        },
    ]);
    c
}

/// The table, as plain text with aligned columns (`markdown`: as a
/// Markdown table instead).
pub fn table(rows: &[Row], markdown: bool) -> String {
    let all: Vec<Vec<String>> = std::iter::once(HEADER.iter().map(|s| s.to_string()).collect())
        .chain(rows.iter().map(cells))
        .collect();
    let mut width = vec![0usize; HEADER.len()];
    // A failed run's reason spans the figure columns: it sets no width.
    for row in all.iter().filter(|r| r.len() == HEADER.len()) {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    for row in all.iter().filter(|r| r.len() < HEADER.len()) {
        for (w, c) in width.iter_mut().zip(row).take(2) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for (i, row) in all.iter().enumerate() {
        let padded: Vec<String> = row
            .iter()
            .zip(&width)
            .enumerate()
            .map(|(j, (c, &w))| {
                if j < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        if markdown {
            out.push_str(&format!("| {} |\n", padded.join(" | ")));
            if i == 0 {
                let rule: Vec<String> = width.iter().map(|&w| "-".repeat(w)).collect();
                out.push_str(&format!("| {} |\n", rule.join(" | ")));
            }
        } else {
            out.push_str(padded.join("  ").trim_end());
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(LEGEND);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const M: u64 = 1 << 20;

    #[test]
    fn give_back_is_timed_from_the_free_to_the_midpoint() {
        let s = [
            (100, 10 * M),
            (1000, 10 * M),
            (2100, 9 * M),
            (2300, 3 * M),
            (2500, 2 * M),
        ];
        assert_eq!(give_back(&s, 1500, 10 * M, 2 * M), GiveBack::Ms(800));
        // A drop before the free does not count.
        let s2 = [(100, 2 * M), (2000, 10 * M)];
        assert_eq!(give_back(&s2, 1000, 10 * M, 2 * M), GiveBack::Never);
        // Nothing came back.
        assert_eq!(give_back(&s, 1500, 10 * M, 10 * M - 4096), GiveBack::Never);
    }

    fn outcome(doc: Value, series: &[(u64, u64)], r: BTreeMap<String, String>) -> Outcome {
        Outcome {
            stats: Some(doc),
            series: series.to_vec(),
            result: r,
            ..Outcome::default()
        }
    }

    #[test]
    fn the_time_average_weighs_each_sample_by_how_long_it_held() {
        assert_eq!(time_average(&[]), 0);
        assert_eq!(time_average(&[(5, 7)]), 7);
        // 0..1000 ms ramps 0 -> 10, then 10 for 3000 ms: (5000 + 30000) / 4000.
        assert_eq!(time_average(&[(0, 0), (1000, 10), (4000, 10)]), 8);
        assert_eq!(time_average(&[(100, 4 * M), (200, 4 * M)]), 4 * M);
    }

    #[test]
    fn figures_come_from_stats_result_and_baseline() {
        let doc = serde_json::json!({
            "memory": {"resident_peak_bytes": 10 * M, "resident_bytes": 4 * M},
            "reclaim": {"pages_discarded": 256, "reported_pages": 512},
            "hypercalls": {"hint_batch": 7, "make_volatile": 2, "hello": 1},
            "exits": {"io_out": 5, "hlt": 2, "other": 1},
            "discard_faults": {"injected": 3},
            "block": {"bytes_read": 40960, "bytes_written": 8192},
            "potentially_volatile": {"discarded": 40, "found_written": 6, "pauses": 9,
                "dirty_log_reads": 9, "pause_us_total": 900},
        });
        let r = result(&[("bytes", "4194304"), ("ms", "2000"), ("errors", "0")]);
        let mut out = outcome(doc.clone(), &[], r.clone());
        out.footprint = vec![(0, 2 * M), (1000, 6 * M)];
        out.oom_kills = Some(0);
        let f = figures(&out, (30, 12), Some(4.0)).unwrap();
        assert_eq!(
            (f.peak_bytes, f.final_bytes, f.given_back_bytes),
            (10 * M, 4 * M, 6 * M)
        );
        assert_eq!(
            (
                f.footprint_avg_bytes,
                f.footprint_peak_bytes,
                f.footprint_final_bytes
            ),
            (4 * M, 6 * M, 6 * M)
        );
        assert_eq!(
            (f.swap_out_pages, f.swap_in_pages, f.disk_pages_read),
            (30, 12, 10)
        );
        assert_eq!((f.pages_discarded, f.reported_pages), (256, 512));
        assert_eq!(
            (f.hint_batches, f.hint_exits, f.exits, f.discard_faults),
            (7, 9, 8, 3)
        );
        assert_eq!(f.throughput_mib_s, Some(2.0));
        assert_eq!(f.slowdown, Some(2.0));
        assert_eq!(f.integrity_errors, Some(0));
        assert_eq!(f.give_back, GiveBack::NotApplicable);
        assert_eq!(
            (f.disk_pages_written, f.pv_taken, f.pv_found_written),
            (2, 40, 6)
        );
        assert_eq!((f.dirty_log_reads, f.pv_pauses, f.pv_pause_us), (9, 9, 900));
        let mut none = out.clone();
        none.stats = None;
        assert_eq!(figures(&none, (0, 0), None), Err(FiguresError::NoStats));
        // Without a cgroup the footprint is the guest's resident memory.
        let f = figures(
            &outcome(doc.clone(), &[(0, M), (100, 3 * M)], r),
            (0, 0),
            None,
        )
        .unwrap();
        assert_eq!(
            (f.footprint_avg_bytes, f.footprint_peak_bytes),
            (2 * M, 3 * M)
        );
        // A run without a result line has no throughput and unknown errors.
        let f = figures(&outcome(doc, &[], BTreeMap::new()), (0, 0), Some(4.0)).unwrap();
        assert_eq!(
            (f.throughput_mib_s, f.slowdown, f.integrity_errors),
            (None, None, None)
        );
        assert_eq!(throughput(&result(&[("bytes", "1"), ("ms", "0")])), None);
    }

    #[test]
    fn the_table_aligns_and_marks_failures() {
        let doc =
            serde_json::json!({"memory": {"resident_peak_bytes": 2 * M, "resident_bytes": M}});
        let r = result(&[("freed_at_ms", "0"), ("errors", "0")]);
        let f = figures(&outcome(doc, &[(5, M / 2)], r), (0, 0), None).unwrap();
        assert_eq!(f.give_back, GiveBack::Ms(5));
        let rows = vec![
            Row {
                workload: "anon-free".into(),
                mode: "hinting".into(),
                figures: Ok(f),
            },
            Row {
                workload: "anon-free".into(),
                mode: "off".into(),
                figures: Err("failed: exit status 2".into()),
            },
        ];
        let t = table(&rows, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "header, two rows, a blank line, the legend");
        assert!(lines[4].contains("carries over to hardware"));
        assert!(lines[0].starts_with("workload ") && lines[0].ends_with("errors"));
        assert!(
            lines[1].contains("5 ms") && lines[1].contains(" 1.0 "),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("failed: exit status 2"));
        assert_eq!(
            lines[2].find("failed"),
            lines[0].find("avg MiB"),
            "a failure starts in the first figure column and widens none"
        );
        let md = table(&rows, true);
        assert!(md.lines().nth(1).unwrap().starts_with("| ---"));
        assert_eq!(md.lines().count(), 6);
    }
}
