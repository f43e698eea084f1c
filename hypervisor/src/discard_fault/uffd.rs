//! The userfaultfd of guest RAM: created once at start (with
//! `UFFD_FEATURE_THREAD_ID`, so every fault names the thread that took it),
//! registered in MISSING mode on exactly the runs of frames the discard-fault
//! machinery asks for, and the few operations the fault handler needs on one
//! frame: back it with the zero page, or wake the threads waiting on it.
//!
//! Every operation takes guest frame numbers and checks them against guest
//! RAM before it turns them into host addresses, so nothing outside the
//! mapping is ever registered or filled. This module must never decide which
//! frames to register or how to answer a fault (that is `discard_fault`), and
//! never fill a page that is already present (`UFFDIO_ZEROPAGE` refuses to).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use super::uffd_sys::{self as sys, UffdMsg};
use crate::fault_inject::{check_io, Point};
use crate::frames::{HostMap, HostRange, Run};
use crate::memory::GuestRam;

/// Bytes per frame.
/// Events read per `read`.
const EVENTS_PER_READ: usize = 64;

/// Why a userfaultfd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error("cannot create the guest RAM userfaultfd (needs UFFD_FEATURE_THREAD_ID): {0}")]
    Create(#[source] std::io::Error),
    #[error("guest RAM has no host address")]
    NoHostMapping,
    #[error("frames {pfn:#x}+{count} are outside guest RAM")]
    OutOfRange { pfn: u64, count: u64 },
    #[error("UFFDIO_REGISTER of frames {pfn:#x}+{count} failed: {source}")]
    Register {
        pfn: u64,
        count: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("UFFDIO_UNREGISTER of frames {pfn:#x}+{count} failed: {source}")]
    Unregister {
        pfn: u64,
        count: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("UFFDIO_ZEROPAGE of frame {pfn:#x} failed: {source}")]
    Zeropage {
        pfn: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("UFFDIO_WAKE of frame {pfn:#x} failed: {source}")]
    Wake {
        pfn: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read userfaultfd events: {0}")]
    Read(#[source] std::io::Error),
}

impl UffdError {
    /// The errno of a failed ioctl, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            UffdError::Register { source, .. }
            | UffdError::Unregister { source, .. }
            | UffdError::Zeropage { source, .. }
            | UffdError::Wake { source, .. }
            | UffdError::Read(source)
            | UffdError::Create(source) => source.raw_os_error(),
            UffdError::NoHostMapping | UffdError::OutOfRange { .. } => None,
        }
    }
}

/// One missing-page fault read from the userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// Host address the thread touched.
    pub host_addr: u64,
    /// The guest frame of that address, if it lies in guest RAM.
    pub pfn: Option<u64>,
    /// Thread id (`gettid`) of the faulting thread.
    pub tid: i32,
    /// A write access.
    pub write: bool,
}

/// Room for the events of one [`GuestUffd::read_faults`].
pub struct EventBuffer(Box<[UffdMsg]>);

impl std::fmt::Debug for EventBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBuffer")
            .field("events", &self.0.len())
            .finish()
    }
}

/// The userfaultfd covering (parts of) one guest RAM mapping.
pub struct GuestUffd {
    /// The descriptor, closed on drop.
    uffd: OwnedFd,
    /// Where the frames are (and keeps the mapping alive).
    map: HostMap,
}

impl std::fmt::Debug for GuestUffd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestUffd")
            .field("fd", &self.uffd.as_raw_fd())
            .field("map", &self.map)
            .finish()
    }
}

impl GuestUffd {
    /// Creates the userfaultfd (non-blocking, close-on-exec, kernel-mode
    /// faults included: KVM touches guest memory from the kernel).
    pub fn new(ram: &GuestRam) -> Result<Self, UffdError> {
        let map = HostMap::new(ram).ok_or(UffdError::NoHostMapping)?;
        // No UFFD_USER_MODE_ONLY: KVM's own accesses must fault here too.
        let uffd = sys::open(
            libc::O_CLOEXEC | libc::O_NONBLOCK,
            sys::UFFD_FEATURE_THREAD_ID,
        )
        .map_err(UffdError::Create)?;
        Ok(Self { uffd, map })
    }

    /// Host address and length of `count` frames from `pfn`, if inside RAM.
    fn range(&self, pfn: u64, count: u64) -> Result<(u64, u64), UffdError> {
        let HostRange { addr, len } = self
            .map
            .range(Run { pfn, count })
            .ok_or(UffdError::OutOfRange { pfn, count })?;
        Ok((addr, len))
    }

