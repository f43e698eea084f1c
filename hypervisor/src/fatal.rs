//! A host failure that must end the run: recorded by the thread that saw
//! it, acted on by the main thread. Today both kinds leave a guest page
//! fault unanswerable, so that a vCPU (or the block worker) would wait for
//! ever on a page the VMM cannot give it: a userfaultfd operation that
//! answers a fault (`UFFDIO_ZEROPAGE`, `UFFDIO_WAKE`) failed for good and
//! so did the fallback, unregistering the frame; or the fault handler
//! cannot read or poll the userfaultfd any more.
//!
//! [`crate::machine::run`] waits for the guest in slices of at most
//! [`crate::signals::POLL`] and looks here each slice, as it does for
//! SIGINT/SIGTERM: it stops every thread (releasing whoever still waits on
//! a fault once the vCPUs are stopped), writes the final stats and returns
//! [`crate::VmmError::HostFailure`], which `vmm` prints as its one error
//! line and exits with `pagehint_abi::exit::vmm::HOST_FAILURE`. The first
//! record wins; later ones are only logged. The record is process-wide and
//! never cleared: one run per process, as the `vmm` binary does. This module must never block
//! the thread that records (it may be the fault handler) beyond a short
//! lock, and never stop anything itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Set once a failure was recorded (read without the lock each slice).
static RECORDED: AtomicBool = AtomicBool::new(false);
/// What failed (the first record).
static WHAT: Mutex<Option<String>> = Mutex::new(None);

/// Records that the run cannot go on because of `what`.
pub fn record(what: String) {
    let mut first = false;
    if let Ok(mut w) = WHAT.lock() {
        if w.is_none() {
            *w = Some(what.clone());
            first = true;
        }
    }
    // The one line the user sees is `vmm`'s error line at the end.
    if first {
        log::debug!("{what}; stopping the guest");
    } else {
        log::debug!("also: {what}");
    }
    RECORDED.store(true, Ordering::SeqCst);
}

/// True once a failure was recorded.
pub fn recorded() -> bool {
    RECORDED.load(Ordering::SeqCst)
}

/// The first failure recorded, if any.
pub fn first() -> Option<String> {
    if !recorded() {
        return None;
    }
    WHAT.lock().ok().and_then(|w| w.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_recorded_by_default() {
        // No library test records a failure (it would stop nothing here,
        // but keep the process-wide record clean).
        assert!(!recorded());
        assert_eq!(first(), None);
    }
}
