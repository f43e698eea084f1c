//! Per-frame metadata, the page cache index with its LRU, and the reverse
//! map, kept together because every change to one is made under the same
//! lock (the kernel's memory-management lock) and usually touches all three.
//!
//! Arrays are indexed by frame number and live in one zeroed block of
//! memory the caller provides ([`FrameTable::new_in`]; the kernel carves
//! it out of never-used frames, which this VMM hands over as zeroes, so
//! setting it up costs nothing per frame and a record only becomes host
//! memory when its frame is first used). Only the reverse-map pool and the
//! cache index, which grow with use, are on the heap. Nothing here touches
//! page tables or a frame's contents: the kernel does that and keeps these
//! records in step. Carving the typed arrays out of that block is this
//! module's one unsafe block, with its reason.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

/// Frame flags.
pub mod flag {
    /// In the page cache (then `file`/`index` say where).
    pub const CACHED: u32 = 1 << 0;
    /// Anonymous memory of a process (or a copy-on-write copy).
    pub const ANON: u32 = 1 << 1;
    /// Contents differ from the disk: written with `pwrite`, or a dirty
    /// bit gathered from a writable mapping; cleared when the write-back
    /// request is sent.
    pub const DIRTY: u32 = 1 << 2;
    /// I/O in flight: neither reclaim nor the fault path may use it.
    pub const LOCKED: u32 = 1 << 3;
    /// Some PTE maps it writable (seed 000's `PG_writable`): the first
    /// writable mapping sets it, the last unmapping clears it.
    pub const WRITABLE_MAPPED: u32 = 1 << 4;
    /// On the active list of the page cache (else the inactive one).
    pub const ACTIVE: u32 = 1 << 5;
    /// The host was told the page is volatile (`MAKE_VOLATILE` queued or
    /// sent): the kernel must make it stable before touching it.
    pub const VOLATILE: u32 = 1 << 8;
    /// With `VOLATILE`: the page is potentially volatile (clean, mapped
    /// writable; seed 000): the host may take it only after its dirty log
    /// shows no write since.
    pub const POT_VOLATILE: u32 = 1 << 9;
}

/// Marks "none" in the LRU and rmap links.
const NIL: u32 = u32::MAX;

/// One mapping of a frame: address space id and virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub asid: u32,
    pub va: u64,
}

#[derive(Clone, Copy)]
struct RmapEntry {
    m: Mapping,
    next: u32,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameTableError {
    OutOfRange,
    AlreadyCached,
    NotMapped,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: u64,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

const INACTIVE: usize = 0;
const ACTIVE: usize = 1;

/// `u32` arrays per frame in the record block.
const U32_ARRAYS: usize = 7;

/// Splits the first `n` words off `rest` and views them as `T`s.
fn carve<'a, T: Zeroable>(rest: &mut &'a mut [u64], n: usize) -> &'a mut [T] {
    let words = (n * core::mem::size_of::<T>()).div_ceil(8);
    let (head, tail) = core::mem::take(rest).split_at_mut(words);
    *rest = tail;
    // SAFETY: `T` is a plain integer type (`Zeroable`) whose alignment is
    // at most a `u64`'s, so the prefix is empty and every bit pattern of
    // the words is a valid `T`; the borrow of `head` moves into the result.
    let (_, body, _) = unsafe { head.align_to_mut::<T>() };
    &mut body[..n]
}

/// Integer types that may be viewed over zeroed `u64` words.
trait Zeroable: Copy {}
impl Zeroable for u32 {}
impl Zeroable for u64 {}

pub struct FrameTable<'a> {
    refcount: &'a mut [u32],
    mapcount: &'a mut [u32],
    flags: &'a mut [u32],
    file: &'a mut [u32],
    index: &'a mut [u64],
    lru_prev: &'a mut [u32],
    lru_next: &'a mut [u32],
    /// The two LRU lists, `[inactive, active]`: head (most recent), tail,
    /// length. A cached frame is on exactly one, as its ACTIVE flag says.
    lists: [List; 2],
    rmap_head: &'a mut [u32],
    rmap_pool: Vec<RmapEntry>,
    rmap_free: u32,
    cache: BTreeMap<(u32, u64), u32>,
}

