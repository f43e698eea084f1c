//! Unit tests of the virtio-mmio transport: the register file, the status
//! state machine with its DEVICE_NEEDS_RESET cases, and requests served
//! through a real split virtqueue built by `virtio_queue::mock`.
//!
//! The helpers are `pub(crate)` so that the worker's test can drive a ready
//! device too; they must never be used outside tests.

use super::*;
use std::path::PathBuf;
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_bindings::bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER,
};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Bytes;

const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
/// Where the mock queue lives, and the request buffers.
pub(crate) const QUEUE: u64 = 0x1000;
pub(crate) const HDR: u64 = 0x1_0000;
pub(crate) const DATA: u64 = 0x2_0000;
pub(crate) const STATUS: u64 = 0x3_0000;

/// An 8-sector image whose byte i is i % 251; removed on drop.
pub(crate) struct Image(pub PathBuf);

impl Drop for Image {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

pub(crate) fn image(name: &str) -> Image {
    let p = std::env::temp_dir().join(format!("vmm-vio-{}-{name}", std::process::id()));
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&p, bytes).unwrap();
    Image(p)
}

pub(crate) fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// A device on `img` with its irq and notify eventfds.
pub(crate) fn device(
    mem: &GuestMemoryMmap,
    img: &Image,
    rw: bool,
) -> (VirtioBlock, EventFd, EventFd) {
    let disk = DiskFile::open(&img.0, rw).unwrap();
    VirtioBlock::new(mem.clone(), disk, Arc::new(Metrics::default())).unwrap()
}

pub(crate) fn w(dev: &mut VirtioBlock, offset: u64, value: u32) {
    dev.write(offset, &value.to_le_bytes());
}

