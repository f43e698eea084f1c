//! SIGINT and SIGTERM, the project's one handler: it records which signal
//! came. During `vmm run`, [`crate::machine::run`], which waits for the
//! first vCPU report in slices of at most [`POLL`], sees it within one
//! slice, stops the guest, joins every thread, writes the final stats and
//! returns [`crate::VmmError::Signal`]: `vmm` exits 130 (SIGINT) or 143
//! (SIGTERM), as a shell reports a process a signal ended. `vmm
//! experiment` reads the same record through
//! `lab::experiment::interrupt::set_source`.
//!
//! The API's `PUT /actions {"action": "stop"}` asks for the same stop
//! through [`request_api_stop`]: it records SIGTERM as if the signal had
//! come, and marks that the API asked ([`by_api`]), so that the run ends
//! along exactly the same path, with status 143, and says who stopped it.
//!
//! A vCPU thread that takes the signal inside `KVM_RUN` sees `EINTR` and
//! goes on; only the main thread acts on it. The handler must never do
//! more than one atomic store (it runs in signal context), and nothing
//! here may block or allocate.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// Longest the main thread waits before it looks at the flag again.
pub const POLL: Duration = Duration::from_millis(100);

/// The signal that asked the run to stop (0: none).
static STOP: AtomicI32 = AtomicI32::new(0);

/// Set when the API, not a signal, asked for the stop.
static BY_API: AtomicBool = AtomicBool::new(false);

extern "C" fn record(signal: libc::c_int) {
    STOP.store(signal, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM (before any thread starts,
/// so that every thread inherits it). Idempotent.
pub fn install() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is "no flags, empty mask"; the handler
        // is an `extern "C"` function doing one atomic store, which is
        // async-signal-safe; the old action is not asked for.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signal that asked the run to stop, if one came.
pub fn requested() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Asks for the stop SIGTERM asks for, on behalf of the API. A signal
/// that came first keeps its own record.
pub fn request_api_stop() {
    if STOP
        .compare_exchange(0, libc::SIGTERM, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        BY_API.store(true, Ordering::SeqCst);
    }
}

/// True if the recorded stop came from the API.
pub fn by_api() -> bool {
    BY_API.load(Ordering::SeqCst)
}

/// The exit status of a run a signal stopped: 128 + its number.
pub fn exit_status(signal: i32) -> i32 {
    128 + signal
}

/// The signal's name, for the one-line message.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_signal_is_seen_and_maps_to_the_shell_status() {
        assert_eq!(exit_status(libc::SIGINT), 130);
        assert_eq!(exit_status(libc::SIGTERM), 143);
        assert_eq!(
            (name(libc::SIGINT), name(libc::SIGTERM)),
            ("SIGINT", "SIGTERM")
        );
        let before = STOP.load(Ordering::SeqCst);
        // The handler itself, as the kernel would call it.
        record(libc::SIGTERM);
        assert_eq!(requested(), Some(libc::SIGTERM));
        STOP.store(before, Ordering::SeqCst);
    }
}
