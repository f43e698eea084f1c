//! Tests of the dirty log's arithmetic: the frame <-> slot and
//! clear-window computations on synthetic slots. The log of a real KVM VM
//! is tested in `hypervisor/tests/kvm_dirty_log.rs`.

use super::*;

const GIB: u64 = 1 << 30;

#[test]
fn slots_follow_the_mmio_hole() {
    let spans = slot_spans(&crate::memory::ram_ranges(5 * GIB));
    assert_eq!(
        spans,
        [
            SlotSpan {
                slot: 0,
                first_pfn: 0,
                pages: 3 * GIB / PAGE_SIZE
            },
            SlotSpan {
                slot: 1,
                first_pfn: 4 * GIB / PAGE_SIZE,
                pages: 2 * GIB / PAGE_SIZE
            }
        ]
    );
    let hole = 3 * GIB / PAGE_SIZE;
    let high = 4 * GIB / PAGE_SIZE;
    let b = DirtyBitmap::with_written(&spans, &[5, hole - 1, high, high + 64]);
    for p in [5, hole - 1, high, high + 64] {
        assert!(b.written(p), "{p:#x}");
    }
    for p in [4, 6, hole - 2, high + 1, high + 63] {
        assert!(!b.written(p), "{p:#x}");
    }
    // No slot holds the hole or what lies past RAM: never proved clean.
    assert!(b.written(hole) && b.written(high - 1) && b.written(u64::MAX));
}

#[test]
fn clear_windows_are_64_aligned_hold_only_the_wanted_bits_and_stop_at_the_slot_end() {
    let spans = [
        SlotSpan {
            slot: 0,
            first_pfn: 0,
            pages: 1000,
        },
        SlotSpan {
            slot: 1,
            first_pfn: 4096,
            pages: 100,
        },
    ];
    let run = |pfn: u64, count: u64| pfn..pfn + count;
    // One page in the middle of a word.
    let w = clear_windows(&spans, &[run(70, 1)]);
    assert_eq!(
        w,
        [ClearWindow {
            slot: 0,
            first_page: 64,
            num_pages: 64,
            bitmap: vec![1 << 6]
        }]
    );
    // Across a word boundary: two words, only the run's bits.
    let w = clear_windows(&spans, &[run(62, 4)]);
    assert_eq!((w[0].first_page, w[0].num_pages), (0, 128));
    assert_eq!(w[0].bitmap, vec![0b11 << 62, 0b11]);
    // The slot's last, partial word: the window ends at the slot's end.
    let w = clear_windows(&spans, &[run(990, 10), run(1000, 5)]);
    assert_eq!((w[0].first_page, w[0].num_pages), (960, 40));
    assert_eq!(w[0].bitmap, vec![((1u64 << 10) - 1) << 30]);
    // Frames in both slots (and the gap): one window per slot, indexes
    // relative to the slot.
    let w = clear_windows(&spans, &[run(3, 1), run(2000, 3), run(4096 + 99, 1)]);
    assert_eq!(w.len(), 2);
    assert_eq!((w[0].slot, w[0].first_page, w[0].num_pages), (0, 0, 64));
    assert_eq!(w[0].bitmap, vec![1 << 3]);
    assert_eq!((w[1].slot, w[1].first_page, w[1].num_pages), (1, 64, 36));
    assert_eq!(w[1].bitmap, vec![1 << 35]);
    // Far apart in one slot: one window each, not one across the gap.
    let w = clear_windows(&spans, &[run(900, 1), run(3, 1), run(3, 1)]);
    assert_eq!(w.len(), 2);
    assert_eq!(
        (w[0].first_page, w[0].num_pages, &w[0].bitmap),
        (0, 64, &vec![1 << 3])
    );
    assert_eq!((w[1].first_page, w[1].num_pages), (896, 64));
    assert_eq!(w[1].bitmap, vec![1 << 4]);
    assert!(clear_windows(&spans, &[run(2000, 5)]).is_empty());
    assert!(clear_windows(&spans, &[]).is_empty());
}

#[test]
fn whole_pages_of_a_buffer() {
    let p = PAGE_SIZE;
    let run = |pfn: u64, count: u64| Some(pfn..pfn + count);
    assert_eq!(whole_pages(0, p), run(0, 1));
    assert_eq!(whole_pages(p, 3 * p), run(1, 3));
    assert_eq!(whole_pages(1, p), None, "no whole page");
    assert_eq!(whole_pages(1, 2 * p), run(1, 1));
    assert_eq!(whole_pages(p + 512, 2 * p), run(2, 1));
    assert_eq!(whole_pages(0, 0), None);
    assert_eq!(whole_pages(u64::MAX - 10, 100), None);
}
