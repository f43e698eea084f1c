//! The virtual memory areas of a user address space: which ranges exist and
//! with what protection, independent of which pages are populated.
//!
//! The page-fault handler asks it whether an access is legal; `mmap`,
//! `munmap` and `mprotect` edit it, splitting areas where a call covers part
//! of one. It never touches page tables: the caller applies each change to
//! the tables afterwards.

use alloc::vec::Vec;

/// What backs an area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Zero-filled on first touch.
    Anonymous,
    /// The program image (populated at load time).
    Image,
    /// The user stack (zero-filled on first touch).
    Stack,
    /// A file: page `pgoff` of `file` is mapped at the area's start.
    /// `shared` mappings map page-cache frames; private ones map them
    /// read-only and copy on the first write.
    File { file: u32, pgoff: u64, shared: bool },
}

impl Backing {
    /// The same backing for a piece of the area starting `delta` bytes in.
    fn advanced(self, delta: u64) -> Self {
        match self {
            Backing::File {
                file,
                pgoff,
                shared,
            } => Backing::File {
                file,
                pgoff: pgoff + delta / PAGE,
                shared,
            },
            other => other,
        }
    }
}

/// One area: `[start, end)`, page-aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// `pagehint_abi::syscall::prot` bits.
    pub prot: u64,
    pub backing: Backing,
}

