//! The hypercall doorbell: the guest writes the guest-physical address of a
//! `HypercallBlock` to `HYPERCALL_PORT`; we read the block, act, and write
//! the result back before the `out` retires.
//!
//! Every field comes from the guest and is checked before use: the address
//! must be aligned and inside RAM, the operation known, its arguments in
//! range. A block we cannot even read gets no answer, only a counter and a
//! log line. This module must never panic, block, or touch guest memory
//! outside the block it was pointed at.

use std::sync::Arc;

use pagehint_abi::hypercall::{op, result, HypercallBlock, BLOCK_ALIGN};
use pagehint_abi::ABI_VERSION;
use vm_memory::{Bytes, GuestAddress};

use crate::devices::bus::{le_value, PioDevice, PioOutcome};
use crate::memory::GuestRam;
use crate::metrics::Metrics;

/// Why a doorbell write could not be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HypercallError {
    /// The doorbell was not written with a 32-bit `out`.
    #[error("hypercall doorbell written with {0} bytes, expected 4")]
    BadWidth(usize),
    /// The block address is not aligned to `BLOCK_ALIGN`.
    #[error("hypercall block {0:#x} is not {BLOCK_ALIGN}-byte aligned")]
    Misaligned(u64),
    /// The block does not lie inside guest RAM.
    #[error("hypercall block {0:#x} is outside guest RAM")]
    OutsideRam(u64),
    /// Guest memory could not be accessed.
    #[error("hypercall block {0:#x} could not be accessed")]
    Access(u64),
}

/// Executes one request and returns its result code. Pure, for testing.
pub fn dispatch(block: &HypercallBlock, metrics: &Metrics) -> i32 {
    match block.op {
        op::HELLO => {
            metrics.hypercalls.hello.inc();
            if block.args[0] == u64::from(ABI_VERSION) {
                log::info!("hypercall: HELLO from guest cpu {}", block.args[1]);
                result::OK
            } else {
                metrics.hypercalls.bad_version.inc();
                log::warn!(
                    "hypercall: HELLO from guest cpu {} speaks ABI {}, we speak {ABI_VERSION}",
                    block.args[1],
                    block.args[0]
                );
                result::BAD_VERSION
            }
        }
        other => {
            metrics.hypercalls.unknown_op.inc();
            log::debug!("hypercall: unknown op {other}");
            result::UNKNOWN_OP
        }
    }
}

/// The device behind `HYPERCALL_PORT`.
#[derive(Debug)]
pub struct HypercallDevice {
    ram: GuestRam,
    metrics: Arc<Metrics>,
}

impl HypercallDevice {
    /// A doorbell serving requests in `ram`.
    pub fn new(ram: GuestRam, metrics: Arc<Metrics>) -> Self {
        Self { ram, metrics }
    }

    /// Validates the block address and serves the request.
    pub fn handle(&self, data: &[u8]) -> Result<(), HypercallError> {
        if data.len() != 4 {
            return Err(HypercallError::BadWidth(data.len()));
        }
        let gpa = u64::from(le_value(data));
        if gpa % BLOCK_ALIGN != 0 {
            return Err(HypercallError::Misaligned(gpa));
        }
        let len = core::mem::size_of::<HypercallBlock>() as u64;
        if !self.ram.contains(gpa, len) {
            return Err(HypercallError::OutsideRam(gpa));
        }
        let addr = GuestAddress(gpa);
        let mut block: HypercallBlock = self
            .ram
            .mem()
            .read_obj(addr)
            .map_err(|_| HypercallError::Access(gpa))?;
        block.result = dispatch(&block, &self.metrics);
        self.ram
            .mem()
            .write_obj(block, addr)
            .map_err(|_| HypercallError::Access(gpa))
    }
}

impl PioDevice for HypercallDevice {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        self.metrics.hypercalls.bad_access.inc();
        data.fill(0xff);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> PioOutcome {
        let outcome = if offset != 0 {
            Err(HypercallError::BadWidth(data.len()))
        } else {
            self.handle(data)
        };
        match outcome {
            Ok(()) => {}
            Err(e @ HypercallError::BadWidth(_)) => {
                self.metrics.hypercalls.bad_access.inc();
                log::warn!("hypercall: {e}; ignored");
            }
            Err(e) => {
                self.metrics.hypercalls.bad_block.inc();
                log::warn!("hypercall: {e}; ignored");
            }
        }
        PioOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (HypercallDevice, GuestRam, Arc<Metrics>) {
        let ram = GuestRam::new(16 << 20).unwrap();
        let metrics = Arc::new(Metrics::default());
        (
            HypercallDevice::new(ram.clone(), metrics.clone()),
            ram,
            metrics,
        )
    }

    fn call(dev: &mut HypercallDevice, ram: &GuestRam, gpa: u64, block: HypercallBlock) -> i32 {
        ram.mem().write_obj(block, GuestAddress(gpa)).unwrap();
        dev.write(0, &(gpa as u32).to_le_bytes());
        let back: HypercallBlock = ram.mem().read_obj(GuestAddress(gpa)).unwrap();
        back.result
    }

    #[test]
    fn hello_checks_the_abi_version() {
        let (mut dev, ram, metrics) = device();
        let mut b = HypercallBlock {
            op: op::HELLO,
            result: 77,
            args: [u64::from(ABI_VERSION), 1, 0, 0, 0, 0, 0],
        };
        assert_eq!(call(&mut dev, &ram, 0x4000, b), result::OK);
        b.args[0] = 999;
        assert_eq!(call(&mut dev, &ram, 0x4000, b), result::BAD_VERSION);
        b.op = 12345;
        assert_eq!(call(&mut dev, &ram, 0x4000, b), result::UNKNOWN_OP);
        assert_eq!(metrics.hypercalls.hello.get(), 2);
        assert_eq!(metrics.hypercalls.bad_version.get(), 1);
        assert_eq!(metrics.hypercalls.unknown_op.get(), 1);
    }

    #[test]
    fn bad_blocks_are_counted_and_left_alone() {
        let (mut dev, ram, metrics) = device();
        let b = HypercallBlock {
            op: op::HELLO,
            result: 77,
            args: [u64::from(ABI_VERSION), 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(call(&mut dev, &ram, 0x4020, b), 77, "misaligned");
        assert_eq!(
            dev.handle(&0xffff_ffc0u32.to_le_bytes()),
            Err(HypercallError::OutsideRam(0xffff_ffc0))
        );
        let last = (16 << 20) - 64;
        assert_eq!(
            call(&mut dev, &ram, last, b),
            result::OK,
            "last block of RAM"
        );
        dev.write(0, &[0x40]);
        dev.write(2, &[0, 0]);
        let mut r = [0u8; 4];
        dev.read(0, &mut r);
        assert_eq!(metrics.hypercalls.bad_block.get(), 1);
        assert_eq!(metrics.hypercalls.bad_access.get(), 3);
        assert_eq!(r, [0xff; 4]);
    }
}
