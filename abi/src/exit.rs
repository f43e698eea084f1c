//! Exit statuses: what the guest writes to the exit port, and the VMM's own.
//!
//! The guest's status (0..=[`GUEST_STATUS_MAX`]) becomes the VMM's exit
//! status unchanged. Every failure of the VMM itself has a status above that
//! range, so a script can always tell "the guest said so" from "the VMM
//! gave up".

/// Highest status the guest can pass through; larger values are clamped.
pub const GUEST_STATUS_MAX: u32 = 63;

/// Statuses the bundled guest kernel uses.
pub mod guest {
    /// The guest's program finished and said all is well.
    pub const SUCCESS: u32 = 0;
    /// The guest's program reported a failure.
    pub const FAILURE: u32 = 1;
    /// The guest kernel panicked.
    pub const KERNEL_PANIC: u32 = 2;
    /// The guest kernel took an unexpected CPU exception.
    pub const CPU_EXCEPTION: u32 = 3;
    /// The guest kernel found the machine unusable (no memory map, too
    /// little RAM, a CPU that did not come up).
    pub const BAD_MACHINE: u32 = 4;
    /// The command line named no known program.
    pub const BAD_COMMAND_LINE: u32 = 5;
}

/// Statuses of the VMM itself (the `sysexits.h` numbers where one fits).
pub mod vmm {
    /// A bad flag or argument.
    pub const USAGE: i32 = 64;
    /// The kernel image is not a loadable PVH ELF.
    pub const BAD_KERNEL: i32 = 65;
    /// An input file (kernel, disk) is missing or unreadable.
    pub const NO_INPUT: i32 = 66;
    /// The disk image is malformed (empty, not a whole number of 512-byte
    /// sectors, or, for `mkdisk`, not a valid source).
    pub const BAD_DISK: i32 = 67;
    /// `/dev/kvm` is missing or lacks a capability we need.
    pub const KVM_UNAVAILABLE: i32 = 69;
    /// An internal error of the VMM (an ioctl that should not fail).
    pub const INTERNAL: i32 = 70;
    /// The configuration cannot work (too little or too much memory, ...).
    pub const CONFIG: i32 = 78;
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    pub const GUEST_TRIPLE_FAULT: i32 = 80;
    /// KVM reported an internal error or a failed VM entry.
    pub const KVM_FAILURE: i32 = 81;
    /// The guest caused an exit this VMM does not handle.
    pub const UNEXPECTED_EXIT: i32 = 82;
    /// `--timeout` expired before the guest exited.
    pub const TIMEOUT: i32 = 83;
    /// A VMM thread made a system call its seccomp filter forbids.
    pub const SECCOMP: i32 = 84;
    /// The host failed an operation the guest needed to go on (a
    /// userfaultfd fill or wake that answers a guest page fault, and the
    /// unregistration that replaces it; or reading the userfaultfd): the
    /// guest was stopped rather than left waiting for ever or handed a
    /// wrong page; every thread joined, the final stats written.
    pub const HOST_FAILURE: i32 = 85;
    /// `vmm ctl`: nothing answers at `--api-sock` (no such socket, no VMM
    /// listening, or no answer within the client's deadline).
    pub const API_UNREACHABLE: i32 = 86;
    /// `vmm ctl`: the VMM answered with an error (its `fault_message` is
    /// the one line printed).
    pub const API_REFUSED: i32 = 87;
    /// SIGINT stopped the run (128 + 2, as a shell reports it): the guest
    /// was stopped, every thread joined, the final stats written.
    pub const SIGINT: i32 = 130;
    /// SIGTERM stopped the run (128 + 15), likewise; also the API's
    /// `PUT /actions {"action": "stop"}`, which takes the same path.
    pub const SIGTERM: i32 = 143;
}

/// The VMM's exit status for a guest status written to the exit port.
pub const fn status_from_guest(value: u32) -> i32 {
    if value > GUEST_STATUS_MAX {
        GUEST_STATUS_MAX as i32
    } else {
        value as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_statuses_never_collide_with_vmm_statuses() {
        assert_eq!(status_from_guest(0), 0);
        assert_eq!(status_from_guest(7), 7);
        assert_eq!(status_from_guest(u32::MAX), GUEST_STATUS_MAX as i32);
        for s in [
            vmm::USAGE,
            vmm::BAD_KERNEL,
            vmm::NO_INPUT,
            vmm::TIMEOUT,
            vmm::SECCOMP,
            vmm::HOST_FAILURE,
            vmm::SIGINT,
            vmm::SIGTERM,
        ] {
            assert!(s > GUEST_STATUS_MAX as i32);
        }
    }
}
