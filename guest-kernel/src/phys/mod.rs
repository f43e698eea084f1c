//! Physical memory, below every driver and every address space: the frame
//! allocator and heap, the per-CPU frame pools with their page hints, the
//! discard list, free page reporting, TLB shootdowns, and the hinting
//! self-tests that write garbage on purpose (noise, scribble).
//!
//! Nothing in this folder may reach up to the page cache, an address
//! space, a driver or the scheduler.

pub mod allocator;
pub mod discard;
pub mod hints;
pub mod noise;
pub mod pages;
pub mod report;
pub mod scribble;
pub mod tlb;
