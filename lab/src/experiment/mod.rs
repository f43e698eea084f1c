//! `vmm experiment`: how much host memory each mode saves, and what the
//! guest pays, against what the host does without hints, side by side in
//! one command.
//!
//! It runs a matrix of workload by mode (`plan`: by default the short
//! plan, a few minutes; `--full` the whole matrix at the full sizes;
//! `--quick` the tests') under one host memory limit per workload, each
//! run a child `vmm run` of this same binary (`child`) in its own memory
//! cgroup (`cgroup`), one after the other, with swap available (`swap`:
//! the host's, or a temporary swap file), placed and measured by `run`,
//! announced by a progress line with an ETA (`progress`); computes each
//! run's figures (`figures`)
//! against an unconstrained baseline run of the same workload; and writes,
//! in the results folder, one JSON per run (machine, commit, every
//! parameter, where it ran, the result line, the final stats document, the
//! resident-memory and footprint series), a summary JSON, the table as
//! text and Markdown under a line naming the plan, an SVG plot per
//! workload and the trade-off plot (`plot`), then prints the table; every
//! JSON names the plan too (`"plan"`). `vmm experiment density` is the
//! density experiment (`density`, `density_plan`, `density_report`): N guests under one
//! limit. SIGINT and SIGTERM stop either (`interrupt`). This module must
//! never touch files
//! outside the results folder but the cgroups and swap file it made (the
//! generated disk lives there and is removed at the end), and a run that
//! fails or cannot run is a row of the table, not the end of the
//! experiment.

pub mod cgroup;
pub mod child;
pub mod density;
pub mod density_plan;
pub mod density_report;
pub mod error;
pub mod figures;
pub mod interrupt;
pub mod output;
pub mod plan;
pub mod plot;
pub mod progress;
pub mod run;
pub mod swap;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::args::{CgroupBudget, ExperimentArgs, Mode};
use child::{ChildError, Outcome};
pub use error::ExperimentError;
use figures::{Figures, Row};
use output::{Machine, OutputError};
use plan::{Choice, Plan, Pressure, RunSpec, Workload};
use plot::{Line, Point};
use run::{make_disk, run_one, Context, Done, Placement};

/// The table of `rows` under the line naming `plan` (of `runs` runs), as
/// text or (`markdown`) as a Markdown table.
fn titled_table(plan: Plan, runs: usize, rows: &[Row], markdown: bool) -> String {
    format!(
        "{}\n\n{}",
        plan.header(runs),
        figures::table(rows, markdown)
    )
}

/// After a stop by `signal`: the table of the runs that finished and
/// `summary.json` with them, the signal, and the runs not done; one line
/// on stderr says where.
fn write_interrupted(
    dir: &Path,
    ctx: &Context<'_>,
    rows: &[Row],
    summary: Vec<Value>,
    signal: i32,
    not_run: &[String],
) -> Result<(), ExperimentError> {
    let finished = summary.len();
    let runs = finished + not_run.len();
    for (name, markdown) in [("table.txt", false), ("table.md", true)] {
        let text = titled_table(ctx.plan, runs, rows, markdown);
        output::write_text(&dir.join(name), text)?;
    }
    output::write_json(
        &dir.join("summary.json"),
        &serde_json::json!({
            "command": std::env::args().collect::<Vec<_>>(),
            "plan": ctx.plan.name(),
            "interrupted_by_signal": signal,
            "runs": summary,
            "not_run": not_run,
        }),
    )?;
    // On a terminal a newline first: the cut run's live line has none yet.
    let newline = if ctx.live { "\n" } else { "" };
    eprintln!(
        "{newline}experiment: stopped by signal {signal} after {finished} of {runs} runs; what finished is in {}",
        dir.display()
    );
    Ok(())
}

