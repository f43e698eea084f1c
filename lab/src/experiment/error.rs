//! Why an experiment could not run, or ended with failed runs, and the
//! exit status each reason gives the process. Every part of the
//! experiment (`run`, `density`, the matrix in `mod.rs`) returns this one
//! error; it only names and classifies failures and must never act on
//! one (no cleanup, no output).

use std::path::PathBuf;

use pagehint_abi::exit::vmm as status;

use super::cgroup::CgroupError;
use super::child::ChildError;
use super::interrupt;
use super::output::OutputError;
use super::plan::PlanError;
use super::plot::PlotError;
use super::swap::SwapError;
use crate::tools::ToolError;

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
    #[error("the runs need a memory cgroup each, and {0}")]
    Cgroup(#[source] CgroupError),
    #[error(transparent)]
    Swap(#[from] SwapError),
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
    #[error("{failed} of {runs} runs failed or could not run (see the table and the logs in {})", dir.display())]
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
            ExperimentError::Cgroup(_) | ExperimentError::Swap(_) => status::CONFIG,
            ExperimentError::RunsFailed { .. } => 1,
            ExperimentError::Child(ChildError::Interrupted(signal)) => {
                interrupt::exit_status(*signal)
            }
            _ => status::INTERNAL,
        }
    }
}
