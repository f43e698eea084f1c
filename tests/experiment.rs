//! `vmm experiment --quick` end to end under real KVM: every workload in
//! every default mode plus its unconstrained baseline, each run in its own
//! memory cgroup under the workload's limit, with a temporary swap file;
//! then checks on the JSON it wrote. On every workload hinting's
//! time-averaged footprint is at most free page reporting's (where free
//! page reporting was not OOM-killed at the limit and did not need swap to
//! hold it; where it did, hinting swaps at most a quarter as much) and its swap
//! traffic at most host swap's (far less where the guest holds page
//! cache); no run has an integrity error, no hinting or baseline run an
//! OOM kill (host swap and free page reporting may meet one); the cgroups and
//! the swap file are gone afterwards. The experiment runs once (a few
//! minutes here) and every test reads its results. A cgroup that cannot be
//! made ends the experiment at once with a clear message.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::experiment::Experiment;
use common::process::{names_in, signal, spawn_logged, wait_exit, wait_until};
use common::{read_json, require_kvm, vmm};
use serde_json::Value;

/// The whole quick matrix: 5 workloads x (4 modes + a baseline), and the
/// writing workload's run with potentially volatile pages.
const RUNS: usize = 26;
/// The read-only workloads: hinting's claims below hold for them as they
/// stand; the writing one has its own test (its pages mapped writable are
/// hinting's only with potentially volatile pages).
const WORKLOADS: [&str; 4] = ["page-cache", "kv", "build", "anon-free"];
/// How long the whole quick experiment may take (about 5 minutes here;
/// each run has its own timeout besides: 2 minutes, 4 for the writing
/// workload).
const LIMIT: Duration = Duration::from_secs(1500);

/// Runs the experiment the first time it is asked for.
fn results() -> &'static Experiment {
    static R: OnceLock<Experiment> = OnceLock::new();
    R.get_or_init(|| {
        let args = ["--quick", "--swap-file", "256M"];
        Experiment::run("experiment", "the experiment", &args, LIMIT)
    })
}

/// A run's JSON document (`workload-mode.json`).
fn doc(workload: &str, mode: &str) -> Value {
    results().json(&format!("{workload}-{mode}.json"))
}

fn u(v: &Value, path: &str) -> u64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

fn fig(d: &Value, key: &str) -> u64 {
    u(d, &format!("figures.{key}"))
}

const MODES: [&str; 5] = [
    "baseline",
    "host-swap",
    "free-page-reporting",
    "hinting",
    "hinting-batched",
];

