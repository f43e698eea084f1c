//! How an experiment learns that SIGINT or SIGTERM asked it to stop: the
//! binary that runs it installs the one handler of the project
//! (`hypervisor::signals`, which `vmm run` uses too) and hands this module
//! the function that reads it ([`set_source`]). The loop that waits for the
//! children asks [`requested`] every poll, kills the children it started,
//! and returns an error, so that every guard on the way out (cgroups, the
//! swap file, the disks) runs and the experiment exits with 130 (SIGINT)
//! or 143 (SIGTERM).
//!
//! This module must never install a handler itself: one process has one.

use std::sync::OnceLock;

/// Reads which signal asked to stop, if any.
pub type Source = fn() -> Option<i32>;

static SOURCE: OnceLock<Source> = OnceLock::new();

/// Where [`requested`] looks (once; later calls change nothing).
pub fn set_source(source: Source) {
    let _ = SOURCE.set(source);
}

/// The signal that asked the experiment to stop, if one did (never, when
/// no source was set).
pub fn requested() -> Option<i32> {
    SOURCE.get().and_then(|read| read())
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
    fn without_a_source_nothing_stops_and_a_stop_maps_to_the_shell_status() {
        // No test sets the source: it is global, and a stop requested here
        // would stop every other test's children.
        assert_eq!(requested(), None);
        assert_eq!(exit_status(libc::SIGINT), 130);
        assert_eq!(exit_status(libc::SIGTERM), 143);
    }
}
