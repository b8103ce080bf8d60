//! Returning freed heap memory to the operating system.
//!
//! glibc keeps what large transient allocations free (an ingest decoding a whole upload,
//! a MERGE's join state) in its per-thread arenas instead of giving it back: after
//! ingesting TPC-H SF-1 `lineitem` (6M rows) the server stayed at 522 MiB RSS with 90 MiB
//! in use, and every later workload started from there. After every commit, and every
//! [`INTERVAL`] in the background, the allocator is asked how much free memory it holds;
//! above [`THRESHOLD`] (and when the process grew since the last trim) its arenas are
//! trimmed: `malloc_trim` returns whole free pages from every arena, not only the top of
//! the main heap.
//!
//! Only on Linux with glibc; elsewhere [`spawn_trimmer`] does nothing.

// The crate denies unsafe code; this module alone calls two glibc functions.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the allocator's free memory is checked.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Free memory the allocator may keep before it is trimmed, in bytes.
pub const THRESHOLD: usize = 64 << 20;

/// Bytes the allocator holds free (`mallinfo2().fordblks`), if known on this platform.
pub fn free_bytes() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's own statistics (glibc ≥ 2.33).
        Some(unsafe { libc::mallinfo2() }.fordblks)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Resident memory of this process in bytes (`VmRSS`), if known.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// Returns the allocator's free pages to the OS; the resident bytes released.
pub fn trim() -> u64 {
    let before = resident_bytes().unwrap_or(0);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe; it takes each arena's lock while trimming it.
    unsafe {
        libc::malloc_trim(0);
    }
    let released = before.saturating_sub(resident_bytes().unwrap_or(before));
    let m = crate::telemetry::metrics();
    m.heap_trims.fetch_add(1, Ordering::Relaxed);
    m.heap_trimmed_bytes.fetch_add(released, Ordering::Relaxed);
    released
}

/// Resident bytes right after the last trim.
static RSS_AT_LAST_TRIM: AtomicU64 = AtomicU64::new(0);
/// A trim is running (they don't queue up).
static TRIMMING: AtomicBool = AtomicBool::new(false);

/// Whether to trim now: the allocator holds more than [`THRESHOLD`] free and the process
/// grew by a quarter of that since the last trim. (Trimming leaves the free count as it
/// is and only drops the pages behind it, so the count alone can't tell whether there is
/// anything new to return; resident growth can.)
fn due(free: usize, rss: u64, rss_at_last_trim: u64) -> bool {
    free > THRESHOLD && rss > rss_at_last_trim + (THRESHOLD / 4) as u64
}

/// Trims if [`due`]; the resident bytes released, or `None` when it was not.
pub fn trim_if_due() -> Option<u64> {
    let free = free_bytes()?;
    let rss = resident_bytes()?;
    if !due(free, rss, RSS_AT_LAST_TRIM.load(Ordering::Relaxed))
        || TRIMMING.swap(true, Ordering::Acquire)
    {
        return None;
    }
    let released = trim();
    RSS_AT_LAST_TRIM.store(resident_bytes().unwrap_or(0), Ordering::Relaxed);
    TRIMMING.store(false, Ordering::Release);
    tracing::debug!(free, released, "returned free heap memory to the OS");
    Some(released)
}

/// [`trim_if_due`] on a blocking thread, without waiting: for after an operation that
/// may have freed a lot (a commit), so the memory goes back now rather than at the next
/// tick of the trimmer.
pub fn trim_soon() {
    if free_bytes().is_some()
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        runtime.spawn_blocking(trim_if_due);
    }
}

/// Starts the background trimmer on the current runtime (nothing where [`free_bytes`] is
/// unknown). It ends with the runtime.
pub fn spawn_trimmer() {
    if free_bytes().is_none() {
        return;
    }
    tokio::spawn(async {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(trim_if_due).await;
        }
    });
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_returned() {
        // Many small blocks (below the mmap threshold, so they live in an arena), then all
        // freed but the last one, which pins the top of the heap: free memory glibc keeps.
        let blocks: Vec<Vec<u8>> = (0..40_000)
            .map(|i| vec![(i % 251) as u8 + 1; 8 << 10])
            .collect();
        let keep = vec![1u8; 8 << 10];
        drop(blocks);
        let free = free_bytes().unwrap_or(0);
        assert!(free > 200 << 20, "free heap after dropping 312 MiB: {free}");
        let rss = resident_bytes().unwrap_or(0);
        assert!(due(free, rss, 0) && !due(free, rss, rss) && !due(THRESHOLD, rss, 0));
        let released = trim_if_due().unwrap_or(0);
        assert!(released > 200 << 20, "released {released} of {free} free");
        // Nothing grew since: not due again.
        assert_eq!(trim_if_due(), None);
        assert_eq!(keep[0], 1);
    }
}
