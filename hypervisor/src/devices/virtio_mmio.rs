//! The virtio-mmio (version 2) transport of the block device: its register
//! file, its one virtqueue, and the queue processing the worker thread
//! calls.
//!
//! Register semantics follow virtio 1.x section 4.2.2. Register accesses
//! come from vCPU threads as MMIO exits, queue processing from the block
//! worker; both go through the one `Mutex` around [`VirtioBlock`]. Queue
//! notifications normally never reach this code as exits: KVM turns the
//! guest's store to QueueNotify into a write to an ioeventfd the worker
//! waits on (a store that does arrive here is forwarded to the same
//! eventfd). Completions raise GSI 5 through an irqfd. A driver that does
//! something illegal gets `DEVICE_NEEDS_RESET`, a counter and a log line.
//! This module must never panic on a register access, and never use a
//! queue whose rings are not wholly inside guest RAM.

use std::io;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::disk::DiskFile;
use crate::devices::mmio::MmioDevice;
use crate::devices::virtio_blk::{process_chain_with, PagesOnDisk, BLOCK_SIZE, MAX_CHAIN};
use crate::metrics::Metrics;

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) transport.
pub const VERSION: u32 = 2;
/// virtio device ID of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// Our vendor ID: "PHVM" little-endian.
pub const VENDOR_ID: u32 = 0x4d56_4850;
/// Largest queue we offer.
pub const QUEUE_NUM_MAX: u16 = 256;
/// Offset of QueueNotify (what the ioeventfd watches).
pub const QUEUE_NOTIFY: u64 = 0x50;
/// Offset of the device configuration space.
pub const CONFIG_OFFSET: u64 = 0x100;
/// Bytes of `virtio_blk_config` we expose (up to and including blk_size).
const CONFIG_LEN: usize = 24;

/// Transport setup failures, and the illegal driver actions that earn
/// `DEVICE_NEEDS_RESET`.
#[derive(Debug, thiserror::Error)]
pub enum VirtioMmioError {
    #[error("cannot create a virtio eventfd: {0}")]
    EventFd(#[source] io::Error),
    #[error("QueueNum {0} is not a power of two between 1 and {QUEUE_NUM_MAX}")]
    BadQueueNum(u32),
    #[error("QueueReady written before QueueDesc, QueueDriver and QueueDevice")]
    ReadyWithoutAddresses,
    #[error("queue rings misaligned: {0}")]
    Misaligned(virtio_queue::Error),
    #[error(
        "queue rings (desc {desc:#x}, driver {avail:#x}, device {used:#x}) lie outside guest RAM"
    )]
    QueueOutsideRam { desc: u64, avail: u64, used: u64 },
    #[error("driver cleared device status bits ({old:#x} -> {new:#x})")]
    ClearedStatus { old: u32, new: u32 },
    #[error("DRIVER_OK set without FEATURES_OK")]
    DriverOkEarly,
    #[error("available ring is corrupt: {0}")]
    BadAvailRing(virtio_queue::Error),
}

/// The virtio block device behind its MMIO registers.
pub struct VirtioBlock {
    mem: GuestMemoryMmap,
    disk: DiskFile,
    irq: EventFd,
    notify: EventFd,
    metrics: Arc<Metrics>,
    config: [u8; CONFIG_LEN],
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queue: Queue,
    /// Guest-physical addresses as the driver wrote them, and which of the
    /// three (bit 0 desc, 1 driver, 2 device) it has written.
    addrs: [u64; 3],
    addrs_written: u8,
    interrupt_status: u32,
    /// Told of the guest pages each request moved (`--potentially-volatile`).
    on_disk: Option<Arc<dyn PagesOnDisk>>,
}

impl std::fmt::Debug for VirtioBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlock")
            .field("status", &self.status)
            .field("disk", &self.disk.path())
            .finish_non_exhaustive()
    }
}

