//! What one `KVM_RUN` exit means: [`handle_exit`] turns an exit into a
//! [`Step`], serving port and MMIO accesses on the way through
//! [`ExitDevices`], a trait the VMM's buses and doorbell implement above
//! this module (`crate::vcpu_devices`). It is a pure function of the exit,
//! the devices and the counters, so it is unit-tested here with synthetic
//! exits; the vCPU loop (`vcpu.rs`) acts on the step (dumps registers,
//! lets its kick handler deliver a discard fault, stops).
//!
//! This module must never panic on an exit the guest provoked, and never
//! touch the vCPU's file descriptor.

use kvm_ioctls::VcpuExit;
use pagehint_abi::ports::STEP_COUNTER_PORT;
use pagehint_abi::GuestPhys;

use crate::metrics::{Counter, ExitMetrics};
use crate::vstate::step_count::{StepChange, StepCounter};

/// What the vCPU must do after a port write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PioOutcome {
    /// Nothing: the guest continues.
    Continue,
    /// The guest asked the machine to stop with this status value.
    Exit(u32),
}

/// Where the exits' accesses go.
pub trait ExitDevices {
    /// An `out` to `port`.
    fn pio_write(&self, port: u16, data: &[u8]) -> PioOutcome;
    /// An `in` from `port`; fills `data`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// A load from `addr`; false if no device claims the whole access.
    fn mmio_read(&self, addr: GuestPhys, data: &mut [u8]) -> bool;
    /// A store to `addr`; false if no device claims the whole access.
    fn mmio_write(&self, addr: GuestPhys, data: &[u8]) -> bool;
}

/// Every way out of one exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Served; run the vCPU again.
    Continue,
    /// `KVM_RUN` was interrupted (a kick, `EINTR`; or an AP woke, `EAGAIN`):
    /// deliver a pending discard fault, then run again.
    Interrupted,
    /// The guest wrote this value to the exit port.
    GuestExit(u32),
    /// `KVM_EXIT_SHUTDOWN`: the guest triple-faulted.
    TripleFault,
    /// `KVM_EXIT_INTERNAL_ERROR` (the caller reads the suberror).
    InternalError,
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry { reason: u64, cpu: u32 },
    /// `KVM_RUN` itself failed with this errno.
    RunFailed(i32),
    /// The guest started or stopped counting its instructions: turn
    /// single-stepping on or off, then run again.
    SingleStep(StepChange),
    /// An exit this VMM does not handle, named.
    Unhandled(String),
}

impl Step {
    /// True for the steps that end the vCPU because KVM failed (rather
    /// than the guest).
    pub fn is_kvm_failure(&self) -> bool {
        matches!(
            self,
            Step::InternalError | Step::FailEntry { .. } | Step::RunFailed(_)
        )
    }
}

/// Counts an exit that needs no serving, and says what comes next.
fn counted(counter: &Counter, step: Step) -> Step {
    counter.inc();
    step
}

