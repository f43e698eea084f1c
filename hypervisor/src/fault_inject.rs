//! Fault injection, a test hook: makes chosen host calls of the VMM fail
//! with a chosen errno, so that tests can show what the VMM does when the
//! host refuses it (`vmm run --inject-fault POINT:ERRNO[:PATTERN]`, hidden,
//! repeatable; `docs/reliability.md`, "Fault injection").
//!
//! Each real call site asks [`check`] with its [`Point`] just before the
//! system call and, when it answers an errno, fails as if the kernel had
//! returned it (without making the call). The plan is process-wide and
//! lock-free: a point holds an errno, a pattern (every Nth call, every call
//! after the first N, or only the Nth) and counters of calls and injected
//! faults; [`injected`] gives the counts for the stats document. With no
//! plan installed `check` costs one relaxed atomic load.
//!
//! This module must never be active unless a plan was installed (only
//! `vmm run` does, from the flag), never make a system call of its own (the
//! seccomp filters know nothing of it), and never decide what a site does
//! with the error: the site handles it as it handles the real one.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};

use serde::Serialize;

/// Why a `--inject-fault` specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    #[error("'{0}' is not POINT:ERRNO[:every=N|after=N|nth=N]")]
    Syntax(String),
    #[error("unknown injection point '{0}' ({names})", names = Point::names())]
    Point(String),
    #[error("unknown errno '{0}' (a name such as EAGAIN, ENOMEM, EIO, or a number 1-4095)")]
    Errno(String),
    #[error("bad pattern '{0}' (every=N or nth=N with N >= 1, after=N with N >= 0)")]
    Pattern(String),
    #[error("two rules for point {0}")]
    Duplicate(&'static str),
}

/// A host call the hook can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// `madvise(MADV_DONTNEED)` of a run of guest frames.
    Madvise,
    /// `process_madvise(MADV_DONTNEED)` of a batch of runs.
    ProcessMadvise,
    /// `UFFDIO_REGISTER` of a run about to be dropped.
    UffdRegister,
    /// `UFFDIO_UNREGISTER` of frames made stable (or whose drop failed).
    UffdUnregister,
    /// `UFFDIO_ZEROPAGE`, which answers a fault with the zero page.
    UffdZeropage,
    /// `UFFDIO_WAKE`, which answers a fault on a page already present.
    UffdWake,
    /// The handler's `read` of fault events from the userfaultfd.
    UffdRead,
    /// A read of `/proc/self/pagemap`: a `PAGEMAP_SCAN` ioctl, or a
    /// `pread` where the kernel lacks it.
    Pagemap,
    /// A read of the disk image.
    DiskRead,
    /// A write of the disk image.
    DiskWrite,
    /// An `fsync` of the disk image (a guest flush).
    DiskFlush,
    /// A write of the stats file.
    StatsWrite,
}

/// Every point, in the order of the stats document.
pub const POINTS: [Point; 12] = [
    Point::Madvise,
    Point::ProcessMadvise,
    Point::UffdRegister,
    Point::UffdUnregister,
    Point::UffdZeropage,
    Point::UffdWake,
    Point::UffdRead,
    Point::Pagemap,
    Point::DiskRead,
    Point::DiskWrite,
    Point::DiskFlush,
    Point::StatsWrite,
];

impl Point {
    /// The name in the flag and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Point::Madvise => "madvise",
            Point::ProcessMadvise => "process-madvise",
            Point::UffdRegister => "uffd-register",
            Point::UffdUnregister => "uffd-unregister",
            Point::UffdZeropage => "uffd-zeropage",
            Point::UffdWake => "uffd-wake",
            Point::UffdRead => "uffd-read",
            Point::Pagemap => "pagemap",
            Point::DiskRead => "disk-read",
            Point::DiskWrite => "disk-write",
            Point::DiskFlush => "disk-flush",
            Point::StatsWrite => "stats-write",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        POINTS.into_iter().find(|p| p.name() == s)
    }

    fn names() -> String {
        POINTS.map(Point::name).join(", ")
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which calls of a point fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Calls N, 2N, 3N, ... (every=1: all of them).
    Every(u64),
    /// Every call after the first N.
    After(u64),
    /// Only call N (counting from 1).
    Nth(u64),
}

impl Pattern {
    /// Does call `n` (counting from 1) fail?
    fn fails(self, n: u64) -> bool {
        match self {
            Pattern::Every(k) => k != 0 && n.is_multiple_of(k),
            Pattern::After(k) => n > k,
            Pattern::Nth(k) => n == k,
        }
    }

    fn code(self) -> (u8, u64) {
        match self {
            Pattern::Every(k) => (1, k),
            Pattern::After(k) => (2, k),
            Pattern::Nth(k) => (3, k),
        }
    }

    fn from_code(code: u8, k: u64) -> Option<Self> {
        match code {
            1 => Some(Pattern::Every(k)),
            2 => Some(Pattern::After(k)),
            3 => Some(Pattern::Nth(k)),
            _ => None,
        }
    }
}

/// One point's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub point: Point,
    pub errno: i32,
    pub pattern: Pattern,
}

