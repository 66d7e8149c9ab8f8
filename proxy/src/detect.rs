//! Protocol detection: from the rules when the destination port's protocol is known, otherwise by
//! peeking the first bytes the client sends, with a short bounded wait. A client that sends nothing
//! within the wait is treated as a server-first protocol (opaque TCP), so those still work.

use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// What a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.x (a method token was seen).
    Http1,
    /// HTTP/2 prior knowledge (the client preface was seen).
    H2c,
    /// Anything else: proxied as opaque bytes.
    Tcp,
}

/// The result of looking at a prefix of the first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Is(Detected),
    /// The bytes so far are a prefix of an HTTP method or of the h2 preface: read more.
    NeedMore,
}

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/1 method tokens we recognise, each followed by a space.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];

/// Classify the first bytes of a connection (pure).
pub fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Verdict::Is(Detected::H2c)
        } else {
            Verdict::NeedMore
        };
    }
    let mut partial = false;
    for m in METHODS {
        if buf.len() >= m.len() {
            if buf.starts_with(m) {
                return Verdict::Is(Detected::Http1);
            }
        } else if m.starts_with(buf) {
            partial = true;
        }
    }
    if partial {
        Verdict::NeedMore
    } else {
        Verdict::Is(Detected::Tcp)
    }
}

/// Why sniffing ended the way it did (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SniffEnd {
    /// The bytes decided it.
    Bytes,
    /// Nothing (or an undecided prefix) arrived within the wait: server-first or slow client.
    Timeout,
    /// The client closed before deciding.
    Closed,
    /// The stream could not be inspected (not a plain TCP stream).
    Unsupported,
}

/// The longest method token accepted on a port declared HTTP.
pub const MAX_METHOD_LEN: usize = 64;

/// An RFC 9110 `tchar` (a method is a token).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classify the first bytes on a port the rules declare HTTP (pure): the h2 preface is h2c,
/// any token method followed by a space is HTTP/1 (WebDAV's `PROPFIND`, custom methods), and
/// anything else is not HTTP (`Tcp`), which the caller answers with 400 instead of proxying.
pub fn classify_declared_http(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if buf.len() >= H2_PREFACE.len() {
            Verdict::Is(Detected::H2c)
        } else {
            Verdict::NeedMore
        };
    }
    for (i, &b) in buf.iter().enumerate() {
        if b == b' ' && i > 0 {
            return Verdict::Is(Detected::Http1);
        }
        if !is_tchar(b) || i >= MAX_METHOD_LEN {
            return Verdict::Is(Detected::Tcp);
        }
    }
    Verdict::NeedMore
}

