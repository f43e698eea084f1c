//! virtio-mmio (version 2) transport and block driver: one split queue, one
//! request in flight, reads into and writes from page frames directly,
//! and flushes.
//!
//! The device is found through the command line (`virtio_mmio.device=`).
//! Requests are serialised by the driver lock; completion is signalled by
//! the device's interrupt (routed by the I/O APIC to the waiting CPU),
//! with the timer tick as a fallback wake-up. Never panics on what the
//! device reports: a bad status is an I/O error for the caller.
//!
//! Driving the device through memory is its job, so it holds unsafe code
//! (each block saying why): the device's register window (`rd`/`wr`,
//! only ever at the base `init` checked lies in the MMIO hole) and the
//! one queue page it allocates in `init` and keeps for good (descriptors,
//! rings, request header and status byte). The data frames of a request
//! are the caller's; the driver only passes their addresses on, which is
//! why [`read_pages`], whose frames the device writes, is an `unsafe fn`.

use core::sync::atomic::{fence, AtomicU64, Ordering};

use crate::arch::{apic, cpu, direct_map, ioapic};
use crate::phys;
use crate::sync::SpinLock;

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;
const CONFIG: u64 = 0x100;

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_FAILED: u32 = 128;

const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const F_VERSION_1: u64 = 1 << 32;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;

/// Descriptors in the queue.
const QSIZE: u16 = 64;
/// Most data pages in one request.
pub const MAX_PAGES: usize = 32;

/// Layout of the one queue page.
const DESC_OFF: u64 = 0;
const AVAIL_OFF: u64 = 1024;
const USED_OFF: u64 = 2048;
const HEADER_OFF: u64 = 3072;
const STATUS_OFF: u64 = 3088;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    NoDevice,
    BadDevice,
    TooLarge,
    /// The device completed the request with this status.
    Device(u8),
}

struct Device {
    base: u64,
    irq: u32,
    vector: u8,
    queue: u64,
    capacity: u64,
    read_only: bool,
    flush: bool,
    avail_idx: u16,
    used_seen: u16,
}

static DEV: SpinLock<Option<Device>> = SpinLock::new(None);
/// The device window, for the interrupt handler, which must not take the
/// lock: the waiter holds it while it sleeps.
static BASE: AtomicU64 = AtomicU64::new(0);

/// A device register: `base` is the device window from the command line,
/// inside the uncached MMIO hole of the direct map.
fn rd(base: u64, off: u64) -> u32 {
    // SAFETY: every `base` in this module is the one `init` checked lies
    // in the MMIO hole (device windows, never RAM, so no Rust reference
    // points there), or `Device::base`/`BASE`, stored from it only after
    // that check; `off` is one of the register constants above, aligned.
    // Trusted, not checked: that the window does not start in the last
    // 0x108 bytes below 4 GiB, where `off` would reach past the hole (the
    // command line is the VMM's, which names VIRTIO_BLK_MMIO_BASE).
    unsafe { direct_map::read::<u32>(base + off) }
}

fn wr(base: u64, off: u64, v: u32) {
    // SAFETY: as for `rd`: an aligned register of the checked window.
    unsafe { direct_map::write::<u32>(base + off, v) }
}

