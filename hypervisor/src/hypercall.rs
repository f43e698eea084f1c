//! The hypercall doorbell: the guest writes the guest-physical address of a
//! `HypercallBlock` to `HYPERCALL_PORT`; we read the block, act, and write
//! the result back before the `out` retires.
//!
//! Every field comes from the guest and is checked before use: the address
//! must be aligned and inside RAM, the operation known, its arguments in
//! range. A block we cannot even read gets no answer, only a counter and a
//! log line. `HINT_BATCH` is served by [`hint`]. The vCPU threads call the
//! device directly (not through the port bus's per-device lock), so two
//! vCPUs hint at once; all state here is atomics. This module must never
//! panic, block on a lock, or touch guest memory outside the block and the
//! hint batch it was pointed at.

pub mod hint;
pub mod reporting;

use std::fmt;
use std::sync::Arc;

use pagehint_abi::hypercall::{CallResult, HypercallBlock, Request, BLOCK_ALIGN};
use pagehint_abi::{GuestPhys, ABI_VERSION};
use vm_memory::{Bytes, GuestAddress};

use crate::devices::pio::le_value;
use crate::discard_fault::{DiscardFaultError, DiscardFaults};
use crate::frames::{FrameTable, ShareError, SharedEntries};
use crate::hypercall::reporting::FreePageReporter;
use crate::logger::RateLimit;
use crate::memory::GuestRam;
use crate::metrics::{Counter, Metrics};
use hint::HintContext;

/// Offset of `result` in the block (`contains` above rules out overflow).
const RESULT_OFFSET: u64 = core::mem::offset_of!(HypercallBlock, result) as u64;
/// Log lines per second the guest can provoke with bad hypercalls.
const LOG_LINES_PER_SECOND: u64 = 10;

/// Why a doorbell write could not be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HypercallError {
    /// The doorbell was not written with a 32-bit `out`.
    #[error("hypercall doorbell written with {0} bytes, expected 4")]
    BadWidth(usize),
    /// The block address is not aligned to `BLOCK_ALIGN`.
    #[error("hypercall block {0:#x} is not {BLOCK_ALIGN}-byte aligned")]
    Misaligned(GuestPhys),
    /// The block does not lie inside guest RAM.
    #[error("hypercall block {0:#x} is outside guest RAM")]
    OutsideRam(GuestPhys),
    /// Guest memory could not be accessed.
    #[error("hypercall block {0:#x} could not be accessed")]
    Access(GuestPhys),
}

/// The device behind `HYPERCALL_PORT`.
#[derive(Debug)]
pub struct HypercallDevice {
    ram: GuestRam,
    metrics: Arc<Metrics>,
    table: Arc<FrameTable>,
    hinting: bool,
    faults: Option<Arc<DiscardFaults>>,
    reporter: Option<FreePageReporter>,
    /// `SET_STATE_TABLE` is served (CPUID `SHARED_STATES`).
    shared_states: bool,
    log_limit: RateLimit,
}

impl HypercallDevice {
    /// A doorbell serving requests in `ram`, recording hints in `table`
    /// (refused with `HINTS_DISABLED` unless `hinting`).
    pub fn new(
        ram: GuestRam,
        metrics: Arc<Metrics>,
        table: Arc<FrameTable>,
        hinting: bool,
    ) -> Self {
        Self {
            ram,
            metrics,
            table,
            hinting,
            faults: None,
            reporter: None,
            shared_states: false,
            log_limit: RateLimit::new(LOG_LINES_PER_SECOND),
        }
    }

