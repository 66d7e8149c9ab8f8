//! Handing freed heap memory back to the kernel.
//!
//! glibc's allocator keeps freed pages in its arenas (one per thread that allocated, up to a
//! limit) for reuse, so a proxy's RSS after a burst of load stays at the burst's peak. The
//! discovery loop releases them after decoding large lists; [`return_after_bursts`] does it for
//! the request path: every [`CHECK`] it asks the allocator how much it holds free
//! (`mallinfo2`) and trims when that is over [`FREE_LIMIT`]. Both calls walk the arenas only
//! (no request waits on them beyond an arena lock), and an idle proxy wakes once per [`CHECK`].
//!
//! malloc_trim(3) and mallinfo2(3) have no safe wrappers in libc or nix: the crate's only
//! unsafe code is here.
#![allow(unsafe_code)]

use std::time::Duration;

/// How often the allocator's free memory is checked.
pub const CHECK: Duration = Duration::from_secs(10);
/// Free memory kept by the allocator beyond which it is handed back.
pub const FREE_LIMIT: usize = 1 << 20;

/// Bytes the allocator holds free in its arenas (`None` where that cannot be asked).
pub fn free_bytes() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Return freed heap pages to the kernel now.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no pointers are passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Every [`CHECK`], trims when the allocator holds more than [`FREE_LIMIT`] free and that
/// figure moved since the last trim (a trim leaves freed chunks counted as free; it only hands
/// their pages back, so an unchanged figure means nothing new to return); runs until the task
/// is dropped.
pub async fn return_after_bursts() {
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut at_last_trim = 0;
    loop {
        tick.tick().await;
        if let Some(free) = free_bytes() {
            if free > FREE_LIMIT && free != at_last_trim {
                release_free_memory();
                at_last_trim = free;
            }
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Freed memory shows as free in the allocator and is handed back by a trim. Measured in a
    /// process of its own (this test binary, running only [`trim_in_a_process_of_its_own`]):
    /// other tests allocating on other threads would move the process-wide figures.
    #[test]
    fn freed_memory_is_seen_and_trimmed() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "heap::tests::trim_in_a_process_of_its_own",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("REMORA_HEAP_TEST_CHILD", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    #[test]
    #[ignore = "run by freed_memory_is_seen_and_trimmed in a process of its own"]
    fn trim_in_a_process_of_its_own() {
        assert_eq!(std::env::var("REMORA_HEAP_TEST_CHILD").as_deref(), Ok("1"));
        // 16 MiB in 64 KiB blocks (below the mmap threshold, so they come from an arena), every
        // other one kept so the freed ones cannot merge into the top chunk and be returned by
        // free(3) itself: 8 MiB of holes, each holding whole pages for a trim to return.
        let mut blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8 | 1; 64 * 1024]).collect();
        let before = free_bytes().unwrap();
        let kept: Vec<Vec<u8>> = blocks.drain(..).step_by(2).collect();
        let freed = free_bytes().unwrap();
        assert!(
            freed >= before + 4 * 1024 * 1024,
            "8 MiB freed, 4 MiB of it in holes: free {before} -> {freed}"
        );
        let anon = rss_anon_kib();
        release_free_memory();
        let after = rss_anon_kib();
        assert!(
            after + 2 * 1024 < anon,
            "trim returned less than 2 MiB: RssAnon {anon} kB -> {after} kB"
        );
        drop(kept);
    }

    fn rss_anon_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
}
