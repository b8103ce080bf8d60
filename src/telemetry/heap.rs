//! Returning freed heap memory to the operating system.
//!
//! glibc keeps what large transient allocations free (an ingest decoding a whole upload,
//! a MERGE's join state) in its per-thread arenas instead of giving it back: after
//! ingesting TPC-H SF-1 `lineitem` (6M rows) the server stayed at 522 MiB RSS with 90 MiB
//! in use, and every later workload started from there. A background task asks the
//! allocator every [`INTERVAL`] how much free memory it holds and trims the arenas when
//! that exceeds [`THRESHOLD`]; `malloc_trim` returns whole free pages from every arena, not
//! only the top of the main heap.
//!
//! Only on Linux with glibc; elsewhere [`spawn_trimmer`] does nothing.

// The crate denies unsafe code; this module alone calls two glibc functions.
#![allow(unsafe_code)]

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
    m.heap_trims
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    m.heap_trimmed_bytes
        .fetch_add(released, std::sync::atomic::Ordering::Relaxed);
    released
}

/// Whether to trim now: the allocator holds more than [`THRESHOLD`] free and that amount
/// moved by a quarter of it since the last trim (trimming does not change the count, it
/// only drops the pages behind it, so an unchanged count means nothing new to return).
fn due(free: usize, at_last_trim: usize) -> bool {
    free > THRESHOLD && free.abs_diff(at_last_trim) > THRESHOLD / 4
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
        let mut at_last_trim = 0usize;
        loop {
            tick.tick().await;
            let free = free_bytes().unwrap_or(0);
            if !due(free, at_last_trim) {
                continue;
            }
            at_last_trim = free;
            if let Ok(released) = tokio::task::spawn_blocking(trim).await {
                tracing::debug!(free, released, "returned free heap memory to the OS");
            }
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
        assert!(due(free, 0) && !due(free, free) && !due(THRESHOLD, 0));
        let released = trim();
        assert!(released > 200 << 20, "released {released} of {free} free");
        assert_eq!(keep[0], 1);
    }
}
