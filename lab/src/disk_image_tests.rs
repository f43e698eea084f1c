//! Unit tests of `disk_image`: round trips, the limits on names and
//! entries, and a reader that refuses every kind of broken image.
//!
//! They build small images in the system temporary directory and remove
//! them again; they must never depend on files outside it.

use super::*;

/// A fresh temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("vmm-img-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn file(&self, name: &str, bytes: &[u8]) {
        fs::write(self.0.join(name), bytes).unwrap();
    }

    fn image(&self) -> PathBuf {
        self.0.with_extension("img")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_file(self.image());
    }
}

#[test]
fn round_trip_of_a_few_files() {
    let d = TempDir::new("round");
    let big: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
    let mut tagged = vec![0u8; 4096];
    tagged[..8].copy_from_slice(&BLOCK_MAGIC);
    tagged[8..12].copy_from_slice(&42u32.to_le_bytes());
    d.file("b.bin", &big);
    d.file("a.txt", b"hello");
    d.file("empty", b"");
    d.file("tagged", &tagged);
    let s = build_image(&d.0, &d.image()).unwrap();
    // Superblock, one directory block, then 1 + 0 + 3 + 1 data blocks.
    assert_eq!(
        s,
        ImageSummary {
            files: 4,
            bytes: 13101,
            blocks: 7
        }
    );
    let img = read_image(&d.image()).unwrap();
    assert_eq!(fs::metadata(d.image()).unwrap().len(), 7 * BLOCK);
    let names: Vec<&str> = img.entries.iter().filter_map(|e| e.name()).collect();
    assert_eq!(names, ["a.txt", "b.bin", "empty", "tagged"]);
    let blocks: Vec<u64> = img.entries.iter().map(|e| e.first_block).collect();
    assert_eq!(blocks, [2, 3, 6, 6]);
    assert_eq!(img.data(&img.entries[0]), b"hello");
    assert_eq!(img.data(&img.entries[1]), &big[..]);
    assert_eq!(img.data(&img.entries[2]), b"");
    let ids: Vec<u32> = img.entries.iter().map(|e| e.file_id).collect();
    assert_eq!(ids, [0, 0, 0, 42]);
    // No temporary file of this image is left behind (other tests build
    // images in the same directory at the same time: look for ours only).
    let parent = d.image().parent().unwrap().to_path_buf();
    let ours = format!(".{}.tmp", d.image().file_name().unwrap().to_string_lossy());
    let leftovers = fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&ours))
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn an_empty_directory_makes_an_empty_image() {
    let d = TempDir::new("empty");
    let s = build_image(&d.0, &d.image()).unwrap();
    assert_eq!(
        s,
        ImageSummary {
            files: 0,
            bytes: 0,
            blocks: 1
        }
    );
    let img = read_image(&d.image()).unwrap();
    assert!(img.entries.is_empty());
    assert_eq!(img.superblock.magic, MAGIC);
}

#[test]
fn a_name_too_long_is_refused_and_leaves_no_image() {
    let d = TempDir::new("long");
    d.file(&"n".repeat(NAME_MAX), b"ok");
    assert!(build_image(&d.0, &d.image()).is_ok());
    fs::remove_file(d.image()).unwrap();
    d.file(&"n".repeat(NAME_MAX + 1), b"too long");
    let e = build_image(&d.0, &d.image()).unwrap_err();
    assert!(matches!(e, ImageError::NameTooLong { len: 41, .. }), "{e}");
    assert_eq!(e.exit_status(), status::BAD_DISK);
    assert!(!d.image().exists());
}

#[test]
fn subdirectories_and_missing_dirs_are_errors() {
    let d = TempDir::new("sub");
    fs::create_dir(d.0.join("inner")).unwrap();
    let e = build_image(&d.0, &d.image()).unwrap_err();
    assert!(matches!(e, ImageError::Subdirectory(_)));
    assert_eq!(e.exit_status(), status::BAD_DISK);
    let e = build_image(&d.0.join("nope"), &d.image()).unwrap_err();
    assert_eq!(e.exit_status(), status::NO_INPUT);
}

#[test]
fn replacing_an_existing_image_is_atomic() {
    let d = TempDir::new("replace");
    fs::write(d.image(), b"old image").unwrap();
    d.file("x", b"x");
    build_image(&d.0, &d.image()).unwrap();
    assert!(read_image(&d.image()).is_ok());
}

/// A valid two-file image to break in various ways.
fn sample() -> Vec<u8> {
    let files = [
        SourceFile {
            name: "a".into(),
            path: PathBuf::new(),
            size: 5,
        },
        SourceFile {
            name: "b".into(),
            path: PathBuf::new(),
            size: 4096,
        },
    ];
    let (sb, entries) = layout(&files).unwrap();
    let mut bytes = vec![0u8; (sb.total_blocks * BLOCK) as usize];
    bytes[..32].copy_from_slice(sb.as_slice());
    for (i, e) in entries.iter().enumerate() {
        bytes[4096 + i * 64..][..64].copy_from_slice(e.as_slice());
    }
    bytes
}

#[test]
fn the_reader_refuses_broken_images() {
    assert!(parse_image(sample()).is_ok());
    let broken = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = sample();
        f(&mut b);
        parse_image(b).map(|_| ()).unwrap_err().to_string()
    };
    assert!(broken(&|b| b[0] = b'X').contains("magic"));
    assert!(broken(&|b| b.truncate(4096 * 3)).contains("blocks"));
    assert!(broken(&|b| b.push(0)).contains("multiple"));
    // file_count 3: the third entry has an empty name.
    assert!(broken(&|b| b[8] = 3).contains("name"));
    // b's first block moved onto a's: overlap.
    assert!(broken(&|b| b[4096 + 64 + 48] = 2).contains("overlap"));
    // b's first block past the end.
    assert!(broken(&|b| b[4096 + 64 + 48] = 9).contains("outside"));
    // Size so large the block count overflows.
    assert!(broken(&|b| b[4096 + 40..4096 + 48].fill(0xff)).contains("outside"));
    // Garbage after a's five bytes.
    assert!(broken(&|b| b[2 * 4096 + 5] = 1).contains("padded"));
    // Duplicate names.
    assert!(broken(&|b| b[4096 + 64] = b'a').contains("duplicate"));
    assert!(parse_image(Vec::new()).is_err());
}