#[test]
fn the_experiment_succeeds_and_prints_its_table() {
    let r = results();
    r.run.expect_status(0);
    r.run.expect_stdout("workload").expect_stdout("swap out");
    r.run.expect_stdout("carries over to hardware");
    r.run.expect_stdout(&format!("experiment: {RUNS} runs"));
    r.run.expect_stderr("memory cgroups in");
    let summary = r.json("summary.json");
    assert_eq!(summary["runs"].as_array().map(Vec::len), Some(RUNS));
    for w in WORKLOADS {
        let svg = std::fs::read_to_string(r.dir.join(format!("{w}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"));
        for m in ["baseline", "host-swap", "free-page-reporting", "hinting"] {
            assert!(svg.contains(m), "{w}.svg lacks {m}");
        }
    }
    // One point per constrained run that finished (an OOM-killed run has
    // no slowdown to plot).
    let tradeoff = std::fs::read_to_string(r.dir.join("tradeoff.svg")).unwrap();
    let mut points = 0;
    for w in WORKLOADS {
        for m in &MODES[1..] {
            if doc(w, m)["figures"]["slowdown"].is_f64() {
                assert!(
                    tradeoff.contains(&format!("{w} {m}\n")),
                    "no point for {w} {m}"
                );
                points += 1;
            }
        }
    }
    assert!(points >= 4 * 2, "{points} points: hinting's eight at least");
}

#[test]
fn every_run_records_its_limit_footprint_swap_and_no_integrity_errors() {
    for w in WORKLOADS {
        let base = doc(w, "baseline");
        for m in MODES {
            let d = doc(w, m);
            assert_eq!(d["failure"], Value::Null, "{w} {m}");
            // Without hints the host may only swap; at a tight limit the
            // kernel may OOM-kill instead (a result, recorded as such).
            // Hinting and the unconstrained baseline must finish.
            let may_oom = matches!(m, "host-swap" | "free-page-reporting");
            if may_oom && fig(&d, "oom_kills") > 0 {
                assert!(d["exit_status"].is_null(), "{w} {m}: OOM-killed yet exited");
            } else {
                assert_eq!(d["exit_status"], 0, "{w} {m}");
                assert_eq!(u(&d, "result.errors"), 0, "{w} {m}: integrity errors");
                assert_eq!(fig(&d, "oom_kills"), 0, "{w} {m}");
            }
            assert_eq!(d["parameters"]["mode"], m);
            assert!(d["machine"]["kvm"].is_string() && d["machine"]["commit"].is_string());
            for key in ["swap_out_pages", "swap_in_pages"] {
                assert!(d["figures"][key].is_u64(), "{w} {m}: no {key}");
            }
            let footprint = d["footprint"].as_array().expect("footprint");
            assert!(footprint.len() >= 2, "{w} {m}: {} samples", footprint.len());
            assert!(fig(&d, "footprint_avg_bytes") > 0);
            if m == "baseline" {
                assert!(d["parameters"]["limit_bytes"].is_null());
                continue;
            }
            // One limit for every constrained mode of a workload, held.
            let limit = u(&d, "parameters.limit_bytes");
            assert_eq!(limit, u(&doc(w, "host-swap"), "parameters.limit_bytes"));
            assert!(
                fig(&d, "footprint_peak_bytes") <= limit,
                "{w} {m}: peak {} over the limit {limit}",
                fig(&d, "footprint_peak_bytes")
            );
            // The limit binds: the unconstrained run needed more (not on
            // anon-free, whose waves fit; it is about giving back).
            if w == "anon-free" {
                continue;
            }
            assert!(
                fig(&base, "footprint_peak_bytes") > limit,
                "{w}: the baseline's peak {} fits the limit {limit}",
                fig(&base, "footprint_peak_bytes")
            );
        }
    }
}

#[test]
fn hinting_holds_the_limit_in_less_memory_than_free_page_reporting() {
    for w in WORKLOADS {
        let (h, f) = (doc(w, "hinting"), doc(w, "free-page-reporting"));
        let (hinting, fpr) = (
            fig(&h, "footprint_avg_bytes"),
            fig(&f, "footprint_avg_bytes"),
        );
        // A run the OOM killer ended has an average over its life up to the
        // kill, mostly the climb to the limit: no footprint to compare.
        // Hinting held the same limit to the end (checked above).
        if fig(&f, "oom_kills") > 0 {
            assert_eq!(fig(&h, "oom_kills"), 0, "{w}");
            continue;
        }
        // A run that free page reporting could hold only by swapping keeps
        // part of its memory in swap, which its RAM footprint leaves out:
        // both sit at the limit, and their RAM averages differ by noise
        // (kv: 9.34 MiB for hinting, 9.03 for free page reporting in one CI
        // run, the other way round in others). There the claim is that
        // hinting holds the same limit without the swap.
        let fpr_swap = fig(&f, "swap_out_pages").saturating_sub(noise(&f));
        if fpr_swap >= 200 {
            let own = fig(&h, "swap_out_pages").saturating_sub(noise(&h));
            assert!(
                4 * own <= fpr_swap,
                "{w}: hinting swapped {own} pages out, free page reporting {fpr_swap}"
            );
            continue;
        }
        assert!(
            hinting <= fpr,
            "{w}: hinting's time-averaged footprint {hinting} > free page reporting's {fpr}\n\
             hinting: {}\nfree page reporting: {}\n--- the experiment's table\n{}",
            h["figures"],
            f["figures"],
            results().run.stdout
        );
    }
}

/// Swap pages another process of the host may add to a run's figure when
/// it comes from `/proc/vmstat` (cgroup v1 counts no swap per cgroup).
fn noise(d: &Value) -> u64 {
    if d["placement"]["swap_source"] == "host" {
        32
    } else {
        0
    }
}

/// Pages a run read or wrote beyond what the unconstrained baseline read:
/// disk pages read again, and swap out and in (less what other processes
/// swapped meanwhile, where the figure is host-wide).
fn page_io(w: &str, mode: &str) -> u64 {
    let d = doc(w, mode);
    let reread =
        fig(&d, "disk_pages_read").saturating_sub(fig(&doc(w, "baseline"), "disk_pages_read"));
    let swap = (fig(&d, "swap_out_pages") + fig(&d, "swap_in_pages")).saturating_sub(noise(&d));
    reread + swap
}

/// Issue 23's goal: on the key-value workload, whose hot set is read
/// through mappings the host cannot see into, hinting (the guest's ages,
/// the whole limit) moves no more pages than host swap does.
#[test]
fn hinting_moves_no_more_pages_than_host_swap_on_kv() {
    let hinting = page_io("kv", "hinting");
    let host = page_io("kv", "host-swap");
    assert!(host >= 200, "kv: host swap moved only {host} pages");
    assert!(
        hinting <= host,
        "kv: hinting moved {hinting} pages (re-read + swap), host swap {host}"
    );
    // The guest grows into the limit: the cgroup's usage event woke the
    // reclaimer at least once between its intervals.
    let d = doc("kv", "hinting");
    let wakes = u(&d, "stats.reclaim.event_wakes");
    assert!(wakes >= 1, "kv: the usage event never woke the reclaimer");
    assert!(u(&d, "stats.reclaim.event_drops") <= wakes);
}

#[test]
fn hinting_swaps_less_than_the_host_would() {
    for w in WORKLOADS {
        let d = doc(w, "hinting");
        let hinting = fig(&d, "swap_out_pages");
        let host = fig(&doc(w, "host-swap"), "swap_out_pages");
        assert!(
            hinting <= host + noise(&d),
            "{w}: hinting swapped {hinting} pages out, host swap {host}"
        );
    }
    // Where the guest holds clean cache, host swap writes it to swap and
    // hinting drops it instead.
    for w in ["page-cache", "kv"] {
        let hinting = fig(&doc(w, "hinting"), "swap_out_pages");
        let host = fig(&doc(w, "host-swap"), "swap_out_pages");
        assert!(host >= 200, "{w}: host swap wrote only {host} pages");
        let own = hinting.saturating_sub(noise(&doc(w, "hinting")));
        assert!(
            4 * own <= host,
            "{w}: hinting {hinting} vs host swap {host}"
        );
    }
    // The shared table passes states without exits; batches need them.
    let shared = fig(&doc("page-cache", "hinting"), "hint_exits");
    let batched = fig(&doc("page-cache", "hinting-batched"), "hint_exits");
    assert!(batched > 2 * shared, "{batched} vs {shared} hint exits");
}

#[test]
fn free_page_reporting_and_hinting_give_back_freed_anonymous_memory() {
    for m in ["free-page-reporting", "hinting"] {
        let d = doc("anon-free", m);
        let peak = u(&d, "stats.memory.resident_peak_bytes");
        let last = u(&d, "stats.memory.resident_bytes");
        assert!(
            last + (1 << 20) <= peak,
            "{m}: resident {last} did not drop from {peak}"
        );
        assert!(
            d["figures"]["give_back"].get("ms").is_some(),
            "{m}: time to give back: {}",
            d["figures"]["give_back"]
        );
    }
    let d = doc("anon-free", "free-page-reporting");
    assert!(
        u(&d, "stats.reclaim.reported_pages") > 0,
        "nothing reported"
    );
    assert_eq!(u(&d, "stats.reclaim.pages_discarded"), 0);
    let fpr_final = u(&d, "stats.memory.resident_bytes");
    let hinting_final = u(&doc("anon-free", "hinting"), "stats.memory.resident_bytes");
    assert!(
        hinting_final <= fpr_final,
        "hinting ends with {hinting_final} resident, free page reporting {fpr_final}"
    );
}

#[test]
fn the_modes_without_hints_drop_nothing() {
    for w in WORKLOADS {
        for m in ["host-swap", "baseline"] {
            let d = doc(w, m);
            assert_eq!(u(&d, "stats.reclaim.pages_discarded"), 0, "{w} {m}");
            assert_eq!(u(&d, "stats.reclaim.reported_pages"), 0, "{w} {m}");
            assert_eq!(fig(&d, "hint_exits"), 0, "{w} {m}");
        }
    }
}

#[test]
fn potentially_volatile_pages_let_hinting_hold_a_writer_without_swap_and_lose_nothing() {
    // The writing workload maps most of its files writable: without
    // potentially volatile pages hinting cannot offer those pages and the
    // host swaps them; with them the host takes the clean ones (its dirty
    // log proving each clean) and swaps little.
    let (pv, plain) = (doc("write", "hinting-pv"), doc("write", "hinting"));
    for (m, d) in [
        ("hinting-pv", &pv),
        ("hinting", &plain),
        ("baseline", &doc("write", "baseline")),
    ] {
        assert_eq!(d["exit_status"], 0, "write {m}");
        assert_eq!(u(d, "result.errors"), 0, "write {m}: integrity errors");
        assert!(
            u(d, "result.writeback_pages") > 0,
            "write {m}: nothing written back"
        );
    }
    assert!(fig(&pv, "pv_taken") > 0, "{}", pv["figures"]);
    let limit = u(&pv, "parameters.limit_bytes");
    assert!(
        fig(&pv, "footprint_peak_bytes") <= limit,
        "{}",
        pv["figures"]
    );
    assert!(fig(&pv, "dirty_log_reads") > 0, "{}", pv["figures"]);
    assert_eq!(fig(&plain, "pv_taken"), 0, "{}", plain["figures"]);
    assert_eq!(fig(&plain, "pv_pauses"), 0, "{}", plain["figures"]);
    let (with, without) = (fig(&pv, "swap_out_pages"), fig(&plain, "swap_out_pages"));
    assert!(
        with <= without / 4 + noise(&pv),
        "hinting-pv swapped {with} pages out, hinting {without}\n{}",
        results().run.stdout
    );
    assert!(
        u(&pv, "stats.potentially_volatile.pause_timeouts") == 0,
        "{}",
        pv["stats"]["potentially_volatile"]
    );
}

#[test]
fn the_cgroups_and_the_swap_file_are_gone_afterwards() {
    let r = results();
    let summary = r.json("summary.json");
    let parent = PathBuf::from(summary["cgroup_parent"].as_str().unwrap());
    // This experiment's cgroups: pagehint-exp-<its pid>-<run>.
    let d = doc("kv", "hinting");
    let cg = PathBuf::from(d["placement"]["cgroup"].as_str().unwrap());
    let name = cg.file_name().unwrap().to_string_lossy().into_owned();
    let mine = name.strip_suffix("kv-hinting").unwrap().to_string();
    assert!(mine.starts_with("pagehint-exp-"), "{mine}");
    assert!(parent.is_dir(), "{}", parent.display());
    let left = names_in(&parent, |n| n.starts_with(&mine));
    assert!(
        left.is_empty(),
        "cgroups left in {}: {left:?}",
        parent.display()
    );
    assert!(!cg.exists(), "{} is still there", cg.display());
    let swap = r.dir.join("experiment.swap");
    assert!(!swap.exists(), "the swap file is still there");
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
    assert!(
        !swaps.contains("experiment.swap"),
        "still swapping to it: {swaps}"
    );
    assert_eq!(summary["swap_file_bytes"], 256 << 20);
}

#[test]
fn an_interrupted_experiment_keeps_what_finished_and_says_what_did_not_run() {
    // After the big experiment: two at once would disturb its figures.
    let _ = results();
    let dir = std::env::temp_dir().join(format!("vmm-exp-stop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = dir.with_extension("err");
    let out = dir.to_str().unwrap();
    let mut child = spawn_logged(
        &[
            "experiment",
            "anon-free",
            "--quick",
            "--mode",
            "hinting",
            "--mode",
            "free-page-reporting",
            "--out",
            out,
        ],
        &stderr,
    );
    // The first run (the baseline) has written its document: stop then.
    let finished = || {
        !names_in(&dir, |n| {
            n.ends_with(".json") && !n.ends_with(".stats.json") && n != "summary.json"
        })
        .is_empty()
    };
    wait_until(Duration::from_secs(300), finished, || {
        let err = std::fs::read_to_string(&stderr).unwrap_or_default();
        format!("no run finished: {err}")
    });
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGINT);
    let status = wait_exit(&mut child, Duration::from_secs(30), "did not stop");
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("stopped by signal 2 after 1 of 3 runs"),
        "{err}"
    );
    let summary = read_json(&dir.join("summary.json"));
    assert_eq!(summary["interrupted_by_signal"], 2, "{summary}");
    assert_eq!(summary["runs"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!(summary["not_run"].as_array().unwrap().len(), 2, "{summary}");
    let table = std::fs::read_to_string(dir.join("table.txt")).unwrap();
    assert!(table.contains("anon-free"), "{table}");
    // Its disk images and swap file are gone.
    assert!(dir.is_dir(), "{}", dir.display());
    let left = names_in(&dir, |n| n.ends_with(".img") || n.ends_with(".swap"));
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&stderr);
}

#[test]
fn a_cgroup_that_cannot_be_made_ends_the_experiment_at_once() {
    require_kvm();
    // A plain directory is no memory cgroup.
    let r = vmm(
        &[
            "experiment",
            "--quick",
            "--cgroup-root",
            "/tmp",
            "--out",
            "/tmp/vmm-exp-nocg",
        ],
        Duration::from_secs(30),
    );
    r.expect_status(78)
        .expect_stderr("not a memory cgroup directory");
    assert!(r.elapsed < Duration::from_secs(10), "took {:?}", r.elapsed);
    // One that looks like one but is not: mkdir works, joining does not.
    let fake = std::env::temp_dir().join(format!("vmm-fake-cg-{}", std::process::id()));
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("memory.limit_in_bytes"), "0").unwrap();
    let r = vmm(
        &[
            "experiment",
            "--quick",
            "--cgroup-root",
            fake.to_str().unwrap(),
            "--out",
            "/tmp/vmm-exp-nocg",
        ],
        Duration::from_secs(30),
    );
    r.expect_status(78).expect_stderr("cgroup.procs");
    let left = std::fs::read_dir(&fake).unwrap().count();
    assert_eq!(
        left,
        1,
        "the experiment left what it made in {}",
        fake.display()
    );
    let _ = std::fs::remove_dir_all(&fake);
    let _ = std::fs::remove_dir_all("/tmp/vmm-exp-nocg");
}
