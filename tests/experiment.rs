//! `vmm experiment --quick` end to end under real KVM: every workload in
//! every mode, then checks on the JSON it wrote. Hinting gives back more
//! than free page reporting on the page-cache workload; free page reporting
//! gives back freed anonymous memory; `off` gives back nothing; no run has
//! an integrity error. The experiment runs once (about a minute here) and
//! every test reads its results.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::{require_kvm, vmm, Run};
use serde_json::Value;

/// The whole quick matrix: 2 workloads x (4 modes + a baseline).
const RUNS: usize = 12;

struct Results {
    dir: PathBuf,
    run: Run,
}

/// Runs the experiment the first time it is asked for.
fn results() -> &'static Results {
    static R: OnceLock<Results> = OnceLock::new();
    R.get_or_init(|| {
        require_kvm();
        let dir = std::env::temp_dir().join(format!("vmm-experiment-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = dir.to_str().unwrap().to_string();
        // A panic (the time limit) must not leave the lock empty, or every
        // test would run the experiment again.
        let run = std::panic::catch_unwind(|| {
            vmm(
                &["experiment", "--quick", "--out", &out],
                Duration::from_secs(240),
            )
        })
        .unwrap_or_else(|_| Run {
            status: -1,
            stdout: String::new(),
            stderr: "the experiment did not finish within 240 s".into(),
            elapsed: Duration::from_secs(240),
        });
        Results { dir, run }
    })
}

/// A run's JSON document (`workload-mode.json`).
fn doc(workload: &str, mode: &str) -> Value {
    let r = results();
    let path = r.dir.join(format!("{workload}-{mode}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\n--- stdout\n{}\n--- stderr\n{}",
            path.display(),
            r.run.stdout,
            r.run.stderr
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn u(v: &Value, path: &str) -> u64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

/// Frames the host took back in a run: discarded plus reported.
fn returned_pages(d: &Value) -> u64 {
    u(d, "stats.reclaim.pages_discarded") + u(d, "stats.reclaim.reported_pages")
}

const MODES: [&str; 6] = [
    "baseline",
    "off",
    "free-page-reporting",
    "hinting",
    "hinting-batched",
    "hinting-unbatched",
];

#[test]
fn the_experiment_succeeds_and_prints_its_table() {
    let r = results();
    r.run.expect_status(0);
    r.run.expect_stdout("workload").expect_stdout("give-back");
    r.run.expect_stdout("experiment: 12 runs");
    r.run.expect_stderr("resident");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(r.dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["runs"].as_array().map(Vec::len), Some(RUNS));
    for w in ["page-cache", "anon-free"] {
        let svg = std::fs::read_to_string(r.dir.join(format!("{w}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"));
        for m in [
            "baseline",
            "off",
            "free-page-reporting",
            "hinting-unbatched",
        ] {
            assert!(svg.contains(m), "{w}.svg lacks {m}");
        }
    }
}

#[test]
fn every_run_records_machine_parameters_series_and_no_integrity_errors() {
    for w in ["page-cache", "anon-free"] {
        for m in MODES {
            let d = doc(w, m);
            assert_eq!(d["exit_status"], 0, "{w} {m}");
            assert_eq!(u(&d, "result.errors"), 0, "{w} {m}: integrity errors");
            assert_eq!(d["parameters"]["mode"], m);
            assert!(d["machine"]["kvm"].is_string() && d["machine"]["commit"].is_string());
            let series = d["series"].as_array().expect("series");
            assert!(series.len() >= 3, "{w} {m}: {} samples", series.len());
            assert!(u(&d, "stats.memory.resident_peak_bytes") > 0);
        }
    }
}

#[test]
fn hinting_gives_back_more_than_free_page_reporting_on_the_page_cache() {
    let fpr = returned_pages(&doc("page-cache", "free-page-reporting"));
    for m in ["hinting", "hinting-batched", "hinting-unbatched"] {
        let d = doc("page-cache", m);
        let hinting = returned_pages(&d);
        assert!(
            hinting > fpr,
            "{m} gave back {hinting} pages, free page reporting {fpr}"
        );
        assert!(
            u(&d, "stats.memory.resident_bytes")
                < u(
                    &doc("page-cache", "free-page-reporting"),
                    "stats.memory.resident_bytes"
                ),
            "{m} must end with less resident than free page reporting"
        );
    }
    // Batching is what keeps the exits down, and the shared table more so.
    let shared = u(&doc("page-cache", "hinting"), "stats.hypercalls.hint_batch");
    let batched = u(
        &doc("page-cache", "hinting-batched"),
        "stats.hypercalls.hint_batch",
    );
    assert!(batched > 4 * shared, "{batched} vs {shared} batches");
    let unbatched = u(
        &doc("page-cache", "hinting-unbatched"),
        "stats.hypercalls.hint_batch",
    );
    assert!(unbatched > 4 * batched, "{unbatched} vs {batched} batches");
}

#[test]
fn free_page_reporting_gives_back_freed_anonymous_memory() {
    let d = doc("anon-free", "free-page-reporting");
    assert!(
        u(&d, "stats.reclaim.reported_pages") > 0,
        "nothing reported"
    );
    assert_eq!(u(&d, "stats.reclaim.pages_discarded"), 0);
    let peak = u(&d, "stats.memory.resident_peak_bytes");
    let last = u(&d, "stats.memory.resident_bytes");
    assert!(
        last + (1 << 20) <= peak,
        "resident {last} did not drop from {peak}"
    );
    assert!(
        d["figures"]["give_back"].get("ms").is_some(),
        "time to give back: {}",
        d["figures"]["give_back"]
    );
}

#[test]
fn off_gives_back_nothing() {
    for w in ["page-cache", "anon-free"] {
        for m in ["off", "baseline"] {
            let d = doc(w, m);
            assert_eq!(u(&d, "stats.reclaim.pages_discarded"), 0, "{w} {m}");
            assert_eq!(u(&d, "stats.reclaim.reported_pages"), 0, "{w} {m}");
            assert_eq!(u(&d, "stats.hypercalls.hint_batch"), 0, "{w} {m}");
        }
    }
}
