//! The figures of one run, computed from what the child left (final stats
//! document, resident-memory series, result line), and the terminal table
//! that puts every run of the matrix side by side.
//!
//! Definitions (also in `docs/results.md`): *peak* and *final* are the
//! stats' `resident_peak_bytes` and last `resident_bytes`; *given back* is
//! peak − final; *time to give back* runs from the guest's `freed_at_ms`
//! (guest clock) to the first stats sample (`elapsed_ms`, VMM clock, which
//! starts a few ms before the guest) whose resident memory is below
//! (peak + final) / 2, "never" when less than [`MIN_GIVEN_BACK`] came back;
//! *throughput* is the result line's bytes over its ms; *slowdown* is the
//! baseline's throughput over this run's. Pure functions only: this module
//! must never read files or start anything.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::child::mib;

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

/// The figures of a run; `baseline` is the unconstrained run's throughput.
pub fn figures(
    stats: Option<&Value>,
    series: &[(u64, u64)],
    result: &BTreeMap<String, String>,
    baseline: Option<f64>,
) -> Result<Figures, FiguresError> {
    let doc = stats.ok_or(FiguresError::NoStats)?;
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
    Ok(Figures {
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
    })
}

/// One row of the table: workload, mode and its figures (or why none).
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub mode: String,
    pub figures: Result<Figures, String>,
}

const HEADER: [&str; 14] = [
    "workload",
    "mode",
    "peak MiB",
    "final MiB",
    "back MiB",
    "discarded MiB",
    "reported MiB",
    "give-back",
    "MiB/s",
    "slowdown",
    "hint batches",
    "exits",
    "discard faults",
    "errors",
];

fn cells(r: &Row) -> Vec<String> {
    let mut c = vec![r.workload.clone(), r.mode.clone()];
    let f = match &r.figures {
        Ok(f) => f,
        Err(why) => {
            c.push(format!("failed: {why}"));
            return c;
        }
    };
    let opt = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |x| format!("{x:.d$}"));
    c.extend([
        format!("{:.1}", mib(f.peak_bytes)),
        format!("{:.1}", mib(f.final_bytes)),
        format!("{:.1}", mib(f.given_back_bytes)),
        format!("{:.1}", mib(f.pages_discarded * PAGE)),
        format!("{:.1}", mib(f.reported_pages * PAGE)),
        match f.give_back {
            GiveBack::NotApplicable => "-".into(),
            GiveBack::Never => "never".into(),
            GiveBack::Ms(ms) => format!("{ms} ms"),
        },
        opt(f.throughput_mib_s, 2),
        f.slowdown.map_or("-".into(), |s| format!("{s:.2}x")),
        f.hint_batches.to_string(),
        f.exits.to_string(),
        f.discard_faults.to_string(),
        f.integrity_errors.map_or("?".into(), |e| e.to_string()),
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
    for row in &all {
        for (w, c) in width.iter_mut().zip(row) {
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

    #[test]
    fn figures_come_from_stats_result_and_baseline() {
        let doc = serde_json::json!({
            "memory": {"resident_peak_bytes": 10 * M, "resident_bytes": 4 * M},
            "reclaim": {"pages_discarded": 256, "reported_pages": 512},
            "hypercalls": {"hint_batch": 7},
            "exits": {"io_out": 5, "hlt": 2, "other": 1},
            "discard_faults": {"injected": 3},
        });
        let r = result(&[("bytes", "4194304"), ("ms", "2000"), ("errors", "0")]);
        let f = figures(Some(&doc), &[], &r, Some(4.0)).unwrap();
        assert_eq!(
            (f.peak_bytes, f.final_bytes, f.given_back_bytes),
            (10 * M, 4 * M, 6 * M)
        );
        assert_eq!((f.pages_discarded, f.reported_pages), (256, 512));
        assert_eq!((f.hint_batches, f.exits, f.discard_faults), (7, 8, 3));
        assert_eq!(f.throughput_mib_s, Some(2.0));
        assert_eq!(f.slowdown, Some(2.0));
        assert_eq!(f.integrity_errors, Some(0));
        assert_eq!(f.give_back, GiveBack::NotApplicable);
        assert_eq!(figures(None, &[], &r, None), Err(FiguresError::NoStats));
        // A run without a result line has no throughput and unknown errors.
        let f = figures(Some(&doc), &[], &BTreeMap::new(), Some(4.0)).unwrap();
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
        let f = figures(Some(&doc), &[(5, M / 2)], &r, None).unwrap();
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
                figures: Err("exit status 2".into()),
            },
        ];
        let t = table(&rows, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("workload ") && lines[0].ends_with("errors"));
        assert!(
            lines[1].contains("5 ms") && lines[1].contains("2.0"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("failed: exit status 2"));
        let md = table(&rows, true);
        assert!(md.lines().nth(1).unwrap().starts_with("| ---"));
        assert_eq!(md.lines().count(), 4);
    }
}
