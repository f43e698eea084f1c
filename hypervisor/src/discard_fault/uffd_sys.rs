//! The raw userfaultfd ABI of Linux on x86-64, written out by hand over
//! `libc`: the constants, the `#[repr(C)]` argument structs and event
//! message the kernel reads and writes, the ioctl request numbers (computed
//! the way the kernel's `_IOR`/`_IOWR` macros compute them), and one thin
//! function per system call that turns a failure into
//! [`std::io::Error::last_os_error`].
//!
//! It exists so that the VMM needs no generated bindings (and so no libclang
//! at build time). [`super::uffd`] builds the guest RAM userfaultfd on it; the
//! discard-fault benchmark uses it directly for its plain zero-page baseline.
//!
//! This module must never decide anything: which ranges are registered,
//! which flags or features are asked for and how a fault is answered belong
//! to its callers. It must never touch memory itself (only the kernel does,
//! on the ranges the caller names), keep any state beyond the descriptor it
//! hands out, or panic on anything the kernel returns. Every layout and
//! number here is checked against the kernel's by the tests at the end.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The API version of the `UFFDIO_API` handshake.
pub const UFFD_API: u64 = 0xAA;
/// `userfaultfd(2)` flag: only faults taken in user mode are reported
/// (allowed to unprivileged processes; KVM's kernel-mode accesses to guest
/// memory then fault normally instead).
pub const UFFD_USER_MODE_ONLY: libc::c_int = 1;

/// Feature: every page-fault message carries the faulting thread's id.
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;

/// Event: a missing-page (or write-protect, or minor) fault.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// Event: the process forked (needs `UFFD_FEATURE_EVENT_FORK`).
pub const UFFD_EVENT_FORK: u8 = 0x13;
/// Event: a registered range was moved by `mremap` (`..._EVENT_REMAP`).
pub const UFFD_EVENT_REMAP: u8 = 0x14;
/// Event: pages of a registered range were dropped (`..._EVENT_REMOVE`).
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
/// Event: a registered range was unmapped (`..._EVENT_UNMAP`).
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

/// Page-fault flag: the access was a write.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;

/// Registration mode: report faults on pages that are not present.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFDIO_ZEROPAGE` mode: do not wake the threads waiting on the range.
pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;

/// The ioctl type (magic) of every userfaultfd request.
pub const UFFDIO: u32 = 0xAA;

/// Request numbers within [`UFFDIO`].
const NR_REGISTER: u32 = 0x00;
const NR_UNREGISTER: u32 = 0x01;
const NR_WAKE: u32 = 0x02;
const NR_COPY: u32 = 0x03;
const NR_ZEROPAGE: u32 = 0x04;
const NR_API: u32 = 0x3F;

/// Direction bits of an ioctl number (the generic Linux encoding, which
/// x86-64 uses), seen from userspace: `IOC_WRITE` passes the argument to
/// the kernel, `IOC_READ` gets it written back.
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
/// Field widths and positions of an ioctl number: nr, type, size, dir.
const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_TYPESHIFT: u32 = IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;

/// An ioctl number from its direction, type, number and argument size.
/// Fails to compile (in a `const`) if the size does not fit its field.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    assert!(size < (1 << IOC_SIZEBITS), "ioctl argument too large");
    assert!(ty < (1 << IOC_TYPEBITS) && nr < (1 << IOC_NRBITS));
    (dir << IOC_DIRSHIFT) | ((size as u32) << IOC_SIZESHIFT) | (ty << IOC_TYPESHIFT) | nr
}

/// An ioctl whose argument the kernel both reads and writes (`_IOWR`).
pub const fn iowr(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}

/// An ioctl the kernel defines as `_IOR` (for userfaultfd these still pass
/// their argument in: the direction is only what the header says).
pub const fn ior(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}

/// The handshake: agree on the API and enable features.
pub const UFFDIO_API: u32 = iowr(UFFDIO, NR_API, size_of::<UffdioApi>());
/// Register a range (`UffdioRegister`).
pub const UFFDIO_REGISTER: u32 = iowr(UFFDIO, NR_REGISTER, size_of::<UffdioRegister>());
/// Unregister a range (`UffdioRange`); wakes its waiters.
pub const UFFDIO_UNREGISTER: u32 = ior(UFFDIO, NR_UNREGISTER, size_of::<UffdioRange>());
/// Wake the threads waiting on a range (`UffdioRange`).
pub const UFFDIO_WAKE: u32 = ior(UFFDIO, NR_WAKE, size_of::<UffdioRange>());
/// Copy pages into a missing range (`UffdioCopy`).
pub const UFFDIO_COPY: u32 = iowr(UFFDIO, NR_COPY, size_of::<UffdioCopy>());
/// Map the zero page into a missing range (`UffdioZeropage`).
pub const UFFDIO_ZEROPAGE: u32 = iowr(UFFDIO, NR_ZEROPAGE, size_of::<UffdioZeropage>());

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UffdioApi {
    /// In: [`UFFD_API`].
    pub api: u64,
    /// In: the features asked for; out: the features the kernel supports.
    pub features: u64,
    /// Out: bit mask of the ioctls available on the descriptor.
    pub ioctls: u64,
}