/// Peek the first bytes of `stream` for up to `wait` and classify them (with
/// [`classify_declared_http`] when `declared_http`, else [`classify`]). The bytes read are put
/// back into the stream, so whoever handles it next sees the connection from its first byte.
/// Streams that are not plain TCP streams are returned untouched as `Tcp`/`Unsupported`.
pub async fn sniff(stream: Stream, wait: Duration, declared_http: bool) -> Result<Sniffed, String> {
    if !stream.as_any().is::<L4Stream>() {
        return Ok(Sniffed {
            stream,
            detected: Detected::Tcp,
            end: SniffEnd::Unsupported,
            sni: None,
            alpn: Vec::new(),
        });
    }
    let mut l4: Box<L4Stream> = stream
        .into_any()
        .downcast::<L4Stream>()
        .map_err(|_| "connection stream changed type while sniffing".to_string())?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0u8; 32];
    let (detected, end) = loop {
        let verdict = if declared_http {
            classify_declared_http(&buf)
        } else {
            classify(&buf)
        };
        if let Verdict::Is(d) = verdict {
            break (d, SniffEnd::Bytes);
        }
        let want = H2_PREFACE
            .len()
            .saturating_sub(buf.len())
            .clamp(1, chunk.len());
        // `read` is cancel-safe: on timeout no bytes were consumed.
        match tokio::time::timeout_at(deadline, l4.read(&mut chunk[..want])).await {
            Err(_) => break (Detected::Tcp, SniffEnd::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => break (Detected::Tcp, SniffEnd::Closed),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    // A TLS handshake record: read the whole first record (bounded) to find the SNI.
    let mut sni = None;
    let mut alpn = Vec::new();
    // Also on a port declared HTTP: a sidecar's mTLS arrives there as TLS, and the caller
    // decides by the ALPN values offered.
    if detected == Detected::Tcp && end == SniffEnd::Bytes && buf.first() == Some(&0x16) {
        let mut big = [0u8; 2048];
        loop {
            if buf.len() >= 5 {
                let need = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
                if buf.len() >= need.min(MAX_CLIENT_HELLO) {
                    break;
                }
            }
            match tokio::time::timeout_at(deadline, l4.read(&mut big)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&big[..n]),
                _ => break,
            }
        }
        sni = tls_sni(&buf);
        alpn = tls_alpn(&buf);
    }
    if !buf.is_empty() {
        l4.rewind(&buf);
    }
    Ok(Sniffed {
        stream: l4 as Stream,
        detected,
        end,
        sni,
        alpn,
    })
}

/// The most of a TLS ClientHello record the sniffer reads.
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// The outcome of [`sniff`]: the stream (with the bytes put back), what it carries, why sniffing
/// ended, and the TLS server name when the client started a TLS handshake.
pub struct Sniffed {
    pub stream: Stream,
    pub detected: Detected,
    pub end: SniffEnd,
    pub sni: Option<String>,
    /// The ALPN protocols the ClientHello offered (empty when not TLS).
    pub alpn: Vec<Vec<u8>>,
}

/// The server name (SNI) of a TLS ClientHello at the start of `b` (pure; `None` when `b` is not
/// a complete-enough ClientHello or has no host name).
pub fn tls_sni(b: &[u8]) -> Option<String> {
    let data = hello_extensions(b)?
        .into_iter()
        .find_map(|(ty, d)| (ty == 0).then_some(d))?;
    let mut data = data;
    let list = u16_at(&mut data)?;
    let mut list = take(&mut data, list)?;
    while list.len() >= 3 {
        let name_type = *take(&mut list, 1)?.first()?;
        let n = u16_at(&mut list)?;
        let name = take(&mut list, n)?;
        if name_type == 0 {
            let s = std::str::from_utf8(name).ok()?;
            return Some(s.trim_end_matches('.').to_ascii_lowercase());
        }
    }
    None
}

/// The ALPN protocols a TLS ClientHello at the start of `b` offers, in its order (pure; empty
/// when there are none or `b` is not a ClientHello).
pub fn tls_alpn(b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Some(mut data) =
        hello_extensions(b).and_then(|e| e.into_iter().find_map(|(ty, d)| (ty == 16).then_some(d)))
    else {
        return out;
    };
    let Some(len) = u16_at(&mut data) else {
        return out;
    };
    let Some(mut list) = take(&mut data, len) else {
        return out;
    };
    while let Some(n) = take(&mut list, 1).and_then(|x| x.first().copied()) {
        match take(&mut list, usize::from(n)) {
            Some(p) => out.push(p.to_vec()),
            None => break,
        }
    }
    out
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

fn u16_at(b: &mut &[u8]) -> Option<usize> {
    take(b, 2).map(|x| usize::from(u16::from_be_bytes([x[0], x[1]])))
}

/// The extensions (type, data) of a TLS ClientHello at the start of `b`, as far as `b` holds
/// them.
fn hello_extensions(b: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut r = b;
    let hdr = take(&mut r, 5)?;
    if hdr[0] != 0x16 {
        return None;
    }
    let hs = take(&mut r, 4)?;
    if hs[0] != 0x01 {
        return None; // not a ClientHello
    }
    take(&mut r, 2 + 32)?; // client_version, random
    let sid = usize::from(*take(&mut r, 1)?.first()?);
    take(&mut r, sid)?;
    let cs = u16_at(&mut r)?;
    take(&mut r, cs)?;
    let comp = usize::from(*take(&mut r, 1)?.first()?);
    take(&mut r, comp)?;
    let ext_len = u16_at(&mut r)?;
    let avail = ext_len.min(r.len());
    let mut exts = take(&mut r, avail)?;
    let mut out = Vec::new();
    while exts.len() >= 4 {
        let ty = u16_at(&mut exts)? as u16;
        let len = u16_at(&mut exts)?;
        let Some(data) = take(&mut exts, len) else {
            break;
        };
        out.push((ty, data));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        let cases: &[(&[u8], Verdict)] = &[
            (b"", Verdict::NeedMore),
            (b"G", Verdict::NeedMore),
            (b"GE", Verdict::NeedMore),
            (b"GET ", Verdict::Is(Detected::Http1)),
            (b"GET / HTTP/1.1\r\n", Verdict::Is(Detected::Http1)),
            (b"POST /x HTTP/1.1", Verdict::Is(Detected::Http1)),
            (b"DELETE /", Verdict::Is(Detected::Http1)),
            (b"OPTIONS *", Verdict::Is(Detected::Http1)),
            (b"CONNECT a:1", Verdict::Is(Detected::Http1)),
            (b"GETX", Verdict::Is(Detected::Tcp)),
            (b"get / HTTP/1.1", Verdict::Is(Detected::Tcp)),
            (b"P", Verdict::NeedMore),
            (b"PR", Verdict::NeedMore),
            (b"PRI * HTTP/2.0", Verdict::NeedMore),
            (H2_PREFACE, Verdict::Is(Detected::H2c)),
            (b"PRI * HTTP/1.1", Verdict::Is(Detected::Tcp)),
            (b"\x16\x03\x01\x02\x00", Verdict::Is(Detected::Tcp)),
            (b"SSH-2.0-OpenSSH", Verdict::Is(Detected::Tcp)),
            (b"*1\r\n$4\r\nPING\r\n", Verdict::Is(Detected::Tcp)),
        ];
        for (input, want) in cases {
            assert_eq!(
                classify(input),
                *want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// A ClientHello as rustls writes it, with SNI `Api.Example.COM`.
    #[test]
    fn declared_http_takes_any_token_method() {
        use Detected::*;
        let is = |d| Verdict::Is(d);
        for (b, v) in [
            (&b"PROPFIND / HTTP/1.1\r\n"[..], is(Http1)),
            (b"X-CUSTOM_M /a HTTP/1.1\r\n", is(Http1)),
            (b"GET / HTTP/1.1\r\n", is(Http1)),
            (b"PROPF", Verdict::NeedMore),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", is(H2c)),
            (b"PRI * HT", Verdict::NeedMore),
            (b"PRIX / HTTP/1.1", is(Http1)),
            (b"\x16\x03\x01\x00", is(Tcp)),
            (b" GET /", is(Tcp)),
            (b"hello\r\n", is(Tcp)),
            (b"\x00\x01garbage", is(Tcp)),
        ] {
            assert_eq!(
                classify_declared_http(b),
                v,
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        assert_eq!(
            classify_declared_http(&[b'A'; MAX_METHOD_LEN]),
            Verdict::NeedMore
        );
        assert_eq!(
            classify_declared_http(&[b'A'; MAX_METHOD_LEN + 1]),
            Verdict::Is(Tcp)
        );
        // Undeclared ports keep the short list: PROPFIND is opaque TCP there.
        assert_eq!(classify(b"PROPFIND / HTTP/1.1\r\n"), is(Tcp));
    }

    fn client_hello() -> Vec<u8> {
        client_hello_alpn(&[])
    }

    fn client_hello_alpn(alpn: &[&[u8]]) -> Vec<u8> {
        let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("Api.Example.COM").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn alpn_from_a_real_client_hello() {
        let hello = client_hello_alpn(&[b"istio-peer-exchange", b"istio-h2", b"istio"]);
        assert_eq!(
            tls_alpn(&hello),
            vec![
                b"istio-peer-exchange".to_vec(),
                b"istio-h2".to_vec(),
                b"istio".to_vec()
            ]
        );
        assert_eq!(tls_sni(&hello).as_deref(), Some("api.example.com"));
        assert!(tls_alpn(&client_hello()).is_empty());
        assert!(tls_alpn(b"GET / HTTP/1.1\r\n\r\n").is_empty());
        for n in 0..hello.len() {
            let _ = tls_alpn(&hello[..n]);
        }
    }

    #[test]
    fn sni_from_a_real_client_hello() {
        let hello = client_hello();
        assert_eq!(classify(&hello), Verdict::Is(Detected::Tcp));
        assert_eq!(tls_sni(&hello).as_deref(), Some("api.example.com"));
        // Truncated or non-TLS input: no name, no panic.
        for n in [0, 1, 5, 9, 40, hello.len() / 2] {
            assert_eq!(tls_sni(&hello[..n]), None, "{n}");
        }
        assert_eq!(tls_sni(b"GET / HTTP/1.1\r\n\r\n"), None);
        let mut bad = hello.clone();
        bad[5] = 0x02; // ServerHello
        assert_eq!(tls_sni(&bad), None);
    }

    #[test]
    fn h2_preface_longer_input_still_h2() {
        let mut v = H2_PREFACE.to_vec();
        v.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(classify(&v), Verdict::Is(Detected::H2c));
    }
}
