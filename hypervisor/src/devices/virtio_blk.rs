//! virtio-blk requests: turn one descriptor chain into a read, write, flush
//! or get-id on the disk image, and complete it with a status byte.
//!
//! A chain is treated as a byte stream: the device-readable descriptors
//! (the 16-byte header, then any data to write) come first, the
//! device-writable ones (data to read into, then the status byte) last. The
//! whole chain is checked before anything moves: every descriptor inside
//! guest RAM, readable before writable, at most [`MAX_CHAIN`] descriptors and
//! [`MAX_DATA`] bytes, a data length that is a whole number of sectors, and a
//! range inside the image. A request that fails a check completes with
//! `VIRTIO_BLK_S_IOERR`, a counter and a log line; one with no writable
//! status byte is completed with nothing written. A checked write names
//! its data buffers to a [`PagesOnDisk`], if any, before it reads them, a
//! read after it filled them; both before the status is written. This
//! module must never
//! panic on a chain the guest built, never write the image before the whole
//! request is validated, and never touch guest memory outside the chain's
//! own buffers.

use pagehint_abi::{GuestPhys, PAGE_SIZE};
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::devices::disk::{DiskError, DiskFile, SECTOR_SIZE};
use crate::metrics::BlockMetrics;

/// Most descriptors in one chain (= the largest queue).
pub const MAX_CHAIN: usize = 256;
/// Most data bytes one request may move.
pub const MAX_DATA: u64 = 1 << 20;
/// What `VIRTIO_BLK_T_GET_ID` answers (NUL-padded to 20 bytes).
pub const DISK_ID: &[u8] = b"pagehint-vmm-disk";
/// The block size the device advertises (`VIRTIO_BLK_F_BLK_SIZE`): the
/// guest page size.
pub const BLOCK_SIZE: u32 = PAGE_SIZE as u32;
/// Size of `struct virtio_blk_outhdr`.
const HEADER_LEN: u64 = 16;

/// Why a request failed (it then completes with `VIRTIO_BLK_S_IOERR`).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("descriptor {addr:#x}+{len:#x} lies outside guest RAM")]
    OutsideRam { addr: u64, len: u32 },
    #[error(
        "chain is longer than {MAX_CHAIN} descriptors, loops, or ends at a descriptor with NEXT"
    )]
    ChainTooLong,
    #[error("request moves {0} bytes, more than {MAX_DATA}")]
    TooMuchData(u64),
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    BadLength(u64),
    #[error("sector {sector} + {len} bytes is past the end of the {sectors}-sector disk")]
    PastEnd { sector: u64, len: u64, sectors: u64 },
    #[error("bad descriptor layout: {0}")]
    Layout(&'static str),
    #[error("request header is {0} bytes, need {HEADER_LEN}")]
    HeaderTooShort(u64),
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error(transparent)]
    Disk(#[from] DiskError),
}

impl RequestError {
    /// Counts this error in `m`.
    fn count(&self, m: &BlockMetrics) {
        match self {
            RequestError::OutsideRam { .. } => m.err_outside_ram.inc(),
            RequestError::ChainTooLong | RequestError::TooMuchData(_) => m.err_too_long.inc(),
            RequestError::BadLength(_) => m.err_bad_length.inc(),
            RequestError::PastEnd { .. } => m.err_past_end.inc(),
            RequestError::Layout(_) => m.err_layout.inc(),
            RequestError::HeaderTooShort(_) => m.err_header.inc(),
            RequestError::ReadOnly => m.err_read_only.inc(),
            RequestError::Disk(_) => m.err_io.inc(),
        }
    }
}

/// Told of the guest buffers that equal the disk once the request completes
/// (`--potentially-volatile`: their pages leave KVM's dirty log): a write's
/// before it reads them (a later guest write is logged again), a read's
/// after it filled them; always before the request completes.
pub trait PagesOnDisk: Send + Sync {
    /// `(guest address, length)` of each data buffer.
    fn on_disk(&self, buffers: &[(u64, u64)]);
}

/// The data buffers of a stream over `segs` from byte `skip` on.
fn data_buffers(segs: &[Segment], mut skip: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        out.push((s.addr.as_u64().saturating_add(skip), s.len - skip));
        skip = 0;
    }
    out
}

/// One guest buffer of a chain.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: GuestPhys,
    len: u64,
}