/// `struct uffdio_range`: a page-aligned host address range.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    /// `UFFDIO_REGISTER_MODE_*`.
    pub mode: u64,
    /// Out: bit mask of the ioctls available on the range.
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    /// Out: bytes copied, or a negated errno.
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UffdioZeropage {
    pub range: UffdioRange,
    /// `UFFDIO_ZEROPAGE_MODE_*`.
    pub mode: u64,
    /// Out: bytes mapped, or a negated errno.
    pub zeropage: i64,
}

/// The page-fault member of `uffd_msg`'s argument union.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UffdPagefault {
    /// `UFFD_PAGEFAULT_FLAG_*`.
    pub flags: u64,
    /// The faulting host address (page-aligned unless exact addresses were
    /// asked for).
    pub address: u64,
    /// The faulting thread's id, with [`UFFD_FEATURE_THREAD_ID`].
    pub ptid: u32,
}

/// The argument union of `uffd_msg` (24 bytes); only the member this module
/// reads is spelled out.
#[repr(C)]
#[derive(Clone, Copy)]
pub union UffdMsgArg {
    pub pagefault: UffdPagefault,
    pub reserved: [u64; 3],
}

/// `struct uffd_msg`: one event read from the descriptor (32 bytes; the
/// kernel's is packed, but every field is naturally aligned, so the
/// layout is the same and this one is only more strictly aligned).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    pub arg: UffdMsgArg,
}

impl UffdMsg {
    /// An all-zero message, to fill a buffer with before reading.
    pub const fn zeroed() -> Self {
        Self {
            event: 0,
            reserved1: 0,
            reserved2: 0,
            reserved3: 0,
            arg: UffdMsgArg { reserved: [0; 3] },
        }
    }

    /// The page-fault part, if this is a [`UFFD_EVENT_PAGEFAULT`].
    pub fn pagefault(&self) -> Option<UffdPagefault> {
        if self.event != UFFD_EVENT_PAGEFAULT {
            return None;
        }
        // SAFETY: every member of the union is plain integers over the same
        // 24 bytes, so any bit pattern is a valid `UffdPagefault`; for this
        // event the kernel wrote that member.
        Some(unsafe { self.arg.pagefault })
    }
}

impl Default for UffdMsg {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl std::fmt::Debug for UffdMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("UffdMsg");
        d.field("event", &format_args!("{:#x}", self.event));
        match self.pagefault() {
            Some(pf) => d.field("pagefault", &pf),
            // SAFETY: `reserved` is plain integers over the union's 24
            // bytes, so any bit pattern is valid.
            None => d.field("arg", &unsafe { self.arg.reserved }),
        };
        d.finish()
    }
}

/// Issues a userfaultfd ioctl whose argument is `arg`.
///
/// # Safety
///
/// `request` must be a userfaultfd ioctl whose argument type is `T`.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, exclusive `T` for the whole call, and the
    // caller guarantees `T` is what `request` reads and writes, so the
    // kernel touches only those bytes; `fd` is open while borrowed.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request as libc::Ioctl,
            arg as *mut T as *mut libc::c_void,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates a userfaultfd with `flags` (`O_CLOEXEC`, `O_NONBLOCK`,
/// [`UFFD_USER_MODE_ONLY`]) and does the `UFFDIO_API` handshake asking for
/// `features`. Fails with the OS error, or with `Unsupported` if the kernel
/// does not offer every feature asked for.
///
/// The system call comes first; where it is refused (`EPERM`: an
/// unprivileged user asking for kernel-mode faults while
/// `vm.unprivileged_userfaultfd` is 0), `/dev/userfaultfd` is tried, whose
/// file permissions may grant what the sysctl does not.
pub fn open(flags: libc::c_int, features: u64) -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd(2) takes one integer argument and touches no
    // memory of ours; it returns a new descriptor or -1.
    let mut r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if r < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EPERM) {
            return Err(err);
        }
        r = i64::from(open_through_device(flags).map_err(|_| err)?);
    }
    let raw = libc::c_int::try_from(r).map_err(|_| io::Error::other("bad userfaultfd result"))?;
    // SAFETY: `raw` is the descriptor the kernel just created for us; no
    // one else owns it, so the `OwnedFd` is its only owner and closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API's argument is a `struct uffdio_api`.
    unsafe { ioctl(fd.as_fd(), UFFDIO_API, &mut api) }?;
    let missing = features & !api.features;
    if missing != 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the kernel lacks userfaultfd features {missing:#x}"),
        ));
    }
    Ok(fd)
}

