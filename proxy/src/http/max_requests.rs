//! `connectionPool.http.maxRequestsPerConnection`: requests carried so far by each open HTTP/1
//! upstream connection, so that the last one allowed goes out with `Connection: close`.
//!
//! Pingora pools upstream connections itself and gives a request only the connection's socket
//! and whether it was reused, with no place to keep state per connection; the counts are
//! therefore kept here, by socket, and only for destinations with a limit.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Requests carried so far by each open HTTP/1 upstream connection (by socket). A socket number
/// is reused only after its connection closed, and a new connection (`reused == false`) starts
/// its count again.
static UPSTREAM_USES: LazyLock<Mutex<HashMap<i32, u64>>> = LazyLock::new(Default::default);

/// Count one more request on upstream socket `fd` (a fresh connection when `!reused`); true when
/// it is the connection's last one under `max` (> 0).
pub(super) fn last_request_on_connection(fd: i32, reused: bool, max: u64) -> bool {
    let Ok(mut uses) = UPSTREAM_USES.lock() else {
        return false;
    };
    let n = if reused {
        let n = uses.entry(fd).or_insert(0);
        *n += 1;
        *n
    } else {
        uses.insert(fd, 1);
        1
    };
    if n >= max {
        uses.remove(&fd);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_close_after_their_last_allowed_request() {
        // fd numbers far from real ones: the table is process-wide.
        let fd = 1_000_001;
        let seq: Vec<bool> = [false, true, true, false, true]
            .iter()
            .map(|&reused| last_request_on_connection(fd, reused, 3))
            .collect();
        // 1st, 2nd, 3rd (last) on one connection; a new connection on the same fd starts over.
        assert_eq!(seq, [false, false, true, false, false]);
        assert!(
            last_request_on_connection(fd + 1, false, 1),
            "1 disables keep-alive"
        );
    }
}
