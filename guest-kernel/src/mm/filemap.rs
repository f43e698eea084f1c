//! The page cache's kernel side: finding a file page (reading it, with
//! read-ahead, on a miss) and reclaiming cache frames, least recently used
//! first, when the allocator runs dry.
//!
//! Reclaim tears a frame out of every address space through the reverse
//! map, the guest's "pte notifier" (seed 002), and pays the TLB debt on
//! other CPUs with one shootdown per round before any frame is freed.
//!
//! Having the disk fill frames is part of its job: one unsafe block, the
//! `virtio_blk::read_pages` of a miss, into frames it has just allocated.

use alloc::vec::Vec;

use guest_logic::frame_table::{flag, Mapping};
use guest_logic::paging::{flags as pte_flags, Mapper, ADDR_MASK};
use pagehint_abi::PAGE_SIZE;

use super::MmState;
use crate::drivers::virtio_blk;
use crate::fs;
use crate::mm::addr_space::AsError;
use crate::phys::pages::{free_frame, KernelPhys};
use crate::phys::{hints, tlb};
use pagehint_abi::hypercall::{HintOp, HintResult};

/// Most pages read ahead with one request.
const READAHEAD: u64 = 16;
/// Frames reclaimed per round.
const RECLAIM_BATCH: usize = 32;
/// Inactive frames the ageing hand looks at per cache miss.
const AGE_HAND: usize = 16;
/// Hits on volatile pages after a drop was last seen during which the
/// shared-table path reads ahead (`MmState::ahead_credit`).
const AHEAD_CREDIT: u32 = 256;

impl MmState {
    /// A zeroed frame (or, with `overwrite`, one whose contents the caller
    /// replaces entirely), reclaiming page-cache frames if none is free.
    /// The caller gets one reference.
    pub fn alloc_frame(&mut self, overwrite: bool) -> Option<u64> {
        let get = || {
            if overwrite {
                crate::phys::pages::alloc_frame_for_overwrite()
            } else {
                crate::phys::pages::alloc_zeroed_frame()
            }
        };
        let pa = match get() {
            Some(pa) => pa,
            None => {
                self.reclaim(RECLAIM_BATCH);
                get()?
            }
        };
        self.frames.get(pa / PAGE_SIZE);
        Some(pa)
    }

    /// The cached frame number of page `index` of `file`, read from disk
    /// (with read-ahead) on a miss. The caller gets one reference.
    pub fn get_file_page(&mut self, file: u32, index: u64) -> Result<u64, AsError> {
        // One look-up: `activate` puts the page at the front of the active
        // list, and a page the host had dropped has left the cache.
        if let Some(pfn) = self.frames.peek(file, index) {
            if self.frames.flags(pfn) & flag::VOLATILE == 0
                || self.make_stable_hit(file, index, pfn)
            {
                self.stats.cache_hits += 1;
                self.frames.activate(pfn);
                self.frames.get(pfn);
                return Ok(pfn);
            }
            // The host had dropped it: read it again.
        }
        self.stats.cache_misses += 1;
        let entry = fs::entry(file).ok_or(AsError::Io)?;
        if index >= entry.blocks() {
            return Err(AsError::Fault);
        }
        // The run of missing pages from `index`, up to READAHEAD.
        let mut pages: Vec<u64> = Vec::new();
        let last = (index + READAHEAD).min(entry.blocks());
        for i in index..last {
            if i > index && self.frames.lookup(file, i).is_some() {
                break;
            }
            match self.alloc_frame(true) {
                Some(pa) => pages.push(pa),
                None if pages.is_empty() => return Err(AsError::NoMemory),
                None => break,
            }
        }
        for &pa in &pages {
            self.frames.set_flags(pa / PAGE_SIZE, flag::LOCKED);
        }
        // SAFETY: every one of `pages` is a frame just allocated (we hold
        // its only reference), not yet in the cache or mapped anywhere,
        // and marked LOCKED, so reclaim leaves it alone while the device
        // fills it.
        let r = unsafe { virtio_blk::read_pages(entry.first_block + index, &pages) };
        self.stats.disk_requests += 1;
        self.stats.disk_pages += pages.len() as u64;
        let mut result = Err(AsError::Io);
        let mut ahead = Vec::new();
        for (k, &pa) in pages.iter().enumerate() {
            let pfn = pa / PAGE_SIZE;
            self.frames.clear_flags(pfn, flag::LOCKED);
            if r.is_ok() && self.frames.insert(file, index + k as u64, pfn).is_ok() {
                if k == 0 {
                    // Keep the allocation's reference for the caller.
                    result = Ok(pfn);
                    continue;
                }
                ahead.push(pfn);
            }
            if self.frames.put(pfn) {
                free_frame(pa);
            }
        }
        // Pages read start inactive, as Linux's do: the one asked for is
        // used once so far, those read ahead not at all, and the host
        // should weigh them by their use (the ages the hand publishes),
        // not find a quarter of the cache held stable for having been read
        // lately. A hit makes one active. The one asked for is still held
        // by the caller: the ageing hand makes it volatile later.
        if let Ok(pfn) = result {
            self.frames.deactivate(pfn);
        }
        let mut maps = Vec::new();
        for pfn in ahead {
            self.frames.deactivate(pfn);
            self.age_one(pfn, &mut maps);
        }
        if let Err(e) = r {
            crate::console::println!("guest: disk read of file {file} page {index} failed: {e:?}");
        }
        self.age_cache();
        result
    }

