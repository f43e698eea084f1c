//! Architecture support. Only x86-64 exists; the indirection keeps
//! `crate::arch::...` paths stable if another architecture is added.

pub mod x86_64;
pub use self::x86_64::*;
