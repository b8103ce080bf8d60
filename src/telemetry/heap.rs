//! The server's heap: jemalloc, and what it reports.
//!
//! Strata allocates through jemalloc (the global allocator in `src/lib.rs`), built with background
//! threads (Cargo.toml): pages freed by a large transient allocation (an ingest decoding an
//! upload, a MERGE's join state) go back to the OS by time decay, on jemalloc's own threads,
//! whether or not the server allocates again. glibc's malloc kept them in its arenas (after
//! ingesting TPC-H SF-1 `lineitem` the server stayed at 522 MiB resident with 90 MiB in
//! use) and needed a `malloc_trim` loop; jemalloc also ran a 10M-row MERGE 10–20% faster
//! (the allocator Python `deltalake` ships with, so the MERGE benchmark now compares the
//! same delta-rs on the same allocator).
//!
//! Where the binary is built without jemalloc (musl, non-Unix) [`stats`] is `None` and
//! nothing is exported.

/// What the allocator holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeapStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in physically resident pages the allocator maps (live, free but not yet
    /// decayed, and metadata).
    pub resident: u64,
    /// Bytes of virtual memory the allocator keeps mapped but has returned to the OS.
    pub retained: u64,
}

/// The allocator's current statistics (refreshed: jemalloc caches them per epoch).
pub(crate) fn stats() -> Option<HeapStats> {
    #[cfg(all(unix, not(target_env = "musl")))]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().ok()?;
        let read = |r: tikv_jemalloc_ctl::Result<usize>| r.ok().map(|v| v as u64);
        Some(HeapStats {
            allocated: read(stats::allocated::read())?,
            resident: read(stats::resident::read())?,
            retained: read(stats::retained::read())?,
        })
    }
    #[cfg(not(all(unix, not(target_env = "musl"))))]
    {
        None
    }
}

/// Whether freed memory is being returned by jemalloc's background threads.
#[cfg(test)]
fn background_purging() -> bool {
    #[cfg(all(unix, not(target_env = "musl")))]
    {
        tikv_jemalloc_ctl::background_thread::read().unwrap_or(false)
    }
    #[cfg(not(all(unix, not(target_env = "musl"))))]
    {
        false
    }
}

#[cfg(all(test, unix, not(target_env = "musl")))]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_goes_back_without_further_allocation() {
        assert!(
            background_purging(),
            "jemalloc was built without background threads"
        );
        let before = stats().map(|s| s.allocated).unwrap_or(0);
        // Many blocks below jemalloc's large-size classes and one large one: both kinds
        // of extents must decay.
        let mut blocks: Vec<Vec<u8>> = (0..20_000)
            .map(|i| vec![(i % 251) as u8 + 1; 8 << 10])
            .collect();
        blocks.push(vec![7u8; 128 << 20]);
        let held = stats().unwrap_or(HeapStats {
            allocated: 0,
            resident: 0,
            retained: 0,
        });
        assert!(
            held.allocated >= before + (280 << 20),
            "allocated {} after allocating 284 MiB (was {before})",
            held.allocated
        );
        drop(blocks);
        // Nothing allocates from here on: only the background threads can purge. Dirty
        // pages decay over jemalloc's default 10 s; allow for a loaded machine.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut now = held;
        while std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(500));
            now = stats().unwrap_or(held);
            if now.resident + (200 << 20) < held.resident {
                break;
            }
        }
        assert!(
            now.resident + (200 << 20) < held.resident,
            "resident {} → {} after freeing 284 MiB",
            held.resident,
            now.resident
        );
    }
}