    /// A hit on volatile cached page `pfn` (`index` of `file`): with the
    /// shared table one compare-and-swap on its entry and, while the host
    /// is taking pages (a drop was seen within the last [`AHEAD_CREDIT`]
    /// such hits), the same for the volatile pages right after it: a scan
    /// wants them next, and taking them back now keeps the host from
    /// dropping them under it. Else [`Self::make_stable_ahead`], which
    /// always does both, in one exit. A page the host dropped leaves the
    /// cache (and is read again). Whether `pfn` is still the cached page.
    ///
    /// Inlined into the hit path, which pays for the entry's bounds, the
    /// swap and its count, the frame's flags, the count of volatile frames
    /// and the credit; a drop, the credit spent and the hypercalls are out
    /// of line.
    #[inline(always)]
    fn make_stable_hit(&mut self, file: u32, index: u64, pfn: u64) -> bool {
        // Found before the swap, which the compiler may not move loads
        // across: the caller's bounds check of `pfn` serves for both.
        let flags = self.frames.flags_mut(pfn);
        let Some(lost) = hints::make_stable_shared(pfn) else {
            return self.make_stable_ahead(file, index, pfn);
        };
        if lost {
            return self.dropped_on_hit(file, index, pfn);
        }
        if let Some(f) = flags {
            *f &= !(flag::VOLATILE | flag::POT_VOLATILE);
        }
        // Cannot wrap: every frame flagged VOLATILE was counted, and each
        // is uncounted only as its flag is cleared.
        self.volatile -= 1;
        if self.ahead_credit != 0 {
            self.make_stable_after(file, index);
        }
        true
    }

    /// [`Self::make_stable_hit`] on a page the host had dropped: it leaves
    /// the cache, the credit is renewed and the pages after it are taken
    /// back. Always false (`pfn` is no longer the cached page).
    #[cold]
    #[inline(never)]
    fn dropped_on_hit(&mut self, file: u32, index: u64, pfn: u64) -> bool {
        self.stable_again(pfn, true);
        self.make_stable_after(file, index);
        false
    }

    /// The guest's side of a page made stable through the shared table.
    #[inline]
    fn stable_again(&mut self, pfn: u64, lost: bool) {
        self.frames
            .clear_flags(pfn, flag::VOLATILE | flag::POT_VOLATILE);
        self.volatile = self.volatile.saturating_sub(1);
        if lost {
            self.ahead_credit = AHEAD_CREDIT;
            self.discard(pfn);
        }
    }

    /// Spends one hit of the credit: up to `READAHEAD - 1` volatile pages
    /// after `index`, made stable through the shared table (stops at the
    /// first that is not).
    #[inline(never)]
    fn make_stable_after(&mut self, file: u32, index: u64) {
        self.ahead_credit = self.ahead_credit.saturating_sub(1);
        for i in index + 1..index + READAHEAD {
            let Some(p) = self.frames.peek(file, i) else {
                return;
            };
            if self.frames.flags(p) & flag::VOLATILE == 0 {
                return;
            }
            let lost = hints::make_stable_shared(p).unwrap_or(false);
            self.stable_again(p, lost);
        }
    }