/// Serves one exit and says what comes next. `steps` is the vCPU's
/// instruction counter (`STEP_COUNTER_PORT`, single-step debug exits).
pub fn handle_exit(
    exit: Result<VcpuExit<'_>, kvm_ioctls::Error>,
    devices: &impl ExitDevices,
    m: &ExitMetrics,
    steps: &mut StepCounter,
) -> Step {
    match exit {
        Ok(VcpuExit::IoOut(STEP_COUNTER_PORT, _)) if steps.enabled() => {
            m.io_out.inc();
            Step::SingleStep(steps.start())
        }
        Ok(VcpuExit::IoIn(STEP_COUNTER_PORT, data)) if steps.enabled() => {
            m.io_in.inc();
            Step::SingleStep(steps.stop(data))
        }
        Ok(VcpuExit::Debug(_)) if steps.step() => Step::Continue,
        Ok(VcpuExit::IoOut(port, data)) => {
            m.io_out.inc();
            match devices.pio_write(port, data) {
                PioOutcome::Continue => Step::Continue,
                PioOutcome::Exit(value) => Step::GuestExit(value),
            }
        }
        Ok(VcpuExit::IoIn(port, data)) => {
            m.io_in.inc();
            devices.pio_read(port, data);
            Step::Continue
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            m.mmio_read.inc();
            if !devices.mmio_read(GuestPhys(addr), data) {
                log::debug!("unhandled MMIO read at {addr:#x} ({} bytes)", data.len());
                data.fill(0xff);
            }
            Step::Continue
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            m.mmio_write.inc();
            if !devices.mmio_write(GuestPhys(addr), data) {
                log::debug!("unhandled MMIO write of {data:02x?} at {addr:#x}");
            }
            Step::Continue
        }
        Ok(VcpuExit::Hlt) => counted(&m.hlt, Step::Continue),
        Ok(VcpuExit::Intr) => counted(&m.interrupted, Step::Interrupted),
        Ok(VcpuExit::Shutdown) => counted(&m.shutdown, Step::TripleFault),
        Ok(VcpuExit::InternalError) => counted(&m.internal_error, Step::InternalError),
        Ok(VcpuExit::FailEntry(reason, cpu)) => {
            counted(&m.fail_entry, Step::FailEntry { reason, cpu })
        }
        Ok(other) => counted(&m.other, Step::Unhandled(format!("{other:?}"))),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            counted(&m.interrupted, Step::Interrupted)
        }
        Err(e) => Step::RunFailed(e.errno()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records accesses; port 0xf4 is the exit port, MMIO below 0x1000 is
    /// claimed and reads as 0x5a.
    #[derive(Default)]
    struct Fake {
        log: RefCell<Vec<String>>,
    }

    impl ExitDevices for Fake {
        fn pio_write(&self, port: u16, data: &[u8]) -> PioOutcome {
            self.log
                .borrow_mut()
                .push(format!("out {port:#x} {data:?}"));
            if port == 0xf4 {
                PioOutcome::Exit(u32::from(data[0]))
            } else {
                PioOutcome::Continue
            }
        }
        fn pio_read(&self, port: u16, data: &mut [u8]) {
            self.log.borrow_mut().push(format!("in {port:#x}"));
            data.fill(0x11);
        }
        fn mmio_read(&self, addr: GuestPhys, data: &mut [u8]) -> bool {
            data.fill(0x5a);
            addr < GuestPhys(0x1000)
        }
        fn mmio_write(&self, addr: GuestPhys, _data: &[u8]) -> bool {
            self.log.borrow_mut().push(format!("store {addr:#x}"));
            addr < GuestPhys(0x1000)
        }
    }

    /// One exit with a fresh (disabled) instruction counter.
    fn once(d: &Fake, m: &ExitMetrics, exit: Result<VcpuExit<'_>, kvm_ioctls::Error>) -> Step {
        handle_exit(exit, d, m, &mut StepCounter::default())
    }

    #[test]
    fn port_and_mmio_exits_are_served_and_counted() {
        let (d, m) = (Fake::default(), ExitMetrics::default());
        assert_eq!(
            once(&d, &m, Ok(VcpuExit::IoOut(0x3f8, &[7]))),
            Step::Continue
        );
        assert_eq!(
            once(&d, &m, Ok(VcpuExit::IoOut(0xf4, &[3, 0, 0, 0]))),
            Step::GuestExit(3)
        );
        let mut b = [0u8; 2];
        assert_eq!(
            once(&d, &m, Ok(VcpuExit::IoIn(0x60, &mut b))),
            Step::Continue
        );
        assert_eq!(b, [0x11; 2]);
        let mut w = [0u8; 4];
        once(&d, &m, Ok(VcpuExit::MmioRead(0x10, &mut w)));
        assert_eq!(w, [0x5a; 4]);
        once(&d, &m, Ok(VcpuExit::MmioRead(0xd000_0000, &mut w)));
        assert_eq!(w, [0xff; 4], "unclaimed loads read all-ones");
        assert_eq!(
            once(&d, &m, Ok(VcpuExit::MmioWrite(0x2000, &[1]))),
            Step::Continue
        );
        assert_eq!(
            *d.log.borrow(),
            [
                "out 0x3f8 [7]",
                "out 0xf4 [3, 0, 0, 0]",
                "in 0x60",
                "store 0x2000"
            ]
        );
        assert_eq!((m.io_out.get(), m.io_in.get()), (2, 1));
        assert_eq!((m.mmio_read.get(), m.mmio_write.get()), (2, 1));
    }

    #[test]
    fn the_instruction_counter_port_counts_debug_exits_when_enabled() {
        let (d, m) = (Fake::default(), ExitMetrics::default());
        let mut off = StepCounter::default();
        let mut b = [0u8; 4];
        handle_exit(
            Ok(VcpuExit::IoIn(STEP_COUNTER_PORT, &mut b)),
            &d,
            &m,
            &mut off,
        );
        assert_eq!(b, [0x11; 4], "without the flag the port is the bus's");
        let dbg = kvm_bindings::kvm_debug_exit_arch::default();
        let s = handle_exit(Ok(VcpuExit::Debug(dbg)), &d, &m, &mut off);
        assert!(
            matches!(s, Step::Unhandled(_)),
            "a stray debug exit is not ours"
        );
        let mut on = StepCounter::new(true);
        let s = handle_exit(
            Ok(VcpuExit::IoOut(STEP_COUNTER_PORT, &[0; 4])),
            &d,
            &m,
            &mut on,
        );
        assert_eq!(s, Step::SingleStep(StepChange::Start));
        for _ in 0..5 {
            assert_eq!(
                handle_exit(Ok(VcpuExit::Debug(dbg)), &d, &m, &mut on),
                Step::Continue
            );
        }
        let s = handle_exit(
            Ok(VcpuExit::IoIn(STEP_COUNTER_PORT, &mut b)),
            &d,
            &m,
            &mut on,
        );
        assert_eq!(s, Step::SingleStep(StepChange::Stop));
        assert_eq!(u32::from_le_bytes(b), 5);
        assert_eq!(*d.log.borrow(), ["in 0x518"], "served without the bus");
    }

    #[test]
    fn every_other_way_out_has_its_step() {
        let (d, m) = (Fake::default(), ExitMetrics::default());
        assert_eq!(once(&d, &m, Ok(VcpuExit::Hlt)), Step::Continue);
        assert_eq!(once(&d, &m, Ok(VcpuExit::Intr)), Step::Interrupted);
        let eintr = kvm_ioctls::Error::new(libc::EINTR);
        assert_eq!(once(&d, &m, Err(eintr)), Step::Interrupted);
        let eagain = kvm_ioctls::Error::new(libc::EAGAIN);
        assert_eq!(once(&d, &m, Err(eagain)), Step::Interrupted);
        assert_eq!(m.interrupted.get(), 3);
        assert_eq!(once(&d, &m, Ok(VcpuExit::Shutdown)), Step::TripleFault);
        let s = once(&d, &m, Ok(VcpuExit::InternalError));
        assert!(s == Step::InternalError && s.is_kvm_failure());
        let s = once(&d, &m, Ok(VcpuExit::FailEntry(0x21, 1)));
        assert_eq!(
            s,
            Step::FailEntry {
                reason: 0x21,
                cpu: 1
            }
        );
        assert!(s.is_kvm_failure());
        let efault = kvm_ioctls::Error::new(libc::EFAULT);
        let s = once(&d, &m, Err(efault));
        assert!(s == Step::RunFailed(libc::EFAULT) && s.is_kvm_failure());
        let s = once(&d, &m, Ok(VcpuExit::IrqWindowOpen));
        assert!(matches!(s, Step::Unhandled(ref w) if w.contains("IrqWindowOpen")));
        assert!(!s.is_kvm_failure() && !Step::TripleFault.is_kvm_failure());
        assert_eq!((m.hlt.get(), m.shutdown.get(), m.other.get()), (1, 1, 1));
        assert_eq!((m.internal_error.get(), m.fail_entry.get()), (1, 1));
    }
}
