//! PHFS disk images (`pagehint_abi::disk`): build one from the regular files
//! of a directory, and read one back with every field checked.
//!
//! Layout, in 4 KiB blocks: the superblock in block 0, the directory from
//! block 1 (64 entries per block, as many blocks as the file count needs),
//! then each file's data, contiguous, block-aligned and zero-padded, in name
//! order. The builder writes a temporary file next to the output and renames
//! it into place only once everything is written and synced, so a failure
//! never leaves a half-written image under the output name. This module must
//! never follow a size or block number from an image without checked
//! arithmetic, and never modify the source directory.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pagehint_abi::disk::{
    DirEntry, Superblock, BLOCK_MAGIC, BLOCK_SIZE, DIR_ENTRIES_PER_BLOCK, MAGIC, MAX_FILES,
    NAME_MAX,
};
use pagehint_abi::exit::vmm as status;
use vm_memory::ByteValued;

const BLOCK: u64 = BLOCK_SIZE as u64;

/// Why an image could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The source directory (or a file in it, or the image) is missing or
    /// unreadable.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is a directory; only regular files can go into an image", .0.display())]
    Subdirectory(PathBuf),
    #[error("{} is not a regular file", .0.display())]
    NotRegular(PathBuf),
    #[error("file name {} is not UTF-8", .0.display())]
    NonUtf8Name(PathBuf),
    #[error("file name {name:?} is {len} bytes, the limit is {NAME_MAX}")]
    NameTooLong { name: String, len: usize },
    #[error("{0} files, an image holds at most {MAX_FILES}")]
    TooManyFiles(usize),
    #[error("{} changed size while it was being copied", .0.display())]
    Changed(PathBuf),
    /// The image could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An image failed validation.
    #[error("invalid image: {0}")]
    Invalid(String),
}

impl ImageError {
    /// The process exit status for this error.
    pub fn exit_status(&self) -> i32 {
        match self {
            ImageError::Read { .. } => status::NO_INPUT,
            ImageError::Write { .. } => status::INTERNAL,
            _ => status::BAD_DISK,
        }
    }
}

/// One regular file to put into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// What a built image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSummary {
    pub files: u32,
    /// Bytes of file data.
    pub bytes: u64,
    /// Blocks of the image (its size is this × 4 KiB).
    pub blocks: u64,
}

/// The regular files directly in `dir`, sorted by name.
pub fn scan_dir(dir: &Path) -> Result<Vec<SourceFile>, ImageError> {
    let read = |path: &Path, source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| read(dir, e))? {
        let entry = entry.map_err(|e| read(dir, e))?;
        let path = entry.path();
        // Follows symbolic links: a link to a regular file is that file.
        let meta = fs::metadata(&path).map_err(|e| read(&path, e))?;
        if meta.is_dir() {
            return Err(ImageError::Subdirectory(path));
        }
        if !meta.is_file() {
            return Err(ImageError::NotRegular(path));
        }
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| ImageError::NonUtf8Name(path.clone()))?;
        if name.len() > NAME_MAX {
            let len = name.len();
            return Err(ImageError::NameTooLong { name, len });
        }
        files.push(SourceFile {
            name,
            path,
            size: meta.len(),
        });
    }
    if files.len() > MAX_FILES as usize {
        return Err(ImageError::TooManyFiles(files.len()));
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Blocks the directory of `count` files takes.
fn dir_blocks(count: u64) -> u64 {
    count.div_ceil(DIR_ENTRIES_PER_BLOCK as u64)
}

/// The superblock and directory for `files` (file ids left at 0).
pub fn layout(files: &[SourceFile]) -> Result<(Superblock, Vec<DirEntry>), ImageError> {
    let count = u32::try_from(files.len())
        .ok()
        .filter(|&c| c <= MAX_FILES)
        .ok_or(ImageError::TooManyFiles(files.len()))?;
    let mut next = 1 + dir_blocks(u64::from(count));
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        let mut e = DirEntry::default();
        let name = f.name.as_bytes();
        if name.len() > NAME_MAX {
            let (name, len) = (f.name.clone(), name.len());
            return Err(ImageError::NameTooLong { name, len });
        }
        e.name[..name.len()].copy_from_slice(name);
        e.size = f.size;
        e.first_block = next;
        next = next
            .checked_add(e.blocks())
            .ok_or_else(|| ImageError::Invalid("image too large".into()))?;
        entries.push(e);
    }
    let sb = Superblock {
        magic: MAGIC,
        file_count: count,
        block_size: BLOCK_SIZE as u32,
        total_blocks: next,
        dir_block: 1,
    };
    Ok((sb, entries))
}

/// Deletes the temporary image unless it was renamed into place.
struct TempImage {
    path: PathBuf,
    kept: bool,
}

