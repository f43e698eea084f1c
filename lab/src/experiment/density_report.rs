//! The density experiment's table: one row per group run (the unlimited
//! baselines and every mode's runs, in order), with the total footprint,
//! the swap traffic, OOM kills, the guests' slowdowns and disk pages, and
//! whether the run held; then the answer, the largest N per mode, and a
//! legend saying which columns are times on this machine and which are
//! counts. This module only formats; it must never read or write files.

use std::fmt::Write;

use super::child::mib;
use super::density_plan::{largest, DensityPlan, GroupRun, Guest};

/// `a/b/c` of each guest's value, `-` where it has none.
fn each<T>(r: &GroupRun, f: impl Fn(&Guest) -> Option<T>, show: impl Fn(T) -> String) -> String {
    r.per_guest
        .iter()
        .map(|g| f(g).map_or_else(|| "-".to_string(), &show))
        .collect::<Vec<_>>()
        .join("/")
}

/// The table, the answer per mode and the legend.
pub fn table(runs: &[GroupRun], plan: &DensityPlan, not_run: &[(String, String)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<20} {:>6} {:>8} {:>9} {:>9} {:>8} {:>4}  {:<24} {:<24} held",
        "mode",
        "guests",
        "avg MiB",
        "peak MiB",
        "swap out",
        "swap in",
        "OOM",
        "slowdown [t]",
        "disk pages"
    );
    for r in runs {
        let why: Vec<&str> = r
            .per_guest
            .iter()
            .filter_map(|g| g.failure.as_deref())
            .collect();
        let held = if r.mode == "baseline" {
            "-".to_string()
        } else if r.held {
            "yes".to_string()
        } else {
            format!("no: {}", why.first().copied().unwrap_or("a guest failed"))
        };
        let _ = writeln!(
            t,
            "{:<20} {:>6} {:>8.1} {:>9.1} {:>9} {:>8} {:>4}  {:<24} {:<24} {}",
            r.mode,
            r.guests,
            mib(r.footprint_avg_bytes),
            mib(r.footprint_peak_bytes),
            r.swap_out_pages,
            r.swap_in_pages,
            r.oom_kills,
            each(r, |g| g.slowdown, |s| format!("{s:.2}x")),
            each(r, |g| g.disk_pages_read, |p| p.to_string()),
            held
        );
    }
    let _ = writeln!(t);
    for m in &plan.modes {
        if let Some((_, why)) = not_run.iter().find(|(n, _)| n == m.name()) {
            let _ = writeln!(t, "{}: {why}", m.name());
            continue;
        }
        let _ = writeln!(
            t,
            "{}: {} of {} guests held under {} MiB",
            m.name(),
            largest(runs, m.name()),
            plan.max_guests,
            plan.limit >> 20
        );
    }
    let _ = writeln!(
        t,
        "\navg/peak: host memory charged to the shared cgroup (time average, largest); slowdown [t]: each guest's \
         workload time against the same guest in the same number of guests with no limit and no hints, a time on \
         this machine (guest kernel code is emulated here, host kernel code is not; a guest's disk re-read costs \
         ~2.5 ms here, a host swap-in microseconds); held: every guest finished, verified every byte, was not \
         OOM-killed and stayed within {}x; every other column is a count that carries over to hardware.",
        plan.max_slowdown
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Mode;

    #[test]
    fn the_table_names_each_run_its_guests_and_the_answer() {
        let g = |s: f64, failure: Option<&str>| Guest {
            exit_status: Some(0),
            wall_ms: 1,
            throughput_mib_s: Some(1.0),
            slowdown: Some(s),
            integrity_errors: Some(0),
            disk_pages_read: Some(7),
            discard_faults: None,
            resident_avg_bytes: 0,
            failure: failure.map(str::to_string),
        };
        let run = |mode, held, per_guest| GroupRun {
            mode,
            guests: 2,
            limit_bytes: Some(24 << 20),
            footprint_avg_bytes: 20 << 20,
            footprint_peak_bytes: 24 << 20,
            swap_out_pages: 9,
            swap_in_pages: 3,
            oom_kills: 0,
            held,
            per_guest,
            footprint: Vec::new(),
        };
        let runs = [
            run("hinting", true, vec![g(1.5, None), g(1.2, None)]),
            run(
                "host-swap",
                false,
                vec![g(1.0, None), g(3.0, Some("3.00x slower"))],
            ),
        ];
        let plan = DensityPlan {
            modes: vec![Mode::HostSwap, Mode::Hinting],
            max_guests: 3,
            limit: 24 << 20,
            max_slowdown: 2.0,
            params: super::super::plan::params(
                super::super::plan::Workload::KeyValue,
                super::super::plan::Plan::Quick,
            ),
        };
        let t = table(&runs, &plan, &[]);
        assert!(t.contains("1.50x/1.20x"), "{t}");
        assert!(t.contains("no: 3.00x slower"), "{t}");
        assert!(
            t.contains("hinting: 2 of 3 guests held under 24 MiB"),
            "{t}"
        );
        assert!(t.contains("host-swap: 0 of 3"), "{t}");
        assert!(t.contains("carries over to hardware"));
        let t = table(
            &[],
            &plan,
            &[("host-swap".into(), "not run: no swap".into())],
        );
        assert!(t.contains("host-swap: not run: no swap"), "{t}");
    }
}