impl FrameTable<'static> {
    /// Records for frames `0..frames` in a block of its own from the heap
    /// (never freed: for tests and small tables).
    pub fn new(frames: usize) -> Self {
        let block = alloc::boxed::Box::leak(vec![0u64; Self::words_for(frames)].into_boxed_slice());
        Self::new_in(block, frames).expect("block sized by words_for")
    }
}

impl<'a> FrameTable<'a> {
    /// `u64` words of record block that `frames` frames need.
    pub const fn words_for(frames: usize) -> usize {
        frames + U32_ARRAYS * frames.div_ceil(2)
    }

    /// Records for frames `0..frames` in `block`, which must be zeroed
    /// (zero means "no record": links are stored +1) and hold at least
    /// [`Self::words_for`] words; `None` if it is too small.
    pub fn new_in(block: &'a mut [u64], frames: usize) -> Option<Self> {
        if block.len() < Self::words_for(frames) {
            return None;
        }
        let mut rest = block;
        let index = carve(&mut rest, frames);
        Some(Self {
            index,
            refcount: carve(&mut rest, frames),
            mapcount: carve(&mut rest, frames),
            flags: carve(&mut rest, frames),
            file: carve(&mut rest, frames),
            // Links are stored +1 so that zeroed memory means "none".
            lru_prev: carve(&mut rest, frames),
            lru_next: carve(&mut rest, frames),
            lists: [List::EMPTY; 2],
            rmap_head: carve(&mut rest, frames),
            rmap_pool: Vec::new(),
            rmap_free: NIL,
            cache: BTreeMap::new(),
        })
    }

    fn check(&self, pfn: u64) -> Result<usize, FrameTableError> {
        if (pfn as usize) < self.flags.len() {
            Ok(pfn as usize)
        } else {
            Err(FrameTableError::OutOfRange)
        }
    }

    pub fn flags(&self, pfn: u64) -> u32 {
        self.flags.get(pfn as usize).copied().unwrap_or(0)
    }
    pub fn set_flags(&mut self, pfn: u64, f: u32) {
        if let Some(x) = self.flags.get_mut(pfn as usize) {
            *x |= f;
        }
    }
    pub fn clear_flags(&mut self, pfn: u64, f: u32) {
        if let Some(x) = self.flags.get_mut(pfn as usize) {
            *x &= !f;
        }
    }
    /// Frame `pfn`'s flags, to change in place (`None` past the table).
    pub fn flags_mut(&mut self, pfn: u64) -> Option<&mut u32> {
        self.flags.get_mut(pfn as usize)
    }
    pub fn refcount(&self, pfn: u64) -> u32 {
        self.refcount.get(pfn as usize).copied().unwrap_or(0)
    }
    pub fn mapcount(&self, pfn: u64) -> u32 {
        self.mapcount.get(pfn as usize).copied().unwrap_or(0)
    }

    /// Takes a reference.
    pub fn get(&mut self, pfn: u64) {
        if let Some(r) = self.refcount.get_mut(pfn as usize) {
            *r += 1;
        }
    }

    /// Takes a reference only if the count is not zero (the frame may have
    /// been freed meanwhile): `get_page_unless_zero`.
    pub fn get_unless_zero(&mut self, pfn: u64) -> bool {
        match self.refcount.get_mut(pfn as usize) {
            Some(r) if *r > 0 => {
                *r += 1;
                true
            }
            _ => false,
        }
    }

    /// Drops a reference; returns true when it was the last, and the frame
    /// is to be freed (its flags are cleared then).
    pub fn put(&mut self, pfn: u64) -> bool {
        let Some(r) = self.refcount.get_mut(pfn as usize) else {
            return false;
        };
        if *r == 0 {
            return false;
        }
        *r -= 1;
        if *r == 0 {
            self.flags[pfn as usize] = 0;
            true
        } else {
            false
        }
    }

    // ---- page cache -------------------------------------------------------

    /// The cached frame of (`file`, `index`). An active frame moves to the
    /// front of the active list; an inactive one stays where it is (the
    /// caller may have to make it stable first, then [`Self::activate`]).
    pub fn lookup(&mut self, file: u32, index: u64) -> Option<u64> {
        let pfn = *self.cache.get(&(file, index))?;
        if self.flags[pfn as usize] & flag::ACTIVE != 0 {
            self.lru_remove(pfn);
            self.lru_push_front(pfn, ACTIVE);
        }
        Some(pfn as u64)
    }

