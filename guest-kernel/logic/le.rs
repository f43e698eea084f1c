//! Little-endian integers at byte offsets of an on-disk or in-file
//! structure (ELF headers, PHFS blocks), read without alignment.
//!
//! Offsets are the caller's to check: a read past the end panics, as a
//! slice index does; nothing here may guess at a layout.

/// The `u16` at `off`.
pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

/// The `u32` at `off`.
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The `u64` at `off`.
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(x)
}
