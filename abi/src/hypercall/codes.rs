//! The hint operations and result codes as enums, over the wire numbers of
//! [`super::hint`] and [`super::result`].
//!
//! Converting a wire value that names nothing gives back the value as the
//! error; nothing here may panic on what the other side wrote.

use super::wire::{hint, result, HintEntry};
use crate::Pfn;

/// A page-state hint, the `op` of a [`HintEntry`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HintOp {
    /// [`hint::SET_UNUSED`]: the frames were freed.
    SetUnused = hint::SET_UNUSED,
    /// [`hint::SET_STABLE`]: the frames are being allocated.
    SetStable = hint::SET_STABLE,
    /// [`hint::MAKE_VOLATILE`]: a clean cache page the host may drop.
    MakeVolatile = hint::MAKE_VOLATILE,
    /// [`hint::MAKE_STABLE`]: the guest is about to use a volatile page.
    MakeStable = hint::MAKE_STABLE,
    /// [`hint::CHECK_WRITABLE`]: the first writable PTE is about to be set.
    CheckWritable = hint::CHECK_WRITABLE,
}

impl HintOp {
    /// Every hint, in wire order.
    pub const ALL: [HintOp; 5] = [
        HintOp::SetUnused,
        HintOp::SetStable,
        HintOp::MakeVolatile,
        HintOp::MakeStable,
        HintOp::CheckWritable,
    ];

    /// True for the hints that name a run of `count` frames; the others
    /// name exactly one (`count` = 1).
    pub const fn takes_range(self) -> bool {
        matches!(self, HintOp::SetUnused | HintOp::SetStable)
    }
}

impl From<HintOp> for u16 {
    fn from(op: HintOp) -> u16 {
        op as u16
    }
}

impl TryFrom<u16> for HintOp {
    /// The unknown wire value.
    type Error = u16;
    fn try_from(v: u16) -> Result<Self, u16> {
        match v {
            hint::SET_UNUSED => Ok(HintOp::SetUnused),
            hint::SET_STABLE => Ok(HintOp::SetStable),
            hint::MAKE_VOLATILE => Ok(HintOp::MakeVolatile),
            hint::MAKE_STABLE => Ok(HintOp::MakeStable),
            hint::CHECK_WRITABLE => Ok(HintOp::CheckWritable),
            other => Err(other),
        }
    }
}

/// The result of a hypercall (`HypercallBlock::result`, 32 bits) or of one
/// hint (`HintEntry::result`, the same codes in 16 bits: see
/// [`HintResult`]).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallResult {
    /// [`result::OK`].
    Ok = result::OK,
    /// [`result::DISCARDED`]: hints only, the frame's contents are gone.
    Discarded = result::DISCARDED,
    /// [`result::UNKNOWN_OP`].
    UnknownOp = result::UNKNOWN_OP,
    /// [`result::BAD_ARGUMENT`].
    BadArgument = result::BAD_ARGUMENT,
    /// [`result::BAD_BLOCK`].
    BadBlock = result::BAD_BLOCK,
    /// [`result::BAD_VERSION`].
    BadVersion = result::BAD_VERSION,
    /// [`result::ILLEGAL_TRANSITION`].
    IllegalTransition = result::ILLEGAL_TRANSITION,
    /// [`result::HINTS_DISABLED`].
    HintsDisabled = result::HINTS_DISABLED,
}

/// The result of one hint. The same codes as a call's, carried in 16
/// bits; an entry only ever gets `Ok`, `Discarded`, `UnknownOp`,
/// `BadArgument` or `IllegalTransition`.
pub type HintResult = CallResult;

impl CallResult {
    /// Every code, in wire order of appearance in [`result`].
    pub const ALL: [CallResult; 8] = [
        CallResult::Ok,
        CallResult::Discarded,
        CallResult::UnknownOp,
        CallResult::BadArgument,
        CallResult::BadBlock,
        CallResult::BadVersion,
        CallResult::IllegalTransition,
        CallResult::HintsDisabled,
    ];

    /// True for `Ok` and `Discarded`: the request was carried out.
    pub const fn is_success(self) -> bool {
        matches!(self, CallResult::Ok | CallResult::Discarded)
    }
}