/// The parameters of a run, as its JSON records them.
#[derive(Debug, Serialize)]
struct Parameters<'a> {
    workload: &'static str,
    mode: &'static str,
    baseline: bool,
    mem_bytes: u64,
    vcpus: u32,
    /// The memory cgroup's limit (`None`: unlimited).
    limit_bytes: Option<u64>,
    budget_bytes: Option<u64>,
    files: Option<(u32, u64)>,
    guest_program: &'a [String],
    timeout_secs: u64,
    stats_interval_ms: u64,
    psi: bool,
    cgroup_budget: bool,
    /// `short`, `full` or `quick`: the plan this run belongs to.
    plan: &'static str,
    /// The plan is `quick` (kept beside `plan` for older readers).
    quick: bool,
    /// The child's whole command line after the executable.
    vmm_args: &'a [String],
}

/// One run's JSON document.
#[derive(Debug, Serialize)]
struct RunDoc<'a> {
    machine: &'a Machine,
    parameters: Parameters<'a>,
    placement: &'a Placement,
    exit_status: Option<i32>,
    killed: bool,
    wall_ms: u64,
    result: BTreeMap<String, Value>,
    figures: Option<&'a Figures>,
    failure: Option<&'a str>,
    stats: Option<&'a Value>,
    /// `[elapsed_ms, resident_bytes]`: guest RAM the VMM measured.
    series: &'a [(u64, u64)],
    /// `[elapsed_ms, bytes]`: what the run's cgroup was charged.
    footprint: &'a [(u64, u64)],
}

/// A result line's values, numbers as numbers.
fn result_json(result: &BTreeMap<String, String>) -> BTreeMap<String, Value> {
    result
        .iter()
        .map(|(k, v)| {
            let value = v
                .parse::<u64>()
                .map_or_else(|_| Value::from(v.as_str()), Value::from);
            (k.clone(), value)
        })
        .collect()
}

/// Whether the kernel's OOM killer ended the run: a result of the limit
/// (what that mode does to a guest at it), not a failure of the run.
fn oom_killed(out: &Outcome) -> bool {
    out.status.is_none() && !out.killed && out.oom_kills.is_some_and(|n| n > 0)
}

/// Why a finished run counts as failed, if it does.
fn failure(out: &Outcome, fig: &Result<Figures, String>) -> Option<String> {
    if out.killed {
        return Some("killed after its timeout".into());
    }
    if oom_killed(out) {
        // Its figures stand as far as it got; no result line to check.
        return fig.as_ref().err().cloned();
    }
    match (out.status, fig) {
        (Some(0), Ok(f)) => match f.integrity_errors {
            Some(0) => None,
            Some(n) => Some(format!("{n} integrity errors")),
            None => Some("no result line".into()),
        },
        (Some(0), Err(e)) => Some(e.clone()),
        (Some(s), _) => Some(format!("exit status {s}")),
        (None, _) => Some("ended by a signal".into()),
    }
}

