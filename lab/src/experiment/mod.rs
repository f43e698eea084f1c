//! `vmm experiment`: how much host memory each hinting mode gives back, how
//! fast, and what the guest pays, side by side in one command.
//!
//! It runs a matrix of workload by mode (`plan`), each run a child `vmm run`
//! of this same binary (`child`), one after the other, with a progress line
//! on stderr; computes each run's figures (`figures`) against an
//! unconstrained baseline run of the same workload; and writes, in the
//! results folder, one JSON per run (machine, commit, every parameter, the
//! result line, the final stats document, the resident-memory series), a
//! summary JSON, the table as text and Markdown, and an SVG plot per
//! workload (`plot`), then prints the table. This module must never touch
//! files outside the results folder (the generated disk lives there and is
//! removed at the end), and a run that fails is a row of the table, not the
//! end of the experiment.

pub mod child;
pub mod figures;
pub mod output;
pub mod plan;
pub mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pagehint_abi::exit::vmm as status;
use serde::Serialize;
use serde_json::Value;

use crate::args::{CgroupBudget, ExperimentArgs, GenFilesArgs, MkdiskArgs};
use crate::tools::{self, ToolError};
use child::{ChildError, Job, Outcome};
use figures::{Figures, Row};
use output::{Machine, OutputError};
use plan::{Choice, PlanError, Pressure, RunSpec, Workload};
use plot::{Line, PlotError};

/// Why the experiment could not run (or ended with failed runs).
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("cannot make the disk for {workload}: {source}")]
    Disk {
        workload: &'static str,
        #[source]
        source: ToolError,
    },
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find this program's executable: {0}")]
    Exe(#[source] std::io::Error),
    #[error("{failed} of {runs} runs failed (see the table and the logs in {})", dir.display())]
    RunsFailed {
        failed: usize,
        runs: usize,
        dir: PathBuf,
    },
}

impl ExperimentError {
    /// The process exit status for this error.
    pub fn exit_status(&self) -> i32 {
        match self {
            ExperimentError::Plan(_) => status::USAGE,
            ExperimentError::RunsFailed { .. } => 1,
            _ => status::INTERNAL,
        }
    }
}

/// The parameters of a run, as its JSON records them.
#[derive(Debug, Serialize)]
struct Parameters<'a> {
    workload: &'static str,
    mode: &'static str,
    baseline: bool,
    mem_bytes: u64,
    vcpus: u32,
    budget_bytes: Option<u64>,
    files: Option<(u32, u64)>,
    guest_program: &'a [String],
    timeout_secs: u64,
    stats_interval_ms: u64,
    psi: bool,
    cgroup_budget: bool,
    quick: bool,
    /// The child's whole command line after the executable.
    vmm_args: &'a [String],
}

/// One run's JSON document.
#[derive(Debug, Serialize)]
struct RunDoc<'a> {
    machine: &'a Machine,
    parameters: Parameters<'a>,
    exit_status: Option<i32>,
    killed: bool,
    wall_ms: u64,
    result: BTreeMap<String, Value>,
    figures: Option<&'a Figures>,
    failure: Option<&'a str>,
    stats: Option<&'a Value>,
    /// `[elapsed_ms, resident_bytes]`.
    series: &'a [(u64, u64)],
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