impl Drop for TempImage {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Builds an image of the regular files in `dir` at `out`.
pub fn build_image(dir: &Path, out: &Path) -> Result<ImageSummary, ImageError> {
    let files = scan_dir(dir)?;
    let (sb, mut entries) = layout(&files)?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_else(|| "image".into());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp_path = parent
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.tmp{}", std::process::id()));
    let write = |source| ImageError::Write {
        path: out.to_path_buf(),
        source,
    };
    let mut img = File::create(&tmp_path).map_err(write)?;
    let mut tmp = TempImage {
        path: tmp_path,
        kept: false,
    };
    for (f, e) in files.iter().zip(entries.iter_mut()) {
        let read = |source| ImageError::Read {
            path: f.path.clone(),
            source,
        };
        let src = File::open(&f.path).map_err(read)?;
        let mut head = [0u8; 12];
        if f.size >= 12 && src.read_exact_at(&mut head, 0).is_ok() && head[..8] == BLOCK_MAGIC {
            e.file_id = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        }
        img.seek(SeekFrom::Start(e.first_block * BLOCK))
            .map_err(write)?;
        let copied = io::copy(&mut io::Read::take(&src, f.size), &mut img).map_err(write)?;
        if copied != f.size {
            return Err(ImageError::Changed(f.path.clone()));
        }
    }
    img.write_all_at(sb.as_slice(), 0).map_err(write)?;
    for (i, e) in entries.iter().enumerate() {
        let at = BLOCK + (i * std::mem::size_of::<DirEntry>()) as u64;
        img.write_all_at(e.as_slice(), at).map_err(write)?;
    }
    img.set_len(sb.total_blocks * BLOCK).map_err(write)?;
    img.sync_all().map_err(write)?;
    drop(img);
    fs::rename(&tmp.path, out).map_err(write)?;
    tmp.kept = true;
    Ok(ImageSummary {
        files: sb.file_count,
        bytes: files.iter().map(|f| f.size).sum(),
        blocks: sb.total_blocks,
    })
}

/// A validated image held in memory.
#[derive(Debug, Clone)]
pub struct Image {
    pub superblock: Superblock,
    pub entries: Vec<DirEntry>,
    bytes: Vec<u8>,
}

impl Image {
    /// The data of `entry` (exactly `entry.size` bytes).
    pub fn data(&self, entry: &DirEntry) -> &[u8] {
        let start = (entry.first_block * BLOCK) as usize;
        &self.bytes[start..start + entry.size as usize]
    }
}

/// Parses and validates an image: magic, sizes, the directory, every file
/// inside the image, no two files overlapping, padding zeroed.
pub fn parse_image(bytes: Vec<u8>) -> Result<Image, ImageError> {
    let bad = |s: String| Err(ImageError::Invalid(s));
    let len = bytes.len() as u64;
    if len < BLOCK || !len.is_multiple_of(BLOCK) {
        return bad(format!("size {len} is not a non-zero multiple of {BLOCK}"));
    }
    let mut sb = Superblock::default();
    sb.as_mut_slice()
        .copy_from_slice(&bytes[..std::mem::size_of::<Superblock>()]);
    if sb.magic != MAGIC {
        return bad(format!("bad magic {:02x?}", sb.magic));
    }
    if sb.block_size != BLOCK_SIZE as u32 || sb.dir_block != 1 {
        return bad(format!(
            "block size {}, directory block {}",
            sb.block_size, sb.dir_block
        ));
    }
    if sb.total_blocks.checked_mul(BLOCK) != Some(len) {
        return bad(format!("{} blocks in a {len}-byte image", sb.total_blocks));
    }
    if sb.file_count > MAX_FILES {
        return bad(format!("{} files", sb.file_count));
    }
    let data_start = 1 + dir_blocks(u64::from(sb.file_count));
    if data_start > sb.total_blocks {
        return bad("directory runs past the end".into());
    }
    let size = std::mem::size_of::<DirEntry>();
    let mut entries = Vec::with_capacity(sb.file_count as usize);
    for i in 0..sb.file_count as usize {
        let at = BLOCK as usize + i * size;
        let mut e = DirEntry::default();
        e.as_mut_slice().copy_from_slice(&bytes[at..at + size]);
        let name = e.name().filter(|n| !n.is_empty());
        let Some(name) = name else {
            return bad(format!("entry {i} has an empty or non-UTF-8 name"));
        };
        if entries.iter().any(|o: &DirEntry| o.name() == Some(name)) {
            return bad(format!("duplicate name {name:?}"));
        }
        let end = e.first_block.checked_add(e.blocks());
        if e.first_block < data_start || end.is_none_or(|end| end > sb.total_blocks) {
            return bad(format!(
                "{name:?} (block {}, {} bytes) lies outside the data area",
                e.first_block, e.size
            ));
        }
        entries.push(e);
    }
    let mut spans: Vec<(u64, u64)> = entries
        .iter()
        .filter(|e| e.size > 0)
        .map(|e| (e.first_block, e.first_block + e.blocks()))
        .collect();
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[1].0 < w[0].1) {
        return bad("two files overlap".into());
    }
    for e in &entries {
        let start = (e.first_block * BLOCK + e.size) as usize;
        let end = ((e.first_block + e.blocks()) * BLOCK) as usize;
        if bytes[start..end].iter().any(|&b| b != 0) {
            return bad(format!("{:?} is not zero-padded", e.name()));
        }
    }
    Ok(Image {
        superblock: sb,
        entries,
        bytes,
    })
}

/// Reads and validates the image at `path`.
pub fn read_image(path: &Path) -> Result<Image, ImageError> {
    let bytes = fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_image(bytes)
}

#[cfg(test)]
#[path = "disk_image_tests.rs"]
mod tests;
