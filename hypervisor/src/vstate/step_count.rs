//! Counting guest instructions exactly, on any KVM: between an `out` and
//! an `in` on `STEP_COUNTER_PORT` the VMM single-steps the vCPU
//! (`KVM_SET_GUEST_DEBUG` with `KVM_GUESTDBG_SINGLESTEP`, interrupts
//! blocked) and counts the debug exits. The figure is the same on this
//! machine's emulated KVM and on hardware, unlike any time: it is how the
//! guest's hint path is measured (`hint-cost` in the bundled guest).
//!
//! Served only with `vmm run --count-instructions` (a single-stepped guest
//! runs thousands of times slower). [`StepCounter`] is pure state, driven
//! by `handle_exit`; [`set_single_step`] is the one ioctl. This module must
//! never leave a vCPU single-stepping once the guest stopped counting.

use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP,
};
use kvm_ioctls::VcpuFd;

/// One vCPU's instruction counter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepCounter {
    /// The port is served (`--count-instructions`).
    enabled: bool,
    /// Single-stepping now.
    counting: bool,
    steps: u64,
}

/// What the vCPU loop must do after a counter access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepChange {
    Start,
    Stop,
}

impl StepCounter {
    /// A counter; `enabled` serves the port.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// Is the port served?
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The guest's `out`: counting starts from zero.
    pub fn start(&mut self) -> StepChange {
        self.counting = true;
        self.steps = 0;
        StepChange::Start
    }

    /// The guest's `in`: counting stops; `data` gets the count.
    pub fn stop(&mut self, data: &mut [u8]) -> StepChange {
        self.counting = false;
        let n = u32::try_from(self.steps).unwrap_or(u32::MAX).to_le_bytes();
        for (d, s) in data.iter_mut().zip(n.iter().chain(std::iter::repeat(&0))) {
            *d = *s;
        }
        StepChange::Stop
    }

    /// A single-step debug exit: true if it was ours to count.
    pub fn step(&mut self) -> bool {
        if self.counting {
            self.steps = self.steps.saturating_add(1);
        }
        self.counting
    }
}

/// Turns single-stepping of `fd` on or off.
pub fn set_single_step(fd: &VcpuFd, change: StepChange) -> Result<(), kvm_ioctls::Error> {
    let control = match change {
        StepChange::Start => KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ,
        StepChange::Stop => 0,
    };
    fd.set_guest_debug(&kvm_guest_debug {
        control,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_between_start_and_stop() {
        let mut c = StepCounter::new(true);
        assert!(!c.step(), "not counting yet");
        assert_eq!(c.start(), StepChange::Start);
        assert!(c.step() && c.step() && c.step());
        let mut d = [0xffu8; 4];
        assert_eq!(c.stop(&mut d), StepChange::Stop);
        assert_eq!(u32::from_le_bytes(d), 3);
        assert!(!c.step());
        c.start();
        let mut short = [0xffu8; 2];
        c.stop(&mut short);
        assert_eq!(short, [0, 0], "a narrower read gets the low bytes");
        assert!(!StepCounter::new(false).enabled());
    }
}