/// Runs the experiment (`density`: the density experiment); prints the
/// table; returns the closing line. SIGINT and SIGTERM stop it (once the
/// caller gave [`interrupt::set_source`] its signal handler's reader): the
/// runs under way are killed, what was made is removed, and the error
/// says so.
pub fn run(args: &ExperimentArgs) -> Result<String, ExperimentError> {
    if args.name.as_deref() == Some("density") {
        return density::run(args);
    }
    let started = Instant::now();
    let plan = Plan::from_flags(args.full, args.quick);
    let runs = plan::plan(&Choice {
        workload: args.name.clone(),
        modes: args.modes.clone(),
        limit: args.limit,
        budget: args.host_budget,
        plan,
    })?;
    let (dir, exe, machine, host) = run::prepare(args)?;
    let ctx = Context {
        dir: &dir,
        exe: &exe,
        machine: &machine,
        pressure: Pressure {
            psi: args.psi,
            cgroup: args.cgroup_budget,
            victim_order: args.victim_order.as_deref(),
        },
        plan,
        host: &host,
        live: std::io::stderr().is_terminal(),
    };
    eprintln!(
        "experiment: {} plan, {} runs on {} (KVM: {}), memory cgroups in {} ({:?}), host swap {} MiB, results in {}",
        plan.name(),
        runs.len(),
        machine.hostname,
        machine.kvm,
        host.hierarchy.parent.display(),
        host.hierarchy.version,
        host.swap_bytes >> 20,
        dir.display()
    );
    let mut disks: BTreeMap<Workload, PathBuf> = BTreeMap::new();
    let mut baseline: BTreeMap<Workload, f64> = BTreeMap::new();
    let mut rows = Vec::with_capacity(runs.len());
    let mut lines: BTreeMap<Workload, Vec<Line>> = BTreeMap::new();
    let mut points = Vec::new();
    let mut summary = Vec::with_capacity(runs.len());
    let mut failed = 0;
    // Runs finished, the time they took (disks made on the way included)
    // and their estimates: the progress line's ETA.
    let (mut finished, mut spent, mut done_estimate) = (0, Duration::ZERO, Duration::ZERO);
    for (index, spec) in runs.iter().enumerate() {
        let row = |figures| Row {
            workload: spec.workload.name().into(),
            mode: spec.label().into(),
            figures,
        };
        if let Some(why) = host.cannot_run(spec) {
            eprintln!("{} {}: {why}", spec.workload.name(), spec.label());
            failed += 1;
            summary.push(serde_json::json!({
                "workload": spec.workload.name(),
                "mode": spec.label(),
                "failure": why,
            }));
            rows.push(row(Err(why)));
            continue;
        }
        let run_started = Instant::now();
        let line = progress::Progress {
            run: index + 1,
            runs: runs.len(),
            elapsed: started.elapsed(),
            finished,
            spent,
            done_estimate,
            to_go_estimate: runs[index..]
                .iter()
                .filter(|r| host.cannot_run(r).is_none())
                .map(RunSpec::typical)
                .sum(),
        }
        .line(&format!("{} {}", spec.workload.name(), spec.label()));
        let disk = match spec.params.files {
            // A writing run starts from the generated contents: its own
            // disk, removed after it.
            Some(files) if spec.workload.writes_disk() => Some(run::build_disk(
                &dir,
                &spec.stem(),
                spec.workload.name(),
                files,
                1,
            )?),
            Some(files) if !disks.contains_key(&spec.workload) => {
                let image = make_disk(&dir, spec.workload, files)?;
                disks.insert(spec.workload, image.clone());
                Some(image)
            }
            Some(_) => disks.get(&spec.workload).cloned(),
            None => None,
        };
        let done = match run_one(
            spec,
            &ctx,
            &line,
            disk.as_deref(),
            baseline.get(&spec.workload).copied(),
        ) {
            Ok(done) => done,
            Err(ExperimentError::Child(ChildError::Interrupted(signal))) => {
                // What finished is kept: its table and a summary that
                // names the signal and the runs it cut or never started.
                for image in disks.values().chain(disk.iter()) {
                    let _ = std::fs::remove_file(image);
                }
                let not_run: Vec<String> = runs[index..]
                    .iter()
                    .map(|r| format!("{} {}", r.workload.name(), r.label()))
                    .collect();
                write_interrupted(&dir, &ctx, &rows, summary, signal, &not_run)?;
                return Err(ChildError::Interrupted(signal).into());
            }
            Err(e) => return Err(e),
        };
        if let (true, Some(d)) = (spec.workload.writes_disk(), &disk) {
            let _ = std::fs::remove_file(d);
        }
        finished += 1;
        spent += run_started.elapsed();
        done_estimate += spec.typical();
        let why = failure(&done.out, &done.fig);
        // A baseline that failed sets no slowdown for the others.
        if let (
            true,
            None,
            Ok(Figures {
                throughput_mib_s: Some(t),
                ..
            }),
        ) = (spec.baseline, &why, &done.fig)
        {
            baseline.insert(spec.workload, *t);
        }
        failed += usize::from(why.is_some());
        let file = format!("{}.json", spec.stem());
        write_run(&dir.join(&file), &ctx, spec, &done, why.as_deref())?;
        let footprint = if done.out.footprint.is_empty() {
            done.out.series.clone()
        } else {
            done.out.footprint.clone()
        };
        lines.entry(spec.workload).or_default().push(Line {
            label: if spec.baseline {
                "baseline (no limit)".into()
            } else {
                spec.label().into()
            },
            points: footprint,
        });
        if let (false, None, Ok(f)) = (spec.baseline, &why, &done.fig) {
            if let Some(slowdown) = f.slowdown {
                points.push(Point {
                    label: format!("{} {}", spec.workload.name(), spec.label()),
                    mode: Mode::ALL.iter().position(|&m| m == spec.mode).unwrap_or(0),
                    footprint_mib: child::mib(f.footprint_avg_bytes),
                    slowdown,
                });
            }
        }
        summary.push(serde_json::json!({
            "workload": spec.workload.name(),
            "mode": spec.label(),
            "file": file,
            "exit_status": done.out.status,
            "failure": why,
            "figures": done.fig.as_ref().ok(),
        }));
        rows.push(row(match (why, done.fig) {
            (Some(w), _) if done.out.status != Some(0) || done.out.killed => {
                Err(format!("failed: {w}"))
            }
            (_, Err(e)) => Err(format!("failed: {e}")),
            (_, f) => f,
        }));
    }
    for image in disks.values() {
        let _ = std::fs::remove_file(image);
    }
    let mut plots = Vec::new();
    for (w, ls) in &lines {
        let limit = runs
            .iter()
            .find(|r| r.workload == *w && !r.baseline)
            .and_then(|r| r.limit);
        let path = dir.join(format!("{}.svg", w.name()));
        let title = format!("{}: host memory of each mode over time", w.name());
        plot::draw(&path, &title, ls, limit)?;
        plots.push(path.display().to_string());
    }
    if !points.is_empty() {
        let path = dir.join("tradeoff.svg");
        let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
        plot::draw_tradeoff(&path, &points, &names)?;
        plots.push(path.display().to_string());
    }
    let text = titled_table(plan, runs.len(), &rows, false);
    for (name, body) in [
        ("table.txt", text.clone()),
        ("table.md", titled_table(plan, runs.len(), &rows, true)),
    ] {
        output::write_text(&dir.join(name), body)?;
    }
    output::write_json(
        &dir.join("summary.json"),
        &serde_json::json!({
            "machine": machine,
            "command": std::env::args().collect::<Vec<_>>(),
            "plan": plan.name(),
            "quick": args.quick,
            "psi": args.psi,
            "cgroup_budget": args.cgroup_budget == CgroupBudget::Auto,
            "cgroup_parent": host.hierarchy.parent,
            "host_swap_bytes": host.swap_bytes,
            "swap_file_bytes": args.swap_file,
            "runs": summary,
            "plots": plots,
        }),
    )?;
    print!("{text}");
    if failed > 0 {
        return Err(ExperimentError::RunsFailed {
            failed,
            runs: runs.len(),
            dir,
        });
    }
    Ok(format!(
        "experiment: {} runs ({} plan) in {}, results in {}",
        runs.len(),
        plan.name(),
        progress::clock(started.elapsed()),
        dir.display()
    ))
}

