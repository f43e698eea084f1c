//! `vmm experiment density`: how many guests fit in one host memory
//! limit, per mode. N guests start together, each a child `vmm run` with
//! its own disk and its own key-value data set, all in one memory cgroup
//! with the limit (swap available as for the experiment); per mode, N
//! rises from 1 until a guest fails: OOM-killed, an integrity error, a
//! failed run, or slower than `--max-slowdown` (2x by default) against the
//! same N guests run with no limit and no hints (so that sharing two CPUs
//! is not counted against memory). The largest N that held is the mode's
//! answer. Nothing coordinates the VMMs: each sizes its reclaim from the
//! cgroup it shares (`--cgroup-budget auto`, the shared-budget rule in
//! `docs/reclaim.md`).
//!
//! Output as the experiment's: one JSON per group run, a summary, a table
//! (`density.txt`), a plot of the largest N per mode and one of the total
//! footprint over time of each mode's largest run. This module must never
//! leave a cgroup, a child or a disk image behind on any path it returns
//! by, and a guest that fails is the answer for that N, not an error.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::child::{self, Job};
use super::density_plan::{density_plan, guest, largest, DensityPlan, GroupRun, Guest};
use super::error::ExperimentError;
use super::figures::time_average;
use super::output::{self, Machine, OutputError};
use super::plan::{self, Pressure, RunSpec, Workload};
use super::plot::{self, Line};
use super::run::{build_disk, prepare, Host};
use super::swap::SwapCounters;
use crate::args::{ExperimentArgs, Mode};

/// Makes guest `i`'s disk: its own files (ids from `1 + 1000 i`).
fn make_disk(dir: &Path, i: u32, files: (u32, u64)) -> Result<PathBuf, ExperimentError> {
    build_disk(
        dir,
        &format!("density-g{i}"),
        "density",
        files,
        1 + 1000 * i,
    )
}

/// Removes the disk images when dropped (on every path out).
struct Disks(Vec<PathBuf>);

impl Drop for Disks {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_file(d);
        }
    }
}

/// What every group run shares.
struct Ctx<'a> {
    dir: &'a Path,
    exe: &'a Path,
    host: &'a Host,
    pressure: Pressure<'a>,
    plan: &'a DensityPlan,
    disks: &'a [PathBuf],
}

/// Runs `n` guests together in one cgroup: the unlimited baseline
/// (`mode` None) or `mode` under the limit.
fn group_run(
    ctx: &Ctx<'_>,
    mode: Option<Mode>,
    n: u32,
    base: Option<&[Option<f64>]>,
) -> Result<GroupRun, ExperimentError> {
    let label = mode.map_or("baseline", Mode::name);
    let limit = mode.map(|_| ctx.plan.limit);
    let spec = RunSpec {
        workload: Workload::KeyValue,
        mode: mode.unwrap_or(Mode::HostSwap),
        baseline: mode.is_none(),
        params: ctx.plan.params.clone(),
        limit,
        budget: None,
    };
    let name = format!("pagehint-exp-{}-density-{label}-{n}", std::process::id());
    let cg = ctx
        .host
        .hierarchy
        .create(&name, limit)
        .map_err(ExperimentError::Cgroup)?;
    let stem = |i: u32| format!("density-{label}-n{n}-g{i}");
    let files: Vec<_> = (0..n)
        .map(|i| {
            let s = stem(i);
            let stats = ctx.dir.join(format!("{s}.stats.json"));
            let mut args = vec!["run".to_string()];
            args.extend(plan::run_args(
                &spec,
                Some(&ctx.disks[i as usize]),
                &stats,
                ctx.pressure,
            ));
            (
                stats,
                ctx.dir.join(format!("{s}.log")),
                ctx.dir.join(format!("{s}.err")),
                args,
            )
        })
        .collect();
    let jobs: Vec<Job<'_>> = files
        .iter()
        .map(|(stats, log, err_log, args)| Job {
            exe: ctx.exe,
            args,
            stats,
            log,
            err_log,
            label,
            timeout: Duration::from_secs(spec.params.timeout_secs),
            cgroup: Some(&cg),
        })
        .collect();
    for d in ctx.disks.iter().take(n as usize) {
        super::run::drop_host_cache(d);
    }
    let before = SwapCounters::now();
    let title = format!("density {label} x{n}");
    let live = std::io::stderr().is_terminal();
    let (outs, footprint) = child::run_group(&jobs, &title, &mut std::io::stderr(), live)?;
    let swap = SwapCounters::now().since(before);
    let (swap_out, swap_in) = cg.swap_pages().unwrap_or((swap.out_pages, swap.in_pages));
    let oom_kills = cg.oom_kills().unwrap_or(0);
    cg.remove().map_err(ExperimentError::Cgroup)?;
    for (stats, ..) in &files {
        let _ = std::fs::remove_file(stats);
    }
    let per_guest: Vec<Guest> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let b = base.and_then(|b| b.get(i).copied().flatten());
            guest(o, b, ctx.plan.max_slowdown)
        })
        .collect();
    Ok(GroupRun {
        mode: label,
        guests: n,
        limit_bytes: limit,
        footprint_avg_bytes: time_average(&footprint),
        footprint_peak_bytes: footprint.iter().map(|s| s.1).max().unwrap_or(0),
        swap_out_pages: swap_out,
        swap_in_pages: swap_in,
        oom_kills,
        held: per_guest.iter().all(|g| g.failure.is_none()),
        per_guest,
        footprint,
    })
}

