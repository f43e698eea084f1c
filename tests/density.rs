//! `vmm experiment density --quick` end to end under real KVM: up to three
//! key-value guests, each with its own disk, under one 24 MiB memory
//! cgroup, per mode, with a temporary swap file. Hinting holds at least as
//! many guests as host swap and free page reporting, with far less swap
//! traffic where host swap held the same number; no guest of any run has
//! an integrity error; no guest of hinting's largest run was starved; the
//! cgroups, the swap file and the disks are gone afterwards. An experiment
//! stopped by SIGINT or SIGTERM kills its guests, removes its cgroups and
//! exits 130 or 143.
//!
//! The slowdown bound here is 10x, not the default 2x: on this machine
//! guest kernel code is emulated (~1 us per instruction), so a page the
//! guest re-reads from its disk costs ~2.5 ms while a host swap-in costs
//! microseconds; a 2x bound would measure the emulator. `docs/results.md`
//! reports the 2x run beside this one.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::experiment::Experiment;
use common::process::{names_in, processes_naming, signal, spawn_logged, wait_exit, wait_until};
use common::{read_json, require_kvm};
use serde_json::Value;

const MAX_GUESTS: u64 = 3;
/// Several minutes here; a hang bound, not a speed goal.
const LIMIT: Duration = Duration::from_secs(1500);
/// One density run at a time: two would share the CPUs and the host's
/// swap counters.
static SERIAL: Mutex<()> = Mutex::new(());

fn results() -> &'static Experiment {
    static R: OnceLock<Experiment> = OnceLock::new();
    R.get_or_init(|| {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let args = [
            "density",
            "--quick",
            "--guests",
            "3",
            "--max-slowdown",
            "10",
        ];
        let args = [&args[..], &["--swap-file", "256M"]].concat();
        Experiment::run("density", "the density experiment", &args, LIMIT)
    })
}

fn summary() -> Value {
    results().json("density-summary.json")
}

/// The group run of `mode` with `n` guests, if it ran.
fn group(mode: &str, n: u64) -> Option<Value> {
    let doc = results().try_json(&format!("density-{mode}-n{n}.json"))?;
    Some(doc["run"].clone())
}

fn largest(mode: &str) -> u64 {
    summary()["largest"][mode]
        .as_u64()
        .unwrap_or_else(|| panic!("no answer for {mode}: {}", results().run.stdout))
}

#[test]
fn the_density_experiment_prints_its_answer_per_mode() {
    let r = results();
    r.run.expect_status(0);
    r.run
        .expect_stdout("guests held under 24 MiB")
        .expect_stdout("carries over to hardware");
    for m in ["host-swap", "free-page-reporting", "hinting"] {
        r.run.expect_stdout(&format!("{m}: "));
        assert!(largest(m) <= MAX_GUESTS);
    }
    for plot in ["density.svg", "density-footprint.svg"] {
        let svg = std::fs::read_to_string(r.dir.join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("hinting"), "{plot}");
    }
}

#[test]
fn hinting_holds_at_least_as_many_guests_with_less_swap() {
    let h = largest("hinting");
    let out = &results().run.stdout;
    assert!(h >= 2, "hinting held {h} guests\n{out}");
    for m in ["host-swap", "free-page-reporting"] {
        assert!(h >= largest(m), "hinting {h} < {m} {}\n{out}", largest(m));
    }
    // Where host swap held as many, it did so by swapping; hinting by
    // dropping clean cache.
    if let Some(host) = group("host-swap", h).filter(|g| g["held"] == true) {
        let hinting = group("hinting", h).unwrap();
        let (hs, hi) = (
            host["swap_out_pages"].as_u64().unwrap(),
            hinting["swap_out_pages"].as_u64().unwrap(),
        );
        assert!(hs >= 200, "host swap wrote only {hs} pages\n{out}");
        // 32: what another process of the host may add to /proc/vmstat.
        assert!(
            4 * hi.saturating_sub(32) <= hs,
            "hinting {hi} vs host swap {hs}\n{out}"
        );
    }
}

/// Pages moved per guest by `mode`'s run of `n` guests beyond the same
/// guests unconstrained: disk pages read again, and the cgroup's swap out
/// and in shared among the guests.
fn page_io_per_guest(mode: &str, n: u64) -> Option<f64> {
    let run = group(mode, n)?;
    let base = group("baseline", n)?;
    let disk = |g: &Value| -> u64 {
        g["per_guest"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["disk_pages_read"].as_u64().unwrap_or(0))
            .sum()
    };
    let reread = disk(&run).saturating_sub(disk(&base));
    let swap = run["swap_out_pages"].as_u64().unwrap() + run["swap_in_pages"].as_u64().unwrap();
    Some((reread + swap) as f64 / n as f64)
}

