//! Fuzz target: the hypercall doorbell, `HypercallDevice::write`, with
//! blocks, addresses and access widths the fuzzer chooses, and the ABI's
//! `Request` decoding under it.
//!
//! Asserts: `Request::decode` and `encode` round-trip; a block is answered
//! exactly when the `out` was 4 bytes at offset 0 and the block is 64-byte
//! aligned and wholly in RAM; an answered block gets the result the ABI
//! names for its operation (version check, unknown op, hinting off, ...),
//! and nothing of the block but `result` changes; an unanswered one is left
//! alone; the frame counts always add up to the table's frames. It must
//! never build its expectations from the code under test.

#![no_main]

use std::sync::Arc;

use hypervisor::frames::FrameTable;
use hypervisor::hypercall::reporting::FreePageReporter;
use hypervisor::hypercall::HypercallDevice;
use hypervisor::metrics::Metrics;
use libfuzzer_sys::fuzz_target;
use pagehint_abi::hypercall::{op, result, HypercallBlock, Request};
use pagehint_abi::{ABI_VERSION, PAGE_SIZE};
use pagehint_fuzz::{ram, Input, RAM_SIZE};
use vm_memory::{Bytes, GuestAddress};

/// Bytes of the block.
const BLOCK: usize = 64;
/// Doorbell writes per input.
const MAX_CALLS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let ram = ram();
    let frames = ram.frames();
    let metrics = Arc::new(Metrics::default());
    let table = Arc::new(FrameTable::new(frames as usize, input.bool()));
    let hinting = input.bool();
    let shared = input.bool();
    let reporting = input.bool();
    let mut dev = HypercallDevice::new(ram.clone(), metrics, table.clone(), hinting);
    if shared {
        dev = dev.with_shared_states();
    }
    if reporting {
        dev = dev.with_free_page_reporting(FreePageReporter::new(&ram));
    }
    let mem = ram.mem();
    let mut table_shared = false;

    for _ in 0..MAX_CALLS {
        if input.is_empty() {
            break;
        }
        let mut gpa = input.gpa();
        if input.u8() % 4 != 0 {
            gpa &= !63;
        }
        let mut raw = [0u8; BLOCK];
        let b = input.bytes(BLOCK);
        raw[..b.len()].copy_from_slice(b);
        let mut block = HypercallBlock {
            op: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
            result: i32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
            args: [0; 7],
        };
        for (i, a) in block.args.iter_mut().enumerate() {
            let at = 8 + i * 8;
            let mut w = [0u8; 8];
            w.copy_from_slice(&raw[at..at + 8]);
            *a = u64::from_le_bytes(w);
        }
        // Steer towards the known operations and sensible arguments.
        match input.u8() % 8 {
            0 => {}
            k => {
                block.op = u32::from(k % 5);
                if input.bool() {
                    block.args[0] = input.gpa() & !(PAGE_SIZE - 1);
                }
                match block.op {
                    op::HELLO if input.bool() => block.args[0] = u64::from(ABI_VERSION),
                    op::SET_STATE_TABLE if input.bool() => block.args[1] = frames,
                    op::HINT_BATCH => block.args[1] %= 300,
                    _ => {}
                }
            }
        }
        // The decoded request says exactly what the block says.
        match Request::decode(&block) {
            Ok(r) => {
                assert_eq!(r.op(), block.op);
                let back = r.encode();
                assert_eq!(
                    (back.op, back.args[0], back.args[1]),
                    (block.op, block.args[0], block.args[1])
                );
                assert_eq!(Request::decode(&back), Ok(r));
            }
            Err(_) => assert!(!(op::HELLO..=op::SET_STATE_TABLE).contains(&block.op)),
        }
        let placed = mem.write_obj(block, GuestAddress(gpa)).is_ok();
        // A batch page for HINT_BATCH: the fuzzer's bytes.
        let batch = block.args[0];
        if block.op == op::HINT_BATCH && batch % PAGE_SIZE == 0 && batch < RAM_SIZE {
            let page = input.bytes(PAGE_SIZE as usize);
            let _ = mem.write_slice(page, GuestAddress(batch));
        }

        let width = match input.u8() % 16 {
            0 => 0,
            1 => 1,
            2 => 2,
            3 => 8,
            _ => 4,
        };
        let offset = u16::from(input.u8() % 32 == 0);
        let bytes = (gpa as u32).to_le_bytes();
        let mut out = [0u8; 8];
        out[..4.min(width)].copy_from_slice(&bytes[..4.min(width)]);
        let before: Option<HypercallBlock> = mem.read_obj(GuestAddress(gpa)).ok();
        dev.write(offset, &out[..width]);
        let after: Option<HypercallBlock> = mem.read_obj(GuestAddress(gpa)).ok();

        // The doorbell's own checks, restated: 32-bit out at offset 0, a
        // 32-bit address, aligned, the whole block in RAM.
        let answered = width == 4
            && offset == 0
            && gpa <= u64::from(u32::MAX)
            && gpa % 64 == 0
            && gpa + BLOCK as u64 <= RAM_SIZE;
        assert!(!answered || placed, "answered a block we could not place");
        let (Some(before), Some(after)) = (before, after) else {
            assert!(!answered);
            continue;
        };
        // A batch, a report or a shared table may lie on the block's own
        // page and rewrite it (the guest's own doing); only an op that
        // touches no other memory pins the whole block.
        let touches_memory = matches!(block.op, op::HINT_BATCH | op::SET_STATE_TABLE);
        if !answered {
            if !touches_memory || !hinting {
                assert_eq!(after, before, "an unanswered block changed");
            }
            continue;
        }
        if touches_memory && (hinting || block.op == op::SET_STATE_TABLE) {
            // Each op answers a documented code; the memory checks are the
            // hint_batch and state_table targets'.
            if block.op == op::SET_STATE_TABLE && after.result == result::OK {
                assert!(shared && !table_shared, "a second or unoffered table");
                table_shared = true;
            }
            let ok = [
                result::OK,
                result::BAD_ARGUMENT,
                result::BAD_BLOCK,
                result::HINTS_DISABLED,
            ];
            if after.op == block.op {
                assert!(ok.contains(&after.result), "result {}", after.result);
            }
        } else {
            assert_eq!(
                (after.op, after.args),
                (before.op, before.args),
                "the VMM wrote more than the result"
            );
            let want = match block.op {
                op::HELLO if block.args[0] == u64::from(ABI_VERSION) => result::OK,
                op::HELLO => result::BAD_VERSION,
                op::HINT_BATCH | op::SET_FAULT_INFO => result::HINTS_DISABLED,
                _ => result::UNKNOWN_OP,
            };
            assert_eq!(after.result, want, "op {}", block.op);
        }
        if !table.is_shared() {
            let c = table.counts();
            let sum = c.stable + c.unused + c.volatile + c.potentially_volatile;
            assert_eq!(sum, frames, "frame counts {c:?}");
        }
    }
});
