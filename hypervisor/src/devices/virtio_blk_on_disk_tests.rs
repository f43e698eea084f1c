//! Tests that a read or write request tells its `PagesOnDisk` of exactly
//! its data buffers (header and status byte left out), once it succeeded
//! and before it completes, and that nothing else does.

use super::*;
use std::sync::Mutex;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;

const W: u16 = VRING_DESC_F_WRITE as u16;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;

/// One call: the buffers, and the status byte (or used index) then.
type Call<T = u8> = (Vec<(u64, u64)>, T);

/// Records each call, with the status byte as it was then (0xff: the
/// request had not completed).
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    mem: Option<GuestMemoryMmap>,
}

impl PagesOnDisk for Recorder {
    fn on_disk(&self, buffers: &[(u64, u64)]) {
        let status = self
            .mem
            .as_ref()
            .map_or(0, |m| m.read_obj::<u8>(GuestAddress(STATUS)).unwrap());
        self.calls.lock().unwrap().push((buffers.to_vec(), status));
    }
}

fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

fn request(
    mem: &GuestMemoryMmap,
    disk: &DiskFile,
    kind: u32,
    descs: &[RawDescriptor],
    rec: &Recorder,
) -> u8 {
    mem.write_obj(kind, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(0u64, GuestAddress(HDR + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let vq = MockSplitQueue::new(mem, 16);
    let chain = vq.build_desc_chain(descs).unwrap();
    process_chain_with(mem, chain, disk, &BlockMetrics::default(), Some(rec));
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

#[test]
fn reads_and_writes_report_their_data_buffers_before_completing() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let path = std::env::temp_dir().join(format!("vmm-blk-{}-on-disk", std::process::id()));
    std::fs::write(&path, vec![7u8; 16 * 4096]).unwrap();
    let disk = DiskFile::open(&path, true).unwrap();
    let rec = Recorder {
        mem: Some(mem.clone()),
        ..Recorder::default()
    };
    let ok = VIRTIO_BLK_S_OK as u8;
    // A read into two buffers: both, whole, the status not yet written.
    let descs = [
        d(HDR, 16, 0),
        d(DATA, 4096, W),
        d(DATA + 0x2000, 4096, W),
        d(STATUS, 1, W),
    ];
    assert_eq!(request(&mem, &disk, VIRTIO_BLK_T_IN, &descs, &rec), ok);
    // A read whose data and status share the last descriptor.
    let descs = [d(HDR, 16, 0), d(DATA, 4097, W)];
    mem.write_obj(0xffu8, GuestAddress(DATA + 4096)).unwrap();
    request(&mem, &disk, VIRTIO_BLK_T_IN, &descs, &rec);
    // A write with the header and data in one buffer, then in two.
    mem.write_obj(0u64, GuestAddress(HDR + 16)).unwrap();
    let descs = [d(HDR, 16 + 4096, 0), d(STATUS, 1, W)];
    assert_eq!(request(&mem, &disk, VIRTIO_BLK_T_OUT, &descs, &rec), ok);
    let descs = [d(HDR, 16, 0), d(DATA, 8192, 0), d(STATUS, 1, W)];
    assert_eq!(request(&mem, &disk, VIRTIO_BLK_T_OUT, &descs, &rec), ok);
    // A flush and a failed read (past the end) report nothing.
    request(
        &mem,
        &disk,
        VIRTIO_BLK_T_FLUSH,
        &[d(HDR, 16, 0), d(STATUS, 1, W)],
        &rec,
    );
    mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(HDR)).unwrap();
    mem.write_obj(1u64 << 40, GuestAddress(HDR + 8)).unwrap();
    let calls = rec.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            (vec![(DATA, 4096), (DATA + 0x2000, 4096)], 0xff),
            (vec![(DATA, 4096)], 0xff),
            (vec![(HDR + 16, 4096)], 0xff),
            (vec![(DATA, 8192)], 0xff),
        ]
    );
    let descs = [d(HDR, 16, 0), d(DATA, 4096, W), d(STATUS, 1, W)];
    let vq = MockSplitQueue::new(&mem, 16);
    let chain = vq.build_desc_chain(&descs).unwrap();
    process_chain_with(&mem, chain, &disk, &BlockMetrics::default(), Some(&rec));
    assert_eq!(
        rec.calls.lock().unwrap().len(),
        4,
        "a failed request moved nothing"
    );
    std::fs::remove_file(&path).ok();
}

/// Records the used ring's index each time it is told of buffers.
struct UsedAtCall {
    mem: GuestMemoryMmap,
    used_idx: GuestAddress,
    seen: Mutex<Vec<Call<u16>>>,
}

impl PagesOnDisk for UsedAtCall {
    fn on_disk(&self, buffers: &[(u64, u64)]) {
        let idx = self.mem.read_obj::<u16>(self.used_idx).unwrap();
        self.seen.lock().unwrap().push((buffers.to_vec(), idx));
    }
}

#[test]
fn the_device_tells_before_the_used_ring_completes_the_request() {
    use crate::devices::virtio_mmio::tests as t;
    use std::sync::Arc;
    let (mem, img) = (t::mem(), t::image("on-disk-order"));
    let (dev, _irq, _notify) = t::device(&mem, &img, false);
    let vq = MockSplitQueue::new(&mem, 16);
    let used_idx = GuestAddress(vq.used_addr().0 + 2);
    let seen = Arc::new(UsedAtCall {
        mem: mem.clone(),
        used_idx,
        seen: Mutex::new(Vec::new()),
    });
    let mut dev = dev.with_pages_on_disk(seen.clone());
    t::make_live(&mut dev, &vq);
    t::queue_read(&mem, &vq);
    dev.process_queue();
    assert_eq!(mem.read_obj::<u16>(used_idx).unwrap(), 1, "completed");
    assert_eq!(
        *seen.seen.lock().unwrap(),
        [(vec![(t::DATA, 1024)], 0)],
        "told once, before the used ring moved"
    );
}
