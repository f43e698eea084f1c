//! Fuzz target: the PHFS disk-image reader, `lab::disk_image::parse_image`
//! (what `vmm` reads back from an image the user hands it), and the block
//! verifier the workloads use on what they read (`verify_block`).
//!
//! Asserts, from the format's rules restated here: an accepted image is a
//! whole number of blocks and says so in its superblock, carries the magic,
//! and has at most `MAX_FILES` entries, each with a non-empty unique UTF-8
//! name and data inside the data area, no two files overlapping, padding
//! zero; `Image::data` of every entry is exactly `size` bytes of the image
//! at its first block; a generated block verifies, the same block with one
//! byte changed does not. The fuzzer's image is mostly built around a valid
//! superblock, so that the directory checks get reached.

#![no_main]

use lab::disk_image::parse_image;
use libfuzzer_sys::fuzz_target;
use pagehint_abi::disk::{fill_block, verify_block, BLOCK_SIZE, MAGIC, MAX_FILES};
use pagehint_fuzz::Input;

const BLOCK: u64 = BLOCK_SIZE as u64;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mut bytes = input.rest().to_vec();
    if mode % 4 != 0 {
        // Pad to whole blocks (at most 64) and, mostly, fix the superblock
        // fields the fuzzer would rarely guess.
        let blocks = (bytes.len() as u64).div_ceil(BLOCK).clamp(1, 64);
        bytes.resize((blocks * BLOCK) as usize, 0);
        if mode % 4 != 1 {
            bytes[..8].copy_from_slice(&MAGIC);
            bytes[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
            bytes[16..24].copy_from_slice(&blocks.to_le_bytes());
            bytes[24..32].copy_from_slice(&1u64.to_le_bytes());
        }
        if mode % 4 == 3 {
            let count = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) % 70;
            bytes[8..12].copy_from_slice(&count.to_le_bytes());
        }
    }
    let copy = bytes.clone();
    let Ok(image) = parse_image(bytes) else {
        return;
    };
    let len = copy.len() as u64;
    assert!(len >= BLOCK && len % BLOCK == 0);
    let sb = image.superblock;
    assert_eq!(sb.magic, MAGIC);
    assert_eq!(sb.total_blocks * BLOCK, len);
    assert!(sb.file_count <= MAX_FILES);
    assert_eq!(image.entries.len(), sb.file_count as usize);
    let data_start = 1 + (u64::from(sb.file_count) * 64).div_ceil(BLOCK);
    let mut spans = Vec::new();
    for (i, e) in image.entries.iter().enumerate() {
        let name = e.name().unwrap_or_default();
        assert!(!name.is_empty(), "entry {i} has no name");
        assert_eq!(
            image
                .entries
                .iter()
                .filter(|o| o.name() == Some(name))
                .count(),
            1,
            "{name:?} twice"
        );
        let blocks = e.size.div_ceil(BLOCK);
        assert!(e.first_block >= data_start, "{name:?} in the directory");
        assert!(
            e.first_block + blocks <= sb.total_blocks,
            "{name:?} past the end"
        );
        let start = (e.first_block * BLOCK) as usize;
        let d = image.data(e);
        assert_eq!(d, &copy[start..start + e.size as usize]);
        let end = start + (blocks * BLOCK) as usize;
        assert!(
            copy[start + d.len()..end].iter().all(|&b| b == 0),
            "{name:?} padding"
        );
        if e.size > 0 {
            spans.push((e.first_block, e.first_block + blocks));
        }
    }
    spans.sort_unstable();
    assert!(
        spans.windows(2).all(|w| w[0].1 <= w[1].0),
        "overlapping files"
    );

    // The block verifier, on a block of the first file's id.
    if let Some(e) = image.entries.first() {
        let mut block = [0u8; BLOCK_SIZE];
        fill_block(e.file_id, e.first_block, e.size, &mut block);
        assert!(verify_block(e.file_id, e.first_block, &block).is_ok());
        let at = (e.size % BLOCK) as usize;
        block[at] ^= 1 | (mode & 0xfe);
        assert!(verify_block(e.file_id, e.first_block, &block).is_err());
    }
});
