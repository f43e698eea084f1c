//! The transitions the host accepts between guest page states (seeds 000,
//! 001): which hint may move a frame from which state to which. The frame
//! table checks every hint against it; nothing else decides a state.
//!
//! A pure function of its inputs; this module must never look at a frame.

use pagehint_abi::hypercall::hint;
use pagehint_abi::page_state::PageState;

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
        assert_eq!(transition(Unused, hint::CHECK_WRITABLE, true), None);
        assert_eq!(transition(Stable, 99, false), None);
    }
}
