//! Guest page states and the transitions the host accepts (seeds 000, 001).
//!
//! The guest state of a frame says what the host may do with it; the host
//! adds whether it is resident or discarded. Which hint may move a frame
//! between states is the VMM's decision (its frame-state core), not the
//! ABI's; `docs/abi.md` documents it.

/// The guest's state of a frame, as the host records it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Contents must be kept (every frame starts here).
    Stable = 0,
    /// Free: contents may be dropped.
    Unused = 1,
    /// A clean page-cache page: the host may drop it; the guest must ask
    /// (`MAKE_STABLE`) before using it again.
    Volatile = 2,
    /// Volatile but mapped writable: the host may drop it only after
    /// proving it clean (the VMM's dirty-log option).
    PotentiallyVolatile = 3,
}

impl PageState {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Stable),
            1 => Some(Self::Unused),
            2 => Some(Self::Volatile),
            3 => Some(Self::PotentiallyVolatile),
            _ => None,
        }
    }

    /// May the host discard a frame in this state?
    pub const fn discardable(self) -> bool {
        !matches!(self, Self::Stable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PageState::*;

    #[test]
    fn states_round_trip_and_only_stable_is_kept() {
        assert!(!Stable.discardable() && Unused.discardable() && Volatile.discardable());
        assert!(PotentiallyVolatile.discardable());
        for v in 0..4 {
            assert_eq!(PageState::from_u8(v).map(|s| s as u8), Some(v));
        }
        assert_eq!(PageState::from_u8(4), None);
    }
}
