//! One run of the matrix: a child `vmm run ...` of this same binary, placed
//! in its memory cgroup before it starts (when it has one), its console in
//! a log file, its stats file sampled while it runs into a resident-memory
//! time series and its cgroup's usage into a footprint series, its
//! progress on stderr (on a terminal one line rewritten once a second with
//! its time and resident memory; elsewhere, as in a CI log, the label
//! once as it starts), and at the end its exit status, final stats
//! document and `result:` line.
//!
//! The child is killed if it outlives its own `--timeout` by a grace
//! period, so an experiment always ends. This module must never kill any
//! process but the child it started, and never fail the experiment over a
//! stats file that is missing or half written (it samples again).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cgroup::RunCgroup;

/// How often the stats file is sampled.
const POLL: Duration = Duration::from_millis(100);
/// How often the progress line is rewritten.
const PROGRESS: Duration = Duration::from_secs(1);
/// Time past the child's own `--timeout` before it is killed.
const GRACE: Duration = Duration::from_secs(30);

/// Why a child could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot create {}: {source}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {}: {source}", exe.display())]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for the child: {0}")]
    Wait(#[source] std::io::Error),
    #[error("stopped by signal {0}; the runs under way were killed")]
    Interrupted(i32),
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Exit status; `None` if a signal ended it (or we killed it).
    pub status: Option<i32>,
    /// Wall time of the child, in milliseconds.
    pub wall_ms: u64,
    /// `[elapsed_ms, resident_bytes]` from every distinct stats sample.
    pub series: Vec<(u64, u64)>,
    /// `[elapsed_ms, bytes]`: the cgroup's usage while the child ran
    /// (empty without a cgroup).
    pub footprint: Vec<(u64, u64)>,
    /// Processes of the cgroup the kernel's OOM killer ended.
    pub oom_kills: Option<u64>,
    /// The last stats document (written at the child's exit).
    pub stats: Option<Value>,
    /// The guest's last `result:` line, as `key=value` pairs.
    pub result: BTreeMap<String, String>,
    /// Killed for outliving its timeout.
    pub killed: bool,
}

/// The `key=value` pairs of the last `result: ` line in `console`.
pub fn parse_result(console: &str) -> BTreeMap<String, String> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("result: "))
        .next_back()
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The `(elapsed_ms, resident_bytes)` sample of a stats document.
pub fn sample(doc: &Value) -> Option<(u64, u64)> {
    Some((
        doc.get("elapsed_ms")?.as_u64()?,
        doc.get("memory")?.get("resident_bytes")?.as_u64()?,
    ))
}

/// Appends `s` unless it is not newer than the last sample.
pub fn push_sample(series: &mut Vec<(u64, u64)>, s: (u64, u64)) {
    match series.last() {
        Some(&(t, _)) if s.0 <= t => {}
        _ => series.push(s),
    }
}

