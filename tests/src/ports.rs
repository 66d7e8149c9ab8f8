//! Free loopback ports for servers a test starts in another process (a proxy, a webhook).
//!
//! Asking the kernel for port 0 and releasing it is racy: the released port is in the ephemeral
//! range (`net.ipv4.ip_local_port_range`, usually 32768–60999), so any outgoing connection of a
//! test running in parallel may take it before the child process binds it (CI saw a proxy fail
//! with `Address already in use` on its health port). Ports handed out here come from below that
//! range, where the kernel never picks a source port, each one at most once per test process, and
//! each is checked free by binding it before it is handed out.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// First and one-past-last port of the range handed out.
const LOW: u32 = 20_000;
const HIGH: u32 = 32_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `n` distinct ports free on 127.0.0.1 right now, outside the ephemeral range.
pub fn free_ports(n: usize) -> Vec<u16> {
    let span = HIGH - LOW;
    // Different test processes start at different offsets (pid), so sequential binaries rarely
    // meet a port a lingering child of the previous one still holds; the bind check covers the rest.
    let base = (std::process::id().wrapping_mul(977)) % span;
    let mut out = Vec::with_capacity(n);
    for _ in 0..span {
        if out.len() == n {
            break;
        }
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (base + k) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    assert_eq!(out.len(), n, "no {n} free loopback ports in {LOW}..{HIGH}");
    out
}

/// One port, as [`free_ports`].
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_outside_the_ephemeral_range() {
        let a = free_ports(50);
        let b = free_ports(50);
        let mut all: Vec<u16> = a.iter().chain(b.iter()).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 100, "ports repeat: {a:?} {b:?}");
        for p in &all {
            assert!(
                (LOW..HIGH).contains(&u32::from(*p)),
                "{p} outside {LOW}..{HIGH}"
            );
        }
        // (Each was free when handed out: `free_ports` bound it. Binding it again here would race
        // with other test processes on the machine, so the test does not.)
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        // Hold the next ports this process would hand out; none of them may come back.
        let next = NEXT.load(Ordering::Relaxed);
        let base = (std::process::id().wrapping_mul(977)) % (HIGH - LOW);
        let held: Vec<TcpListener> = (0..20)
            .filter_map(|i| {
                let port = (LOW + (base + next + i) % (HIGH - LOW)) as u16;
                TcpListener::bind(("127.0.0.1", port)).ok()
            })
            .collect();
        let held_ports: Vec<u16> = held
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.port())
            .collect();
        for p in free_ports(10) {
            assert!(!held_ports.contains(&p), "{p} is held by this test");
        }
    }
}
