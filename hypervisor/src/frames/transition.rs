//! The transitions the host accepts between guest page states (seeds 000,
//! 001): which hint may move a frame from which state to which. The frame
//! table checks every hint against it; nothing else decides a state.
//!
//! A pure function of its inputs; this module must never look at a frame.

use pagehint_abi::hypercall::HintOp;
use pagehint_abi::page_state::PageState;

/// The state after hint `op` on a frame in state `from`, or `None` if the
/// transition is illegal. `potentially_volatile` selects the option where a
/// writable mapping keeps a volatile page potentially volatile.
pub const fn transition(
    from: PageState,
    op: HintOp,
    potentially_volatile: bool,
) -> Option<PageState> {
    use PageState::*;
    match (op, from) {
        // Freeing works from any state; so does allocating.
        (HintOp::SetUnused, _) => Some(Unused),
        (HintOp::SetStable, _) => Some(Stable),
        // Only an allocated page can hold cache contents.
        (HintOp::MakeVolatile, Stable | Volatile | PotentiallyVolatile) => Some(Volatile),
        (HintOp::MakeVolatile, Unused) => None,
        (HintOp::MakeStable, Stable | Volatile | PotentiallyVolatile) => Some(Stable),
        (HintOp::MakeStable, Unused) => None,
        (HintOp::CheckWritable, Volatile | PotentiallyVolatile) if potentially_volatile => {
            Some(PotentiallyVolatile)
        }
        (HintOp::CheckWritable, Stable | Volatile | PotentiallyVolatile) => Some(Stable),
        (HintOp::CheckWritable, Unused) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PageState::*;

    #[test]
    fn the_transition_table() {
        assert_eq!(transition(Stable, HintOp::SetUnused, false), Some(Unused));
        assert_eq!(transition(Unused, HintOp::SetStable, false), Some(Stable));
        assert_eq!(
            transition(Stable, HintOp::MakeVolatile, false),
            Some(Volatile)
        );
        assert_eq!(transition(Unused, HintOp::MakeVolatile, false), None);
        assert_eq!(
            transition(Volatile, HintOp::MakeStable, false),
            Some(Stable)
        );
        assert_eq!(transition(Unused, HintOp::MakeStable, false), None);
        assert_eq!(
            transition(Volatile, HintOp::CheckWritable, false),
            Some(Stable)
        );
        assert_eq!(
            transition(Volatile, HintOp::CheckWritable, true),
            Some(PotentiallyVolatile)
        );
        assert_eq!(
            transition(Stable, HintOp::CheckWritable, true),
            Some(Stable)
        );
        assert_eq!(transition(Unused, HintOp::CheckWritable, true), None);
    }
}