/// The errno names the flag takes.
const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("EBADF", libc::EBADF),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EFAULT", libc::EFAULT),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EINVAL", libc::EINVAL),
    ("ENOSPC", libc::ENOSPC),
    ("ENOSYS", libc::ENOSYS),
];

fn parse_errno(s: &str) -> Result<i32, FaultSpecError> {
    let bad = || FaultSpecError::Errno(s.to_string());
    if let Some(&(_, e)) = ERRNOS.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
        return Ok(e);
    }
    match s.parse::<i32>() {
        Ok(e) if (1..4096).contains(&e) => Ok(e),
        _ => Err(bad()),
    }
}

fn parse_pattern(s: &str) -> Result<Pattern, FaultSpecError> {
    let bad = || FaultSpecError::Pattern(s.to_string());
    let (kind, n) = s.split_once('=').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    match (kind.trim(), n) {
        ("every", 1..) => Ok(Pattern::Every(n)),
        ("nth", 1..) => Ok(Pattern::Nth(n)),
        ("after", _) => Ok(Pattern::After(n)),
        _ => Err(bad()),
    }
}

impl std::str::FromStr for Rule {
    type Err = FaultSpecError;

    /// `POINT:ERRNO[:PATTERN]`, the pattern `every=1` when left out.
    fn from_str(s: &str) -> Result<Self, FaultSpecError> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let (point, errno, pattern) = match parts[..] {
            [p, e] => (p, e, None),
            [p, e, pat] => (p, e, Some(pat)),
            _ => return Err(FaultSpecError::Syntax(s.to_string())),
        };
        let point = Point::from_name(point.trim())
            .ok_or_else(|| FaultSpecError::Point(point.to_string()))?;
        Ok(Rule {
            point,
            errno: parse_errno(errno.trim())?,
            pattern: match pattern {
                Some(p) => parse_pattern(p)?,
                None => Pattern::Every(1),
            },
        })
    }
}

/// The rules of one run, at most one per point. Empty by default: nothing
/// fails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    rules: Vec<Rule>,
}

