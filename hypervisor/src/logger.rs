//! A minimal `log` backend: one line per record on stderr, level taken from
//! the `VMM_LOG` environment variable (`off`, `error`, `warn` (default),
//! `info`, `debug`, `trace`). It must never write to stdout, which belongs
//! to the guest console.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use log::{LevelFilter, Log, Metadata, Record};

/// The environment variable that sets the level.
pub const ENV_VAR: &str = "VMM_LOG";

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_ascii_lowercase();
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "vmm: {level}: {}", record.args());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Parses a level name; unknown names give `None`.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    s.trim().parse().ok()
}

/// Installs the logger. A second call does nothing.
pub fn init() {
    let level = match std::env::var(ENV_VAR) {
        Ok(v) => parse_level(&v).unwrap_or(LevelFilter::Warn),
        Err(_) => LevelFilter::Warn,
    };
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Lets at most `per_second` log lines through each second, from any
/// thread, without a lock: for messages the guest can provoke at will.
#[derive(Debug)]
pub struct RateLimit {
    start: Instant,
    /// (second since `start`) << 20 | lines allowed in that second.
    window: AtomicU64,
    per_second: u64,
}

impl RateLimit {
    /// A limiter letting `per_second` lines through each second.
    pub fn new(per_second: u64) -> Self {
        Self {
            start: Instant::now(),
            window: AtomicU64::new(0),
            per_second: per_second.min(0xf_ffff),
        }
    }

    /// True if one more line may be logged now.
    pub fn allow(&self) -> bool {
        self.allow_at(self.start.elapsed().as_secs())
    }

    fn allow_at(&self, second: u64) -> bool {
        let second = second & ((1 << 44) - 1);
        let mut cur = self.window.load(Ordering::Relaxed);
        loop {
            let (sec, n) = (cur >> 20, cur & 0xf_ffff);
            let next = if sec != second {
                (second << 20) | 1
            } else if n < self.per_second {
                cur + 1
            } else {
                return false;
            };
            match self
                .window
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_a_few_lines_through_each_second() {
        let r = RateLimit::new(3);
        let first: Vec<bool> = (0..5).map(|_| r.allow_at(7)).collect();
        assert_eq!(first, [true, true, true, false, false]);
        assert!(r.allow_at(8));
        assert!(r.allow());
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