    /// Serves `SET_FAULT_INFO` and unregisters frames the hints make
    /// stable through `faults` (discard faults on).
    pub fn with_discard_faults(mut self, faults: Arc<DiscardFaults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Treats every `SET_UNUSED` entry as a free page report, dropped at
    /// once through `reporter` (free page reporting mode).
    pub fn with_free_page_reporting(mut self, reporter: FreePageReporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Serves `SET_STATE_TABLE`: the guest may move its frame states into
    /// a shared table (`--hints shared`).
    pub fn with_shared_states(mut self) -> Self {
        self.shared_states = true;
        self
    }

    /// `SET_STATE_TABLE`: checks the guest's table and switches the frame
    /// table to it. Refused (and nothing changes) unless offered, placed
    /// wholly in RAM, 4 KiB aligned, one entry per frame, and the first.
    fn set_state_table(&self, table: GuestPhys, entries: u64) -> CallResult {
        let h = &self.metrics.hypercalls;
        h.set_state_table.inc();
        let shared = if self.shared_states {
            SharedEntries::new(&self.ram, table, entries, self.table.len())
                .and_then(|s| self.table.share(s))
        } else {
            Err(ShareError::NotOffered)
        };
        let e = match shared {
            Ok(()) => {
                log::info!(
                    "hypercall: guest shares its page-state table at {:#x} ({entries} entries)",
                    table.as_u64()
                );
                return CallResult::Ok;
            }
            Err(e) => e,
        };
        let (counter, code) = match e {
            ShareError::BadPlace(_) => (&h.errors.bad_block, CallResult::BadBlock),
            ShareError::WrongLength { .. } | ShareError::AlreadyShared => {
                (&h.errors.bad_argument, CallResult::BadArgument)
            }
            ShareError::NotOffered => (&h.errors.hints_disabled, CallResult::HintsDisabled),
        };
        self.refuse(counter, code, format_args!("SET_STATE_TABLE: {e}"))
    }

    /// `SET_FAULT_INFO`: records a vCPU's discard-fault info area.
    fn set_fault_info(&self, info: GuestPhys, cpu: u64) -> CallResult {
        let h = &self.metrics.hypercalls;
        h.set_fault_info.inc();
        let Some(faults) = &self.faults else {
            return self.refuse(
                &h.errors.hints_disabled,
                CallResult::HintsDisabled,
                format_args!("SET_FAULT_INFO while discard faults are off"),
            );
        };
        let e = match faults.set_fault_info(info, cpu) {
            Ok(()) => return CallResult::Ok,
            Err(e) => e,
        };
        let (counter, code) = if matches!(e, DiscardFaultError::BadInfoArea(_)) {
            (&h.errors.bad_block, CallResult::BadBlock)
        } else {
            (&h.errors.bad_argument, CallResult::BadArgument)
        };
        self.refuse(counter, code, format_args!("SET_FAULT_INFO: {e}"))
    }

    /// `HELLO`: checks the guest's ABI version.
    fn hello(&self, version: u64, cpu: u64) -> CallResult {
        let h = &self.metrics.hypercalls;
        h.hello.inc();
        if version == u64::from(ABI_VERSION) {
            log::info!("hypercall: HELLO from guest cpu {cpu}");
            return CallResult::Ok;
        }
        self.refuse(
            &h.errors.bad_version,
            CallResult::BadVersion,
            format_args!("HELLO from guest cpu {cpu} speaks ABI {version}, we speak {ABI_VERSION}"),
        )
    }

    /// A refused call: counts it in `counter`, logs `why` within the rate
    /// limit and returns `code`.
    fn refuse(&self, counter: &Counter, code: CallResult, why: fmt::Arguments<'_>) -> CallResult {
        counter.inc();
        if self.log_limit.allow() {
            log::warn!("hypercall: {why}");
        }
        code
    }

    /// Executes one request and returns its result.
    pub fn dispatch(&self, block: &HypercallBlock) -> CallResult {
        let h = &self.metrics.hypercalls;
        match Request::decode(block) {
            Ok(Request::Hello { version, cpu }) => self.hello(version, cpu),
            Ok(Request::HintBatch { .. }) if !self.hinting => {
                h.hint_batch.inc();
                self.refuse(
                    &h.errors.hints_disabled,
                    CallResult::HintsDisabled,
                    format_args!("HINT_BATCH while hinting is off (--no-hinting)"),
                )
            }
            Ok(Request::HintBatch { batch, count }) => HintContext {
                ram: &self.ram,
                table: &self.table,
                metrics: &self.metrics,
                log_limit: &self.log_limit,
                faults: self.faults.as_deref(),
                reporter: self.reporter.as_ref(),
            }
            .batch(batch, count),
            Ok(Request::SetFaultInfo { info, cpu }) => self.set_fault_info(info, cpu),
            Ok(Request::SetStateTable { table, entries }) => self.set_state_table(table, entries),
            Err(e) => self.refuse(&h.errors.unknown_op, e.result(), format_args!("{e}")),
        }
    }

    /// Validates the block address and serves the request.
    pub fn handle(&self, data: &[u8]) -> Result<(), HypercallError> {
        if data.len() != 4 {
            return Err(HypercallError::BadWidth(data.len()));
        }
        let block_at = GuestPhys(u64::from(le_value(data)));
        if !block_at.is_aligned(BLOCK_ALIGN) {
            return Err(HypercallError::Misaligned(block_at));
        }
        let len = core::mem::size_of::<HypercallBlock>() as u64;
        if !self.ram.contains(block_at, len) {
            return Err(HypercallError::OutsideRam(block_at));
        }
        let addr = GuestAddress(block_at.as_u64());
        let mut block: HypercallBlock = self
            .ram
            .mem()
            .read_obj(addr)
            .map_err(|_| HypercallError::Access(block_at))?;
        block.result = i32::from(self.dispatch(&block));
        // Only `result` is ours to write: the hint batch may share the page.
        self.ram
            .mem()
            .write_obj(
                block.result,
                GuestAddress((block_at + RESULT_OFFSET).as_u64()),
            )
            .map_err(|_| HypercallError::Access(block_at))
    }

    /// An `in` from the doorbell: not a thing the guest should do.
    pub fn read(&self, _offset: u16, data: &mut [u8]) {
        self.metrics.hypercalls.errors.bad_access.inc();
        data.fill(0xff);
    }

    /// An `out` to the doorbell.
    pub fn write(&self, offset: u16, data: &[u8]) {
        let outcome = if offset != 0 {
            Err(HypercallError::BadWidth(data.len()))
        } else {
            self.handle(data)
        };
        let errors = &self.metrics.hypercalls.errors;
        let e = match outcome {
            Ok(()) => return,
            Err(e @ HypercallError::BadWidth(_)) => {
                errors.bad_access.inc();
                e
            }
            Err(e) => {
                errors.bad_block.inc();
                e
            }
        };
        if self.log_limit.allow() {
            log::warn!("hypercall: {e}; ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::hypercall::{op, result};

    fn device() -> (HypercallDevice, GuestRam, Arc<Metrics>) {
        let ram = GuestRam::new(16 << 20).unwrap();
        let metrics = Arc::new(Metrics::default());
        let table = Arc::new(FrameTable::new(ram.frames() as usize, false));
        (
            HypercallDevice::new(ram.clone(), metrics.clone(), table, true),
            ram,
            metrics,
        )
    }

    fn call(dev: &HypercallDevice, ram: &GuestRam, gpa: u64, block: HypercallBlock) -> i32 {
        ram.mem().write_obj(block, GuestAddress(gpa)).unwrap();
        dev.write(0, &(gpa as u32).to_le_bytes());
        let back: HypercallBlock = ram.mem().read_obj(GuestAddress(gpa)).unwrap();
        back.result
    }

    #[test]
    fn hello_checks_the_abi_version() {
        let (dev, ram, metrics) = device();
        let mut b = HypercallBlock {
            op: op::HELLO,
            result: 77,
            args: [u64::from(ABI_VERSION), 1, 0, 0, 0, 0, 0],
        };
        assert_eq!(call(&dev, &ram, 0x4000, b), result::OK);
        b.args[0] = 999;
        assert_eq!(call(&dev, &ram, 0x4000, b), result::BAD_VERSION);
        b.op = 12345;
        assert_eq!(call(&dev, &ram, 0x4000, b), result::UNKNOWN_OP);
        assert_eq!(metrics.hypercalls.hello.get(), 2);
        assert_eq!(metrics.hypercalls.errors.bad_version.get(), 1);
        assert_eq!(metrics.hypercalls.errors.unknown_op.get(), 1);
    }

    #[test]
    fn bad_blocks_are_counted_and_left_alone() {
        let (dev, ram, metrics) = device();
        let b = HypercallBlock {
            op: op::HELLO,
            result: 77,
            args: [u64::from(ABI_VERSION), 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(call(&dev, &ram, 0x4020, b), 77, "misaligned");
        assert_eq!(
            dev.handle(&0xffff_ffc0u32.to_le_bytes()),
            Err(HypercallError::OutsideRam(GuestPhys(0xffff_ffc0)))
        );
        let last = (16 << 20) - 64;
        assert_eq!(call(&dev, &ram, last, b), result::OK, "last block of RAM");
        dev.write(0, &[0x40]);
        dev.write(2, &[0, 0]);
        let mut r = [0u8; 4];
        dev.read(0, &mut r);
        assert_eq!(metrics.hypercalls.errors.bad_block.get(), 1);
        assert_eq!(metrics.hypercalls.errors.bad_access.get(), 3);
        assert_eq!(r, [0xff; 4]);
    }

    #[test]
    fn hint_batches_are_refused_when_hinting_is_off() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let metrics = Arc::new(Metrics::default());
        let table = Arc::new(FrameTable::new(4096, false));
        let dev = HypercallDevice::new(ram.clone(), metrics.clone(), table.clone(), false);
        let b = HypercallBlock {
            op: op::HINT_BATCH,
            result: 77,
            args: [0x10_0000, 1, 0, 0, 0, 0, 0],
        };
        assert_eq!(call(&dev, &ram, 0x4000, b), result::HINTS_DISABLED);
        assert_eq!(metrics.hypercalls.hint_batch.get(), 1);
        assert_eq!(metrics.hypercalls.errors.hints_disabled.get(), 1);
        assert_eq!(table.counts().stable, 4096);
        let b = HypercallBlock {
            op: op::SET_FAULT_INFO,
            result: 77,
            args: [0x9000, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(call(&dev, &ram, 0x4000, b), result::HINTS_DISABLED);
    }

    #[test]
    fn fault_info_areas_are_registered_and_checked() {
        let (dev, ram, metrics) = device();
        let table = Arc::new(FrameTable::new(ram.frames() as usize, false));
        let faults = Arc::new(DiscardFaults::new(&ram, table, metrics.clone(), 2).unwrap());
        let dev = dev.with_discard_faults(faults.clone());
        let mut b = HypercallBlock {
            op: op::SET_FAULT_INFO,
            result: 77,
            args: [0x9040, 1, 0, 0, 0, 0, 0],
        };
        assert_eq!(call(&dev, &ram, 0x4000, b), result::OK);
        assert_eq!(faults.slots().info(1), Some(GuestPhys(0x9040)));
        b.args[0] = 0x9044;
        assert_eq!(call(&dev, &ram, 0x4000, b), result::BAD_BLOCK);
        b.args[0] = 16 << 20;
        assert_eq!(call(&dev, &ram, 0x4000, b), result::BAD_BLOCK);
        b.args = [0x9000, 2, 0, 0, 0, 0, 0];
        assert_eq!(call(&dev, &ram, 0x4000, b), result::BAD_ARGUMENT);
        let h = &metrics.hypercalls;
        assert_eq!(h.set_fault_info.get(), 4);
        assert_eq!(
            (h.errors.bad_block.get(), h.errors.bad_argument.get()),
            (2, 1)
        );
    }
}