impl Vma {
    /// For a file area: the file and page index mapped at `addr`.
    pub fn file_page(&self, addr: u64) -> Option<(u32, u64, bool)> {
        match self.backing {
            Backing::File {
                file,
                pgoff,
                shared,
            } if self.start <= addr && addr < self.end => {
                Some((file, pgoff + (addr - self.start) / PAGE, shared))
            }
            _ => None,
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaError {
    /// Zero length, unaligned, or wrapping.
    BadRange,
    /// Overlaps an existing area.
    Overlap,
    /// Part of the range is not mapped.
    NotMapped,
    /// No gap large enough.
    NoSpace,
}

const PAGE: u64 = 4096;

fn check_range(start: u64, len: u64) -> Result<u64, VmaError> {
    if len == 0 || !start.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return Err(VmaError::BadRange);
    }
    start.checked_add(len).ok_or(VmaError::BadRange)
}

/// The areas of one address space, sorted by start, never overlapping.
#[derive(Default, Debug)]
pub struct VmaSet {
    areas: Vec<Vma>,
}

impl VmaSet {
    pub fn new() -> Self {
        Self { areas: Vec::new() }
    }

    /// The area containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Vma> {
        let i = self.areas.partition_point(|a| a.end <= addr);
        self.areas.get(i).filter(|a| a.start <= addr)
    }

    /// Adds `[start, start + len)`.
    pub fn insert(
        &mut self,
        start: u64,
        len: u64,
        prot: u64,
        backing: Backing,
    ) -> Result<(), VmaError> {
        let end = check_range(start, len)?;
        let i = self.areas.partition_point(|a| a.end <= start);
        if self.areas.get(i).is_some_and(|a| a.start < end) {
            return Err(VmaError::Overlap);
        }
        self.areas.insert(
            i,
            Vma {
                start,
                end,
                prot,
                backing,
            },
        );
        Ok(())
    }

    /// The lowest page-aligned gap of `len` bytes at or above `floor` and
    /// below `ceiling`.
    pub fn find_gap(&self, len: u64, floor: u64, ceiling: u64) -> Result<u64, VmaError> {
        check_range(floor, len)?;
        let mut candidate = floor;
        for a in self.areas.iter().filter(|a| a.end > floor) {
            if candidate.checked_add(len).ok_or(VmaError::NoSpace)? <= a.start {
                break;
            }
            candidate = candidate.max(a.end);
        }
        match candidate.checked_add(len) {
            Some(end) if end <= ceiling => Ok(candidate),
            _ => Err(VmaError::NoSpace),
        }
    }

    /// Splits areas so that `start` and `end` fall on area boundaries, and
    /// checks that `[start, end)` is covered without holes. Returns the
    /// index range of the covered areas.
    fn carve(&mut self, start: u64, end: u64) -> Result<core::ops::Range<usize>, VmaError> {
        let first = self.areas.partition_point(|a| a.end <= start);
        let mut expect = start;
        let mut last = first;
        while expect < end {
            match self.areas.get(last) {
                Some(a) if a.start <= expect => {
                    expect = a.end;
                    last += 1;
                }
                _ => return Err(VmaError::NotMapped),
            }
        }
        // Split the last area at `end`, then the first at `start`.
        let tail = self.areas[last - 1];
        if tail.end > end {
            self.areas[last - 1].end = end;
            let backing = tail.backing.advanced(end - tail.start);
            self.areas.insert(
                last,
                Vma {
                    start: end,
                    backing,
                    ..tail
                },
            );
        }
        let head = self.areas[first];
        if head.start < start {
            self.areas[first].end = start;
            let backing = head.backing.advanced(start - head.start);
            self.areas.insert(
                first + 1,
                Vma {
                    start,
                    backing,
                    ..head
                },
            );
            return Ok(first + 1..last + 1);
        }
        Ok(first..last)
    }

    /// Removes `[start, start + len)`, which must be fully mapped.
    pub fn remove(&mut self, start: u64, len: u64) -> Result<(), VmaError> {
        let end = check_range(start, len)?;
        let r = self.carve(start, end)?;
        self.areas.drain(r);
        Ok(())
    }

    /// Changes the protection of `[start, start + len)`, which must be
    /// fully mapped.
    pub fn protect(&mut self, start: u64, len: u64, prot: u64) -> Result<(), VmaError> {
        let end = check_range(start, len)?;
        let r = self.carve(start, end)?;
        for a in &mut self.areas[r] {
            a.prot = prot;
        }
        Ok(())
    }

    /// Every area, in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.areas.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: u64 = 3;
    const R: u64 = 1;

    #[test]
    fn insert_find_and_overlap() {
        let mut s = VmaSet::new();
        s.insert(0x10000, 0x3000, RW, Backing::Anonymous).unwrap();
        assert_eq!(s.find(0x12fff).unwrap().start, 0x10000);
        assert!(s.find(0x13000).is_none());
        assert!(s.find(0xffff).is_none());
        assert_eq!(
            s.insert(0x12000, 0x1000, RW, Backing::Anonymous),
            Err(VmaError::Overlap)
        );
        assert_eq!(
            s.insert(0x12001, 0x1000, RW, Backing::Anonymous),
            Err(VmaError::BadRange)
        );
    }

    #[test]
    fn protect_splits_the_middle_of_an_area() {
        let mut s = VmaSet::new();
        s.insert(0x10000, 0x4000, RW, Backing::Anonymous).unwrap();
        s.protect(0x11000, 0x2000, R).unwrap();
        let v: Vec<_> = s.iter().map(|a| (a.start, a.end, a.prot)).collect();
        assert_eq!(
            v,
            vec![
                (0x10000, 0x11000, RW),
                (0x11000, 0x13000, R),
                (0x13000, 0x14000, RW)
            ]
        );
    }

    #[test]
    fn remove_across_areas_and_refuse_holes() {
        let mut s = VmaSet::new();
        s.insert(0x10000, 0x2000, RW, Backing::Anonymous).unwrap();
        s.insert(0x12000, 0x2000, R, Backing::Anonymous).unwrap();
        s.insert(0x20000, 0x1000, R, Backing::Anonymous).unwrap();
        assert_eq!(s.remove(0x13000, 0x10000), Err(VmaError::NotMapped));
        s.remove(0x11000, 0x2000).unwrap();
        let v: Vec<_> = s.iter().map(|a| (a.start, a.end)).collect();
        assert_eq!(
            v,
            vec![(0x10000, 0x11000), (0x13000, 0x14000), (0x20000, 0x21000)]
        );
    }

    #[test]
    fn splitting_a_file_area_keeps_file_offsets() {
        let mut s = VmaSet::new();
        let f = Backing::File {
            file: 7,
            pgoff: 10,
            shared: false,
        };
        s.insert(0x10000, 0x4000, R, f).unwrap();
        s.protect(0x11000, 0x1000, RW).unwrap();
        assert_eq!(
            s.find(0x10000).unwrap().file_page(0x10000),
            Some((7, 10, false))
        );
        assert_eq!(
            s.find(0x11000).unwrap().file_page(0x11000),
            Some((7, 11, false))
        );
        assert_eq!(
            s.find(0x13000).unwrap().file_page(0x13fff),
            Some((7, 13, false))
        );
        assert_eq!(s.find(0x13000).unwrap().file_page(0x14000), None);
    }

    #[test]
    fn gaps_are_found_lowest_first() {
        let mut s = VmaSet::new();
        s.insert(0x10000, 0x1000, RW, Backing::Anonymous).unwrap();
        s.insert(0x12000, 0x1000, RW, Backing::Anonymous).unwrap();
        assert_eq!(s.find_gap(0x1000, 0x10000, 0x100000), Ok(0x11000));
        assert_eq!(s.find_gap(0x2000, 0x10000, 0x100000), Ok(0x13000));
        assert_eq!(s.find_gap(0x2000, 0x10000, 0x14000), Err(VmaError::NoSpace));
    }
}
