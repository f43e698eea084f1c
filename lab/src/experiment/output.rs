//! The experiment's files: the default results folder name (a UTC
//! timestamp), the description of the machine and the commit every JSON
//! carries, and the writing of JSON documents.
//!
//! The machine is read from `/proc` and `/sys` (hostname, kernel release,
//! CPU model, which KVM module is loaded: `kvm_intel`, `kvm_amd` or
//! `kvm_pvm`, the nested software KVM of the development machines); the
//! commit from `git rev-parse HEAD`, "unknown" when that fails. This module
//! must never write outside the folder it is given, and a fact it cannot
//! read is "unknown", never an error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Why a results file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialise {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Where and on what the experiment ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub kernel_release: String,
    pub cpu_model: String,
    pub cpus: usize,
    /// `kvm_intel`, `kvm_amd`, `kvm_pvm` (nested, software) or "unknown".
    pub kvm: String,
    pub commit: String,
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The `model name` of `/proc/cpuinfo`'s text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Which KVM module is loaded, from the ones that `exists` says are.
pub fn kvm_kind(exists: impl Fn(&str) -> bool) -> String {
    ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|m| exists(&format!("/sys/module/{m}")))
        .unwrap_or("unknown")
        .to_string()
}

/// The commit checked out in the current directory or, failing that, the
/// one this executable was built in (`target/` lies in the work tree), or
/// "unknown".
pub fn git_commit() -> String {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    std::iter::once(PathBuf::from("."))
        .chain(exe_dir)
        .map(|dir| commit_in(&dir))
        .find(|c| c != "unknown")
        .unwrap_or_else(|| "unknown".into())
}

/// `git rev-parse HEAD` in `dir` (read-only), or "unknown".
fn commit_in(dir: &Path) -> String {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    /// This machine, now.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            hostname: first_line("/proc/sys/kernel/hostname"),
            kernel_release: first_line("/proc/sys/kernel/osrelease"),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kvm: kvm_kind(|p| Path::new(p).exists()),
            commit: git_commit(),
        }
    }
}

/// `YYYYMMDD-HHMMSS` (UTC) of `secs` since the Unix epoch.
pub fn timestamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// `results/<timestamp>` for now.
pub fn default_dir() -> PathBuf {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from("results").join(timestamp(secs))
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), OutputError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| OutputError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write_text(path, text)
}

/// Writes `text` to `path`.
pub fn write_text(path: &Path, text: impl AsRef<[u8]>) -> Result<(), OutputError> {
    std::fs::write(path, text).map_err(|source| OutputError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "19700101-000000");
        // 2000-02-29 12:34:56 UTC, a leap day.
        assert_eq!(timestamp(951_827_696), "20000229-123456");
        // 2024-12-31 23:59:59 UTC.
        assert_eq!(timestamp(1_735_689_599), "20241231-235959");
        assert!(default_dir().starts_with("results"));
    }

    #[test]
    fn machine_facts_parse_or_are_unknown() {
        let info = "processor\t: 0\nvendor_id\t: X\nmodel name\t: Some CPU @ 2.0GHz\n";
        assert_eq!(cpu_model(info).as_deref(), Some("Some CPU @ 2.0GHz"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert_eq!(kvm_kind(|p| p.ends_with("kvm_amd")), "kvm_amd");
        assert_eq!(kvm_kind(|p| p.ends_with("kvm_pvm")), "kvm_pvm");
        assert_eq!(kvm_kind(|_| false), "unknown");
        let m = Machine::detect();
        assert!(!m.hostname.is_empty() && !m.commit.is_empty());
        assert_eq!(first_line("/nonexistent/file"), "unknown");
        assert_eq!(commit_in(Path::new("/nonexistent/dir")), "unknown");
    }

    #[test]
    fn json_files_are_written_or_the_error_names_them() {
        let dir = std::env::temp_dir().join(format!("vmm-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.json");
        write_json(&path, &serde_json::json!({"a": 1})).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["a"], 1);
        let bad = dir.join("missing/b.json");
        let e = write_json(&bad, &1).unwrap_err();
        assert!(e.to_string().contains("missing/b.json"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