/// Initialises the device at `base` with interrupt line `irq`, delivered on
/// `vector`. Returns its capacity in 512-byte sectors.
pub fn init(base: u64, irq: u32, vector: u8) -> Result<u64, BlkError> {
    if !(pagehint_abi::boot::MMIO_HOLE_START..0x1_0000_0000).contains(&base) {
        return Err(BlkError::BadDevice);
    }
    if rd(base, MAGIC) != 0x7472_6976 || rd(base, VERSION) != 2 || rd(base, DEVICE_ID) != 2 {
        return Err(BlkError::BadDevice);
    }
    wr(base, STATUS, 0);
    wr(base, STATUS, S_ACKNOWLEDGE);
    wr(base, STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(base, DEVICE_FEATURES_SEL, 0);
    let lo = rd(base, DEVICE_FEATURES) as u64;
    wr(base, DEVICE_FEATURES_SEL, 1);
    let features = lo | (rd(base, DEVICE_FEATURES) as u64) << 32;
    if features & F_VERSION_1 == 0 {
        wr(base, STATUS, S_FAILED);
        return Err(BlkError::BadDevice);
    }
    let accept = features & (F_VERSION_1 | F_RO | F_FLUSH);
    wr(base, DRIVER_FEATURES_SEL, 0);
    wr(base, DRIVER_FEATURES, accept as u32);
    wr(base, DRIVER_FEATURES_SEL, 1);
    wr(base, DRIVER_FEATURES, (accept >> 32) as u32);
    wr(base, STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if rd(base, STATUS) & S_FEATURES_OK == 0 {
        wr(base, STATUS, S_FAILED);
        return Err(BlkError::BadDevice);
    }
    wr(base, QUEUE_SEL, 0);
    if (rd(base, QUEUE_NUM_MAX) as u16) < QSIZE {
        wr(base, STATUS, S_FAILED);
        return Err(BlkError::BadDevice);
    }
    let queue = phys::pages::alloc_zeroed_frame().ok_or(BlkError::BadDevice)?;
    wr(base, QUEUE_NUM, QSIZE as u32);
    for (off, addr) in [
        (QUEUE_DESC, DESC_OFF),
        (QUEUE_DRIVER, AVAIL_OFF),
        (QUEUE_DEVICE, USED_OFF),
    ] {
        let pa = queue + addr;
        wr(base, off, pa as u32);
        wr(base, off + 4, (pa >> 32) as u32);
    }
    wr(base, QUEUE_READY, 1);
    wr(
        base,
        STATUS,
        S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
    );
    let capacity = rd(base, CONFIG) as u64 | (rd(base, CONFIG + 4) as u64) << 32;
    BASE.store(base, Ordering::Release);
    *DEV.lock() = Some(Device {
        base,
        irq,
        vector,
        queue,
        capacity,
        read_only: features & F_RO != 0,
        flush: features & F_FLUSH != 0,
        avail_idx: 0,
        used_seen: 0,
    });
    Ok(capacity)
}

/// Capacity in 512-byte sectors and whether the disk is read-only.
pub fn info() -> Option<(u64, bool)> {
    DEV.lock().as_ref().map(|d| (d.capacity, d.read_only))
}

/// Writes descriptor `i` of the queue page at `queue`.
///
/// # Safety
///
/// `queue` is the driver's queue page (`Device::queue`), written by
/// the caller alone (it holds the driver lock), and `i < QSIZE`, so the
/// descriptor lies in the page's descriptor table.
unsafe fn write_desc(queue: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let p = queue + DESC_OFF + 16 * i as u64;
    // SAFETY: the caller's contract, see # Safety: four aligned fields of
    // one 16-byte descriptor inside our queue page.
    unsafe {
        direct_map::write::<u64>(p, addr);
        direct_map::write::<u32>(p + 8, len);
        direct_map::write::<u16>(p + 12, flags);
        direct_map::write::<u16>(p + 14, next);
    }
}

/// Reads 4 KiB blocks starting at `block` into the frames `pages` (physical
/// addresses), in one request.
///
/// # Safety
///
/// The device writes each of `pages` by DMA: each is a page-aligned frame
/// of RAM the caller owns until this returns, that no Rust reference
/// points into and nothing else reads or writes meanwhile.
pub unsafe fn read_pages(block: u64, pages: &[u64]) -> Result<(), BlkError> {
    request(T_IN, block, pages)
}

/// Writes the frames `pages` to 4 KiB blocks starting at `block`, in one
/// request (`BlkError::Device(1)`, as the device would answer, on a
/// read-only disk: nothing is sent). Safe: the device only reads them.
pub fn write_pages(block: u64, pages: &[u64]) -> Result<(), BlkError> {
    request(T_OUT, block, pages)
}

/// Asks the device to make every completed write durable (a no-op for a
/// device that does not offer `VIRTIO_BLK_F_FLUSH`: it has no cache).
pub fn flush() -> Result<(), BlkError> {
    if !DEV.lock().as_ref().is_some_and(|d| d.flush) {
        return Ok(());
    }
    request(T_FLUSH, 0, &[])
}

/// One request of `kind` for `pages` at `block`, waited for. For `T_IN`
/// the device writes `pages`: its only caller with `T_IN` is
/// [`read_pages`], whose # Safety the frames meet.
fn request(kind: u32, block: u64, pages: &[u64]) -> Result<(), BlkError> {
    if pages.len() > MAX_PAGES || (pages.is_empty() && kind != T_FLUSH) {
        return Err(BlkError::TooLarge);
    }
    let mut guard = DEV.lock();
    let d = guard.as_mut().ok_or(BlkError::NoDevice)?;
    if kind == T_OUT && d.read_only {
        return Err(BlkError::Device(1));
    }
    let sector = if kind == T_FLUSH { 0 } else { block * 8 };
    if sector + 8 * pages.len() as u64 > d.capacity {
        return Err(BlkError::TooLarge);
    }
    // The device writes into the data buffers of a read only.
    let data_flags = if kind == T_IN { DESC_WRITE } else { 0 };
    let q = d.queue;
    let header = q + HEADER_OFF;
    // SAFETY: `q` is the queue page `init` allocated and keeps for good;
    // we hold the driver lock and no request is in flight (the last one
    // was waited for), so the device does not read it now. The header and
    // status byte lie in it, aligned; descriptor indices run up to
    // `pages.len() + 1` <= MAX_PAGES + 1 < QSIZE (checked at the top).
    unsafe {
        direct_map::write::<u32>(header, kind);
        direct_map::write::<u32>(header + 4, 0);
        direct_map::write::<u64>(header + 8, sector);
        direct_map::write::<u8>(q + STATUS_OFF, 0xff);
        write_desc(q, 0, q + HEADER_OFF, 16, DESC_NEXT, 1);
        for (i, &pa) in pages.iter().enumerate() {
            let i = i as u16 + 1;
            write_desc(q, i, pa, 4096, data_flags | DESC_NEXT, i + 1);
        }
        let last = pages.len() as u16 + 1;
        write_desc(q, last, q + STATUS_OFF, 1, DESC_WRITE, 0);
    }
    // Route the completion interrupt to this CPU before kicking the device.
    ioapic::route(d.irq, d.vector, apic::id());
    // SAFETY: the avail ring of our queue page, as above (slot
    // `avail_idx % QSIZE` lies in it); the device reads it only after the
    // notify below.
    unsafe { direct_map::write::<u16>(q + AVAIL_OFF + 4 + 2 * (d.avail_idx % QSIZE) as u64, 0) };
    fence(Ordering::SeqCst);
    d.avail_idx = d.avail_idx.wrapping_add(1);
    // SAFETY: the avail ring's index, in our queue page, as above.
    unsafe { direct_map::write::<u16>(q + AVAIL_OFF + 2, d.avail_idx) };
    fence(Ordering::SeqCst);
    wr(d.base, QUEUE_NOTIFY, 0);
    loop {
        // SAFETY: the used ring's index, in our queue page; the device
        // writes it, so it is read volatile, as a plain integer.
        let used = unsafe { direct_map::read::<u16>(q + USED_OFF + 2) };
        if used != d.used_seen {
            d.used_seen = used;
            break;
        }
        // The device interrupt (or the next tick) ends the wait.
        cpu::wait_for_interrupt();
    }
    fence(Ordering::SeqCst);
    // SAFETY: the status byte in our queue page, written by the device
    // before it advanced the used index seen above.
    let status = unsafe { direct_map::read::<u8>(q + STATUS_OFF) };
    if status != 0 {
        return Err(BlkError::Device(status));
    }
    Ok(())
}

/// The device interrupt: acknowledge it. The waiter polls the used ring.
pub fn interrupt() {
    let base = BASE.load(Ordering::Acquire);
    if base != 0 {
        let s = rd(base, INTERRUPT_STATUS);
        wr(base, INTERRUPT_ACK, s);
    }
}