/// `USERFAULTFD_IOC_NEW` (`_IO(0xAA, 0)`): a new userfaultfd from
/// `/dev/userfaultfd`, its argument the flags.
pub const USERFAULTFD_IOC_NEW: u32 = ioc(0, UFFDIO, 0, 0);

/// A new userfaultfd descriptor from `/dev/userfaultfd`.
fn open_through_device(flags: libc::c_int) -> io::Result<libc::c_int> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")?;
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and touches no
    // memory of ours; it returns a new descriptor or -1. `dev` stays open
    // for the call.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&dev),
            USERFAULTFD_IOC_NEW as libc::Ioctl,
            flags,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Registers `[start, start + len)` in `mode`; returns the ioctls available
/// on the range.
pub fn register(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> io::Result<u64> {
    let mut reg = UffdioRegister {
        range: UffdioRange { start, len },
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER's argument is a `struct uffdio_register`.
    unsafe { ioctl(fd, UFFDIO_REGISTER, &mut reg) }?;
    Ok(reg.ioctls)
}

/// Unregisters `[start, start + len)` (waking its waiters).
pub fn unregister(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut range = UffdioRange { start, len };
    // SAFETY: UFFDIO_UNREGISTER's argument is a `struct uffdio_range`.
    unsafe { ioctl(fd, UFFDIO_UNREGISTER, &mut range) }
}

/// Wakes the threads waiting on `[start, start + len)`.
pub fn wake(fd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<()> {
    let mut range = UffdioRange { start, len };
    // SAFETY: UFFDIO_WAKE's argument is a `struct uffdio_range`.
    unsafe { ioctl(fd, UFFDIO_WAKE, &mut range) }
}

/// Maps the zero page into the missing pages of `[start, start + len)` (and
/// wakes its waiters unless `mode` has [`UFFDIO_ZEROPAGE_MODE_DONTWAKE`]);
/// returns the bytes mapped. A page already present fails with `EEXIST`.
///
/// # Safety
///
/// The range must be memory of this process that no Rust reference or
/// other code expects to hold anything but what a first touch would read
/// there: its missing pages become readable zeroes. (The kernel itself
/// refuses a range not registered on `fd`.)
pub unsafe fn zeropage(fd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> io::Result<u64> {
    let mut zp = UffdioZeropage {
        range: UffdioRange { start, len },
        mode,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE's argument is a `struct uffdio_zeropage`; what
    // it does to the range is the caller's contract above.
    unsafe { ioctl(fd, UFFDIO_ZEROPAGE, &mut zp) }?;
    match u64::try_from(zp.zeropage) {
        Ok(bytes) => Ok(bytes),
        // Not expected: a failure sets errno too.
        Err(_) => Err(io::Error::from_raw_os_error(
            i32::try_from(-zp.zeropage).unwrap_or(libc::EINVAL),
        )),
    }
}

/// Reads pending events into `buf`; returns how many were read. 0 when none
/// is pending on a non-blocking descriptor (`EAGAIN`); a blocking one waits
/// for at least one. End of file and a partial message are errors.
pub fn read_msgs(fd: BorrowedFd<'_>, buf: &mut [UffdMsg]) -> io::Result<usize> {
    const MSG: usize = size_of::<UffdMsg>();
    if buf.is_empty() {
        return Ok(0);
    }
    // SAFETY: the kernel writes at most `buf.len() * MSG` bytes into `buf`,
    // which we borrow exclusively; any bytes are a valid `UffdMsg` (plain
    // integers and a union of plain integers).
    let r = unsafe {
        libc::read(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len() * MSG,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(0),
            _ => Err(e),
        };
    }
    // Cannot fail: r >= 0.
    let bytes = r.unsigned_abs();
    if bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "end of file on the userfaultfd",
        ));
    }
    if bytes % MSG != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("read {bytes} bytes from the userfaultfd, not whole {MSG}-byte messages"),
        ));
    }
    Ok(bytes / MSG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
        // The encoding itself, on a number outside userfaultfd:
        // TUNSETIFF is `_IOW('T', 202, int)`.
        assert_eq!(ioc(IOC_WRITE, b'T' as u32, 0xca, 4), 0x4004_54ca);
    }

    #[test]
    fn the_device_gives_a_working_descriptor_where_it_exists() {
        // The fallback path of `open`, taken directly (root here, so the
        // system call never refuses).
        match open_through_device(libc::O_CLOEXEC | libc::O_NONBLOCK) {
            Ok(raw) => {
                // SAFETY: `raw` is the descriptor just created; we own it.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                let mut api = UffdioApi {
                    api: UFFD_API,
                    features: UFFD_FEATURE_THREAD_ID,
                    ioctls: 0,
                };
                // SAFETY: UFFDIO_API's argument is a `struct uffdio_api`.
                unsafe { ioctl(fd.as_fd(), UFFDIO_API, &mut api) }.unwrap();
                assert_ne!(api.features & UFFD_FEATURE_THREAD_ID, 0);
            }
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}"),
        }
    }

    #[test]
    fn struct_layouts_match_the_kernel() {
        assert_eq!(size_of::<UffdioApi>(), 24);
        assert_eq!(size_of::<UffdioRange>(), 16);
        assert_eq!(size_of::<UffdioRegister>(), 32);
        assert_eq!(size_of::<UffdioCopy>(), 40);
        assert_eq!(size_of::<UffdioZeropage>(), 32);
        assert_eq!(size_of::<UffdMsg>(), 32);
        assert_eq!(size_of::<UffdMsgArg>(), 24);
        assert_eq!(offset_of!(UffdioApi, features), 8);
        assert_eq!(offset_of!(UffdioApi, ioctls), 16);
        assert_eq!(offset_of!(UffdioRegister, mode), 16);
        assert_eq!(offset_of!(UffdioRegister, ioctls), 24);
        assert_eq!(offset_of!(UffdioZeropage, mode), 16);
        assert_eq!(offset_of!(UffdioZeropage, zeropage), 24);
        assert_eq!(offset_of!(UffdioCopy, copy), 32);
        assert_eq!(offset_of!(UffdMsg, event), 0);
        assert_eq!(offset_of!(UffdMsg, reserved3), 4);
        assert_eq!(offset_of!(UffdMsg, arg), 8);
        assert_eq!(offset_of!(UffdMsg, arg.pagefault.flags), 8);
        assert_eq!(offset_of!(UffdMsg, arg.pagefault.address), 16);
        assert_eq!(offset_of!(UffdMsg, arg.pagefault.ptid), 24);
    }

    #[test]
    fn a_pagefault_message_decodes() {
        let mut bytes = [0u8; 32];
        bytes[0] = UFFD_EVENT_PAGEFAULT;
        bytes[8..16].copy_from_slice(&UFFD_PAGEFAULT_FLAG_WRITE.to_ne_bytes());
        bytes[16..24].copy_from_slice(&0x7f00_1234_5000u64.to_ne_bytes());
        bytes[24..28].copy_from_slice(&4321u32.to_ne_bytes());
        let mut msg = UffdMsg::zeroed();
        // SAFETY: `msg` is 32 bytes of plain integers, any pattern valid;
        // the source is a distinct array of the same size.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (&mut msg as *mut UffdMsg).cast::<u8>(),
                bytes.len(),
            )
        };
        let pf = msg.pagefault().unwrap();
        assert_eq!(pf.flags, UFFD_PAGEFAULT_FLAG_WRITE);
        assert_eq!(pf.address, 0x7f00_1234_5000);
        assert_eq!(pf.ptid, 4321);
        msg.event = UFFD_EVENT_UNMAP;
        assert_eq!(msg.pagefault(), None);
    }

    #[test]
    fn a_descriptor_opens_with_thread_ids_and_refuses_unknown_features() {
        let fd = open(
            libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            UFFD_FEATURE_THREAD_ID,
        )
        .unwrap();
        let mut buf = [UffdMsg::zeroed(); 4];
        assert_eq!(read_msgs(fd.as_fd(), &mut buf).unwrap(), 0);
        // A feature no kernel has (bit 63) is refused, not ignored.
        assert!(open(libc::O_CLOEXEC | UFFD_USER_MODE_ONLY, 1 << 63).is_err());
    }
}
