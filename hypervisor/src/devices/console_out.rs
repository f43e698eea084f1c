//! Where the guest console's bytes go: stdout, without ever blocking the
//! vCPU that wrote them.
//!
//! A guest can write its console faster than stdout drains (a pipe whose
//! reader is slow or stopped, a terminal on hold). Writing straight to
//! stdout would then block a vCPU thread inside `write(2)`, where the
//! VMM's stop (a `--timeout`, a signal, another vCPU's exit) cannot reach
//! it: the run would last as long as the reader stalls. So the bytes go to
//! a bounded buffer, and the buffer goes to stdout only as far as `poll`
//! says stdout takes them without blocking; what does not fit in the
//! buffer is dropped and counted (`serial.dropped_bytes`). When the
//! device is dropped, the rest gets a bounded wait ([`FINAL_WAIT`]) and is
//! dropped (and counted) after it.
//!
//! It must never block for longer than that final wait, never hold more
//! than [`CAPACITY`] bytes, and never fail the guest because of stdout:
//! a broken stdout (closed, `EPIPE`) only drops output.

use std::io::{self, Write};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Most bytes held for a stdout that does not take them.
pub const CAPACITY: usize = 64 * 1024;
/// Bytes handed to one `write(2)`: a pipe that `poll` says is writable
/// has room for at least one page, so a write this size never blocks.
const CHUNK: usize = 4096;
/// How long the last bytes may wait for stdout when the VMM stops.
pub const FINAL_WAIT: Duration = Duration::from_millis(500);

/// A non-blocking, bounded writer to a file descriptor (stdout in the
/// VMM; a pipe in the tests).
pub struct ConsoleOut {
    fd: RawFd,
    pending: Vec<u8>,
    /// Set once stdout is gone (closed, `EPIPE`): every later byte is
    /// dropped at once.
    broken: bool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ConsoleOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOut")
            .field("fd", &self.fd)
            .field("pending", &self.pending.len())
            .field("broken", &self.broken)
            .finish()
    }
}

impl ConsoleOut {
    /// Writes to `fd`, which the caller keeps open for as long as this
    /// writer lives (stdout, for the VMM).
    pub fn new(fd: RawFd, metrics: Arc<Metrics>) -> Self {
        Self {
            fd,
            pending: Vec::with_capacity(CHUNK),
            broken: false,
            metrics,
        }
    }

    /// Bytes held, not yet written.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether `fd` takes bytes now, or within `wait`.
    fn writable(&self, wait: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        // POLLOUT, or an error or hang-up that the write will report.
        n == 1 && p.revents != 0
    }

    /// Writes what stdout takes now (waiting at most `wait` each time it
    /// is full); returns whether everything went out.
    fn drain(&mut self, wait: Duration) -> bool {
        while !self.pending.is_empty() && !self.broken {
            if !self.writable(wait) {
                self.metrics.serial.stalls.inc();
                return false;
            }
            let n = self.pending.len().min(CHUNK);
            // SAFETY: `pending[..n]` is initialised memory we own; `fd` is
            // open for as long as we live (the caller's promise).
            let r = unsafe { libc::write(self.fd, self.pending.as_ptr().cast(), n) };
            if r > 0 {
                self.pending.drain(..r as usize);
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                _ => {
                    log::debug!("serial: stdout is gone ({e}); console output dropped");
                    self.broken = true;
                }
            }
        }
        if self.broken {
            self.drop_pending();
        }
        self.pending.is_empty()
    }

    fn drop_pending(&mut self) {
        self.metrics
            .serial
            .dropped_bytes
            .add(self.pending.len() as u64);
        self.pending.clear();
    }
}

impl Write for ConsoleOut {
    /// Takes every byte: held while there is room, dropped (and counted)
    /// when there is none. Writes out whole chunks as they fill.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.broken {
            self.metrics.serial.dropped_bytes.add(buf.len() as u64);
            return Ok(buf.len());
        }
        let room = CAPACITY - self.pending.len();
        let take = buf.len().min(room);
        self.pending.extend_from_slice(&buf[..take]);
        if take < buf.len() {
            self.metrics
                .serial
                .dropped_bytes
                .add((buf.len() - take) as u64);
        }
        if self.pending.len() >= CHUNK {
            self.drain(Duration::ZERO);
        }
        Ok(buf.len())
    }

    /// Writes out what stdout takes now, without waiting.
    fn flush(&mut self) -> io::Result<()> {
        self.drain(Duration::ZERO);
        Ok(())
    }
}

impl Drop for ConsoleOut {
    /// The last bytes get [`FINAL_WAIT`] in all; the rest is dropped.
    fn drop(&mut self) {
        let end = Instant::now() + FINAL_WAIT;
        while !self.pending.is_empty() && !self.broken {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() || (!self.drain(left) && Instant::now() >= end) {
                break;
            }
        }
        self.drop_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn pipe() -> (std::fs::File, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors are fresh and owned by nobody else.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                OwnedFd::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn a_reader_that_keeps_up_gets_every_byte_in_order() {
        let metrics = Arc::new(Metrics::default());
        let (mut rd, wr) = pipe();
        let mut out = ConsoleOut::new(wr.as_raw_fd(), metrics.clone());
        out.write_all(b"hello\n").unwrap();
        out.flush().unwrap();
        let mut buf = [0u8; 6];
        rd.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello\n");
        assert_eq!(out.pending(), 0);
        assert_eq!(metrics.serial.dropped_bytes.get(), 0);
    }

    #[test]
    fn a_stalled_reader_never_blocks_the_writer_and_holds_memory_bounded() {
        let metrics = Arc::new(Metrics::default());
        let (rd, wr) = pipe();
        let mut out = ConsoleOut::new(wr.as_raw_fd(), metrics.clone());
        // Far more than the pipe (64 KiB) and the buffer hold, with
        // nobody reading: every call returns at once.
        let line = [b'x'; 1000];
        let t = Instant::now();
        for _ in 0..1000 {
            out.write_all(&line).unwrap();
            out.flush().unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(out.pending() <= CAPACITY);
        let dropped = metrics.serial.dropped_bytes.get();
        assert!(dropped > 0 && dropped < 1_000_000, "{dropped}");
        assert!(metrics.serial.stalls.get() > 0);
        // Dropping waits at most FINAL_WAIT for the stalled reader, and
        // counts what it could not write.
        let t = Instant::now();
        drop(out);
        assert!(t.elapsed() < FINAL_WAIT + Duration::from_secs(1));
        // Everything written plus everything dropped is everything sent.
        let mut got = Vec::new();
        drop(wr);
        let mut rd = rd;
        rd.read_to_end(&mut got).unwrap();
        assert_eq!(
            got.len() as u64 + metrics.serial.dropped_bytes.get(),
            1_000_000
        );
    }

    #[test]
    fn a_closed_reader_drops_output_without_an_error() {
        let metrics = Arc::new(Metrics::default());
        let (rd, wr) = pipe();
        drop(rd);
        let mut out = ConsoleOut::new(wr.as_raw_fd(), metrics.clone());
        out.write_all(&[b'y'; 10_000]).unwrap();
        out.flush().unwrap();
        out.write_all(b"more\n").unwrap();
        drop(out);
        assert_eq!(metrics.serial.dropped_bytes.get(), 10_005);
    }
}
