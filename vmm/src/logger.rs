//! A minimal `log` backend: one line per record on stderr, level taken from
//! the `VMM_LOG` environment variable (`off`, `error`, `warn` (default),
//! `info`, `debug`, `trace`). It must never write to stdout, which belongs
//! to the guest console.

use std::io::Write;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