    /// Before the kernel or a new mapping uses volatile cached page `index`
    /// of `file` (frame `pfn`): makes it and up to 15 volatile pages after
    /// it stable with one exit (a scan will want them next), and drops from
    /// the cache those the host discarded meanwhile (they are read again).
    /// Whether `pfn` is still the cached page.
    // Kept out of line: the shared table's hit path above stays short.
    #[inline(never)]
    fn make_stable_ahead(&mut self, file: u32, index: u64, pfn: u64) -> bool {
        let mut run: Vec<u64> = Vec::new();
        for i in index..index + READAHEAD {
            match self.frames.peek(file, i) {
                Some(p) if self.frames.flags(p) & flag::VOLATILE != 0 => run.push(p),
                _ if i == index => return self.frames.peek(file, index) == Some(pfn),
                _ => break,
            }
        }
        let mut lost: Vec<u64> = Vec::new();
        hints::now_many(HintOp::MakeStable, &run, |p, r| {
            if r == Ok(HintResult::Discarded) {
                lost.push(p);
            }
        });
        for &p in &run {
            self.frames
                .clear_flags(p, flag::VOLATILE | flag::POT_VOLATILE);
            self.volatile = self.volatile.saturating_sub(1);
        }
        // Lost ones leave the cache and every mapping; a discard fault for
        // one may still be in flight on another CPU, so they go through
        // the discard list.
        for p in lost {
            self.discard(p);
        }
        self.frames.peek(file, index) == Some(pfn)
    }

    /// A discard fault on frame `pfn`: drops it and, when the faults walk
    /// forward through its file (this one is on the page right after the
    /// last run dropped for that file) and the shared table says so, the
    /// cached pages right after it that the host dropped too (up to
    /// `READAHEAD - 1`, stopping at the first that is not), with one
    /// shootdown. A scan touches them next, and each would otherwise cost
    /// a discard fault, a shootdown and a one-page disk read of its own
    /// (the read-ahead stops at the first page still cached); dropped
    /// together they come back with one read-ahead request. Random access
    /// (a key-value store) gets the single frame, as before: there the
    /// dropped neighbours are not wanted soon, and reading them back
    /// would cost disk reads and memory (three times the disk pages on
    /// `kv 50000` over 20 MiB under a 12 MiB budget, when every fault
    /// took its neighbours). Only frames whose entry says DISCARDED join:
    /// their contents are gone whatever the guest does.
    ///
    /// A fault is stale, and drops nothing, if the frame is no longer a
    /// cache page (another CPU dropped it first, or it was freed and
    /// reused, as anonymous memory say, whose mappings must not be torn
    /// down) or, with the table, if its entry shows no drop (neither
    /// DISCARDED, ARMED nor BUSY: a cache page read afresh into a reused
    /// frame); the restarted access then finds the page or faults
    /// normally.
    pub(super) fn discard_fault_run(&mut self, pfn: u64) {
        use pagehint_abi::state_table::{ARMED, BUSY, DISCARDED};
        let owner = self.frames.owner(pfn);
        let no_drop = hints::shared_value(pfn).is_some_and(|v| v & (DISCARDED | ARMED | BUSY) == 0);
        let Some((file, index)) = owner.filter(|_| !no_drop) else {
            crate::phys::discard::STALE_FAULTS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            return;
        };
        let stream = self
            .fault_streams
            .iter()
            .position(|&(f, next)| f == file && next == index);
        let mut run: Vec<u64> = Vec::with_capacity(READAHEAD as usize);
        run.push(pfn);
        if stream.is_some() {
            for i in index + 1..index + READAHEAD {
                let Some(p) = self.frames.peek(file, i) else {
                    break;
                };
                if self.frames.flags(p) & flag::VOLATILE == 0
                    || hints::dropped_shared(p) != Some(true)
                {
                    break;
                }
                run.push(p);
            }
        }
        let slot = stream.unwrap_or_else(|| {
            let s = self.fault_stream_next;
            self.fault_stream_next = (s + 1) % super::FAULT_STREAMS;
            s
        });
        self.fault_streams[slot] = (file, index + run.len() as u64);
        self.discard_many(&run);
    }

    /// Before the kernel touches a cached frame a user maps: makes it
    /// stable if it is volatile. Returns false if the host had dropped it
    /// (it is then gone from the cache and every mapping).
    pub fn ensure_stable(&mut self, pfn: u64) -> bool {
        if self.frames.flags(pfn) & flag::VOLATILE == 0 {
            return true;
        }
        match self.frames.owner(pfn) {
            Some((file, index)) => self.make_stable_hit(file, index, pfn),
            None => true,
        }
    }

    /// Keeps the active list at a quarter of the cache: frames that fall
    /// off it become volatile (batched hints) when they are clean, unlocked
    /// and held only by the cache and its (read-only) mappings. Without
    /// discard faults a mapped page stays stable. A mapped page that a
    /// mapping used since the last look goes back to the active list
    /// instead (a second chance, as Linux gives with `page_referenced`):
    /// its uses make no fault and no cache lookup, so its accessed bits are
    /// the only sign that it is hot, and a hot page made volatile is one
    /// the host may take and the guest must read again.
    fn age_cache(&mut self) {
        if !hints::enabled() {
            return;
        }
        let target = (self.frames.cached() / 4).max(16);
        let mut out = Vec::new();
        self.frames.deactivate_excess(target, &mut out);
        let mut maps = Vec::new();
        for pfn in out {
            self.age_one(pfn, &mut maps);
        }
        self.turn_hand(&mut maps);
    }