/// Copies bytes between a byte stream spread over `segs` and a host buffer.
/// `offset` is the position in the stream; the caller has checked that
/// every segment is inside RAM.
fn copy_stream(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    mut offset: u64,
    buf: &mut [u8],
    to_guest: bool,
) -> Result<(), RequestError> {
    let mut done = 0usize;
    for s in segs {
        if done == buf.len() {
            break;
        }
        if offset >= s.len {
            offset -= s.len;
            continue;
        }
        let n = usize::try_from(s.len - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len() - done);
        let addr = GuestAddress(s.addr.as_u64() + offset);
        let part = &mut buf[done..done + n];
        let r = if to_guest {
            mem.write_slice(part, addr)
        } else {
            mem.read_slice(part, addr)
        };
        r.map_err(|_| RequestError::OutsideRam {
            addr: addr.0,
            len: u32::try_from(n).unwrap_or(u32::MAX),
        })?;
        done += n;
        offset = 0;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(RequestError::Layout("buffers shorter than the request"))
    }
}

/// The readable and writable parts of a chain, status byte excluded.
struct Layout {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    r_len: u64,
    w_len: u64,
}

fn split(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Result<Layout, RequestError> {
    let mut l = Layout {
        readable: Vec::new(),
        writable: Vec::new(),
        r_len: 0,
        w_len: 0,
    };
    for d in descs {
        let (addr, len) = (d.addr().0, d.len());
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        if len > 0 && !GuestMemoryBackend::check_range(mem, d.addr(), size) {
            return Err(RequestError::OutsideRam { addr, len });
        }
        let seg = Segment {
            addr: GuestPhys(addr),
            len: u64::from(len),
        };
        if d.is_write_only() {
            l.writable.push(seg);
            l.w_len += seg.len;
        } else if l.writable.is_empty() {
            l.readable.push(seg);
            l.r_len += seg.len;
        } else {
            return Err(RequestError::Layout(
                "device-readable descriptor after a writable one",
            ));
        }
    }
    // The status byte is the stream's last byte; it is not data.
    l.w_len = l.w_len.saturating_sub(1);
    if let Some(last) = l.writable.last_mut() {
        last.len = last.len.saturating_sub(1);
    }
    Ok(l)
}

/// Checks a data transfer's length and range; returns its byte offset.
fn check_transfer(disk: &DiskFile, sector: u64, len: u64) -> Result<u64, RequestError> {
    if len > MAX_DATA {
        return Err(RequestError::TooMuchData(len));
    }
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::BadLength(len));
    }
    match sector.checked_mul(SECTOR_SIZE) {
        Some(offset) if disk.check_range(offset, len).is_ok() => Ok(offset),
        _ => Err(RequestError::PastEnd {
            sector,
            len,
            sectors: disk.sectors(),
        }),
    }
}

