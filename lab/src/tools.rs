//! The host tools behind `vmm gen-files` and `vmm mkdisk`: generate files of
//! verifiable blocks, and pack a directory into a PHFS image.
//!
//! Each tool returns the one summary line it prints, or a [`ToolError`]
//! that carries its exit status (`pagehint_abi::exit::vmm`). Generated
//! files hold, in every 4 KiB block b, `fill_block(id, b, size)`, the last
//! block cut to the file size, so the guest can verify every byte it reads.
//! This module must never write anywhere but the directory or image it was
//! given, and never leave a partly written image under the output name.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use pagehint_abi::disk::{fill_block, BLOCK_SIZE};
use pagehint_abi::exit::vmm as status;

use crate::args::{GenFilesArgs, MkdiskArgs};
use crate::disk_image::{build_image, ImageError};

/// Why a tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// `--first-id` + `--count` does not fit a u32 file id.
    #[error("--first-id {first} with --count {count} overflows the 32-bit file id")]
    IdOverflow { first: u32, count: u32 },
    /// A generated file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl ToolError {
    /// The process exit status for this error.
    pub fn exit_status(&self) -> i32 {
        match self {
            ToolError::IdOverflow { .. } => status::USAGE,
            ToolError::Write { .. } => status::INTERNAL,
            ToolError::Image(e) => e.exit_status(),
        }
    }
}

/// The name of generated file `n`.
pub fn generated_name(n: u32) -> String {
    format!("f{n:05}.bin")
}

/// Writes one generated file of `size` bytes carrying `id`.
pub fn write_generated(path: &Path, id: u32, size: u64) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 16, File::create(path)?);
    let mut block = [0u8; BLOCK_SIZE];
    let mut index = 0u64;
    let mut left = size;
    while left > 0 {
        fill_block(id, index, size, &mut block);
        let n = left.min(BLOCK_SIZE as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
        index += 1;
    }
    out.flush()?;
    out.get_ref().sync_all()
}

/// `vmm gen-files`: returns the summary line.
pub fn gen_files(args: &GenFilesArgs) -> Result<String, ToolError> {
    let (first, count) = (args.first_id, args.count);
    if count > 0 && first.checked_add(count - 1).is_none() {
        return Err(ToolError::IdOverflow { first, count });
    }
    fs::create_dir_all(&args.dir).map_err(|source| ToolError::Write {
        path: args.dir.clone(),
        source,
    })?;
    for n in 0..count {
        let path = args.dir.join(generated_name(n));
        write_generated(&path, first + n, args.size)
            .map_err(|source| ToolError::Write { path, source })?;
    }
    let bytes = u64::from(count).saturating_mul(args.size);
    Ok(format!(
        "gen-files: {count} files, {bytes} bytes in {}",
        args.dir.display()
    ))
}

/// `vmm mkdisk`: returns the summary line.
pub fn mkdisk(args: &MkdiskArgs) -> Result<String, ToolError> {
    let s = build_image(&args.from, &args.out)?;
    Ok(format!(
        "mkdisk: {} files, {} bytes, {} blocks in {}",
        s.files,
        s.bytes,
        s.blocks,
        args.out.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk_image::read_image;
    use pagehint_abi::disk::verify_block;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmm-tools-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn generated_files_verify_block_by_block() {
        let dir = temp_dir("gen");
        let args = GenFilesArgs {
            dir: dir.clone(),
            count: 2,
            size: 10_000,
            first_id: 7,
        };
        let line = gen_files(&args).unwrap();
        assert!(line.contains("2 files, 20000 bytes"), "{line}");
        let f1 = fs::read(dir.join("f00001.bin")).unwrap();
        assert_eq!(f1.len(), 10_000);
        let mut block = [0u8; BLOCK_SIZE];
        for b in 0..2u64 {
            block.copy_from_slice(&f1[b as usize * BLOCK_SIZE..][..BLOCK_SIZE]);
            assert_eq!(verify_block(8, b, &block), Ok(()));
        }
        let mut last = [0u8; BLOCK_SIZE];
        fill_block(8, 2, 10_000, &mut last);
        assert_eq!(f1[8192..], last[..10_000 - 8192]);

        let out = dir.with_extension("img");
        let line = mkdisk(&MkdiskArgs {
            from: dir.clone(),
            out: out.clone(),
        })
        .unwrap();
        assert!(line.contains("2 files, 20000 bytes, 8 blocks"), "{line}");
        let img = read_image(&out).unwrap();
        let ids: Vec<u32> = img.entries.iter().map(|e| e.file_id).collect();
        assert_eq!(ids, [7, 8]);
        assert_eq!(img.data(&img.entries[1]), &f1[..]);
        fs::remove_dir_all(&dir).ok();
        fs::remove_file(&out).ok();
    }

    #[test]
    fn id_overflow_and_missing_source_have_their_statuses() {
        let args = GenFilesArgs {
            dir: temp_dir("overflow"),
            count: 2,
            size: 1,
            first_id: u32::MAX,
        };
        assert_eq!(gen_files(&args).unwrap_err().exit_status(), status::USAGE);
        let e = mkdisk(&MkdiskArgs {
            from: PathBuf::from("/nonexistent/dir"),
            out: temp_dir("never.img"),
        })
        .unwrap_err();
        assert_eq!(e.exit_status(), status::NO_INPUT);
        assert!(e.to_string().contains("/nonexistent/dir"));
        assert_eq!(generated_name(42), "f00042.bin");
    }
}