impl From<CallResult> for i32 {
    fn from(r: CallResult) -> i32 {
        r as i32
    }
}

impl From<CallResult> for i16 {
    fn from(r: CallResult) -> i16 {
        // Every code is in -6..=1, so it fits.
        r as i32 as i16
    }
}

impl TryFrom<i32> for CallResult {
    /// The unknown wire value.
    type Error = i32;
    fn try_from(v: i32) -> Result<Self, i32> {
        match v {
            result::OK => Ok(CallResult::Ok),
            result::DISCARDED => Ok(CallResult::Discarded),
            result::UNKNOWN_OP => Ok(CallResult::UnknownOp),
            result::BAD_ARGUMENT => Ok(CallResult::BadArgument),
            result::BAD_BLOCK => Ok(CallResult::BadBlock),
            result::BAD_VERSION => Ok(CallResult::BadVersion),
            result::ILLEGAL_TRANSITION => Ok(CallResult::IllegalTransition),
            result::HINTS_DISABLED => Ok(CallResult::HintsDisabled),
            other => Err(other),
        }
    }
}

impl TryFrom<i16> for CallResult {
    /// The unknown wire value.
    type Error = i16;
    fn try_from(v: i16) -> Result<Self, i16> {
        CallResult::try_from(i32::from(v)).map_err(|_| v)
    }
}

impl HintEntry {
    /// An entry for `count` frames from `pfn` (1 for the single-page
    /// hints), its result cleared.
    pub const fn new(op: HintOp, pfn: Pfn, count: u32) -> Self {
        Self {
            pfn: pfn.0,
            count,
            op: op as u16,
            result: 0,
        }
    }
    /// The hint, or the unknown wire value.
    pub fn op(&self) -> Result<HintOp, u16> {
        HintOp::try_from(self.op)
    }
    /// The first frame.
    pub const fn frame(&self) -> Pfn {
        Pfn(self.pfn)
    }
    /// What the VMM answered (meaningful after the batch was sent), or the
    /// unknown wire value.
    pub fn outcome(&self) -> Result<HintResult, i16> {
        HintResult::try_from(self.result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_ops_round_trip_and_unknown_ones_are_refused() {
        for op in HintOp::ALL {
            assert_eq!(HintOp::try_from(u16::from(op)), Ok(op));
        }
        assert_eq!(HintOp::SetStable as u16, hint::SET_STABLE);
        for bad in [0u16, 6, 99, u16::MAX] {
            assert_eq!(HintOp::try_from(bad), Err(bad));
        }
        assert!(HintOp::SetUnused.takes_range() && !HintOp::MakeStable.takes_range());
    }

    #[test]
    fn results_round_trip_in_both_widths() {
        for r in CallResult::ALL {
            assert_eq!(CallResult::try_from(i32::from(r)), Ok(r));
            assert_eq!(HintResult::try_from(i16::from(r)), Ok(r));
        }
        assert_eq!(i32::from(CallResult::HintsDisabled), result::HINTS_DISABLED);
        for bad in [2i32, -7, i32::MIN, i32::MAX] {
            assert_eq!(CallResult::try_from(bad), Err(bad));
        }
        assert_eq!(HintResult::try_from(i16::MIN), Err(i16::MIN));
        assert!(CallResult::Discarded.is_success() && !CallResult::BadBlock.is_success());
    }

    #[test]
    fn entries_are_built_and_read_through_the_enums() {
        let mut e = HintEntry::new(HintOp::SetUnused, Pfn(0x42), 3);
        assert_eq!(
            e,
            HintEntry {
                pfn: 0x42,
                count: 3,
                op: hint::SET_UNUSED,
                result: 0
            }
        );
        assert_eq!(
            (e.op(), e.frame(), e.outcome()),
            (Ok(HintOp::SetUnused), Pfn(0x42), Ok(CallResult::Ok))
        );
        e.result = result::DISCARDED as i16;
        assert_eq!(e.outcome(), Ok(HintResult::Discarded));
        e.op = 77;
        e.result = 9;
        assert_eq!((e.op(), e.outcome()), (Err(77), Err(9)));
    }
}