/// `e` as it is, unless it is a stop by a signal: then the table of the
/// group runs that finished (`density.txt`) and `density-summary.json`
/// (naming the signal) are written first, and one line says where. A
/// failure to write them is only reported: the stop goes on.
fn stopped(
    e: ExperimentError,
    dir: &Path,
    runs: &[GroupRun],
    plan: &DensityPlan,
    not_run: &[(String, String)],
) -> ExperimentError {
    let ExperimentError::Child(child::ChildError::Interrupted(signal)) = &e else {
        return e;
    };
    let text = super::density_report::table(runs, plan, not_run);
    let summary = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>(),
        "interrupted_by_signal": signal,
        "limit_bytes": plan.limit,
        "runs": runs.iter().map(|r| serde_json::json!({
            "mode": r.mode, "guests": r.guests, "held": r.held,
            "file": group_file(r),
        })).collect::<Vec<_>>(),
    });
    let written = std::fs::write(dir.join("density.txt"), text)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            output::write_json(&dir.join("density-summary.json"), &summary)
                .map_err(|e| e.to_string())
        });
    match written {
        Ok(()) => eprintln!(
            "\ndensity: stopped by signal {signal} after {} group runs; what finished is in {}",
            runs.len(),
            dir.display()
        ),
        Err(why) => eprintln!(
            "\ndensity: stopped by signal {signal}; the summary could not be written: {why}"
        ),
    }
    e
}

