//! HTTP/1 request heads, read before Pingora sees them, under limits on the request line, the
//! total head size and the header count, and under a deadline for the whole head (slowloris).
//! Violations are answered 414 / 431 / 408 with `connection: close`; a client that sent nothing
//! is closed without an answer. The head is then put back into the stream and Pingora parses it
//! as usual. A kept-alive connection idle longer than the idle timeout is closed.

use super::limits::DownstreamLimits;
use super::reject::{answer, record, Reject};
use crate::telemetry::Metrics;
use bytes::BufMut;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

/// The state of an HTTP/1 request head read so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Not complete yet, within the limits.
    Partial,
    /// Complete: the head is the first `n` bytes.
    Complete(usize),
    /// Over a limit.
    Over(Reject),
}

/// Incremental scanner of an HTTP/1 request head: each byte is looked at once, whatever the
/// read sizes (a client dribbling one byte at a time costs linear work).
#[derive(Clone, Debug, Default)]
pub struct HeadScanner {
    /// Bytes scanned so far.
    pos: usize,
    /// Start of the current line.
    line_start: usize,
    /// Whether the request line has ended.
    request_line_done: bool,
    /// Header fields seen.
    headers: usize,
}

impl HeadScanner {
    /// Scan the new bytes of `buf` (which only ever grows) against `limits`.
    pub fn feed(&mut self, buf: &[u8], limits: &DownstreamLimits) -> Head {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            self.pos += 1;
            if b != b'\n' {
                continue;
            }
            let mut line = &buf[self.line_start..self.pos - 1];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            self.line_start = self.pos;
            if !self.request_line_done {
                // Empty lines before the request line are allowed (RFC 9112 2.2).
                if line.is_empty() {
                    continue;
                }
                if line.len() > limits.max_request_line {
                    return Head::Over(Reject::RequestLineTooLong);
                }
                self.request_line_done = true;
            } else if line.is_empty() {
                if self.pos > limits.max_head_bytes {
                    return Head::Over(Reject::HeadersTooLarge);
                }
                return Head::Complete(self.pos);
            } else {
                self.headers += 1;
                if self.headers > limits.max_headers {
                    return Head::Over(Reject::TooManyHeaders);
                }
            }
            if self.pos > limits.max_head_bytes {
                return Head::Over(Reject::HeadersTooLarge);
            }
        }
        // (+1: the line's CR may already be here without its LF.)
        if !self.request_line_done && buf.len() - self.line_start > limits.max_request_line + 1 {
            return Head::Over(Reject::RequestLineTooLong);
        }
        if buf.len() > limits.max_head_bytes {
            return Head::Over(Reject::HeadersTooLarge);
        }
        Head::Partial
    }
}

/// Most bytes one read of a request head asks for.
const READ_CHUNK: usize = 8192;

/// Outcome of reading one request head.
pub enum HeadRead {
    /// The head is complete and within the limits; the stream replays it from its first byte.
    Ready(Stream),
    /// The client closed (or errored) before sending anything: nothing to answer.
    Closed,
    /// Turned away (already answered when there is an answer, and counted).
    Rejected(Reject),
}

/// Read one HTTP/1 request head from `stream` under `limits`. `keepalive` says whether this is
/// a later request on a kept-alive connection (the wait for its first byte is the idle timeout;
/// for the first request the head deadline covers it). Streams that are not plain TCP streams
/// are passed through unchecked.
pub async fn read_head(
    stream: Stream,
    limits: &DownstreamLimits,
    metrics: &Metrics,
    listener: &'static str,
    keepalive: bool,
) -> HeadRead {
    if !stream.as_any().is::<L4Stream>() {
        return HeadRead::Ready(stream);
    }
    let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
        return HeadRead::Closed;
    };
    // Reads go straight into the head buffer's spare capacity: no zeroed scratch buffer and no
    // second copy per request.
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    if keepalive {
        let mut room = (&mut buf).limit(READ_CHUNK);
        let first = tokio::time::timeout(limits.idle_timeout, l4.read_buf(&mut room)).await;
        match first {
            Err(_) => {
                record(
                    metrics,
                    listener,
                    Reject::IdleTimeout,
                    &format!(
                        "keep-alive connection idle for {}s",
                        limits.idle_timeout.as_secs()
                    ),
                );
                return HeadRead::Rejected(Reject::IdleTimeout);
            }
            Ok(Ok(0)) | Ok(Err(_)) => return HeadRead::Closed,
            Ok(Ok(_)) => {}
        }
    }
    let deadline = tokio::time::Instant::now() + limits.header_timeout;
    let mut scan = HeadScanner::default();
    loop {
        match scan.feed(&buf, limits) {
            Head::Complete(_) => break,
            Head::Over(why) => {
                reject(&mut l4, metrics, listener, why, buf.len()).await;
                return HeadRead::Rejected(why);
            }
            Head::Partial => {}
        }
        // Never read past what could still be a legal head (+1 to see it go over).
        let room = (limits.max_head_bytes + 1).saturating_sub(buf.len());
        let want = room.clamp(1, READ_CHUNK);
        buf.reserve(want);
        let mut into = (&mut buf).limit(want);
        let read = tokio::time::timeout_at(deadline, l4.read_buf(&mut into)).await;
        match read {
            Err(_) => {
                if buf.is_empty() {
                    record(
                        metrics,
                        listener,
                        Reject::HeaderTimeout,
                        &format!(
                            "no request within {}s; closed without an answer",
                            limits.header_timeout.as_secs()
                        ),
                    );
                } else {
                    reject(&mut l4, metrics, listener, Reject::HeaderTimeout, buf.len()).await;
                }
                return HeadRead::Rejected(Reject::HeaderTimeout);
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                if !buf.is_empty() {
                    debug!(
                        listener,
                        bytes = buf.len(),
                        "client closed in the middle of a request head"
                    );
                }
                return HeadRead::Closed;
            }
            Ok(Ok(_)) => {}
        }
    }
    l4.rewind(&buf);
    HeadRead::Ready(l4 as Stream)
}