/// Replaces the low or high half of `v`.
fn set_half(v: &mut u64, high: bool, value: u32) {
    *v = if high {
        (*v & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (*v & !0xffff_ffff) | u64::from(value)
    };
}

impl VirtioBlock {
    /// A device serving `disk` out of `mem`. Returns it with duplicates of
    /// its interrupt eventfd (to register as an irqfd) and its queue
    /// notification eventfd (to register as an ioeventfd and to give to
    /// the worker).
    pub fn new(
        mem: GuestMemoryMmap,
        disk: DiskFile,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, EventFd, EventFd), VirtioMmioError> {
        let irq = EventFd::new(EFD_NONBLOCK).map_err(VirtioMmioError::EventFd)?;
        let notify = EventFd::new(EFD_NONBLOCK).map_err(VirtioMmioError::EventFd)?;
        let irq_out = irq.try_clone().map_err(VirtioMmioError::EventFd)?;
        let notify_out = notify.try_clone().map_err(VirtioMmioError::EventFd)?;
        let queue = Queue::new(QUEUE_NUM_MAX).map_err(VirtioMmioError::Misaligned)?;
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        let seg_max = u32::try_from(MAX_CHAIN - 2).unwrap_or(0);
        config[12..16].copy_from_slice(&seg_max.to_le_bytes());
        config[20..24].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        let dev = Self {
            mem,
            disk,
            irq,
            notify,
            metrics,
            config,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queue,
            addrs: [0; 3],
            addrs_written: 0,
            interrupt_status: 0,
            on_disk: None,
        };
        Ok((dev, irq_out, notify_out))
    }

    /// Tells `on_disk` of the data buffers of every read and write after
    /// the data moved and before the request completes.
    pub fn with_pages_on_disk(mut self, on_disk: Arc<dyn PagesOnDisk>) -> Self {
        self.on_disk = Some(on_disk);
        self
    }

    /// The feature bits we offer.
    pub fn device_features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Raises interrupt reason `bit` (used buffer or configuration change).
    fn interrupt(&mut self, bit: u32) {
        self.interrupt_status |= bit;
        self.metrics.block.interrupts.inc();
        if let Err(e) = self.irq.write(1) {
            log::warn!("virtio-blk: cannot raise the interrupt: {e}");
        }
    }

    /// The driver broke the rules: flag DEVICE_NEEDS_RESET and tell it.
    fn needs_reset(&mut self, why: VirtioMmioError) {
        log::warn!("virtio-blk: {why}; device needs reset");
        self.metrics.block.needs_reset.inc();
        let first = self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0;
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if first && self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.interrupt(VIRTIO_MMIO_INT_CONFIG);
        }
    }

    /// Back to the state after power-on (Status written with 0).
    fn reset(&mut self) {
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queue.reset();
        self.addrs = [0; 3];
        self.addrs_written = 0;
        self.interrupt_status = 0;
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let mut new = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if old & !new != 0 {
            self.needs_reset(VirtioMmioError::ClearedStatus { old, new });
            return;
        }
        let ok = VIRTIO_CONFIG_S_FEATURES_OK;
        if new & ok != 0 && old & ok == 0 {
            let offered = self.device_features();
            let wanted = self.driver_features;
            if wanted & !offered != 0 || wanted & (1 << VIRTIO_F_VERSION_1) == 0 {
                log::warn!(
                    "virtio-blk: driver features {wanted:#x} are not a valid subset of {offered:#x}; FEATURES_OK refused"
                );
                new &= !ok;
            }
        }
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && new & ok == 0 {
            self.needs_reset(VirtioMmioError::DriverOkEarly);
            return;
        }
        self.status = new | (self.status & VIRTIO_CONFIG_S_NEEDS_RESET);
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 && old & VIRTIO_CONFIG_S_DRIVER_OK == 0 {
            // Serve anything queued before DRIVER_OK.
            let _ = self.notify.write(1);
        }
    }

    /// QueueReady = 1: check and apply the queue configuration.
    fn activate_queue(&mut self) {
        if self.addrs_written != 0b111 {
            self.needs_reset(VirtioMmioError::ReadyWithoutAddresses);
            return;
        }
        let [desc, avail, used] = self.addrs;
        let q = &mut self.queue;
        let aligned = q
            .try_set_desc_table_address(GuestAddress(desc))
            .and_then(|_| q.try_set_avail_ring_address(GuestAddress(avail)))
            .and_then(|_| q.try_set_used_ring_address(GuestAddress(used)));
        if let Err(e) = aligned {
            self.needs_reset(VirtioMmioError::Misaligned(e));
            return;
        }
        self.queue.set_ready(true);
        if !self.queue.is_valid(&self.mem) {
            self.queue.set_ready(false);
            self.needs_reset(VirtioMmioError::QueueOutsideRam { desc, avail, used });
        }
    }

    fn write_queue_reg(&mut self, offset: u64, value: u32) {
        if self.queue_sel != 0 {
            log::debug!("virtio-blk: write to queue {} ignored", self.queue_sel);
            return;
        }
        if offset == 0x44 {
            if value == 1 {
                self.activate_queue();
            } else {
                self.queue.set_ready(false);
            }
            return;
        }
        if self.queue.ready() {
            log::warn!(
                "virtio-blk: queue register {offset:#x} written while the queue is ready; ignored"
            );
            self.metrics.block.bad_access.inc();
            return;
        }
        match offset {
            0x38 => {
                let n = u16::try_from(value).ok().filter(|n| n.is_power_of_two());
                match n.map(|n| self.queue.try_set_size(n)) {
                    Some(Ok(())) => {}
                    _ => self.needs_reset(VirtioMmioError::BadQueueNum(value)),
                }
            }
            0x80..=0xa7 => {
                let which = usize::try_from((offset - 0x80) / 0x10).unwrap_or(0);
                if let Some(a) = self.addrs.get_mut(which) {
                    set_half(a, offset % 0x10 == 4, value);
                    self.addrs_written |= 1 << which;
                }
            }
            _ => {}
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q0 = self.queue_sel == 0;
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => DEVICE_ID_BLOCK,
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            0x34 if q0 => u32::from(QUEUE_NUM_MAX),
            0x38 if q0 => u32::from(self.queue.size()),
            0x44 if q0 => u32::from(self.queue.ready()),
            0x60 => self.interrupt_status,
            0x70 => self.status,
            0xfc => 0,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            0x14 => self.device_features_sel = value,
            0x20 => {
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => set_half(&mut self.driver_features, false, value),
                        1 => set_half(&mut self.driver_features, true, value),
                        _ => {}
                    }
                }
            }
            0x24 => self.driver_features_sel = value,
            0x30 => self.queue_sel = value,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                self.write_queue_reg(offset, value)
            }
            QUEUE_NOTIFY => {
                let _ = self.notify.write(1);
            }
            0x64 => self.interrupt_status &= !value,
            0x70 => self.set_status(value),
            _ => {
                log::debug!("virtio-blk: write of {value:#x} to register {offset:#x} ignored");
                self.metrics.block.bad_access.inc();
            }
        }
    }

    /// Serves every request the driver has made available, completes them
    /// on the used ring and raises the interrupt. Called by the worker.
    pub fn process_queue(&mut self) {
        let live = VIRTIO_CONFIG_S_DRIVER_OK;
        if self.status & (live | VIRTIO_CONFIG_S_NEEDS_RESET) != live || !self.queue.ready() {
            return;
        }
        let chains: Vec<_> = match self.queue.iter(&self.mem) {
            Ok(it) => it.collect(),
            Err(e) => {
                self.needs_reset(VirtioMmioError::BadAvailRing(e));
                return;
            }
        };
        let mut completed = 0u32;
        for chain in chains {
            let head = chain.head_index();
            let len = process_chain_with(
                &self.mem,
                chain,
                &self.disk,
                &self.metrics.block,
                self.on_disk.as_deref(),
            );
            match self.queue.add_used(&self.mem, head, len) {
                Ok(()) => completed += 1,
                Err(e) => {
                    self.metrics.block.dropped.inc();
                    log::warn!("virtio-blk: cannot complete chain {head}: {e}");
                }
            }
        }
        if completed > 0 {
            self.interrupt(VIRTIO_MMIO_INT_VRING);
        }
    }
}

impl MmioDevice for VirtioBlock {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            let start = usize::try_from(offset - CONFIG_OFFSET).unwrap_or(usize::MAX);
            for (i, b) in data.iter_mut().enumerate() {
                *b = start
                    .checked_add(i)
                    .and_then(|j| self.config.get(j))
                    .copied()
                    .unwrap_or(0);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.metrics.block.bad_access.inc();
            log::debug!(
                "virtio-blk: {}-byte read at {offset:#x} refused",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            log::debug!("virtio-blk: config space is read-only; write at {offset:#x} ignored");
            return;
        }
        // A notify may be any width when it comes through here.
        if offset == QUEUE_NOTIFY {
            self.write_reg(offset, 0);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.metrics.block.bad_access.inc();
            log::debug!(
                "virtio-blk: {}-byte write at {offset:#x} refused",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            self.metrics.block.bad_access.inc();
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
#[path = "virtio_mmio_tests.rs"]
pub(crate) mod tests;