/// Issue 23's goal on density: at the largest number of guests hinting
/// held, it moves no more pages per guest than host swap does with as
/// many guests (reads again from its disks what host swap writes out and
/// reads back).
#[test]
fn hinting_moves_no_more_pages_per_guest_than_host_swap() {
    let n = largest("hinting");
    let out = &results().run.stdout;
    let (Some(hinting), Some(host)) = (
        page_io_per_guest("hinting", n),
        page_io_per_guest("host-swap", n),
    ) else {
        panic!("no runs of {n} guests to compare\n{out}");
    };
    assert!(
        host >= 100.0,
        "host swap moved only {host} pages a guest\n{out}"
    );
    assert!(
        hinting <= host,
        "{n} guests: hinting moved {hinting:.0} pages a guest, host swap {host:.0}\n{out}"
    );
}

#[test]
fn no_guest_of_any_run_has_an_integrity_error() {
    let runs = summary()["runs"].as_array().unwrap().clone();
    assert!(runs.len() >= 4, "{runs:?}");
    for r in runs {
        let g = group(r["mode"].as_str().unwrap(), r["guests"].as_u64().unwrap()).unwrap();
        for guest in g["per_guest"].as_array().unwrap() {
            if guest["failure"] == "OOM-killed" {
                continue;
            }
            assert_eq!(
                guest["integrity_errors"], 0,
                "{} x{}: {guest}",
                g["mode"], g["guests"]
            );
        }
    }
}

#[test]
fn no_guest_of_hintings_largest_run_is_starved() {
    let n = largest("hinting").max(1);
    let g = group("hinting", n).unwrap();
    let guests = g["per_guest"].as_array().unwrap();
    assert_eq!(guests.len() as u64, n);
    let slow: Vec<f64> = guests
        .iter()
        .map(|x| x["slowdown"].as_f64().unwrap())
        .collect();
    let resident: Vec<u64> = guests
        .iter()
        .map(|x| x["resident_avg_bytes"].as_u64().unwrap())
        .collect();
    let (lo, hi) = slow
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), &s| (a.min(s), b.max(s)));
    assert!(hi <= 2.0 * lo, "slowdowns {slow:?}");
    let (rlo, rhi) = (
        *resident.iter().min().unwrap(),
        *resident.iter().max().unwrap(),
    );
    assert!(rhi <= 2 * rlo, "resident memory {resident:?}");
}

/// The run cgroups under `parent` named for pid `pid` (any pid: None).
fn cgroups_of(parent: &Path, pid: Option<u32>) -> Vec<String> {
    let prefix = match pid {
        Some(p) => format!("pagehint-exp-{p}-"),
        None => "pagehint-exp-".to_string(),
    };
    names_in(parent, |n| n.starts_with(&prefix) && n.contains("density"))
}

/// The cgroup parent the experiment said it used.
fn parent_in(stderr: &str) -> PathBuf {
    let line = stderr
        .lines()
        .find(|l| l.contains("memory cgroups in "))
        .unwrap_or_else(|| panic!("no cgroup line in {stderr}"));
    let rest = line.split("memory cgroups in ").nth(1).unwrap();
    PathBuf::from(rest.split(" (").next().unwrap())
}

#[test]
fn the_cgroups_swap_file_and_disks_are_gone_afterwards() {
    let r = results();
    let parent = parent_in(&r.run.stderr);
    assert!(cgroups_of(&parent, None).is_empty());
    for e in std::fs::read_dir(&r.dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".img") && !name.ends_with(".swap"),
            "{name} left behind"
        );
    }
}

#[test]
fn a_stopped_density_run_kills_its_guests_and_removes_its_cgroups() {
    require_kvm();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (signal_number, status) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let dir = std::env::temp_dir().join(format!(
            "vmm-density-stop-{}-{signal_number}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let out = dir.to_str().unwrap().to_string();
        let stderr = dir.with_extension("err");
        let mut child = spawn_logged(
            &[
                "experiment",
                "density",
                "--quick",
                "--guests",
                "2",
                "--mode",
                "hinting",
                "--out",
                &out,
            ],
            &stderr,
        );
        // Wait until guests run (their consoles appear), then stop it.
        let log = dir.join("density-baseline-n1-g0.log");
        wait_until(
            Duration::from_secs(120),
            || log.exists(),
            || "no guest started".into(),
        );
        std::thread::sleep(Duration::from_secs(2));
        assert!(!processes_naming(&out).is_empty(), "no guest running");
        let pid = child.id();
        signal(&child, signal_number);
        let code = wait_exit(&mut child, Duration::from_secs(30), "did not stop").code();
        let err = std::fs::read_to_string(&stderr).unwrap();
        assert_eq!(code, Some(status), "{err}");
        assert!(err.contains("stopped by signal"), "{err}");
        // What finished (maybe nothing yet) is summed up, with the signal.
        let summary = read_json(&dir.join("density-summary.json"));
        assert_eq!(summary["interrupted_by_signal"], signal_number, "{summary}");
        assert!(dir.join("density.txt").exists());
        assert!(cgroups_of(&parent_in(&err), Some(pid)).is_empty());
        assert!(processes_naming(&out).is_empty(), "guests left running");
        assert!(
            !dir.join("density-g0.img").exists(),
            "the disks are removed"
        );
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&stderr);
    }
}