pub(crate) fn r(dev: &mut VirtioBlock, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Negotiates VERSION_1 only.
fn negotiate(dev: &mut VirtioBlock) {
    w(dev, 0x70, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    w(
        dev,
        0x70,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    w(dev, 0x24, 1);
    w(dev, 0x20, 1);
    w(dev, 0x70, 0b1011);
}

/// Programs queue 0 as `vq` (size 16) and makes the device live.
pub(crate) fn make_live(dev: &mut VirtioBlock, vq: &MockSplitQueue<'_, GuestMemoryMmap>) {
    negotiate(dev);
    assert_eq!(r(dev, 0x70), 0b1011);
    w(dev, 0x30, 0);
    w(dev, 0x38, 16);
    for (off, addr) in [
        (0x80, vq.desc_table_addr().0),
        (0x90, vq.avail_addr().0),
        (0xa0, vq.used_addr().0),
    ] {
        w(dev, off, addr as u32);
        w(dev, off + 4, (addr >> 32) as u32);
    }
    w(dev, 0x44, 1);
    w(dev, 0x70, 0b1111);
}

/// Puts a 1024-byte read of sector 2 on `vq`.
pub(crate) fn queue_read(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>) {
    mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
    mem.write_obj(2u64, GuestAddress(HDR + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let n = VRING_DESC_F_NEXT as u16;
    let wr = VRING_DESC_F_WRITE as u16;
    let descs = [
        RawDescriptor::from(Descriptor::new(HDR, 16, n, 1)),
        RawDescriptor::from(Descriptor::new(DATA, 1024, n | wr, 2)),
        RawDescriptor::from(Descriptor::new(STATUS, 1, wr, 0)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
}

#[test]
fn identity_features_and_config_space() {
    let (mem, img) = (mem(), image("id"));
    let (mut dev, _, _) = device(&mem, &img, false);
    assert_eq!(r(&mut dev, 0x00), 0x7472_6976);
    assert_eq!(r(&mut dev, 0x04), 2);
    assert_eq!(r(&mut dev, 0x08), 2);
    assert_eq!(r(&mut dev, 0x34), 256);
    let low = r(&mut dev, 0x10);
    assert_eq!(low, (1 << 9) | (1 << 2) | (1 << 6) | (1 << 5));
    w(&mut dev, 0x14, 1);
    assert_eq!(r(&mut dev, 0x10), 1);
    w(&mut dev, 0x14, 2);
    assert_eq!(r(&mut dev, 0x10), 0);
    // capacity, seg_max, blk_size; any width, past the end reads zero.
    let mut cap = [0u8; 8];
    dev.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    assert_eq!(r(&mut dev, 0x10c), 254);
    assert_eq!(r(&mut dev, 0x114), 4096);
    let mut b = [0xaau8; 2];
    dev.read(0x116, &mut b);
    assert_eq!(b, [0, 0]);
    dev.read(0xfff, &mut b[..1]);
    assert_eq!(b[0], 0);
    // A read-write disk does not offer RO; queue 1 does not exist.
    let (mut rw, _, _) = device(&mem, &img, true);
    assert_eq!(r(&mut rw, 0x10) & (1 << 5), 0);
    w(&mut rw, 0x30, 1);
    assert_eq!(r(&mut rw, 0x34), 0);
}

#[test]
fn status_state_machine_and_reset() {
    let (mem, img) = (mem(), image("status"));
    let (mut dev, _, _) = device(&mem, &img, false);
    // Features we never offered: FEATURES_OK does not stick.
    w(&mut dev, 0x70, 3);
    w(&mut dev, 0x24, 0);
    w(&mut dev, 0x20, 1 << 12);
    w(&mut dev, 0x24, 1);
    w(&mut dev, 0x20, 1);
    w(&mut dev, 0x70, 0b1011);
    assert_eq!(r(&mut dev, 0x70), 3);
    // Without VERSION_1 either.
    w(&mut dev, 0x24, 0);
    w(&mut dev, 0x20, 1 << 9);
    w(&mut dev, 0x24, 1);
    w(&mut dev, 0x20, 0);
    w(&mut dev, 0x70, 0b1011);
    assert_eq!(r(&mut dev, 0x70), 3);
    // DRIVER_OK before FEATURES_OK.
    w(&mut dev, 0x70, 0b0111);
    assert_ne!(r(&mut dev, 0x70) & NEEDS_RESET, 0);
    // Writing 0 resets everything.
    w(&mut dev, 0x70, 0);
    assert_eq!(r(&mut dev, 0x70), 0);
    negotiate(&mut dev);
    assert_eq!(r(&mut dev, 0x70), 0b1011);
    // Clearing a bit is illegal.
    w(&mut dev, 0x70, 0b0011);
    assert_ne!(r(&mut dev, 0x70) & NEEDS_RESET, 0);
    assert_eq!(dev.metrics.block.needs_reset.get(), 2);
    // Bad widths are counted and read as zero.
    let mut b = [0xffu8; 2];
    dev.read(0x00, &mut b);
    assert_eq!(b, [0, 0]);
    dev.write(0x70, &[0]);
    w(&mut dev, 0x72, 0);
    assert_eq!(dev.metrics.block.bad_access.get(), 3);
    assert_ne!(dev.status() & NEEDS_RESET, 0);
}

#[test]
fn illegal_queue_setups_need_reset() {
    let (mem, img) = (mem(), image("queue"));
    let cases: [&dyn Fn(&mut VirtioBlock); 4] = [
        &|d| w(d, 0x38, 12),
        &|d| w(d, 0x38, 512),
        &|d| w(d, 0x44, 1),
        &|d| {
            for off in [0x80, 0x90, 0xa0] {
                w(d, off, 0x00ff_f000);
            }
            w(d, 0x44, 1);
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let (mut dev, _, _) = device(&mem, &img, false);
        negotiate(&mut dev);
        case(&mut dev);
        assert_ne!(r(&mut dev, 0x70) & NEEDS_RESET, 0, "case {i}");
        assert_eq!(r(&mut dev, 0x44), 0, "case {i}");
    }
    // Misaligned descriptor table.
    let (mut dev, _, _) = device(&mem, &img, false);
    negotiate(&mut dev);
    for (off, a) in [(0x80, 0x1008), (0x90, 0x2000), (0xa0, 0x3000)] {
        w(&mut dev, off, a);
    }
    w(&mut dev, 0x44, 1);
    assert_ne!(r(&mut dev, 0x70) & NEEDS_RESET, 0);
}

#[test]
fn a_read_completes_on_the_used_ring_with_an_interrupt() {
    let (mem, img) = (mem(), image("flow"));
    let (mut dev, irq, notify) = device(&mem, &img, false);
    let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE), 16);
    make_live(&mut dev, &vq);
    assert_eq!(r(&mut dev, 0x44), 1);
    // DRIVER_OK kicked the worker's eventfd once.
    assert_eq!(notify.read().unwrap(), 1);
    queue_read(&mem, &vq);
    dev.write(QUEUE_NOTIFY, &[0, 0]);
    assert_eq!(notify.read().unwrap(), 1);
    dev.process_queue();
    let status: u8 = mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
    let mut got = [0u8; 4];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(
        got,
        [1024 % 251, 1025 % 251, 1026 % 251, 1027 % 251].map(|v: u32| v as u8)
    );
    assert_eq!(vq.used().idx().load(), 1);
    let elem = vq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((elem.id(), elem.len()), (0, 1025));
    assert_eq!(r(&mut dev, 0x60), 1);
    assert_eq!(irq.read().unwrap(), 1);
    w(&mut dev, 0x64, 1);
    assert_eq!(r(&mut dev, 0x60), 0);
    // Nothing new: no second interrupt.
    dev.process_queue();
    assert!(irq.read().is_err());
    assert_eq!(dev.metrics.block.interrupts.get(), 1);
    // After a reset the queue is dead until set up again.
    w(&mut dev, 0x70, 0);
    queue_read(&mem, &vq);
    dev.process_queue();
    assert_eq!(vq.used().idx().load(), 1);
}

#[test]
fn a_corrupt_avail_index_needs_reset() {
    let (mem, img) = (mem(), image("avail"));
    let (mut dev, irq, _) = device(&mem, &img, false);
    let vq = MockSplitQueue::create(&mem, GuestAddress(QUEUE), 16);
    make_live(&mut dev, &vq);
    vq.avail().idx().store(100);
    dev.process_queue();
    assert_ne!(r(&mut dev, 0x70) & NEEDS_RESET, 0);
    // The driver is told through a configuration-change interrupt.
    assert_eq!(r(&mut dev, 0x60), 2);
    assert_eq!(irq.read().unwrap(), 1);
}