/// Runs the density experiment; prints its table; returns the closing
/// line.
pub fn run(args: &ExperimentArgs) -> Result<String, ExperimentError> {
    let plan = density_plan(args)?;
    let (dir, exe, machine, host) = prepare(args)?;
    eprintln!(
        "density: up to {} guests under {} MiB, modes {}, slowdown bound {}x, memory cgroups in {} ({:?}), host swap {} MiB, results in {}",
        plan.max_guests,
        plan.limit >> 20,
        plan.modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "),
        plan.max_slowdown,
        host.hierarchy.parent.display(),
        host.hierarchy.version,
        host.swap_bytes >> 20,
        dir.display()
    );
    let mut disks = Disks(Vec::new());
    let files = plan.params.files.unwrap_or((3, 4 << 20));
    for i in 0..plan.max_guests {
        disks.0.push(make_disk(&dir, i, files)?);
    }
    let ctx = Ctx {
        dir: &dir,
        exe: &exe,
        host: &host,
        pressure: Pressure {
            psi: args.psi,
            cgroup: args.cgroup_budget,
            victim_order: args.victim_order.as_deref(),
        },
        plan: &plan,
        disks: &disks.0,
    };
    let mut runs: Vec<GroupRun> = Vec::new();
    let mut baselines: BTreeMap<u32, Vec<Option<f64>>> = BTreeMap::new();
    let mut not_run: Vec<(String, String)> = Vec::new();
    for &mode in &plan.modes {
        let spec_probe = RunSpec {
            workload: Workload::KeyValue,
            mode,
            baseline: false,
            params: plan.params.clone(),
            limit: Some(plan.limit),
            budget: None,
        };
        if let Some(why) = host.cannot_run(&spec_probe) {
            eprintln!("density {}: {why}", mode.name());
            not_run.push((mode.name().into(), why));
            continue;
        }
        for n in 1..=plan.max_guests {
            if let std::collections::btree_map::Entry::Vacant(slot) = baselines.entry(n) {
                let b = group_run(&ctx, None, n, None)
                    .map_err(|e| stopped(e, &dir, &runs, &plan, &not_run))?;
                write_group(&dir, &machine, &plan, &b)?;
                slot.insert(b.per_guest.iter().map(|g| g.throughput_mib_s).collect());
                runs.push(b);
            }
            let r = group_run(&ctx, Some(mode), n, baselines.get(&n).map(Vec::as_slice))
                .map_err(|e| stopped(e, &dir, &runs, &plan, &not_run))?;
            write_group(&dir, &machine, &plan, &r)?;
            let held = r.held;
            runs.push(r);
            if !held {
                break;
            }
        }
    }
    drop(disks);
    let text = super::density_report::table(&runs, &plan, &not_run);
    output::write_text(&dir.join("density.txt"), &text)?;
    let mut plots = Vec::new();
    let names: Vec<&str> = plan.modes.iter().map(|m| m.name()).collect();
    let bars: Vec<(String, u32)> = names
        .iter()
        .map(|m| (m.to_string(), largest(&runs, m)))
        .collect();
    let path = dir.join("density.svg");
    plot::draw_bars(
        &path,
        &format!(
            "guests held under one {} MiB limit (bound {}x)",
            plan.limit >> 20,
            plan.max_slowdown
        ),
        &bars,
    )?;
    plots.push(path.display().to_string());
    let lines: Vec<Line> = names
        .iter()
        .filter_map(|m| {
            let n = largest(&runs, m).max(1);
            let r = runs.iter().find(|r| r.mode == *m && r.guests == n)?;
            Some(Line {
                label: format!("{m} x{n}"),
                points: r.footprint.clone(),
            })
        })
        .collect();
    let path = dir.join("density-footprint.svg");
    plot::draw(
        &path,
        "density: total host memory of each mode's largest run",
        &lines,
        Some(plan.limit),
    )?;
    plots.push(path.display().to_string());
    output::write_json(
        &dir.join("density-summary.json"),
        &serde_json::json!({
            "machine": machine,
            "command": std::env::args().collect::<Vec<_>>(),
            "limit_bytes": plan.limit,
            "max_guests": plan.max_guests,
            "max_slowdown": plan.max_slowdown,
            "largest": bars.iter().map(|(m, n)| (m.clone(), *n)).collect::<BTreeMap<_, _>>(),
            "not_run": not_run,
            "runs": runs.iter().map(|r| serde_json::json!({
                "mode": r.mode, "guests": r.guests, "held": r.held,
                "file": group_file(r),
            })).collect::<Vec<_>>(),
            "plots": plots,
        }),
    )?;
    print!("{text}");
    if !not_run.is_empty() {
        return Err(ExperimentError::RunsFailed {
            failed: not_run.len(),
            runs: plan.modes.len(),
            dir,
        });
    }
    Ok(format!(
        "density: {}; results in {}",
        bars.iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        dir.display()
    ))
}

fn group_file(r: &GroupRun) -> String {
    format!("density-{}-n{}.json", r.mode, r.guests)
}

/// Writes one group run's JSON document.
fn write_group(
    dir: &Path,
    machine: &Machine,
    plan: &DensityPlan,
    r: &GroupRun,
) -> Result<(), OutputError> {
    output::write_json(
        &dir.join(group_file(r)),
        &serde_json::json!({
            "machine": machine,
            "parameters": {
                "mode": r.mode,
                "guests": r.guests,
                "limit_bytes": r.limit_bytes,
                "max_slowdown": plan.max_slowdown,
                "mem_bytes": plan.params.mem,
                "files": plan.params.files,
                "guest_program": plan.params.guest,
            },
            "run": r,
        }),
    )
}
