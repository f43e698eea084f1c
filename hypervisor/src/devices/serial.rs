//! The guest console: a 16550 UART (vm-superio) on COM1 writing to stdout
//! through a bounded, non-blocking buffer (`console_out`).
//!
//! Output is line-buffered: the UART model flushes after every byte, so the
//! writer here only passes a flush on once a line is complete (the buffer
//! writes the rest, with a bounded wait, when the device is dropped). The UART raises IRQ 4 through an
//! eventfd registered as a KVM irqfd. This module must never block on, or
//! fail the guest because of, a broken stdout.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::pio::{PioDevice, PioOutcome};
use crate::metrics::Metrics;

/// Why the console could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The interrupt eventfd could not be created or duplicated.
    #[error("cannot create the serial interrupt eventfd: {0}")]
    EventFd(#[source] io::Error),
}

/// An eventfd that signals the UART's interrupt line.
#[derive(Debug)]
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A writer that forwards `flush` only at the end of a line.
#[derive(Debug)]
pub struct LineFlush<W: Write> {
    inner: W,
    line_done: bool,
}

impl<W: Write> LineFlush<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            line_done: false,
        }
    }

    /// The wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for LineFlush<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if n > 0 {
            self.line_done = buf[n - 1] == b'\n';
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.line_done {
            self.line_done = false;
            self.inner.flush()
        } else {
            Ok(())
        }
    }
}

/// COM1 on the port bus.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<IrqTrigger, NoEvents, LineFlush<W>>,
    metrics: Arc<Metrics>,
}

impl<W: Write + Send> std::fmt::Debug for SerialDevice<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl<W: Write + Send> SerialDevice<W> {
    /// A UART writing to `out`; returns it with a duplicate of its interrupt
    /// eventfd, to be registered as an irqfd.
    pub fn new(out: W, metrics: Arc<Metrics>) -> Result<(Self, EventFd), SerialError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let irq = evt.try_clone().map_err(SerialError::EventFd)?;
        let uart = Serial::new(IrqTrigger(evt), LineFlush::new(out));
        Ok((Self { uart, metrics }, irq))
    }

    /// The output writer (for tests).
    pub fn writer(&self) -> &W {
        self.uart.writer().get_ref()
    }
}

impl<W: Write + Send> PioDevice for SerialDevice<W> {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        if let (Some(first), Ok(reg)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(reg);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> PioOutcome {
        if let (Some(&value), Ok(reg)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(reg, value) {
                self.metrics.serial.write_errors.inc();
                log::debug!("serial: write of {value:#x} to register {reg} failed: {e}");
            }
        }
        PioOutcome::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_bytes_and_raises_the_irq() {
        let metrics = Arc::new(Metrics::default());
        let (mut dev, irq) = SerialDevice::new(Vec::new(), metrics).unwrap();
        // Enable the THR-empty interrupt, then send two bytes.
        dev.write(1, &[0x02]);
        dev.write(0, b"h");
        dev.write(0, b"\n");
        assert_eq!(dev.writer(), b"h\n");
        assert!(irq.read().unwrap() >= 1);
        let mut lsr = [0u8; 1];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        // Out-of-range registers and empty accesses never panic.
        dev.write(300, &[1]);
        dev.write(0, &[]);
        dev.read(0, &mut []);
    }

    #[test]
    fn line_flush_only_flushes_complete_lines() {
        struct Counting(usize);
        impl Write for Counting {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                self.0 += 1;
                Ok(())
            }
        }
        let mut w = LineFlush::new(Counting(0));
        w.write_all(b"ab").unwrap();
        w.flush().unwrap();
        assert_eq!(w.get_ref().0, 0);
        w.write_all(b"\n").unwrap();
        w.flush().unwrap();
        assert_eq!(w.get_ref().0, 1);
    }
}
