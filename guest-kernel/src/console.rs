//! The console: a polled 16550 UART on COM1, and the `print!`/`println!`
//! macros.
//!
//! Every register access is a VM exit, so output is written a byte at a
//! time with one status poll each and nothing else. It must never block
//! for input or use interrupts.

use core::fmt::{self, Write};

use crate::arch::cpu::{inb, outb};
use crate::sync::SpinLock;
use pagehint_abi::ports::COM1_BASE;

const THR: u16 = COM1_BASE;
const LSR: u16 = COM1_BASE + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

struct Uart;

impl Uart {
    fn put(&mut self, b: u8) {
        while inb(LSR) & LSR_THR_EMPTY == 0 {
            core::hint::spin_loop();
        }
        outb(THR, b);
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

static CONSOLE: SpinLock<Uart> = SpinLock::new(Uart);

/// Writes formatted text under the console lock.
pub fn write_fmt(args: fmt::Arguments) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Writes raw bytes (a user program's output) under the console lock.
pub fn write_bytes(bytes: &[u8]) {
    let mut c = CONSOLE.lock();
    for &b in bytes {
        if b == b'\n' {
            c.put(b'\r');
        }
        c.put(b);
    }
}

/// Writes without waiting for the lock: for the panic and fatal-trap paths,
/// where the lock may be held by the CPU that failed.
pub fn write_fmt_unlocked(args: fmt::Arguments) {
    match CONSOLE.try_lock() {
        Some(mut c) => {
            let _ = c.write_fmt(args);
        }
        None => {
            let _ = Uart.write_fmt(args);
        }
    }
}

/// Prints a line to the console (`crate::console::println!`).
macro_rules! println {
    () => { $crate::console::write_fmt(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use println;
