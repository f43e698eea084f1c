//! The frame-state core: what the host knows of every guest frame and the
//! one way it drops one. Both clients of guest frames stand on it: the hint
//! path (`crate::hypercall`), which changes frame states, and the host side
//! (`crate::reclaim`, `crate::discard_fault`), which claims, drops, arms and
//! settles frames.
//!
//! - [`table`]: the per-frame state table (the guest's hinted state plus
//!   the host's BUSY, DISCARDED and ARMED bits, and the host's own
//!   REGISTERED record), lock-free.
//! - [`shared`]: the guest's shared page-state table, when it registered
//!   one: the table's entries then live there.
//! - [`census`]: the shared table's entries counted by state, a word at a
//!   time.
//! - [`transition`]: which hint may move a frame between which states.
//! - [`run`]: runs of contiguous frames and their builder.
//! - [`host`]: the one mapping from a run of frames to a host range.
//! - [`discard`]: the one `MADV_DONTNEED` (and `process_madvise`), the
//!   settling of claimed chunks, and the [`discard::Arming`] trait through
//!   which discard faults are armed without this core knowing of them.
//!
//! This core must never import a client: it knows no thread, no policy
//! and no userfaultfd.

pub mod census;
pub mod discard;
pub mod host;
pub mod run;
pub mod shared;
pub mod table;
pub mod transition;

pub use census::FrameCounts;
pub use discard::{Arming, Discarder, Method, PassReport};
pub use host::{HostMap, HostRange};
pub use run::{Run, RunBuilder};
pub use shared::{ShareError, SharedEntries};
pub use table::{FrameTable, HintOutcome, StateError};
