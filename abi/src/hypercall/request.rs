//! The hypercalls as a typed request, encoded into and decoded from the
//! positional [`HypercallBlock`], so that neither side indexes `args`.
//!
//! Decoding checks only what the block alone can tell: the operation code.
//! Everything that needs guest memory or the VMM's configuration (the
//! block's and the batch's alignment and place in RAM, the entry count
//! against the batch header, the ABI version, the CPU index) stays the
//! VMM's check, with the result codes `docs/abi.md` lists. Arguments are
//! carried at full width, so a decoded request says exactly what the
//! guest wrote.

use super::wire::{op, HypercallBlock};
use crate::GuestPhys;

/// One hypercall and its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// [`op::HELLO`]: the handshake. `version` is the ABI version the guest
    /// speaks (`args[0]`), `cpu` its CPU index (`args[1]`).
    Hello { version: u64, cpu: u64 },
    /// [`op::HINT_BATCH`]: `batch` is the address of a
    /// [`super::wire::HintBatch`] page (`args[0]`), `count` the entries to apply
    /// (`args[1]`, 1..=[`super::wire::HINT_BATCH_MAX`]).
    HintBatch { batch: GuestPhys, count: u64 },
    /// [`op::SET_FAULT_INFO`]: `info` is the address of this vCPU's
    /// [`super::wire::DiscardFaultInfo`] (`args[0]`), `cpu` the vCPU index
    /// (`args[1]`).
    SetFaultInfo { info: GuestPhys, cpu: u64 },
    /// [`op::SET_STATE_TABLE`]: `table` is the address of the shared
    /// page-state table (`args[0]`), `entries` its length in frames
    /// (`args[1]`).
    SetStateTable { table: GuestPhys, entries: u64 },
}

/// Why a block is not a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// `op` names no hypercall (answered [`super::codes::CallResult::UnknownOp`]).
    UnknownOp(u32),
}

impl DecodeError {
    /// The result code the VMM answers for it.
    pub const fn result(self) -> super::codes::CallResult {
        match self {
            DecodeError::UnknownOp(_) => super::codes::CallResult::UnknownOp,
        }
    }
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::UnknownOp(op) => write!(f, "unknown op {op}"),
        }
    }
}

impl Request {
    /// The operation code.
    pub const fn op(&self) -> u32 {
        match self {
            Request::Hello { .. } => op::HELLO,
            Request::HintBatch { .. } => op::HINT_BATCH,
            Request::SetFaultInfo { .. } => op::SET_FAULT_INFO,
            Request::SetStateTable { .. } => op::SET_STATE_TABLE,
        }
    }

    /// The block for this request: unused arguments and `result` zero.
    pub const fn encode(&self) -> HypercallBlock {
        let (a0, a1) = match *self {
            Request::Hello { version, cpu } => (version, cpu),
            Request::HintBatch { batch, count } => (batch.0, count),
            Request::SetFaultInfo { info, cpu } => (info.0, cpu),
            Request::SetStateTable { table, entries } => (table.0, entries),
        };
        HypercallBlock {
            op: self.op(),
            result: 0,
            args: [a0, a1, 0, 0, 0, 0, 0],
        }
    }

    /// The request a block carries. Unused arguments are ignored.
    pub const fn decode(block: &HypercallBlock) -> Result<Request, DecodeError> {
        let [a0, a1, ..] = block.args;
        match block.op {
            op::HELLO => Ok(Request::Hello {
                version: a0,
                cpu: a1,
            }),
            op::HINT_BATCH => Ok(Request::HintBatch {
                batch: GuestPhys(a0),
                count: a1,
            }),
            op::SET_FAULT_INFO => Ok(Request::SetFaultInfo {
                info: GuestPhys(a0),
                cpu: a1,
            }),
            op::SET_STATE_TABLE => Ok(Request::SetStateTable {
                table: GuestPhys(a0),
                entries: a1,
            }),
            other => Err(DecodeError::UnknownOp(other)),
        }
    }
}

impl TryFrom<&HypercallBlock> for Request {
    type Error = DecodeError;
    fn try_from(b: &HypercallBlock) -> Result<Self, DecodeError> {
        Request::decode(b)
    }
}

impl From<Request> for HypercallBlock {
    fn from(r: Request) -> Self {
        r.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ABI_VERSION;

    #[test]
    fn every_request_round_trips_through_a_block() {
        let reqs = [
            Request::Hello {
                version: u64::from(ABI_VERSION),
                cpu: 3,
            },
            Request::HintBatch {
                batch: GuestPhys(0x10_0000),
                count: 255,
            },
            Request::SetFaultInfo {
                info: GuestPhys(0x9040),
                cpu: 1,
            },
            Request::SetStateTable {
                table: GuestPhys(0x40_0000),
                entries: 8192,
            },
            Request::Hello {
                version: u64::MAX,
                cpu: u64::MAX,
            },
        ];
        for r in reqs {
            let b = r.encode();
            assert_eq!(b.result, 0);
            assert_eq!(b.args[2..], [0; 5]);
            assert_eq!(Request::decode(&b), Ok(r));
            assert_eq!(Request::try_from(&HypercallBlock::from(r)), Ok(r));
        }
    }

    #[test]
    fn the_wire_format_is_positional_as_documented() {
        let b = Request::HintBatch {
            batch: GuestPhys(0x7000),
            count: 9,
        }
        .encode();
        assert_eq!((b.op, b.args[0], b.args[1]), (op::HINT_BATCH, 0x7000, 9));
        let b = Request::SetFaultInfo {
            info: GuestPhys(0x9000),
            cpu: 2,
        }
        .encode();
        assert_eq!(
            (b.op, b.args[0], b.args[1]),
            (op::SET_FAULT_INFO, 0x9000, 2)
        );
        let b = Request::Hello { version: 1, cpu: 0 }.encode();
        assert_eq!((b.op, b.args[0], b.args[1]), (op::HELLO, 1, 0));
        let b = Request::SetStateTable {
            table: GuestPhys(0x5000),
            entries: 4096,
        }
        .encode();
        assert_eq!(
            (b.op, b.args[0], b.args[1]),
            (op::SET_STATE_TABLE, 0x5000, 4096)
        );
    }

    #[test]
    fn unknown_ops_are_refused() {
        for bad in [0u32, 5, 77, 12345, u32::MAX] {
            let b = HypercallBlock {
                op: bad,
                result: 0,
                args: [1; 7],
            };
            let e = Request::decode(&b).unwrap_err();
            assert_eq!(e, DecodeError::UnknownOp(bad));
            assert_eq!(e.result(), crate::hypercall::CallResult::UnknownOp);
        }
    }

    #[test]
    fn unused_arguments_are_ignored() {
        let mut b = Request::Hello { version: 1, cpu: 0 }.encode();
        b.args[6] = 0xdead;
        b.result = 5;
        assert_eq!(
            Request::decode(&b),
            Ok(Request::Hello { version: 1, cpu: 0 })
        );
    }
}
