//! Pure helpers of the user programs, unit-tested on the host: argument
//! parsing, a fixed-buffer formatter (user programs have no heap) and the
//! `kv` program's key distribution (`zipf`).

#![cfg_attr(not(test), no_std)]

use core::fmt;

pub mod zipf;

/// A `fmt::Write` into a fixed buffer; output past the end is dropped.
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> LineBuf<N> {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> fmt::Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Splits `args` into the program name and the rest.
pub fn split_program(args: &str) -> (&str, &str) {
    match args.trim().split_once(' ') {
        Some((p, rest)) => (p, rest.trim()),
        None => (args.trim(), ""),
    }
}

/// The first word of `rest` as a number, or `default`.
pub fn arg_u64(rest: &str, default: u64) -> u64 {
    rest.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn line_buffer_truncates_instead_of_overflowing() {
        let mut b = LineBuf::<8>::default();
        write!(b, "hello {}", 12345).unwrap();
        assert_eq!(b.as_bytes(), b"hello 12");
    }

    #[test]
    fn program_and_arguments() {
        assert_eq!(split_program("preempt 300"), ("preempt", "300"));
        assert_eq!(split_program("hello"), ("hello", ""));
        assert_eq!(arg_u64("300 x", 5), 300);
        assert_eq!(arg_u64("x", 5), 5);
        assert_eq!(arg_u64("", 5), 5);
    }
}
