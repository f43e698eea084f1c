//! The experiment runner that `tests/experiment.rs` and `tests/density.rs`
//! share: `vmm experiment ...` runs once for the whole test file, in a
//! temporary output directory, and every test reads the documents it
//! wrote. A run past its hang bound is recorded as a failed run, never run
//! again; the runner checks nothing about the figures.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{require_kvm, vmm, Run};

/// One finished experiment: its output directory and what it printed.
pub struct Experiment {
    pub dir: PathBuf,
    pub run: Run,
}

impl Experiment {
    /// Runs `vmm experiment <args> --out <dir>` with `dir` a fresh
    /// temporary directory named for `tag`, killed after `limit`; `what`
    /// names it in the message of a run that did not finish.
    pub fn run(tag: &str, what: &str, args: &[&str], limit: Duration) -> Experiment {
        require_kvm();
        let dir = std::env::temp_dir().join(format!("vmm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = dir.to_str().unwrap().to_string();
        let mut all = vec!["experiment"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--out", &out]);
        // A panic (the time limit) must not leave the caller's lock empty,
        // or every test would run the experiment again.
        let run = std::panic::catch_unwind(|| vmm(&all, limit)).unwrap_or_else(|_| Run {
            status: -1,
            stdout: String::new(),
            stderr: format!("{what} did not finish within {limit:?}"),
            elapsed: limit,
            stats_path: None,
        });
        Experiment { dir, run }
    }

    /// The JSON document `name` in the output directory; panics with the
    /// experiment's output where it is missing or not JSON.
    pub fn json(&self, name: &str) -> Value {
        let path = self.dir.join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\n--- stdout\n{}\n--- stderr\n{}",
                path.display(),
                self.run.stdout,
                self.run.stderr
            )
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The document `name` if the experiment wrote it.
    pub fn try_json(&self, name: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.join(name)).ok()?;
        Some(serde_json::from_str(&text).unwrap())
    }
}