/// Writes one run's JSON document.
fn write_run(
    path: &Path,
    ctx: &Context<'_>,
    spec: &RunSpec,
    done: &Done,
    failure: Option<&str>,
) -> Result<(), OutputError> {
    let p = &spec.params;
    let out = &done.out;
    let doc = RunDoc {
        machine: ctx.machine,
        parameters: Parameters {
            workload: spec.workload.name(),
            mode: spec.label(),
            baseline: spec.baseline,
            mem_bytes: p.mem,
            vcpus: p.vcpus,
            limit_bytes: spec.limit,
            budget_bytes: spec.budget.filter(|_| spec.hints()),
            files: p.files,
            guest_program: &p.guest,
            timeout_secs: p.timeout_secs,
            stats_interval_ms: plan::STATS_INTERVAL_MS,
            psi: ctx.pressure.psi && spec.hints(),
            cgroup_budget: ctx.pressure.cgroup == CgroupBudget::Auto && spec.hints(),
            plan: ctx.plan.name(),
            quick: ctx.plan == Plan::Quick,
            vmm_args: &done.args,
        },
        placement: &done.placement,
        exit_status: out.status,
        killed: out.killed,
        wall_ms: out.wall_ms,
        result: result_json(&out.result),
        figures: done.fig.as_ref().ok(),
        failure,
        stats: out.stats.as_ref(),
        series: &out.series,
        footprint: &out.footprint,
    };
    output::write_json(path, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::exit::vmm as status;
    use plan::PlanError;

    fn outcome(status: Option<i32>) -> Outcome {
        Outcome {
            status,
            ..Outcome::default()
        }
    }

    fn figs(errors: Option<u64>) -> Result<Figures, String> {
        let doc = serde_json::json!({"memory": {}});
        let mut r = BTreeMap::new();
        if let Some(e) = errors {
            r.insert("errors".to_string(), e.to_string());
        }
        let out = Outcome {
            stats: Some(doc),
            result: r,
            ..Outcome::default()
        };
        figures::figures(&out, (0, 0), None).map_err(|e| e.to_string())
    }

    #[test]
    fn runs_fail_for_status_signal_timeout_errors_or_no_result() {
        assert_eq!(failure(&outcome(Some(0)), &figs(Some(0))), None);
        assert_eq!(
            failure(&outcome(Some(0)), &figs(Some(2))).as_deref(),
            Some("2 integrity errors")
        );
        assert_eq!(
            failure(&outcome(Some(0)), &figs(None)).as_deref(),
            Some("no result line")
        );
        assert_eq!(
            failure(&outcome(Some(83)), &figs(Some(0))).as_deref(),
            Some("exit status 83")
        );
        assert!(failure(&outcome(None), &figs(Some(0))).is_some());
        let mut killed = outcome(None);
        killed.killed = true;
        assert_eq!(
            failure(&killed, &figs(Some(0))).as_deref(),
            Some("killed after its timeout")
        );
        assert_eq!(
            failure(&outcome(Some(0)), &Err("no stats".into())).as_deref(),
            Some("no stats")
        );
        let mut oom = outcome(None);
        oom.oom_kills = Some(1);
        assert!(oom_killed(&oom));
        assert_eq!(failure(&oom, &figs(None)), None, "an OOM kill is a result");
        assert_eq!(
            failure(&oom, &Err("no stats".into())).as_deref(),
            Some("no stats")
        );
        let mut exited = outcome(Some(0));
        exited.oom_kills = Some(1);
        assert!(
            !oom_killed(&exited),
            "a run that ended by itself was not OOM-killed"
        );
        let mut none = outcome(Some(0));
        none.oom_kills = Some(0);
        assert_eq!(failure(&none, &figs(Some(0))), None);
    }

    #[test]
    fn the_table_says_which_plan_made_it() {
        let rows = [Row {
            workload: "kv".into(),
            mode: "hinting".into(),
            figures: Err("not run".into()),
        }];
        let t = titled_table(Plan::Short, 20, &rows, false);
        assert!(t.starts_with("plan: short (20 runs"), "{t}");
        assert!(t.contains("\n\nworkload") && t.contains("kv"), "{t}");
        let md = titled_table(Plan::Full, 26, &rows, true);
        assert!(
            md.starts_with("plan: full (26 runs") && md.contains("\n\n| workload"),
            "{md}"
        );
    }

    #[test]
    fn result_values_become_numbers_where_they_are() {
        let r: BTreeMap<String, String> = [("ms", "12"), ("program", "scan-mmap"), ("x", "-1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let j = result_json(&r);
        assert_eq!(j["ms"], 12);
        assert_eq!(j["program"], "scan-mmap");
        assert_eq!(j["x"], "-1");
        assert_eq!(
            ExperimentError::Plan(PlanError::UnknownWorkload("x".into())).exit_status(),
            status::USAGE
        );
    }
}