fn read_stats(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The progress line (without the leading `\r`).
pub fn progress_line(label: &str, elapsed: Duration, resident: Option<u64>) -> String {
    let mem = resident.map_or_else(|| "   -".to_string(), |b| format!("{:7.1}", mib(b)));
    format!(
        "{label:<34} {:>6.1} s  resident {mem} MiB",
        elapsed.as_secs_f64()
    )
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// A run to make.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub exe: &'a Path,
    /// Arguments after the executable (`run ...`).
    pub args: &'a [String],
    pub stats: &'a Path,
    /// The child's stdout (console) and stderr go here.
    pub log: &'a Path,
    pub err_log: &'a Path,
    /// Shown on the progress line.
    pub label: &'a str,
    /// The child's own `--timeout`.
    pub timeout: Duration,
    /// The memory cgroup the child runs in, if any.
    pub cgroup: Option<&'a RunCgroup>,
}

/// Makes the forked child join the cgroup whose `cgroup.procs` is `fd`
/// before it executes the VMM, so that every page it touches is charged
/// there.
fn join_on_fork(cmd: &mut Command, fd: RawFd) {
    let join = move || {
        let zero = b"0";
        // SAFETY: `fd` is the parent's open `cgroup.procs`, inherited by
        // the fork and still open until exec; `zero` is a live buffer of
        // the length given. write(2) is async-signal-safe, as code between
        // fork and exec must be.
        let n = unsafe { libc::write(fd, zero.as_ptr().cast(), zero.len()) };
        if n == 1 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the closure only calls write(2) on a descriptor it was
    // given, allocates nothing and takes no lock, so it is safe between
    // fork and exec.
    unsafe {
        cmd.pre_exec(join);
    }
}

fn elapsed_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn create(path: &Path) -> Result<File, ChildError> {
    File::create(path).map_err(|source| ChildError::Log {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs `job` to its end, sampling and reporting progress on `progress`
/// (`live`: a terminal, see [`run_group`]).
pub fn run(job: &Job<'_>, progress: &mut dyn Write, live: bool) -> Result<Outcome, ChildError> {
    let (mut outs, footprint) = run_group(std::slice::from_ref(job), job.label, progress, live)?;
    let mut out = outs.pop().unwrap_or_default();
    out.footprint = footprint;
    Ok(out)
}

/// `[elapsed_ms, bytes]` samples.
pub type Series = Vec<(u64, u64)>;

/// One child of a group, while it runs.
struct Running<'j, 'a> {
    job: &'j Job<'a>,
    child: Child,
    out: Outcome,
    done: bool,
}

fn spawn(job: &Job<'_>) -> Result<Child, ChildError> {
    let _ = std::fs::remove_file(job.stats);
    let mut cmd = Command::new(job.exe);
    cmd.args(job.args)
        .stdin(Stdio::null())
        .stdout(create(job.log)?)
        .stderr(create(job.err_log)?);
    if let Some(cg) = job.cgroup {
        join_on_fork(&mut cmd, cg.procs_fd());
    }
    cmd.spawn().map_err(|source| ChildError::Spawn {
        exe: job.exe.to_path_buf(),
        source,
    })
}

/// Kills and reaps every child of `group` still running: ours, by handle.
fn kill_all(group: &mut [Running<'_, '_>]) {
    for r in group.iter_mut().filter(|r| !r.done) {
        let _ = r.child.kill();
        let _ = r.child.wait();
        r.done = true;
    }
}

/// Runs `jobs` side by side to their ends (all in the first job's cgroup,
/// whose usage is sampled into the returned footprint series); progress
/// on one line under `label`: rewritten every second with the time and
/// resident memory when `live` (a terminal), else `label` alone as they
/// start. A stop signal kills them all and returns
/// [`ChildError::Interrupted`]; so does a child that cannot be started
/// (after killing those that were).
pub fn run_group(
    jobs: &[Job<'_>],
    label: &str,
    progress: &mut dyn Write,
    live: bool,
) -> Result<(Vec<Outcome>, Series), ChildError> {
    if !live {
        let _ = writeln!(progress, "{label}");
        let _ = progress.flush();
    }
    let cgroup = jobs.first().and_then(|j| j.cgroup);
    let mut group: Vec<Running<'_, '_>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        match spawn(job) {
            Ok(child) => group.push(Running {
                job,
                child,
                out: Outcome::default(),
                done: false,
            }),
            Err(e) => {
                kill_all(&mut group);
                return Err(e);
            }
        }
    }
    let start = Instant::now();
    let mut footprint = Vec::new();
    let mut last_progress: Option<Instant> = None;
    while group.iter().any(|r| !r.done) {
        if let Some(signal) = super::interrupt::requested() {
            kill_all(&mut group);
            return Err(ChildError::Interrupted(signal));
        }
        for r in group.iter_mut().filter(|r| !r.done) {
            let status = match r.child.try_wait() {
                Ok(s) => s,
                Err(e) => {
                    // None left running in the cgroup: ours, by handle.
                    kill_all(&mut group);
                    return Err(ChildError::Wait(e));
                }
            };
            let status = match status {
                Some(s) => Some(s),
                None if start.elapsed() > r.job.timeout + GRACE => {
                    let _ = r.child.kill();
                    r.out.killed = true;
                    Some(r.child.wait().map_err(ChildError::Wait)?)
                }
                None => None,
            };
            if let Some(s) = status {
                r.done = true;
                r.out.status = s.code();
                r.out.wall_ms = elapsed_ms(start);
                continue;
            }
            if let Some(s) = read_stats(r.job.stats).as_ref().and_then(sample) {
                push_sample(&mut r.out.series, s);
            }
        }
        if let Some(bytes) = cgroup.and_then(RunCgroup::usage) {
            push_sample(&mut footprint, (elapsed_ms(start), bytes));
        }
        if live && last_progress.is_none_or(|t| t.elapsed() >= PROGRESS) {
            let resident = group
                .iter()
                .filter_map(|r| r.out.series.last().map(|s| s.1))
                .reduce(u64::saturating_add);
            let line = progress_line(label, start.elapsed(), resident);
            let _ = write!(progress, "\r{line}");
            let _ = progress.flush();
            last_progress = Some(Instant::now());
        }
        std::thread::sleep(POLL);
    }
    let oom_kills = cgroup.and_then(RunCgroup::oom_kills);
    let mut outs = Vec::with_capacity(group.len());
    for mut r in group {
        r.out.oom_kills = oom_kills;
        r.out.stats = read_stats(r.job.stats);
        if let Some(s) = r.out.stats.as_ref().and_then(sample) {
            push_sample(&mut r.out.series, s);
        }
        let console = std::fs::read(r.job.log).unwrap_or_default();
        r.out.result = parse_result(&String::from_utf8_lossy(&console));
        outs.push(r.out);
    }
    if live {
        let resident = outs
            .iter()
            .filter_map(|o| o.series.last().map(|s| s.1))
            .reduce(u64::saturating_add);
        let line = progress_line(label, start.elapsed(), resident);
        let _ = writeln!(progress, "\r{line}");
    }
    Ok((outs, footprint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_result_line_wins() {
        let console = "guest: hello\r\nresult: program=a x=1\r\n\
                       noise result: program=no\nresult: program=churn-idle bytes=8 ms=2 errors=0 freed_at_ms=77 odd\n\
                       guest: all 1 processes exited, status 0\n";
        let r = parse_result(console);
        assert_eq!(r["program"], "churn-idle");
        assert_eq!(r["freed_at_ms"], "77");
        assert_eq!(r.len(), 5, "a word without '=' is skipped: {r:?}");
        assert!(parse_result("nothing here\n").is_empty());
    }

    #[test]
    fn samples_come_from_the_stats_document_in_time_order() {
        let doc: Value =
            serde_json::from_str(r#"{"elapsed_ms": 400, "memory": {"resident_bytes": 4096}}"#)
                .unwrap();
        assert_eq!(sample(&doc), Some((400, 4096)));
        assert_eq!(sample(&serde_json::json!({"elapsed_ms": 1})), None);
        let mut s = Vec::new();
        for x in [(200, 1), (200, 2), (400, 3), (300, 4), (600, 5)] {
            push_sample(&mut s, x);
        }
        assert_eq!(s, [(200, 1), (400, 3), (600, 5)]);
    }

    #[test]
    fn the_progress_line_says_what_where_and_how_much() {
        let l = progress_line(
            "page-cache hinting",
            Duration::from_millis(2500),
            Some(3 << 20),
        );
        assert!(l.starts_with("page-cache hinting"));
        assert!(l.contains("2.5 s") && l.contains("3.0 MiB"), "{l}");
        assert!(progress_line("x", Duration::ZERO, None).contains("- MiB"));
    }

    #[test]
    fn a_child_runs_to_its_end_and_its_console_is_read() {
        let dir = std::env::temp_dir().join(format!("vmm-child-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stats = dir.join("s.json");
        std::fs::write(
            &stats,
            r#"{"elapsed_ms": 5, "memory": {"resident_bytes": 8192}}"#,
        )
        .unwrap();
        let args: Vec<String> = vec![
            "-c".into(),
            "echo 'result: program=t errors=0'; exit 3".into(),
        ];
        let (log, err_log) = (dir.join("o.log"), dir.join("e.log"));
        let job = Job {
            exe: Path::new("/bin/sh"),
            args: &args,
            stats: &stats,
            log: &log,
            err_log: &err_log,
            label: "t",
            timeout: Duration::from_secs(10),
            cgroup: None,
        };
        let mut progress = Vec::new();
        let out = run(&job, &mut progress, true).unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.result["errors"], "0");
        assert!(
            out.stats.is_none(),
            "a run's old stats file is removed first"
        );
        assert!(!out.killed);
        assert!(String::from_utf8_lossy(&progress).ends_with("MiB\n"));
        // Not a terminal: the label once, as the run starts, nothing else.
        let mut plain = Vec::new();
        assert_eq!(run(&job, &mut plain, false).unwrap().status, Some(3));
        assert_eq!(String::from_utf8_lossy(&plain), "t\n");
        let missing = Job {
            exe: Path::new("/nonexistent/vmm"),
            ..job
        };
        assert!(matches!(
            run(&missing, &mut Vec::new(), false),
            Err(ChildError::Spawn { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
