//! Wakes the reclaimer when its memory cgroup nears the limit, instead of
//! only every interval (`super::Worker` polls [`UsageEvent::source`]
//! through `crate::periodic`).
//!
//! - **cgroup v1:** a usage threshold. An eventfd is registered through
//!   `cgroup.event_control` with `memory.usage_in_bytes` and a number of
//!   bytes; the kernel signals it whenever usage crosses that number, up
//!   or down. It checks thresholds once every 128 page charges or
//!   uncharges per CPU, so a crossing is seen up to that many pages late
//!   (the reclaimer's measured reserve holds that lag too).
//! - **cgroup v2** has no usage thresholds: `memory.events` polls with
//!   `POLLPRI` when one of its counters changes (`high`, `max`: the cgroup
//!   met a boundary and the kernel reclaimed; `oom`), which is later than
//!   a threshold (the limit is already reached) but still before the next
//!   interval.
//!
//! v1 usage includes the host page cache charged to the cgroup (the disk
//! image, mostly), which the budget leaves out; a wake is therefore only a
//! reason to run a round now, and the round decides from the figures
//! without the cache, as every round does.
//!
//! Registering a v1 event is a write to `cgroup.event_control`, but it sets
//! nothing on the cgroup: the event lives as long as its eventfd and goes
//! when the descriptor closes. This module must never write any other
//! cgroup file, and never write that one but to register.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::cgroup::{CgroupMemory, Version};

/// Move a v1 threshold only when the wanted one is this far from it (a
/// registration per round would be an allocation in the kernel per round).
pub const REARM_STEP: u64 = 256 << 10;

/// Why the event could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum UsageEventError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the usage eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot register a usage threshold in {}: {source}", path.display())]
    Register {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One registered v1 threshold.
#[derive(Debug)]
struct Threshold {
    event: EventFd,
    bytes: u64,
}

/// What the event is made of.
#[derive(Debug)]
enum Kind {
    V1 {
        dir: PathBuf,
        /// `memory.usage_in_bytes`, the file the thresholds watch.
        usage: File,
        threshold: Threshold,
    },
    V2 {
        /// `memory.events`, read after each wake to rearm the poll.
        events: File,
    },
}

/// The cgroup's usage event.
#[derive(Debug)]
pub struct UsageEvent {
    kind: Kind,
}

/// The line `cgroup.event_control` takes for a usage threshold.
pub fn registration_line(event_fd: RawFd, usage_fd: RawFd, threshold: u64) -> String {
    format!("{event_fd} {usage_fd} {threshold}")
}

fn open(path: PathBuf, write: bool) -> Result<File, UsageEventError> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open(&path)
        .map_err(|source| UsageEventError::Open { path, source })
}

/// Registers a threshold of `bytes` on `usage` in `dir` with a new eventfd.
fn register(dir: &std::path::Path, usage: &File, bytes: u64) -> Result<Threshold, UsageEventError> {
    let event = EventFd::new(EFD_NONBLOCK).map_err(UsageEventError::EventFd)?;
    let path = dir.join("cgroup.event_control");
    let mut control = open(path.clone(), true)?;
    let line = registration_line(event.as_raw_fd(), usage.as_raw_fd(), bytes);
    control
        .write_all(line.as_bytes())
        .map_err(|source| UsageEventError::Register { path, source })?;
    Ok(Threshold { event, bytes })
}

impl UsageEvent {
    /// Registers for `cg`: on v1 a threshold at `threshold` bytes of
    /// usage; on v2 the `memory.events` poll (`threshold` unused).
    pub fn register(cg: &CgroupMemory, threshold: u64) -> Result<Self, UsageEventError> {
        let kind = match cg.version {
            Version::V1 => {
                let usage = open(cg.dir.join("memory.usage_in_bytes"), false)?;
                let threshold = register(&cg.dir, &usage, threshold)?;
                Kind::V1 {
                    dir: cg.dir.clone(),
                    usage,
                    threshold,
                }
            }
            Version::V2 => Kind::V2 {
                events: open(cg.dir.join("memory.events"), false)?,
            },
        };
        Ok(Self { kind })
    }

    /// The v1 threshold registered now (`None` on v2).
    pub fn threshold(&self) -> Option<u64> {
        match &self.kind {
            Kind::V1 { threshold, .. } => Some(threshold.bytes),
            Kind::V2 { .. } => None,
        }
    }