impl Plan {
    /// A plan of `rules`; refused if two name the same point.
    pub fn new(rules: Vec<Rule>) -> Result<Self, FaultSpecError> {
        for (i, r) in rules.iter().enumerate() {
            if rules[..i].iter().any(|o| o.point == r.point) {
                return Err(FaultSpecError::Duplicate(r.point.name()));
            }
        }
        Ok(Self { rules })
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// True when nothing is to fail.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// One point's live state.
struct Slot {
    /// 0: this point never fails.
    errno: AtomicI32,
    pattern: AtomicU8,
    n: AtomicU64,
    calls: AtomicU64,
    injected: AtomicU64,
}

impl Slot {
    const fn new() -> Self {
        Self {
            errno: AtomicI32::new(0),
            pattern: AtomicU8::new(0),
            n: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// Counts a call; the errno if this one fails.
    fn call(&self) -> Option<i32> {
        let errno = self.errno.load(Ordering::Relaxed);
        if errno == 0 {
            return None;
        }
        let pattern = Pattern::from_code(
            self.pattern.load(Ordering::Relaxed),
            self.n.load(Ordering::Relaxed),
        )?;
        let n = self.calls.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if !pattern.fails(n) {
            return None;
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        Some(errno)
    }

    fn set(&self, rule: Option<&Rule>) {
        self.calls.store(0, Ordering::Relaxed);
        self.injected.store(0, Ordering::Relaxed);
        let (code, n) = rule.map_or((0, 0), |r| r.pattern.code());
        self.pattern.store(code, Ordering::Relaxed);
        self.n.store(n, Ordering::Relaxed);
        self.errno
            .store(rule.map_or(0, |r| r.errno), Ordering::Release);
    }
}

/// Is any rule installed?
static ACTIVE: AtomicBool = AtomicBool::new(false);
static SLOTS: [Slot; POINTS.len()] = [const { Slot::new() }; POINTS.len()];

/// Installs `plan` for the whole process (replacing any other and zeroing
/// the counts). Call before the threads that make the calls start.
pub fn install(plan: &Plan) {
    ACTIVE.store(false, Ordering::SeqCst);
    for p in POINTS {
        let rule = plan.rules.iter().find(|r| r.point == p);
        SLOTS[p.index()].set(rule);
    }
    if !plan.is_empty() {
        for r in &plan.rules {
            log::warn!(
                "fault injection (test hook): {} fails with errno {} ({:?})",
                r.point.name(),
                r.errno,
                r.pattern
            );
        }
        ACTIVE.store(true, Ordering::SeqCst);
    }
}

/// Asked by the call site of `point` just before its system call: the
/// errno to fail with instead of making it, if the plan says so.
#[inline]
pub fn check(point: Point) -> Option<i32> {
    if !ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    SLOTS[point.index()].call()
}

/// [`check`] as the `io::Error` the site would have seen.
#[inline]
pub fn check_io(point: Point) -> std::io::Result<()> {
    match check(point) {
        Some(e) => Err(std::io::Error::from_raw_os_error(e)),
        None => Ok(()),
    }
}

/// Faults injected so far, per point (the stats document's
/// `injected_faults`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Injected {
    pub madvise: u64,
    pub process_madvise: u64,
    pub uffd_register: u64,
    pub uffd_unregister: u64,
    pub uffd_zeropage: u64,
    pub uffd_wake: u64,
    pub uffd_read: u64,
    pub pagemap: u64,
    pub disk_read: u64,
    pub disk_write: u64,
    pub disk_flush: u64,
    pub stats_write: u64,
}

/// The counts as of now.
pub fn injected() -> Injected {
    let n = |p: Point| SLOTS[p.index()].injected.load(Ordering::Relaxed);
    Injected {
        madvise: n(Point::Madvise),
        process_madvise: n(Point::ProcessMadvise),
        uffd_register: n(Point::UffdRegister),
        uffd_unregister: n(Point::UffdUnregister),
        uffd_zeropage: n(Point::UffdZeropage),
        uffd_wake: n(Point::UffdWake),
        uffd_read: n(Point::UffdRead),
        pagemap: n(Point::Pagemap),
        disk_read: n(Point::DiskRead),
        disk_write: n(Point::DiskWrite),
        disk_flush: n(Point::DiskFlush),
        stats_write: n(Point::StatsWrite),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The process-wide plan is never installed here: the library's other
    // tests run in this process at the same time. These use a `Slot`.

    #[test]
    fn specs_parse_with_names_numbers_and_patterns() {
        let r: Rule = "madvise:EAGAIN:every=3".parse().unwrap();
        assert_eq!(
            r,
            Rule {
                point: Point::Madvise,
                errno: libc::EAGAIN,
                pattern: Pattern::Every(3)
            }
        );
        let r: Rule = "uffd-zeropage:enomem".parse().unwrap();
        assert_eq!((r.errno, r.pattern), (libc::ENOMEM, Pattern::Every(1)));
        let r: Rule = "disk-read:5:after=0".parse().unwrap();
        assert_eq!((r.point, r.errno), (Point::DiskRead, libc::EIO));
        assert_eq!(r.pattern, Pattern::After(0));
        let r: Rule = "stats-write:ENOSPC:nth=2".parse().unwrap();
        assert_eq!(r.pattern, Pattern::Nth(2));
        for p in POINTS {
            let r: Rule = format!("{}:EIO", p.name()).parse().unwrap();
            assert_eq!(r.point, p);
        }
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        use FaultSpecError as E;
        let err = |s: &str| s.parse::<Rule>().unwrap_err();
        assert!(matches!(err("madvise"), E::Syntax(_)));
        assert!(matches!(err("a:b:c:d"), E::Syntax(_)));
        assert!(matches!(err("mmap:EIO"), E::Point(_)));
        assert!(matches!(err("madvise:EWHAT"), E::Errno(_)));
        assert!(matches!(err("madvise:0"), E::Errno(_)));
        assert!(matches!(err("madvise:4096"), E::Errno(_)));
        for p in [
            "every=0", "nth=0", "often=2", "every", "every=x", "after=-1",
        ] {
            assert!(
                matches!(err(&format!("madvise:EIO:{p}")), E::Pattern(_)),
                "{p}"
            );
        }
        assert!(err("mmap:EIO").to_string().contains("uffd-zeropage"));
        let twice = vec![
            "pagemap:EIO".parse().unwrap(),
            "pagemap:ENOMEM".parse().unwrap(),
        ];
        assert_eq!(Plan::new(twice), Err(E::Duplicate("pagemap")));
    }

    #[test]
    fn patterns_pick_their_calls() {
        let fails = |p: Pattern| (1..=9).filter(|&n| p.fails(n)).collect::<Vec<_>>();
        assert_eq!(fails(Pattern::Every(1)), (1..=9).collect::<Vec<_>>());
        assert_eq!(fails(Pattern::Every(3)), [3, 6, 9]);
        assert_eq!(fails(Pattern::After(7)), [8, 9]);
        assert_eq!(fails(Pattern::Nth(4)), [4]);
        for p in [Pattern::Every(2), Pattern::After(0), Pattern::Nth(9)] {
            let (c, k) = p.code();
            assert_eq!(Pattern::from_code(c, k), Some(p));
        }
    }

    #[test]
    fn a_slot_counts_calls_and_injections_and_resets() {
        let s = Slot::new();
        assert_eq!(s.call(), None, "no rule: never fails");
        assert_eq!(s.calls.load(Ordering::Relaxed), 0, "and counts nothing");
        let rule: Rule = "madvise:ENOMEM:every=2".parse().unwrap();
        s.set(Some(&rule));
        let got: Vec<_> = (0..6).map(|_| s.call()).collect();
        let e = Some(libc::ENOMEM);
        assert_eq!(got, [None, e, None, e, None, e]);
        assert_eq!(s.injected.load(Ordering::Relaxed), 3);
        s.set(None);
        assert_eq!(s.call(), None);
        assert_eq!(s.injected.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn without_a_plan_nothing_fails() {
        // No test installs a plan, so every point answers "go on".
        for p in POINTS {
            assert_eq!(check(p), None);
        }
        assert_eq!(injected(), Injected::default());
    }
}
