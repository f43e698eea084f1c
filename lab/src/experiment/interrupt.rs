//! SIGINT and SIGTERM during an experiment: the handler only records which
//! signal came; the loop that waits for the children sees it within one
//! poll, kills the children it started, and returns an error, so that
//! every guard on the way out (cgroups, the swap file) runs and the
//! experiment exits with 130 (SIGINT) or 143 (SIGTERM).
//!
//! The handler must never do more than one atomic store (it runs in
//! signal context), and this module must never install itself outside
//! `vmm experiment`: `vmm run` has its own handling.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked the experiment to stop (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM. Idempotent.
pub fn install() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler is an `extern "C"` function that only does an
        // atomic store, which is async-signal-safe; the old action is not
        // asked for.
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

/// The signal that asked the experiment to stop, if one did.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit status for a stop by `signal`: 128 + its number, as a shell
/// reports it (130 for SIGINT, 143 for SIGTERM).
pub fn exit_status(signal: i32) -> i32 {
    128 + signal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_is_recorded_and_maps_to_the_shell_status() {
        assert_eq!(exit_status(libc::SIGINT), 130);
        assert_eq!(exit_status(libc::SIGTERM), 143);
        // The handler itself, called as the kernel would.
        let before = requested();
        record(libc::SIGTERM);
        assert_eq!(requested(), Some(libc::SIGTERM));
        SIGNAL.store(before.unwrap_or(0), Ordering::SeqCst);
    }
}