    /// The ageing hand: looks at the next [`AGE_HAND`] frames of the
    /// inactive list. One not yet volatile (read lately, and busy then)
    /// becomes volatile if it may ([`Self::age_one`]; the use that read it
    /// in is not a second chance). With CPUID
    /// `GUEST_AGES`, a volatile one gets its age published in its
    /// shared-table entry: 0 if a mapping used it since the last look
    /// (its accessed bits, cleared on the way), else one more; the host
    /// takes the oldest first. A page used through `read()` needs no
    /// look: the hit made it stable, which cleared its age. Paid once per
    /// cache miss, so the hand turns as fast as pages come in (or the
    /// host takes them) and not at all while nothing misses.
    fn turn_hand(&mut self, maps: &mut Vec<Mapping>) {
        let publish = hints::guest_ages();
        let mut seen = [0u64; AGE_HAND];
        let n = self.frames.rotate_inactive(&mut seen);
        for &pfn in &seen[..n] {
            if self.frames.flags(pfn) & flag::VOLATILE == 0 {
                // The use that read it in set its accessed bit: that one
                // does not count (Linux activates a mapped page referenced
                // twice, not once).
                if self.frames.mapcount(pfn) > 0 {
                    self.referenced(pfn, maps);
                }
                self.age(pfn, maps, false);
                continue;
            }
            if !publish {
                continue;
            }
            let used = self.frames.mapcount(pfn) > 0 && self.referenced(pfn, maps);
            if hints::publish_age(pfn, used).is_some() {
                self.stats.ages_published += 1;
                self.stats.ages_young += u64::from(used);
            }
        }
    }

    /// An inactive cache page, looked at once: volatile if it is clean,
    /// idle and held only by the cache and its mappings, potentially
    /// volatile if it is mapped writable ([`Self::age_writable`]), else
    /// left as it is. Also called for inactive pages a write-back just
    /// cleaned, which fell off the active list while they were dirty.
    pub(super) fn age_one(&mut self, pfn: u64, maps: &mut Vec<Mapping>) {
        self.age(pfn, maps, true);
    }

    /// [`Self::age_one`]; without `second_chance` the accessed bits are
    /// not looked at (the caller has just cleared them, and the use they
    /// showed does not count), which saves a walk of the reverse map.
    ///
    /// Runs for every page read ahead: the page made volatile is the short
    /// path (a few loads, the flag, the count and the table's store); the
    /// writable mapping and the second chance are out of line, so that it
    /// saves and restores no register it does not use.
    fn age(&mut self, pfn: u64, maps: &mut Vec<Mapping>, second_chance: bool) {
        if !hints::enabled() {
            return;
        }
        let f = self.frames.flags(pfn);
        if f & flag::WRITABLE_MAPPED != 0 {
            self.age_writable(pfn, maps, second_chance);
            return;
        }
        if f & (flag::LOCKED | flag::DIRTY | flag::VOLATILE) != 0 {
            return;
        }
        let mapped = self.frames.mapcount(pfn);
        // Mapped pages may be volatile only when the VMM delivers
        // discard faults: a user access cannot ask first.
        let refs_ok = if crate::phys::discard::enabled() {
            self.frames.refcount(pfn) == 1 + mapped
        } else {
            self.frames.refcount(pfn) == 1 && mapped == 0
        };
        if !refs_ok || (second_chance && mapped > 0 && self.second_chance(pfn, maps)) {
            return;
        }
        self.frames.set_flags(pfn, flag::VOLATILE);
        self.volatile += 1;
        hints::queue(HintOp::MakeVolatile, pfn);
    }

    /// A mapped page the ageing looks at: back to the active list if a
    /// mapping used it since the last look (true), else nothing.
    #[inline(never)]
    fn second_chance(&mut self, pfn: u64, maps: &mut Vec<Mapping>) -> bool {
        if !self.referenced(pfn, maps) {
            return false;
        }
        self.frames.activate(pfn);
        self.stats.referenced += 1;
        true
    }