/// Runs a checked request; returns its status and the data bytes it wrote
/// into guest memory.
fn execute(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    disk: &DiskFile,
    m: &BlockMetrics,
    on_disk: Option<&dyn PagesOnDisk>,
) -> Result<(u32, u64), RequestError> {
    let l = split(mem, descs)?;
    if l.r_len < HEADER_LEN {
        return Err(RequestError::HeaderTooShort(l.r_len));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    copy_stream(mem, &l.readable, 0, &mut header, false)?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(s);
    match kind {
        VIRTIO_BLK_T_IN => {
            m.reads.inc();
            if l.r_len != HEADER_LEN {
                return Err(RequestError::Layout(
                    "read request carries device-readable data",
                ));
            }
            let offset = check_transfer(disk, sector, l.w_len)?;
            let mut buf = vec![0u8; l.w_len as usize];
            disk.read_at(offset, &mut buf)?;
            copy_stream(mem, &l.writable, 0, &mut buf, true)?;
            if let Some(o) = on_disk {
                o.on_disk(&data_buffers(&l.writable, 0));
            }
            m.bytes_read.add(l.w_len);
            Ok((VIRTIO_BLK_S_OK, l.w_len))
        }
        VIRTIO_BLK_T_OUT => {
            m.writes.inc();
            if disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
            if l.w_len != 0 {
                return Err(RequestError::Layout(
                    "write request has writable data buffers",
                ));
            }
            let len = l.r_len - HEADER_LEN;
            let offset = check_transfer(disk, sector, len)?;
            // Before the read: a clear after it could erase the bit of a
            // guest write that landed in between (`docs/reclaim.md`).
            if let Some(o) = on_disk {
                o.on_disk(&data_buffers(&l.readable, HEADER_LEN));
            }
            let mut buf = vec![0u8; len as usize];
            copy_stream(mem, &l.readable, HEADER_LEN, &mut buf, false)?;
            disk.write_at(offset, &buf)?;
            m.bytes_written.add(len);
            Ok((VIRTIO_BLK_S_OK, 0))
        }
        VIRTIO_BLK_T_FLUSH => {
            m.flushes.inc();
            disk.flush()?;
            Ok((VIRTIO_BLK_S_OK, 0))
        }
        VIRTIO_BLK_T_GET_ID => {
            m.get_id.inc();
            let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
            id[..DISK_ID.len()].copy_from_slice(DISK_ID);
            let n = l.w_len.min(id.len() as u64) as usize;
            copy_stream(mem, &l.writable, 0, &mut id[..n], true)?;
            Ok((VIRTIO_BLK_S_OK, n as u64))
        }
        other => {
            m.unsupported.inc();
            log::debug!("virtio-blk: unsupported request type {other}");
            Ok((VIRTIO_BLK_S_UNSUPP, 0))
        }
    }
}

/// Serves one descriptor chain and returns the number of bytes written
/// into its writable buffers (the used-ring length).
pub fn process_chain<I>(mem: &GuestMemoryMmap, chain: I, disk: &DiskFile, m: &BlockMetrics) -> u32
where
    I: IntoIterator<Item = Descriptor>,
{
    process_chain_with(mem, chain, disk, m, None)
}

/// [`process_chain`], telling `on_disk` of the data buffers of every read
/// or write that succeeded, before the status byte is written.
pub fn process_chain_with<I>(
    mem: &GuestMemoryMmap,
    chain: I,
    disk: &DiskFile,
    m: &BlockMetrics,
    on_disk: Option<&dyn PagesOnDisk>,
) -> u32
where
    I: IntoIterator<Item = Descriptor>,
{
    let mut descs = Vec::new();
    let mut too_long = false;
    for d in chain {
        if descs.len() == MAX_CHAIN {
            too_long = true;
            break;
        }
        descs.push(d);
    }
    // A chain that ends on a NEXT flag was cut short by the queue (a loop,
    // an index past the table, or a descriptor we could not read).
    too_long |= descs.last().is_some_and(|d| d.has_next());

    // The status byte: the last byte of the last descriptor, which must be
    // device-writable and inside RAM.
    let status_addr = descs
        .last()
        .filter(|d| d.is_write_only() && d.len() > 0)
        .and_then(|d| d.addr().0.checked_add(u64::from(d.len()) - 1))
        .filter(|&a| GuestMemoryBackend::address_in_range(mem, GuestAddress(a)));
    let Some(status_addr) = status_addr else {
        m.dropped.inc();
        log::warn!(
            "virtio-blk: chain of {} descriptors has no writable status byte; completed without status",
            descs.len()
        );
        return 0;
    };

    let result = if too_long {
        Err(RequestError::ChainTooLong)
    } else {
        execute(mem, &descs, disk, m, on_disk)
    };
    let (status, written) = match result {
        Ok(r) => r,
        Err(e) => {
            e.count(m);
            log::warn!("virtio-blk: request failed: {e}");
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    if mem
        .write_obj(status as u8, GuestAddress(status_addr))
        .is_err()
    {
        m.dropped.inc();
        return 0;
    }
    // written <= MAX_DATA, so this fits.
    u32::try_from(written + 1).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[path = "virtio_blk_on_disk_tests.rs"]
mod on_disk_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// An 8-sector image whose byte i is i % 251; removed on drop.
    struct Image(PathBuf);
    impl Drop for Image {
        fn drop(&mut self) {
            std::fs::remove_file(&self.0).ok();
        }
    }
    fn image(name: &str) -> Image {
        let p = std::env::temp_dir().join(format!("vmm-blk-{}-{name}", std::process::id()));
        let bytes: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, bytes).unwrap();
        Image(p)
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    /// Runs a request made of `descs` and returns (used length, status).
    fn run(
        mem: &GuestMemoryMmap,
        disk: &DiskFile,
        m: &BlockMetrics,
        descs: &[RawDescriptor],
    ) -> (u32, u8) {
        let vq = MockSplitQueue::new(mem, 16);
        let chain = vq.build_desc_chain(descs).unwrap();
        let used = process_chain(mem, chain, disk, m);
        (used, mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    #[test]
    fn reads_sectors_into_guest_memory() {
        let (mem, img, m) = (mem(), image("read"), BlockMetrics::default());
        let disk = DiskFile::open(&img.0, false).unwrap();
        header(&mem, VIRTIO_BLK_T_IN, 2);
        let descs = [
            d(HDR, 16, 0),
            d(DATA, 512, W),
            d(DATA + 512, 512, W),
            d(STATUS, 1, W),
        ];
        assert_eq!(run(&mem, &disk, &m, &descs), (1025, VIRTIO_BLK_S_OK as u8));
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        let want: Vec<u8> = (1024..2048u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, want);
        assert_eq!((m.reads.get(), m.bytes_read.get()), (1, 1024));
    }

    #[test]
    fn writes_only_when_read_write() {
        let (mem, img, m) = (mem(), image("write"), BlockMetrics::default());
        mem.write_slice(&[0xabu8; 512], GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 7);
        let descs = [d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)];
        let ro = DiskFile::open(&img.0, false).unwrap();
        assert_eq!(run(&mem, &ro, &m, &descs), (1, VIRTIO_BLK_S_IOERR as u8));
        assert_eq!(m.err_read_only.get(), 1);
        assert_eq!(u32::from(std::fs::read(&img.0).unwrap()[3584]), 3584 % 251);
        let rw = DiskFile::open(&img.0, true).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 7);
        assert_eq!(run(&mem, &rw, &m, &descs), (1, VIRTIO_BLK_S_OK as u8));
        assert_eq!(std::fs::read(&img.0).unwrap()[3584..], [0xab; 512]);
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(run(&mem, &rw, &m, &[d(HDR, 16, 0), d(STATUS, 1, W)]).1, 0);
        assert_eq!(
            (m.writes.get(), m.bytes_written.get(), m.flushes.get()),
            (2, 512, 1)
        );
    }

    #[test]
    fn rejects_bad_requests_without_touching_the_image() {
        let (mem, img, m) = (mem(), image("bad"), BlockMetrics::default());
        let disk = DiskFile::open(&img.0, true).unwrap();
        let ioerr = VIRTIO_BLK_S_IOERR as u8;
        // The status a request of `kind` at `sector` over `chain` gets.
        let status = |kind, sector, chain: &[RawDescriptor]| {
            header(&mem, kind, sector);
            run(&mem, &disk, &m, chain).1
        };
        // Past the end: sector 7 + 1024 bytes of an 8-sector disk.
        let past_end = [d(HDR, 16, 0), d(DATA, 1024, W), d(STATUS, 1, W)];
        assert_eq!(status(VIRTIO_BLK_T_IN, 7, &past_end), ioerr);
        let past_end = [d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)];
        assert_eq!(status(VIRTIO_BLK_T_OUT, u64::MAX, &past_end), ioerr);
        assert_eq!(m.err_past_end.get(), 2);
        // A data descriptor outside RAM.
        let outside = [d(HDR, 16, 0), d(0xff_f000, 512, 0), d(STATUS, 1, W)];
        assert_eq!(status(VIRTIO_BLK_T_OUT, 0, &outside), ioerr);
        assert_eq!(m.err_outside_ram.get(), 1);
        // Not whole sectors, header too short, readable after writable.
        let partial = [d(HDR, 16, 0), d(DATA, 100, W), d(STATUS, 1, W)];
        assert_eq!(status(VIRTIO_BLK_T_IN, 0, &partial), ioerr);
        let short_header = [d(HDR, 8, 0), d(STATUS, 1, W)];
        assert_eq!(status(VIRTIO_BLK_T_IN, 0, &short_header), ioerr);
        let readable_after = [
            d(HDR, 16, 0),
            d(DATA, 512, W),
            d(DATA, 512, 0),
            d(STATUS, 1, W),
        ];
        assert_eq!(status(VIRTIO_BLK_T_OUT, 0, &readable_after), ioerr);
        assert_eq!(
            (
                m.err_bad_length.get(),
                m.err_header.get(),
                m.err_layout.get()
            ),
            (1, 1, 1)
        );
        assert_eq!(std::fs::read(&img.0).unwrap()[0], 0);
        // No writable status byte: completed, nothing written.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            run(&mem, &disk, &m, &[d(HDR, 16, 0), d(STATUS, 1, 0)]),
            (0, 0xff)
        );
        header(&mem, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            run(&mem, &disk, &m, &[d(HDR, 16, 0), d(0x7fff_0000, 1, W)]).0,
            0
        );
        assert_eq!(m.dropped.get(), 2);
    }

    #[test]
    fn get_id_and_unsupported_types() {
        let (mem, img, m) = (mem(), image("id"), BlockMetrics::default());
        let disk = DiskFile::open(&img.0, false).unwrap();
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let descs = [d(HDR, 16, 0), d(DATA, 20, W), d(STATUS, 1, W)];
        assert_eq!(run(&mem, &disk, &m, &descs), (21, 0));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..DISK_ID.len()], DISK_ID);
        assert_eq!(id[DISK_ID.len()..], [0, 0, 0]);
        header(&mem, 11, 0);
        assert_eq!(run(&mem, &disk, &m, &descs), (1, VIRTIO_BLK_S_UNSUPP as u8));
        assert_eq!((m.get_id.get(), m.unsupported.get()), (1, 1));
    }

    #[test]
    fn too_much_data_is_refused() {
        let (mem, img, m) = (mem(), image("big"), BlockMetrics::default());
        let disk = DiskFile::open(&img.0, false).unwrap();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let descs = [
            d(HDR, 16, 0),
            d(0x4_0000, 0x8_0000, W),
            d(0x4_0000, 0x8_0200, W),
            d(STATUS, 1, W),
        ];
        assert_eq!(run(&mem, &disk, &m, &descs).1, VIRTIO_BLK_S_IOERR as u8);
        assert_eq!(m.err_too_long.get(), 1);
    }
}