/// Why a finished run counts as failed, if it does.
fn failure(out: &Outcome, fig: &Result<Figures, String>) -> Option<String> {
    if out.killed {
        return Some("killed after its timeout".into());
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

/// Makes the workload's disk under `dir`; returns the image.
fn make_disk(dir: &Path, w: Workload, files: (u32, u64)) -> Result<PathBuf, ExperimentError> {
    let err = |source| ExperimentError::Disk {
        workload: w.name(),
        source,
    };
    let from = dir.join(format!("{}-files", w.name()));
    let image = dir.join(format!("{}.img", w.name()));
    tools::gen_files(&GenFilesArgs {
        dir: from.clone(),
        count: files.0,
        size: files.1,
        first_id: 1,
    })
    .map_err(err)?;
    tools::mkdisk(&MkdiskArgs {
        from: from.clone(),
        out: image.clone(),
    })
    .map_err(err)?;
    let _ = std::fs::remove_dir_all(&from);
    Ok(image)
}

/// Runs the experiment; prints the table; returns the closing line.
pub fn run(args: &ExperimentArgs) -> Result<String, ExperimentError> {
    let runs = plan::plan(&Choice {
        workload: args.name.clone(),
        modes: args.modes.clone(),
        budget: args.host_budget,
        quick: args.quick,
    })?;
    let dir = args.out.clone().unwrap_or_else(output::default_dir);
    std::fs::create_dir_all(&dir).map_err(|source| ExperimentError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let exe = std::env::current_exe().map_err(ExperimentError::Exe)?;
    let machine = Machine::detect();
    let pressure = Pressure {
        psi: args.psi,
        cgroup: args.cgroup_budget,
    };
    eprintln!(
        "experiment: {} runs on {} (KVM: {}), results in {}",
        runs.len(),
        machine.hostname,
        machine.kvm,
        dir.display()
    );
    let mut disks: BTreeMap<Workload, PathBuf> = BTreeMap::new();
    let mut baseline: BTreeMap<Workload, f64> = BTreeMap::new();
    let mut rows = Vec::with_capacity(runs.len());
    let mut lines: BTreeMap<Workload, Vec<Line>> = BTreeMap::new();
    let mut summary = Vec::with_capacity(runs.len());
    let mut failed = 0;
    let mut stderr = std::io::stderr();
    for spec in &runs {
        let disk = match spec.params.files {
            Some(files) if !disks.contains_key(&spec.workload) => {
                let image = make_disk(&dir, spec.workload, files)?;
                disks.insert(spec.workload, image.clone());
                Some(image)
            }
            Some(_) => disks.get(&spec.workload).cloned(),
            None => None,
        };
        let stem = spec.stem();
        let stats = dir.join(format!("{stem}.stats.json"));
        let mut child_args = vec!["run".to_string()];
        child_args.extend(plan::run_args(spec, disk.as_deref(), &stats, pressure));
        let label = format!("{} {}", spec.workload.name(), spec.label());
        let job = Job {
            exe: &exe,
            args: &child_args,
            stats: &stats,
            log: &dir.join(format!("{stem}.log")),
            err_log: &dir.join(format!("{stem}.err")),
            label: &label,
            timeout: Duration::from_secs(spec.params.timeout_secs),
        };
        let out = child::run(&job, &mut stderr)?;
        let _ = std::fs::remove_file(&stats);
        let fig = figures::figures(
            out.stats.as_ref(),
            &out.series,
            &out.result,
            baseline.get(&spec.workload).copied(),
        )
        .map_err(|e| e.to_string());
        if let (
            true,
            Ok(Figures {
                throughput_mib_s: Some(t),
                ..
            }),
        ) = (spec.baseline, &fig)
        {
            baseline.insert(spec.workload, *t);
        }
        let why = failure(&out, &fig);
        failed += usize::from(why.is_some());
        let file = format!("{stem}.json");
        write_run(
            &dir.join(&file),
            &machine,
            spec,
            pressure,
            args.quick,
            &child_args,
            &out,
            &fig,
            why.as_deref(),
        )?;
        lines.entry(spec.workload).or_default().push(Line {
            label: if spec.baseline {
                "baseline (no budget)".into()
            } else {
                spec.label().into()
            },
            points: out.series.clone(),
        });
        summary.push(serde_json::json!({
            "workload": spec.workload.name(),
            "mode": spec.label(),
            "file": file,
            "exit_status": out.status,
            "failure": why,
            "figures": fig.as_ref().ok(),
        }));
        rows.push(Row {
            workload: spec.workload.name().into(),
            mode: spec.label().into(),
            figures: match (&why, fig) {
                (Some(w), Ok(_)) if out.status != Some(0) => Err(w.clone()),
                (_, f) => f,
            },
        });
    }
    for image in disks.values() {
        let _ = std::fs::remove_file(image);
    }
    let mut plots = Vec::new();
    for (w, ls) in &lines {
        let budget = runs
            .iter()
            .find(|r| r.workload == *w && !r.baseline)
            .and_then(|r| r.budget);
        let path = dir.join(format!("{}.svg", w.name()));
        let title = format!("{}: resident guest memory by mode", w.name());
        plot::draw(&path, &title, ls, budget)?;
        plots.push(path.display().to_string());
    }
    let text = figures::table(&rows, false);
    std::fs::write(dir.join("table.txt"), &text).map_err(|source| OutputError::Write {
        path: dir.join("table.txt"),
        source,
    })?;
    std::fs::write(dir.join("table.md"), figures::table(&rows, true)).map_err(|source| {
        OutputError::Write {
            path: dir.join("table.md"),
            source,
        }
    })?;
    output::write_json(
        &dir.join("summary.json"),
        &serde_json::json!({
            "machine": machine,
            "command": std::env::args().collect::<Vec<_>>(),
            "quick": args.quick,
            "psi": args.psi,
            "cgroup_budget": args.cgroup_budget == CgroupBudget::Auto,
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
        "experiment: {} runs, results in {}",
        runs.len(),
        dir.display()
    ))
}

/// Writes one run's JSON document.
#[allow(clippy::too_many_arguments)]
fn write_run(
    path: &Path,
    machine: &Machine,
    spec: &RunSpec,
    pressure: Pressure,
    quick: bool,
    vmm_args: &[String],
    out: &Outcome,
    fig: &Result<Figures, String>,
    failure: Option<&str>,
) -> Result<(), OutputError> {
    let p = &spec.params;
    let doc = RunDoc {
        machine,
        parameters: Parameters {
            workload: spec.workload.name(),
            mode: spec.label(),
            baseline: spec.baseline,
            mem_bytes: p.mem,
            vcpus: p.vcpus,
            budget_bytes: spec.budget,
            files: p.files,
            guest_program: &p.guest,
            timeout_secs: p.timeout_secs,
            stats_interval_ms: plan::STATS_INTERVAL_MS,
            psi: pressure.psi && !spec.baseline,
            cgroup_budget: pressure.cgroup == CgroupBudget::Auto && !spec.baseline,
            quick,
            vmm_args,
        },
        exit_status: out.status,
        killed: out.killed,
        wall_ms: out.wall_ms,
        result: result_json(&out.result),
        figures: fig.as_ref().ok(),
        failure,
        stats: out.stats.as_ref(),
        series: &out.series,
    };
    output::write_json(path, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        figures::figures(Some(&doc), &[], &r, None).map_err(|e| e.to_string())
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
