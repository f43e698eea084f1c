//! Guest page states and the transitions the host accepts (seeds 000, 001).
//!
//! The guest state of a frame says what the host may do with it; the host
//! adds whether it is resident or discarded. One table of legal
//! transitions, used by the VMM to check every hint and by tests.

use crate::hypercall::hint;

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

/// The state after hint `op` on a frame in state `from`, or `None` if the
/// transition is illegal. `potentially_volatile` selects the option where a
/// writable mapping keeps a volatile page potentially volatile.
pub const fn transition(from: PageState, op: u16, potentially_volatile: bool) -> Option<PageState> {
    use PageState::*;
    match (op, from) {
        // Freeing works from any state; so does allocating.
        (hint::SET_UNUSED, _) => Some(Unused),
        (hint::SET_STABLE, _) => Some(Stable),
        // Only an allocated page can hold cache contents.
        (hint::MAKE_VOLATILE, Stable | Volatile | PotentiallyVolatile) => Some(Volatile),
        (hint::MAKE_VOLATILE, Unused) => None,
        (hint::MAKE_STABLE, Stable | Volatile | PotentiallyVolatile) => Some(Stable),
        (hint::MAKE_STABLE, Unused) => None,
        (hint::CHECK_WRITABLE, Volatile | PotentiallyVolatile) if potentially_volatile => {
            Some(PotentiallyVolatile)
        }
        (hint::CHECK_WRITABLE, Stable | Volatile | PotentiallyVolatile) => Some(Stable),
        (hint::CHECK_WRITABLE, Unused) => None,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PageState::*;

    #[test]
    fn the_transition_table() {
        assert_eq!(transition(Stable, hint::SET_UNUSED, false), Some(Unused));
        assert_eq!(transition(Unused, hint::SET_STABLE, false), Some(Stable));
        assert_eq!(
            transition(Stable, hint::MAKE_VOLATILE, false),
            Some(Volatile)
        );
        assert_eq!(transition(Unused, hint::MAKE_VOLATILE, false), None);
        assert_eq!(transition(Volatile, hint::MAKE_STABLE, false), Some(Stable));
        assert_eq!(transition(Unused, hint::MAKE_STABLE, false), None);
        assert_eq!(
            transition(Volatile, hint::CHECK_WRITABLE, false),
            Some(Stable)
        );
        assert_eq!(
            transition(Volatile, hint::CHECK_WRITABLE, true),
            Some(PotentiallyVolatile)
        );
        assert_eq!(transition(Stable, hint::CHECK_WRITABLE, true), Some(Stable));
        assert_eq!(transition(Stable, 99, false), None);
        assert!(!Stable.discardable() && Unused.discardable() && Volatile.discardable());
        for v in 0..4 {
            assert_eq!(PageState::from_u8(v).map(|s| s as u8), Some(v));
        }
        assert_eq!(PageState::from_u8(4), None);
    }
}
