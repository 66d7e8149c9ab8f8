//! `remora-init validate`: proves, without any privilege, that the pod's traffic capture is in
//! place — the check of the `remora-validation` init container that CNI-mode pods get instead of
//! the privileged `remora-init`.
//!
//! Running as the proxy's uid, it listens on the inbound capture port (loopback) and connects to
//! a loopback address other than 127.0.0.1 ([`PROBE`]). Only the capture answers there: the
//! rule "proxy uid calling its own pod IP: capture as inbound" redirects the connection to the
//! listener, which must see a token sent over it and the probe address as the original
//! destination. Without the rules the connection is refused, and the container fails with one
//! line saying so.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use nix::sys::socket::{getsockopt, sockopt};

/// Where the probe connects: a loopback address only the capture answers (nothing listens on
/// it in a pod whose containers have not started).
pub const PROBE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 7), 15002);

/// `remora-init validate` flags.
#[derive(Debug, Clone, Parser, PartialEq, Eq)]
#[command(
    name = "remora-init validate",
    about = "Checks that the pod's traffic capture is in place (run as the proxy uid, no privileges)."
)]
pub struct ValidateFlags {
    /// The proxy's inbound capture port (the listener).
    #[arg(short = 'z', long = "inbound-capture-port", default_value_t = 15006)]
    pub inbound_capture_port: u16,
    /// The proxy's uid: the capture rule checked applies to it, so the check must run as it.
    #[arg(short = 'u', long = "proxy-uid", default_value_t = 1337)]
    pub proxy_uid: u32,
    /// How long to wait for the redirected connection.
    #[arg(long = "timeout-ms", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout_ms: u64,
}

/// The check; `Ok` is one line saying what was proven, `Err` one line saying what is wrong.
pub fn run(flags: &ValidateFlags) -> Result<String, String> {
    let uid = nix::unistd::getuid().as_raw();
    if uid != flags.proxy_uid {
        return Err(format!(
            "remora-init validate must run as the proxy uid {} (the capture rule it checks applies to that uid), but runs as uid {uid}",
            flags.proxy_uid
        ));
    }
    let timeout = Duration::from_millis(flags.timeout_ms);
    let listen_at = SocketAddrV4::new(Ipv4Addr::LOCALHOST, flags.inbound_capture_port);
    let listener = TcpListener::bind(listen_at).map_err(|e| {
        format!(
            "cannot listen on {listen_at} ({e}): the validation must run before the proxy starts"
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot set the listener non-blocking: {e}"))?;
    let token = format!(
        "remora-validation {} {}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let not_in_place = |why: String| {
        format!(
            "the traffic capture is not in place: a connection to {PROBE} as uid {uid} was not redirected to the inbound capture port {} ({why}); the node's CNI plugin (remora-cni) did not program this pod's network: check that remora-cni-node runs on this node and is in its CNI configuration, then delete the pod so that it is created again",
            flags.inbound_capture_port
        )
    };
    let mut client = TcpStream::connect_timeout(&SocketAddr::V4(PROBE), timeout)
        .map_err(|e| not_in_place(e.to_string()))?;
    let _ = client.set_write_timeout(Some(timeout));
    client
        .write_all(token.as_bytes())
        .and_then(|()| client.shutdown(std::net::Shutdown::Write))
        .map_err(|e| not_in_place(format!("sending over it failed: {e}")))?;
    let deadline = Instant::now() + timeout;
    // Bounded: every connection accepted is read once; the loop ends at the deadline.
    while Instant::now() < deadline {
        let (mut server, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(format!("accepting on {listen_at} failed: {e}")),
        };
        let _ = server.set_nonblocking(false);
        let _ = server.set_read_timeout(Some(timeout));
        let mut got = Vec::new();
        let _ = (&mut server).take(256).read_to_end(&mut got);
        if got != token.as_bytes() {
            continue;
        }
        let original = getsockopt(&server, sockopt::OriginalDst)
            .map(|a| {
                SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )
            })
            .map_err(|e| format!("reading the original destination failed: {e}"))?;
        if original != PROBE {
            return Err(format!(
                "a connection reached {listen_at} with original destination {original}, expected {PROBE}"
            ));
        }
        return Ok(format!(
            "capture in place: a connection to {PROBE} as uid {uid} was redirected to the inbound capture port {}",
            flags.inbound_capture_port
        ));
    }
    Err(not_in_place(
        "it was answered by something else, not the capture".into(),
    ))
}
