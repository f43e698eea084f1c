//! Fuzz target: virtio-blk descriptor chains, `process_chain_with`, fed the
//! way the block device feeds it: a split virtqueue (`virtio_queue::Queue`)
//! whose descriptor table, available ring and buffers the fuzzer wrote into
//! guest memory, walked with `Queue::iter` and completed with `add_used`.
//!
//! Asserts: no request writes guest memory outside its own device-writable
//! buffers; the used length never exceeds `MAX_DATA` plus the status byte
//! nor the writable bytes of the chain; the disk image changes only on a
//! writable disk and only through a counted write; every buffer reported to
//! `PagesOnDisk` lies in guest RAM. It must never share a disk image between
//! processes (each has its own scratch file).

#![no_main]

use std::sync::Mutex;

use hypervisor::devices::disk::DiskFile;
use hypervisor::devices::virtio_blk::{process_chain_with, PagesOnDisk, MAX_DATA};
use hypervisor::metrics::BlockMetrics;
use libfuzzer_sys::fuzz_target;
use pagehint_fuzz::{plain_memory, scratch_path, Input};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest memory of this target: small, so that a snapshot is cheap.
const MEM: u64 = 0x4_0000;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// The disk: 16 sectors.
const DISK: usize = 16 * 512;
const F_WRITE: u16 = 2;

/// Records the buffers the device says equal the disk.
#[derive(Default)]
struct Recorder(Mutex<Vec<(u64, u64)>>);

impl PagesOnDisk for Recorder {
    fn on_disk(&self, buffers: &[(u64, u64)]) {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buffers);
        }
    }
}

fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut v = vec![0u8; MEM as usize];
    if mem.read_slice(&mut v, GuestAddress(0)).is_err() {
        panic!("fuzz harness: cannot read guest memory");
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = plain_memory(MEM);
    // The disk: a known pattern, read-only or not.
    let path = scratch_path("virtio-chain.img");
    let pattern: Vec<u8> = (0..DISK).map(|i| (i % 251) as u8).collect();
    if std::fs::write(&path, &pattern).is_err() {
        panic!("fuzz harness: cannot write {}", path.display());
    }
    let writable = input.bool();
    let disk = match DiskFile::open(&path, writable) {
        Ok(d) => d,
        Err(e) => panic!("fuzz harness: {e}"),
    };
    let metrics = BlockMetrics::default();
    let recorder = Recorder::default();

    // The queue.
    let size = 1u16 << input.below(5);
    let mut q = match Queue::new(16) {
        Ok(q) => q,
        Err(e) => panic!("fuzz harness: queue: {e:?}"),
    };
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    let mut heads = Vec::new();
    for i in 0..u64::from(size) {
        let addr = match input.u8() % 8 {
            0 => input.u64(),
            1 => MEM - input.below(0x100),
            _ => 0x3000 + input.below(MEM - 0x3000),
        };
        let len = match input.u8() % 8 {
            0 => input.u32(),
            1 => 16,
            2 => 1,
            _ => input.below(0x1400) as u32,
        };
        let flags = u16::from(input.u8() & 7);
        let next = input.below(u64::from(size) + 1) as u16;
        let at = GuestAddress(DESC + i * 16);
        let _ = mem.write_obj(addr, at);
        let _ = mem.write_obj(len, GuestAddress(at.0 + 8));
        let _ = mem.write_obj(flags, GuestAddress(at.0 + 12));
        let _ = mem.write_obj(next, GuestAddress(at.0 + 14));
        // A request header where a head would point, mostly a known type.
        if input.bool() {
            let kind: u32 = [0, 1, 4, 8, input.u32()][input.below(5) as usize];
            let sector = input.below(20);
            let _ = mem.write_obj(kind, GuestAddress(addr));
            let _ = mem.write_obj(sector, GuestAddress(addr.wrapping_add(8)));
        }
        heads.push(input.below(u64::from(size) + 1) as u16);
    }
    let avail_idx = match input.u8() % 8 {
        0 => input.u16(),
        _ => input.below(u64::from(size) + 1) as u16,
    };
    let _ = mem.write_obj(0u16, GuestAddress(AVAIL));
    let _ = mem.write_obj(avail_idx, GuestAddress(AVAIL + 2));
    for (i, h) in heads.iter().enumerate() {
        let _ = mem.write_obj(*h, GuestAddress(AVAIL + 4 + 2 * i as u64));
    }
    // Whatever is left fills the buffer area.
    let rest = input.rest();
    let _ = mem.write_slice(
        &rest[..rest.len().min((MEM - 0x3000) as usize)],
        GuestAddress(0x3000),
    );

    let chains: Vec<_> = match q.iter(&mem) {
        Ok(it) => it.collect(),
        Err(_) => return,
    };
    for chain in chains {
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.clone().collect();
        let before = snapshot(&mem);
        let writes_before = metrics.writes.get();
        let written_before = metrics.bytes_written.get();
        let len = process_chain_with(&mem, chain, &disk, &metrics, Some(&recorder));
        let after = snapshot(&mem);

        // Only the chain's writable buffers may have changed.
        let out_bufs: Vec<(u64, u64)> = descs
            .iter()
            .filter(|d| d.flags() & F_WRITE != 0)
            .map(|d| (d.addr().0, u64::from(d.len())))
            .collect();
        // (A slice comparison first: one memcmp, not a traced comparison
        // per byte; the byte walk only when something changed.)
        let changed = after != before;
        for (i, (a, b)) in after.iter().zip(&before).enumerate().filter(|_| changed) {
            if a != b {
                let i = i as u64;
                assert!(
                    out_bufs.iter().any(|&(addr, l)| i >= addr && i - addr < l),
                    "guest byte {i:#x} outside the writable buffers changed"
                );
            }
        }
        let w_total: u64 = out_bufs.iter().map(|&(_, l)| l).sum();
        assert!(u64::from(len) <= MAX_DATA + 1, "used length {len}");
        assert!(
            u64::from(len) <= w_total,
            "used length {len} > writable {w_total}"
        );

        // The disk changes only through a counted write on a writable disk.
        let now = std::fs::read(&path).unwrap_or_default();
        let written = metrics.bytes_written.get() - written_before;
        if now != pattern {
            assert!(writable, "a read-only disk changed");
            assert!(metrics.writes.get() > writes_before && written > 0);
            if std::fs::write(&path, &pattern).is_err() {
                panic!("fuzz harness: cannot restore the disk");
            }
        }
        if let Ok(mut bufs) = recorder.0.lock() {
            for (addr, l) in bufs.drain(..) {
                let size = usize::try_from(l).unwrap_or(usize::MAX);
                assert!(
                    l == 0 || mem.check_range(GuestAddress(addr), size),
                    "buffer {addr:#x}+{l:#x} reported on disk is outside RAM"
                );
            }
        }
        let _ = q.add_used(&mem, head, len);
    }
});
