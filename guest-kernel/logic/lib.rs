//! The guest kernel's pure logic: data structures and parsers with no
//! hardware access, so they build and are unit-tested on the host. This
//! folder is the `guest_logic` library; the kernel binary (`src/`) is
//! built on it.
//!
//! Nothing here may touch a port, a control register or a raw physical
//! address: that lives in the kernel binary (`src/main.rs` and below),
//! which supplies the hardware through small traits such as
//! [`paging::PhysMem`] and [`hint_state::HintHost`].

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cmdline;
pub mod elf;
pub mod frame_alloc;
pub mod frame_table;
pub mod hint_state;
pub mod le;
pub mod noise_plan;
pub mod paging;
pub mod phfs;
pub mod vma;
