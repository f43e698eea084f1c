//! The guest kernel's pure logic: data structures and parsers with no
//! hardware access, so they build and are unit-tested on the host.
//!
//! Nothing here may touch a port, a control register or a raw physical
//! address: that lives in the kernel binary (`src/main.rs` and below),
//! which supplies the hardware through small traits such as
//! [`paging::PhysMem`] and [`hinting::HintHost`].

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cmdline;
pub mod elf;
pub mod frame;
pub mod frames;
pub mod hinting;
pub mod noise;
pub mod paging;
pub mod phfs;
pub mod vma;