    /// A clean cache page mapped writable that fell off the active list
    /// (seed 000): potentially volatile when the VMM offers it, the shared
    /// table carries it and discard faults are on; otherwise it stays
    /// stable. A page a mapping used since the last look goes back to the
    /// active list; one a mapping wrote is marked dirty for the write-back
    /// instead. The host takes a potentially volatile page only if its
    /// dirty log shows no write since the page was last read or written
    /// back, so a write that races with this check costs a write-back,
    /// never data.
    #[inline(never)]
    fn age_writable(&mut self, pfn: u64, maps: &mut Vec<Mapping>, second_chance: bool) {
        let f = self.frames.flags(pfn);
        if f & (flag::LOCKED | flag::DIRTY | flag::VOLATILE) != 0
            || !hints::potentially_volatile()
            || !crate::phys::discard::enabled()
            || self.frames.refcount(pfn) != 1 + self.frames.mapcount(pfn)
        {
            return;
        }
        if second_chance && self.referenced(pfn, maps) {
            self.frames.activate(pfn);
            self.stats.referenced += 1;
            return;
        }
        if self.pte_dirty(pfn, maps) {
            self.mark_dirty(pfn);
            return;
        }
        if hints::release_potentially_volatile(pfn) {
            self.frames
                .set_flags(pfn, flag::VOLATILE | flag::POT_VOLATILE);
            self.volatile += 1;
            self.stats.potentially_volatile += 1;
        }
    }

    /// Whether a user mapping used `pfn` since the last look: the accessed
    /// bit of every entry that maps it, cleared on the way. No TLB flush
    /// (nor does Linux on x86): a CPU that still caches the translation
    /// sets no bit again, so a page in use may look unused once and become
    /// volatile early, which costs a refault, never data. The entry is
    /// changed with a compare-and-swap, so a dirty bit a CPU sets through
    /// a writable mapping meanwhile is kept.
    /// `maps` is scratch space, kept by the caller across calls.
    fn referenced(&mut self, pfn: u64, maps: &mut Vec<Mapping>) -> bool {
        let mut used = false;
        self.update_ptes_of(pfn, maps, |pte| {
            used |= pte & pte_flags::ACCESSED != 0;
            pte & !pte_flags::ACCESSED
        });
        used
    }

    /// Frees up to `n` page-cache frames, least recently used first,
    /// unmapping them from every address space. Returns how many.
    pub fn reclaim(&mut self, n: usize) -> usize {
        let mut victims = Vec::new();
        self.frames.lru_victims(n, &mut victims);
        let mut torn = Vec::new();
        let mut maps = Vec::new();
        for &pfn in &victims {
            // Only the cache and the mappings may hold it.
            if self.frames.refcount(pfn) != 1 + self.frames.mapcount(pfn) {
                continue;
            }
            maps.clear();
            self.frames.mappings(pfn, &mut maps);
            for &Mapping { asid, va } in &maps {
                let mut old = 0;
                if let Some(space) = self.spaces.get(&asid) {
                    let mut phys = KernelPhys;
                    if let Some((e, flush)) = Mapper::new(space.root(), &mut phys).unmap(va) {
                        debug_assert_eq!((e & ADDR_MASK) / PAGE_SIZE, pfn);
                        flush.ignore(); // paid below by the shootdown
                        old = e;
                    }
                }
                self.unmapped_pte(pfn, old);
                let _ = self.frames.rmap_remove(pfn, Mapping { asid, va });
            }
            torn.push(pfn);
        }
        if torn.is_empty() {
            return 0;
        }
        // No CPU may keep a TLB entry for a frame about to be reused.
        tlb::shootdown_all();
        self.stats.shootdowns += 1;
        // Dirty ones reach the disk first; one that cannot stays cached.
        let mut dirty: Vec<(u32, u64, u64)> = torn
            .iter()
            .filter(|&&p| self.frames.flags(p) & flag::DIRTY != 0)
            .filter_map(|&p| self.frames.owner(p).map(|(f, i)| (f, i, p)))
            .collect();
        dirty.sort_unstable();
        if !dirty.is_empty() {
            let _ = self.write_out(&dirty);
        }
        let mut freed = 0;
        for pfn in torn {
            if self.frames.flags(pfn) & flag::DIRTY != 0 {
                continue;
            }
            if let Some(owner) = self.frames.owner(pfn) {
                self.wb.remove(&owner);
            }
            if self.frames.flags(pfn) & flag::VOLATILE != 0 {
                self.volatile = self.volatile.saturating_sub(1);
            }
            if self.frames.remove(pfn) {
                free_frame(pfn * PAGE_SIZE);
                freed += 1;
            }
        }
        self.stats.reclaimed += freed as u64;
        freed
    }
}