    /// Looks up without touching the LRU order.
    pub fn peek(&self, file: u32, index: u64) -> Option<u64> {
        self.cache.get(&(file, index)).map(|&p| p as u64)
    }

    /// Moves a cached frame to the front of the active list.
    pub fn activate(&mut self, pfn: u64) {
        self.move_to_front(pfn, ACTIVE);
    }

    /// Moves a cached frame to the front of `list`.
    fn move_to_front(&mut self, pfn: u64, list: usize) {
        if self.owner(pfn).is_none() {
            return;
        }
        self.lru_remove(pfn as u32);
        if list == ACTIVE {
            self.flags[pfn as usize] |= flag::ACTIVE;
        } else {
            self.flags[pfn as usize] &= !flag::ACTIVE;
        }
        self.lru_push_front(pfn as u32, list);
    }

    /// Moves frames from the tail of the active list to the inactive list
    /// until at most `target` are active; returns them in `out` (the caller
    /// decides which may become volatile).
    pub fn deactivate_excess(&mut self, target: u64, out: &mut Vec<u64>) {
        while self.lists[ACTIVE].len > target {
            let pfn = self.lists[ACTIVE].tail;
            self.lru_remove(pfn);
            self.flags[pfn as usize] &= !flag::ACTIVE;
            self.lru_push_front(pfn, INACTIVE);
            out.push(pfn as u64);
        }
    }

    /// Moves a cached frame to the front of the inactive list (a page read
    /// ahead, which nobody asked for yet).
    pub fn deactivate(&mut self, pfn: u64) {
        self.move_to_front(pfn, INACTIVE);
    }

    /// The ageing hand: moves up to `out.len()` frames from the tail of
    /// the inactive list to its head and puts them, tail first, at the
    /// start of `out`, so that each call looks at the frames the last one
    /// did not; how many. They keep their order (as if moved one at a
    /// time, the tail first), so they move as one block: a walk to the
    /// block's far end and four links, not an unlink and a push per frame.
    /// A slice the caller keeps on its stack, not a `Vec`: the hand turns
    /// on every cache miss, and a heap allocation costs more than the turn.
    pub fn rotate_inactive(&mut self, out: &mut [u64]) -> usize {
        let List { head, tail, len } = self.lists[INACTIVE];
        let n = out.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        // `first`: the block's frame nearest the head.
        let mut first = tail;
        for (k, slot) in out[..n].iter_mut().enumerate() {
            if k > 0 {
                first = decode(self.lru_prev[first as usize]);
            }
            if first == NIL {
                // Shorter than its length says: leave it as it is.
                return k;
            }
            *slot = first as u64;
        }
        if n == 0 || n as u64 == len {
            // The whole list: in the same order.
            return n;
        }
        let before = decode(self.lru_prev[first as usize]);
        if before == NIL {
            return n;
        }
        self.lru_next[before as usize] = encode(NIL);
        self.lru_prev[first as usize] = encode(NIL);
        self.lru_next[tail as usize] = encode(head);
        self.lru_prev[head as usize] = encode(tail);
        let l = &mut self.lists[INACTIVE];
        l.head = first;
        l.tail = before;
        n
    }

    /// Frames on the active list.
    pub fn active(&self) -> u64 {
        self.lists[ACTIVE].len
    }

    /// Inserts a frame (which the caller holds a reference to) into the
    /// cache; the cache takes its own reference.
    pub fn insert(&mut self, file: u32, index: u64, pfn: u64) -> Result<(), FrameTableError> {
        let i = self.check(pfn)?;
        if self.cache.contains_key(&(file, index)) || self.flags[i] & flag::CACHED != 0 {
            return Err(FrameTableError::AlreadyCached);
        }
        self.cache.insert((file, index), pfn as u32);
        self.flags[i] |= flag::CACHED | flag::ACTIVE;
        self.file[i] = file;
        self.index[i] = index;
        self.refcount[i] += 1;
        self.lru_push_front(pfn as u32, ACTIVE);
        Ok(())
    }

