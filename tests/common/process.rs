//! The VMM as a process a test watches from outside: started in the
//! background, sent a signal, waited for under a bound, and the processes
//! of the host that still name a run. These helpers bound every wait so a
//! hang fails the test; they never kill a process the test did not start.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::vmm_path;

/// Starts `vmm` with `args` in the background: no stdin, no stdout, its
/// stderr into the file `stderr`.
pub fn spawn_logged(args: &[&str], stderr: &Path) -> Child {
    Command::new(vmm_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

/// Sends `signal` to `child`, a process this test started and has not
/// reaped; panics if kill(2) fails.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid, still unreaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// Waits for `child` to exit; panics with `what` if it has not within
/// `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < limit, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `ready()` holds; panics with `why()` if it has not within
/// `limit`.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool, why: impl Fn() -> String) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "{}", why());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rest of `child`'s piped stderr.
pub fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    err
}

/// Processes whose command line names `needle`.
pub fn processes_naming(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The names in directory `dir` that `keep` accepts (none if it cannot be
/// read).
pub fn names_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default()
}