async fn reject(
    l4: &mut L4Stream,
    metrics: &Metrics,
    listener: &'static str,
    why: Reject,
    read: usize,
) {
    record(
        metrics,
        listener,
        why,
        &format!("{} after {read} bytes of request head", why.as_str()),
    );
    if let Some(bytes) = answer(why) {
        // Best effort, bounded: the client may not be reading.
        let write = async {
            l4.write_all(&bytes).await?;
            l4.flush().await?;
            l4.shutdown().await
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(1), write)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("write timed out")))
        {
            debug!(listener, "writing the {} answer: {e}", why.as_str());
            return;
        }
        linger(l4).await;
    }
}

/// After answering, read and discard what the client is still sending for a short, bounded
/// while, so that closing does not reset the connection (a reset can destroy the answer in the
/// client's receive buffer before it reads it). Like nginx's `lingering_close`.
async fn linger(l4: &mut L4Stream) {
    const TOTAL: Duration = Duration::from_secs(2);
    const QUIET: Duration = Duration::from_millis(250);
    const MAX_BYTES: usize = 1 << 20;
    let end = tokio::time::Instant::now() + TOTAL;
    // On the heap: an array here would be part of `read_head`'s future, which is made and moved
    // for every request head (8 KiB copied per request for a path taken only on a refusal).
    let mut sink = vec![0u8; 8192];
    let mut drained = 0usize;
    while drained < MAX_BYTES {
        let quiet = (tokio::time::Instant::now() + QUIET).min(end);
        match tokio::time::timeout_at(quiet, l4.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> DownstreamLimits {
        DownstreamLimits {
            max_head_bytes: 200,
            max_headers: 3,
            max_request_line: 40,
            ..Default::default()
        }
    }

    fn scan_all(input: &[u8], l: &DownstreamLimits) -> Head {
        HeadScanner::default().feed(input, l)
    }

    /// Byte-at-a-time feeding gives the same verdict as one feed.
    fn scan_dribble(input: &[u8], l: &DownstreamLimits) -> Head {
        let mut s = HeadScanner::default();
        for i in 1..=input.len() {
            match s.feed(&input[..i], l) {
                Head::Partial => continue,
                other => return other,
            }
        }
        Head::Partial
    }

    #[test]
    fn head_scanner_table() {
        let l = small();
        let line_at = |n: usize| {
            let pad = n - "GET / HTTP/1.1".len();
            format!("GET /{} HTTP/1.1", "a".repeat(pad))
        };
        let ok = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        let cases: Vec<(String, Vec<u8>, Head)> = vec![
            ("complete".into(), ok.clone(), Head::Complete(ok.len())),
            (
                "bare LF".into(),
                b"GET / HTTP/1.1\nHost: a\n\n".to_vec(),
                Head::Complete(24),
            ),
            (
                "leading CRLF".into(),
                b"\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
                Head::Complete(20),
            ),
            (
                "partial".into(),
                b"GET / HTTP/1.1\r\nHost:".to_vec(),
                Head::Partial,
            ),
            (
                "line at limit".into(),
                format!("{}\r\n\r\n", line_at(40)).into_bytes(),
                Head::Complete(44),
            ),
            (
                "line over limit".into(),
                format!("{}\r\n\r\n", line_at(41)).into_bytes(),
                Head::Over(Reject::RequestLineTooLong),
            ),
            (
                "line over limit (+ room for its CR), unterminated".into(),
                line_at(42).into_bytes(),
                Head::Over(Reject::RequestLineTooLong),
            ),
            (
                "3 headers".into(),
                b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n".to_vec(),
                Head::Complete(36),
            ),
            (
                "4 headers".into(),
                b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n".to_vec(),
                Head::Over(Reject::TooManyHeaders),
            ),
            (
                "head at 200".into(),
                {
                    let mut h = b"GET / HTTP/1.1\r\nx: ".to_vec();
                    h.extend(std::iter::repeat_n(b'v', 200 - h.len() - 4));
                    h.extend_from_slice(b"\r\n\r\n");
                    h
                },
                Head::Complete(200),
            ),
            (
                "head at 201".into(),
                {
                    let mut h = b"GET / HTTP/1.1\r\nx: ".to_vec();
                    h.extend(std::iter::repeat_n(b'v', 201 - h.len() - 4));
                    h.extend_from_slice(b"\r\n\r\n");
                    h
                },
                Head::Over(Reject::HeadersTooLarge),
            ),
            (
                "endless header value".into(),
                {
                    let mut h = b"GET / HTTP/1.1\r\nx: ".to_vec();
                    h.extend(std::iter::repeat_n(b'v', 300));
                    h
                },
                Head::Over(Reject::HeadersTooLarge),
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(scan_all(&input, &l), want, "{name} (one feed)");
            assert_eq!(scan_dribble(&input, &l), want, "{name} (byte by byte)");
        }
    }

    /// The future of one head read lives in every HTTP/1 connection's task (and is made for
    /// every request): nothing of the refusal path's buffers may sit in it (an 8 KiB array in
    /// `linger` made it over 8 KiB per connection).
    #[tokio::test]
    async fn reading_a_head_keeps_no_buffer_in_its_future() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let stream: Stream = Box::new(L4Stream::from(a));
        let metrics = Metrics::new(100).unwrap();
        let limits = small();
        let read = read_head(stream, &limits, &metrics, "outbound", true);
        let size = std::mem::size_of_val(&read);
        assert!(size < 4096, "read_head's future is {size} bytes");
    }
}