    /// Removes a frame from the cache and drops the cache's reference;
    /// returns true if that freed it.
    pub fn remove(&mut self, pfn: u64) -> bool {
        let Ok(i) = self.check(pfn) else { return false };
        if self.flags[i] & flag::CACHED == 0 {
            return false;
        }
        self.cache.remove(&(self.file[i], self.index[i]));
        self.lru_remove(pfn as u32);
        self.flags[i] &= !(flag::CACHED | flag::ACTIVE);
        self.put(pfn)
    }

    /// (file, index) of a cached frame.
    pub fn owner(&self, pfn: u64) -> Option<(u32, u64)> {
        let i = self.check(pfn).ok()?;
        (self.flags[i] & flag::CACHED != 0).then(|| (self.file[i], self.index[i]))
    }

    /// Cached frames.
    pub fn cached(&self) -> u64 {
        self.lists[INACTIVE].len + self.lists[ACTIVE].len
    }

    /// Up to `n` reclaim candidates, least recently used first: the
    /// inactive list from its tail, then the active one; never locked ones.
    pub fn lru_victims(&self, n: usize, out: &mut Vec<u64>) {
        for list in [INACTIVE, ACTIVE] {
            let mut p = self.lists[list].tail;
            while p != NIL && out.len() < n {
                if self.flags[p as usize] & flag::LOCKED == 0 {
                    out.push(p as u64);
                }
                p = decode(self.lru_prev[p as usize]);
            }
        }
    }

    fn list_of(&self, pfn: u32) -> usize {
        if self.flags[pfn as usize] & flag::ACTIVE != 0 {
            ACTIVE
        } else {
            INACTIVE
        }
    }

    fn lru_push_front(&mut self, pfn: u32, list: usize) {
        let i = pfn as usize;
        let l = &mut self.lists[list];
        self.lru_prev[i] = encode(NIL);
        self.lru_next[i] = encode(l.head);
        if l.head != NIL {
            self.lru_prev[l.head as usize] = encode(pfn);
        } else {
            l.tail = pfn;
        }
        l.head = pfn;
        l.len += 1;
    }

    /// Unlinks `pfn` from the list its ACTIVE flag names.
    fn lru_remove(&mut self, pfn: u32) {
        let i = pfn as usize;
        let list = self.list_of(pfn);
        let (prev, next) = (decode(self.lru_prev[i]), decode(self.lru_next[i]));
        let l = &mut self.lists[list];
        if prev != NIL {
            self.lru_next[prev as usize] = encode(next);
        } else {
            l.head = next;
        }
        if next != NIL {
            self.lru_prev[next as usize] = encode(prev);
        } else {
            l.tail = prev;
        }
        l.len -= 1;
        self.lru_prev[i] = 0;
        self.lru_next[i] = 0;
    }

    // ---- reverse map ------------------------------------------------------

    /// Records that `m` maps `pfn` (one more map count and reference).
    pub fn rmap_add(&mut self, pfn: u64, m: Mapping) -> Result<(), FrameTableError> {
        let i = self.check(pfn)?;
        let slot = if self.rmap_free != NIL {
            let s = self.rmap_free;
            self.rmap_free = self.rmap_pool[s as usize].next;
            self.rmap_pool[s as usize] = RmapEntry {
                m,
                next: decode(self.rmap_head[i]),
            };
            s
        } else {
            self.rmap_pool.push(RmapEntry {
                m,
                next: decode(self.rmap_head[i]),
            });
            (self.rmap_pool.len() - 1) as u32
        };
        self.rmap_head[i] = encode(slot);
        self.mapcount[i] += 1;
        self.refcount[i] += 1;
        Ok(())
    }

    /// Forgets the mapping `m` of `pfn`; returns true if that dropped the
    /// last reference (free the frame).
    pub fn rmap_remove(&mut self, pfn: u64, m: Mapping) -> Result<bool, FrameTableError> {
        let i = self.check(pfn)?;
        let mut prev = NIL;
        let mut cur = decode(self.rmap_head[i]);
        while cur != NIL {
            let e = self.rmap_pool[cur as usize];
            if e.m == m {
                if prev == NIL {
                    self.rmap_head[i] = encode(e.next);
                } else {
                    self.rmap_pool[prev as usize].next = e.next;
                }
                self.rmap_pool[cur as usize].next = self.rmap_free;
                self.rmap_free = cur;
                self.mapcount[i] -= 1;
                if self.mapcount[i] == 0 {
                    self.flags[i] &= !flag::WRITABLE_MAPPED;
                }
                return Ok(self.put(pfn));
            }
            prev = cur;
            cur = e.next;
        }
        Err(FrameTableError::NotMapped)
    }