    /// Registers `count` frames from `pfn` in MISSING mode.
    pub fn register(&self, pfn: u64, count: u64) -> Result<(), UffdError> {
        let (addr, len) = self.range(pfn, count)?;
        check_io(Point::UffdRegister)
            .and_then(|()| {
                sys::register(
                    self.uffd.as_fd(),
                    addr,
                    len,
                    sys::UFFDIO_REGISTER_MODE_MISSING,
                )
            })
            .map(|_| ())
            .map_err(|source| UffdError::Register { pfn, count, source })
    }

    /// Unregisters `count` frames from `pfn` (the kernel splits a larger
    /// registration and wakes any thread waiting on those frames).
    pub fn unregister(&self, pfn: u64, count: u64) -> Result<(), UffdError> {
        let (addr, len) = self.range(pfn, count)?;
        check_io(Point::UffdUnregister)
            .and_then(|()| sys::unregister(self.uffd.as_fd(), addr, len))
            .map_err(|source| UffdError::Unregister { pfn, count, source })
    }

    /// Unregisters all of guest RAM, waking every thread waiting on a
    /// fault (each then sees a zero page where the frame was dropped).
    /// Only for the end of a run the VMM stops because it cannot answer a
    /// fault (`crate::fatal`), once the vCPUs are stopped. Not a hooked
    /// point: it is the way out.
    pub fn release_all(&self) -> Result<(), UffdError> {
        for run in self.map.runs() {
            let (addr, len) = self.range(run.pfn, run.count)?;
            sys::unregister(self.uffd.as_fd(), addr, len).map_err(|source| {
                UffdError::Unregister {
                    pfn: run.pfn,
                    count: run.count,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Backs a missing frame with the zero page and wakes its waiters. A
    /// frame already present (`EEXIST`) only gets the wake-up.
    pub fn zero_fill(&self, pfn: u64) -> Result<(), UffdError> {
        let (addr, len) = self.range(pfn, 1)?;
        // Not UFFDIO_ZEROPAGE_MODE_DONTWAKE: the waiters are woken.
        let mode = 0;
        let filled = match check_io(Point::UffdZeropage) {
            Err(e) => Err(e),
            // SAFETY: [addr, addr + len) is one page inside the guest RAM
            // mapping that `self.map` keeps alive (checked by `range`).
            // UFFDIO_ZEROPAGE only maps the zero page where no page is
            // present and fails with EEXIST otherwise, so it never changes
            // memory anyone has written; the VMM holds no Rust reference
            // into guest memory (vm-memory copies).
            Ok(()) => unsafe { sys::zeropage(self.uffd.as_fd(), addr, len, mode) },
        };
        match filled {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.wake(pfn),
            Err(source) => Err(UffdError::Zeropage { pfn, source }),
        }
    }

    /// Wakes the threads waiting on a frame (they retry the access).
    pub fn wake(&self, pfn: u64) -> Result<(), UffdError> {
        let (addr, len) = self.range(pfn, 1)?;
        check_io(Point::UffdWake)
            .and_then(|()| sys::wake(self.uffd.as_fd(), addr, len))
            .map_err(|source| UffdError::Wake { pfn, source })
    }

    /// Reads the pending page faults into `out` (cleared first); other
    /// events are ignored. Returns how many faults were read; 0 when none
    /// is pending (the descriptor is non-blocking).
    pub fn read_faults(
        &self,
        buf: &mut EventBuffer,
        out: &mut Vec<Fault>,
    ) -> Result<usize, UffdError> {
        out.clear();
        let n = match check_io(Point::UffdRead) {
            // As the real read of a non-blocking descriptor: nothing yet.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => 0,
            Err(e) => return Err(UffdError::Read(e)),
            Ok(()) => sys::read_msgs(self.uffd.as_fd(), &mut buf.0).map_err(UffdError::Read)?,
        };
        for msg in &buf.0[..n] {
            if let Some(pf) = msg.pagefault() {
                out.push(Fault {
                    host_addr: pf.address,
                    pfn: self.map.pfn_of(pf.address),
                    // Thread ids fit: Linux caps them at 2^22.
                    tid: pf.ptid as i32,
                    write: pf.flags & sys::UFFD_PAGEFAULT_FLAG_WRITE != 0,
                });
                continue;
            }
            match msg.event {
                sys::UFFD_EVENT_FORK
                | sys::UFFD_EVENT_REMAP
                | sys::UFFD_EVENT_REMOVE
                | sys::UFFD_EVENT_UNMAP => {
                    log::debug!("discard faults: ignoring userfaultfd event {msg:?}")
                }
                other => log::warn!("discard faults: bad userfaultfd event {other:#x}"),
            }
        }
        Ok(out.len())
    }

    /// A buffer for [`GuestUffd::read_faults`].
    pub fn event_buffer() -> EventBuffer {
        EventBuffer(vec![UffdMsg::zeroed(); EVENTS_PER_READ].into_boxed_slice())
    }
}

impl AsRawFd for GuestUffd {
    fn as_raw_fd(&self) -> RawFd {
        self.uffd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::PAGE_SIZE as PAGE;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn ram_above_4g_registers_and_the_hole_is_refused() {
        let ram = GuestRam::new(16 << 30).unwrap();
        let u = GuestUffd::new(&ram).unwrap();
        let top = ram.frames();
        let hole = ram.hole_frames();
        // The last frame of RAM above 4 GiB.
        u.register(top - 1, 1).unwrap();
        u.unregister(top - 1, 1).unwrap();
        assert_eq!(
            u.map.pfn_of(ram.host_base() + (top - 1) * PAGE),
            Some(top - 1)
        );
        // Frames of the hole, or a run into it, are not RAM.
        for (pfn, count) in [(hole.start, 1), (hole.start - 1, 2), (hole.end - 1, 2)] {
            assert!(
                matches!(u.register(pfn, count), Err(UffdError::OutOfRange { .. })),
                "{pfn:#x}+{count}"
            );
        }
        assert_eq!(u.map.pfn_of(ram.host_base() + hole.start * PAGE), None);
        assert!(matches!(
            u.zero_fill(top),
            Err(UffdError::OutOfRange { .. })
        ));
    }

    #[test]
    fn ranges_are_checked_against_ram() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let u = GuestUffd::new(&ram).unwrap();
        let frames = 4096;
        assert!(matches!(
            u.register(frames, 1),
            Err(UffdError::OutOfRange { .. })
        ));
        assert!(matches!(
            u.register(5, 0),
            Err(UffdError::OutOfRange { .. })
        ));
        assert!(matches!(
            u.unregister(u64::MAX, 2),
            Err(UffdError::OutOfRange { .. })
        ));
        assert!(matches!(
            u.zero_fill(frames),
            Err(UffdError::OutOfRange { .. })
        ));
        assert_eq!(u.map.pfn_of(ram.host_base() + 5 * PAGE + 7), Some(5));
        assert_eq!(u.map.pfn_of(ram.host_base() + frames * PAGE), None);
        assert_eq!(u.map.pfn_of(ram.host_base().wrapping_sub(1)), None);
        // A present page is never replaced: zero_fill only wakes.
        ram.mem().write_obj(0x5au8, GuestAddress(9 * PAGE)).unwrap();
        u.register(9, 1).unwrap();
        u.zero_fill(9).unwrap();
        assert_eq!(
            ram.mem().read_obj::<u8>(GuestAddress(9 * PAGE)).unwrap(),
            0x5a
        );
        u.unregister(9, 1).unwrap();
        let mut buf = GuestUffd::event_buffer();
        let mut out = vec![];
        assert_eq!(u.read_faults(&mut buf, &mut out).unwrap(), 0);
    }

    #[test]
    fn a_write_fault_names_its_thread_and_zero_fill_resolves_it() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let u = GuestUffd::new(&ram).unwrap();
        u.register(30, 2).unwrap();
        let ram2 = ram.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            // SAFETY: gettid(2) has no arguments and cannot fail.
            tx.send(unsafe { libc::gettid() }).unwrap();
            ram2.mem()
                .write_obj(0x77u8, GuestAddress(31 * PAGE + 5))
                .unwrap();
        });
        let tid = rx.recv().unwrap();
        let mut buf = GuestUffd::event_buffer();
        let mut out = vec![];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while u.read_faults(&mut buf, &mut out).unwrap() == 0 {
            assert!(std::time::Instant::now() < deadline, "no fault in 10 s");
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        assert_eq!(out.len(), 1);
        let f = out[0];
        assert_eq!((f.tid, f.pfn, f.write), (tid, Some(31), true));
        assert_eq!(f.host_addr & !(PAGE - 1), ram.host_base() + 31 * PAGE);
        // The zero page goes in and the writer is woken; its write then
        // copies it (a present page: no further missing fault).
        u.zero_fill(31).unwrap();
        h.join().unwrap();
        assert_eq!(u.read_faults(&mut buf, &mut out).unwrap(), 0);
        u.unregister(30, 2).unwrap();
        assert_eq!(
            ram.mem()
                .read_obj::<u8>(GuestAddress(31 * PAGE + 5))
                .unwrap(),
            0x77
        );
    }
}