    /// Moves a v1 threshold to `bytes` when it is at least [`REARM_STEP`]
    /// away: a new eventfd is registered, then the old one closed (which
    /// ends its registration). Returns whether it moved. On failure the
    /// old threshold stays.
    pub fn rearm(&mut self, bytes: u64) -> Result<bool, UsageEventError> {
        let Kind::V1 {
            dir,
            usage,
            threshold,
        } = &mut self.kind
        else {
            return Ok(false);
        };
        if threshold.bytes.abs_diff(bytes) < REARM_STEP {
            return Ok(false);
        }
        *threshold = register(dir, usage, bytes)?;
        Ok(true)
    }

    /// The descriptor to poll and the events that mean "wake".
    pub fn source(&self) -> (RawFd, i16) {
        match &self.kind {
            Kind::V1 { threshold, .. } => (threshold.event.as_raw_fd(), libc::POLLIN),
            // kernfs files always poll readable; a change is POLLPRI.
            Kind::V2 { events } => (events.as_raw_fd(), libc::POLLPRI),
        }
    }

    /// Takes the event that woke the poll, so the next poll waits again.
    pub fn consume(&mut self) {
        match &mut self.kind {
            // EAGAIN (nothing to read) is fine: a wake is only a hint.
            Kind::V1 { threshold, .. } => {
                let _ = threshold.event.read();
            }
            // Reading the file is what tells kernfs the change was seen.
            Kind::V2 { events } => {
                let mut buf = [0u8; 512];
                let _ = events.read_at(&mut buf, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_registration_line_is_event_usage_threshold() {
        assert_eq!(registration_line(7, 9, 1 << 20), "7 9 1048576");
    }

    /// This process's own v1 memory cgroup, if the machine has one.
    fn own_v1() -> Option<CgroupMemory> {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let (_, p1) = super::super::cgroup::parse_proc_cgroup(&cgroups);
        let (_, m1) = super::super::cgroup::parse_mountinfo(&mounts);
        let dir = super::super::cgroup::resolve(&m1?, &p1?)?;
        dir.join("cgroup.event_control")
            .exists()
            .then_some(CgroupMemory {
                version: Version::V1,
                dir,
            })
    }

    #[test]
    fn a_v1_threshold_fires_when_usage_crosses_it_and_moves_only_by_a_step() {
        let Some(cg) = own_v1() else {
            // A machine with only cgroup v2: the poll file opens.
            let e = UsageEvent::register(
                &CgroupMemory {
                    version: Version::V2,
                    dir: PathBuf::from("/sys/fs/cgroup"),
                },
                0,
            );
            assert!(e.is_ok() || !std::path::Path::new("/sys/fs/cgroup/memory.events").exists());
            return;
        };
        let now = cg.usage().unwrap();
        let mut event = UsageEvent::register(&cg, now + (16 << 20)).unwrap();
        assert_eq!(event.threshold(), Some(now + (16 << 20)));
        assert!(!event.rearm(now + (16 << 20) + REARM_STEP - 1).unwrap());
        assert!(event.rearm(now + (8 << 20)).unwrap());
        let (fd, events) = event.source();
        let poll = |ms| {
            let mut p = libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, ms) }
        };
        // Charge 32 MiB to the cgroup: usage crosses the threshold.
        let mut grown = vec![0u8; 32 << 20];
        let start = Instant::now();
        let mut fired = false;
        for (i, b) in grown.iter_mut().enumerate().step_by(4096) {
            *b = i as u8;
        }
        while start.elapsed() < Duration::from_secs(5) {
            if poll(100) == 1 {
                fired = true;
                break;
            }
        }
        std::hint::black_box(&grown);
        assert!(fired, "no event within 5 s of usage crossing the threshold");
        event.consume();
        drop(grown);
    }

    #[test]
    fn a_cgroup_that_is_not_there_is_an_error() {
        for version in [Version::V1, Version::V2] {
            let cg = CgroupMemory {
                version,
                dir: PathBuf::from("/nonexistent/cgroup"),
            };
            assert!(matches!(
                UsageEvent::register(&cg, 1),
                Err(UsageEventError::Open { .. })
            ));
        }
    }
}