    /// Every mapping of `pfn`, copied out (the caller edits page tables and
    /// calls `rmap_remove` for each).
    pub fn mappings(&self, pfn: u64, out: &mut Vec<Mapping>) {
        let Ok(i) = self.check(pfn) else { return };
        let mut cur = decode(self.rmap_head[i]);
        while cur != NIL {
            let e = self.rmap_pool[cur as usize];
            out.push(e.m);
            cur = e.next;
        }
    }
}

fn encode(link: u32) -> u32 {
    link.wrapping_add(1)
}
fn decode(stored: u32) -> u32 {
    stored.wrapping_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_live_in_the_callers_block_without_overlap() {
        // An odd frame count, so the u32 arrays do not end on a word.
        let frames = 7;
        let mut block = vec![0u64; FrameTable::words_for(frames)];
        assert!(
            FrameTable::new_in(&mut block[..FrameTable::words_for(frames) - 1], frames).is_none()
        );
        let mut t = FrameTable::new_in(&mut block, frames).unwrap();
        // Every frame gets a cache entry, a mapping and a flag: each array
        // written for every frame, then each read back intact.
        for p in 0..frames as u64 {
            t.get(p);
            t.insert(9, 100 + p, p).unwrap();
            t.rmap_add(
                p,
                Mapping {
                    asid: 1,
                    va: p << 12,
                },
            )
            .unwrap();
            t.set_flags(p, flag::DIRTY);
        }
        for p in 0..frames as u64 {
            assert_eq!(t.owner(p), Some((9, 100 + p)));
            assert_eq!((t.refcount(p), t.mapcount(p)), (3, 1));
            assert_ne!(t.flags(p) & flag::DIRTY, 0);
        }
        assert_eq!(t.cached(), frames as u64);
        drop(t);
        // The records are in the block; nothing is past its end.
        assert!(block.iter().any(|&w| w != 0));
    }

    #[test]
    fn cache_insert_lookup_remove_and_references() {
        let mut t = FrameTable::new(16);
        t.get(3); // the caller's reference
        t.insert(1, 0, 3).unwrap();
        assert_eq!(t.refcount(3), 2);
        assert_eq!(t.insert(1, 0, 4), Err(FrameTableError::AlreadyCached));
        assert_eq!(t.lookup(1, 0), Some(3));
        assert_eq!(t.lookup(1, 1), None);
        assert_eq!(t.owner(3), Some((1, 0)));
        assert!(!t.put(3));
        assert!(t.remove(3), "the cache held the last reference");
        assert_eq!(t.lookup(1, 0), None);
        assert_eq!(t.cached(), 0);
    }

    #[test]
    fn deactivation_moves_the_oldest_active_frames_and_victims_come_inactive_first() {
        let mut t = FrameTable::new(16);
        for (i, pfn) in [1u64, 2, 3, 4].iter().enumerate() {
            t.insert(9, i as u64, *pfn).unwrap();
        }
        let mut out = Vec::new();
        t.deactivate_excess(2, &mut out);
        assert_eq!(out, vec![1, 2]);
        assert_eq!(t.active(), 2);
        assert_eq!(t.flags(1) & flag::ACTIVE, 0);
        // A hit on an inactive frame leaves it inactive until activated.
        assert_eq!(t.lookup(9, 0), Some(1));
        assert_eq!(t.flags(1) & flag::ACTIVE, 0);
        let mut v = Vec::new();
        t.lru_victims(10, &mut v);
        assert_eq!(v, vec![1, 2, 3, 4]);
        t.activate(1);
        v.clear();
        t.lru_victims(10, &mut v);
        assert_eq!(v, vec![2, 3, 4, 1]);
        assert_eq!(t.cached(), 4);
        assert!(t.remove(2));
        assert_eq!(t.cached(), 3);
        assert_eq!(t.peek(9, 1), None);
    }

    #[test]
    fn the_ageing_hand_goes_round_the_inactive_list() {
        let mut t = FrameTable::new(16);
        for (i, pfn) in [1u64, 2, 3, 4, 5].iter().enumerate() {
            t.insert(9, i as u64, *pfn).unwrap();
        }
        let mut out = Vec::new();
        t.deactivate_excess(1, &mut out); // inactive, head first: 4 3 2 1
        let mut seen = [0u64; 3];
        assert_eq!(t.rotate_inactive(&mut seen), 3);
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(t.rotate_inactive(&mut seen), 3);
        assert_eq!(seen, [4, 1, 2], "the next look starts where the last ended");
        let mut many = [0u64; 99];
        assert_eq!(
            t.rotate_inactive(&mut many),
            4,
            "never more than the list holds"
        );
        assert_eq!(many[..4], [3, 4, 1, 2]);
        // The links agree both ways after the moves: from the tail (the
        // victims), from the head (a frame taken out of the middle, then
        // the rest rotated one at a time).
        let mut v = Vec::new();
        t.lru_victims(10, &mut v);
        assert_eq!(v, vec![3, 4, 1, 2, 5]);
        t.remove(4);
        let mut one = [0u64; 1];
        let order: Vec<u64> = (0..4)
            .map(|_| {
                assert_eq!(t.rotate_inactive(&mut one), 1);
                one[0]
            })
            .collect();
        assert_eq!(order, vec![3, 1, 2, 3]);
        v.clear();
        t.lru_victims(10, &mut v);
        assert_eq!(v, vec![1, 2, 3, 5]);
        assert_eq!((t.active(), t.cached()), (1, 4));
    }

    #[test]
    fn lru_gives_least_recently_used_first_and_skips_locked() {
        let mut t = FrameTable::new(16);
        for (i, pfn) in [5u64, 6, 7].iter().enumerate() {
            t.insert(1, i as u64, *pfn).unwrap();
        }
        t.lookup(1, 0); // 5 becomes most recent
        let mut v = Vec::new();
        t.lru_victims(10, &mut v);
        assert_eq!(v, vec![6, 7, 5]);
        t.set_flags(6, flag::LOCKED);
        v.clear();
        t.lru_victims(2, &mut v);
        assert_eq!(v, vec![7, 5]);
        t.remove(7);
        v.clear();
        t.lru_victims(10, &mut v);
        assert_eq!(v, vec![5]);
    }

    #[test]
    fn rmap_tracks_every_mapping_and_the_last_put_frees() {
        let mut t = FrameTable::new(16);
        t.get(9);
        let a = Mapping {
            asid: 1,
            va: 0x1000,
        };
        let b = Mapping {
            asid: 2,
            va: 0x5000,
        };
        t.rmap_add(9, a).unwrap();
        t.set_flags(9, flag::WRITABLE_MAPPED);
        t.rmap_add(9, b).unwrap();
        assert_eq!(t.mapcount(9), 2);
        let mut m = Vec::new();
        t.mappings(9, &mut m);
        assert_eq!(m.len(), 2);
        assert!(m.contains(&a) && m.contains(&b));
        assert_eq!(t.rmap_remove(9, a), Ok(false));
        assert_eq!(t.flags(9) & flag::WRITABLE_MAPPED, flag::WRITABLE_MAPPED);
        assert_eq!(t.rmap_remove(9, a), Err(FrameTableError::NotMapped));
        assert!(!t.put(9));
        assert_eq!(t.rmap_remove(9, b), Ok(true));
        assert_eq!(t.flags(9), 0, "a freed frame keeps no flags");
        // Pool slots are reused.
        t.get(2);
        t.rmap_add(2, a).unwrap();
        assert_eq!(t.rmap_pool.len(), 2);
    }

    #[test]
    fn get_unless_zero_refuses_free_frames() {
        let mut t = FrameTable::new(4);
        assert!(!t.get_unless_zero(1));
        t.get(1);
        assert!(t.get_unless_zero(1));
        assert_eq!(t.refcount(1), 2);
        assert!(!t.get_unless_zero(99));
    }
}
