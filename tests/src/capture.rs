//! What is on the wire: `tcpdump` on the lab's bridge (in the node's namespace), and a reading
//! of its capture: TCP streams (one per direction of a connection, reassembled by sequence
//! number) classified as TLS (its records counted, the ALPN values its ClientHello offers) or
//! plain text (an HTTP/1 request line or the HTTP/2 preface). Parsing is pure (pcap bytes in,
//! flows out) and tested on built packets; [`Capture`] runs tcpdump.

use crate::netns::Netns;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Most packets one capture keeps (tcpdump `-c`): a bound, far above what a scenario sends.
pub const MAX_PACKETS: usize = 200_000;

/// A running `tcpdump` (killed on drop).
pub struct Capture {
    child: Option<Child>,
    pcap: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i <iface> -n -s 0 -U -w - tcp` inside `netns` (the pcap goes to
    /// `<dir>/<name>.pcap`, its messages to `<dir>/<name>.log`) and waits, at most 10 s, until
    /// it listens.
    pub fn start(netns: &Netns, iface: &str, dir: &Path, name: &str) -> Result<Capture> {
        let pcap = dir.join(format!("{name}.pcap"));
        let log = dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&pcap).with_context(|| format!("creating {}", pcap.display()))?;
        let err = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns.name(), "tcpdump", "-i", iface, "-n"])
            .args(["-s", "0", "-U", "--immediate-mode", "-w", "-"])
            .args(["-c", &MAX_PACKETS.to_string(), "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .context("starting tcpdump (is it installed? scripts/setup installs it)")?;
        let mut cap = Capture {
            child: Some(child),
            pcap,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&cap.log).unwrap_or_default();
            if text.contains("listening on") {
                return Ok(cap);
            }
            if let Some(st) = cap.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("tcpdump ended ({st}) before it listened: {}", text.trim());
            }
            if Instant::now() >= deadline {
                bail!(
                    "tcpdump did not start listening within 10 s: {}",
                    text.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops tcpdump (SIGINT: it flushes and reports its counts, at most 5 s) and reads the
    /// capture.
    pub fn stop(mut self) -> Result<Captured> {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let bytes = std::fs::read(&self.pcap)?;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let packets = parse_pcap(&bytes)?;
        Ok(Captured {
            dropped: dropped_by_kernel(&log),
            packets,
            log,
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `N packets dropped by kernel` from tcpdump's report.
fn dropped_by_kernel(log: &str) -> Option<u64> {
    log.lines()
        .find(|l| l.contains("dropped by kernel"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// What one capture holds.
pub struct Captured {
    pub packets: Vec<Packet>,
    /// Packets the kernel dropped (tcpdump's count), when it said.
    pub dropped: Option<u64>,
    /// tcpdump's messages.
    pub log: String,
}

impl Captured {
    /// The TCP streams, classified.
    pub fn flows(&self) -> Vec<Flow> {
        streams(&self.packets).into_iter().map(Flow::of).collect()
    }
}

/// One IPv4 TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub syn: bool,
    pub ack: bool,
    pub payload: Vec<u8>,
}

fn u16_at(b: &[u8], i: usize, le: bool) -> Option<u16> {
    let x: [u8; 2] = b.get(i..i + 2)?.try_into().ok()?;
    Some(if le {
        u16::from_le_bytes(x)
    } else {
        u16::from_be_bytes(x)
    })
}

fn u32_at(b: &[u8], i: usize, le: bool) -> Option<u32> {
    let x: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
    Some(if le {
        u32::from_le_bytes(x)
    } else {
        u32::from_be_bytes(x)
    })
}

/// The IPv4 TCP segments of a classic pcap file (Ethernet or Linux cooked link types); other
/// packets are skipped. A file cut short (a capture killed mid-write) ends at its last whole
/// record.
pub fn parse_pcap(bytes: &[u8]) -> Result<Vec<Packet>> {
    let magic = u32_at(bytes, 0, true).ok_or_else(|| anyhow!("pcap: no header"))?;
    let le = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        m => bail!("pcap: unknown magic {m:#x} (pcapng is not read)"),
    };
    let link = u32_at(bytes, 20, le).ok_or_else(|| anyhow!("pcap: short header"))?;
    let l2 = match link {
        1 => 14,   // Ethernet
        113 => 16, // Linux cooked (SLL)
        l => bail!("pcap: link type {l} is not read"),
    };
    let mut out = Vec::new();
    let mut i = 24;
    while let Some(caplen) = u32_at(bytes, i + 8, le) {
        let start = i + 16;
        let end = start + caplen as usize;
        let Some(frame) = bytes.get(start..end) else {
            break;
        };
        i = end;
        let ethertype = if link == 1 {
            u16_at(frame, 12, false)
        } else {
            u16_at(frame, 14, false)
        };
        if ethertype != Some(0x0800) {
            continue;
        }
        if let Some(p) = frame.get(l2..).and_then(ipv4_tcp) {
            out.push(p);
        }
    }
    Ok(out)
}

fn ipv4_tcp(ip: &[u8]) -> Option<Packet> {
    if ip.first()? >> 4 != 4 || *ip.get(9)? != 6 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = (u16_at(ip, 2, false)? as usize).min(ip.len());
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(*ip.get(16)?, ip[17], ip[18], ip[19]);
    let tcp = ip.get(ihl..total)?;
    let sport = u16_at(tcp, 0, false)?;
    let dport = u16_at(tcp, 2, false)?;
    let seq = u32_at(tcp, 4, false)?;
    let off = (*tcp.get(12)? >> 4) as usize * 4;
    let flags = *tcp.get(13)?;
    Some(Packet {
        src: SocketAddrV4::new(src, sport),
        dst: SocketAddrV4::new(dst, dport),
        seq,
        syn: flags & 0x02 != 0,
        ack: flags & 0x10 != 0,
        payload: tcp.get(off..)?.to_vec(),
    })
}

/// One direction of one TCP connection, its payload in order.
#[derive(Clone, Debug)]
pub struct Stream {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    /// The connection's SYN was captured (the stream is whole from its first byte).
    pub syn: bool,
    /// This direction opened the connection (its SYN had no ACK): `from` is the client.
    pub client: bool,
    /// A hole in the sequence space: the bytes stop at the first one.
    pub gap: bool,
    pub bytes: Vec<u8>,
}

/// The streams of `packets`, one per direction of each connection, in order of first packet.
/// Retransmitted bytes count once; a new SYN on the same addresses starts a new stream.
pub fn streams(packets: &[Packet]) -> Vec<Stream> {
    struct Acc {
        base: Option<u32>,
        syn: bool,
        client: bool,
        segs: Vec<(u32, Vec<u8>)>,
    }
    let finish = |from, to, a: Acc| -> Stream {
        let base = a
            .base
            .or_else(|| a.segs.iter().map(|(s, _)| *s).min())
            .unwrap_or(0);
        let mut segs: Vec<(u32, &Vec<u8>)> = a
            .segs
            .iter()
            .map(|(s, d)| (s.wrapping_sub(base), d))
            .collect();
        segs.sort_by_key(|(rel, _)| *rel);
        let mut bytes = Vec::new();
        let mut gap = false;
        for (rel, data) in segs {
            let (rel, have) = (rel as usize, bytes.len());
            if rel > have {
                gap = true;
                break;
            }
            if rel + data.len() > have {
                bytes.extend_from_slice(&data[have - rel..]);
            }
        }
        Stream {
            from,
            to,
            syn: a.syn,
            client: a.client,
            gap,
            bytes,
        }
    };
    let mut open: BTreeMap<(SocketAddrV4, SocketAddrV4), (usize, Acc)> = BTreeMap::new();
    let mut done: Vec<(usize, Stream)> = Vec::new();
    for (n, p) in packets.iter().enumerate() {
        let key = (p.src, p.dst);
        if p.syn {
            if let Some((first, old)) = open.remove(&key) {
                if old.base != Some(p.seq.wrapping_add(1)) {
                    done.push((first, finish(key.0, key.1, old)));
                } else {
                    open.insert(key, (first, old));
                    continue;
                }
            }
            open.insert(
                key,
                (
                    n,
                    Acc {
                        base: Some(p.seq.wrapping_add(1)),
                        syn: true,
                        client: !p.ack,
                        segs: Vec::new(),
                    },
                ),
            );
            continue;
        }
        let entry = open.entry(key).or_insert_with(|| {
            (
                n,
                Acc {
                    base: None,
                    syn: false,
                    client: false,
                    segs: Vec::new(),
                },
            )
        });
        if !p.payload.is_empty() {
            entry.1.segs.push((p.seq, p.payload.clone()));
        }
    }
    for (key, (first, acc)) in open {
        done.push((first, finish(key.0, key.1, acc)));
    }
    done.sort_by_key(|(first, _)| *first);
    done.into_iter().map(|(_, s)| s).collect()
}

/// TLS records of a stream from its first byte: `(content type, body)`; `None` when the bytes
/// are not TLS records (a partial last record is left out).
pub fn tls_records(bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= bytes.len() {
        let (ty, major, minor) = (bytes[i], bytes[i + 1], bytes[i + 2]);
        let len = u16::from_be_bytes([bytes[i + 3], bytes[i + 4]]) as usize;
        if !(20..=23).contains(&ty) || major != 3 || minor > 4 || len > (1 << 14) + 2048 {
            return None;
        }
        let Some(body) = bytes.get(i + 5..i + 5 + len) else {
            break;
        };
        out.push((ty, body));
        i += 5 + len;
    }
    (!out.is_empty()).then_some(out)
}

/// The ALPN values a ClientHello handshake message offers (`None`: not a ClientHello; empty:
/// no ALPN extension).
pub fn client_hello_alpn(handshake: &[u8]) -> Option<Vec<String>> {
    if *handshake.first()? != 1 {
        return None;
    }
    let mut i = 4 + 2 + 32; // type, length, legacy_version, random
    let sid = *handshake.get(i)? as usize;
    i += 1 + sid;
    let suites = u16_at(handshake, i, false)? as usize;
    i += 2 + suites;
    let comp = *handshake.get(i)? as usize;
    i += 1 + comp;
    let ext_len = u16_at(handshake, i, false)? as usize;
    i += 2;
    let end = (i + ext_len).min(handshake.len());
    let mut alpn = Vec::new();
    while i + 4 <= end {
        let ty = u16_at(handshake, i, false)?;
        let len = u16_at(handshake, i + 2, false)? as usize;
        let data = handshake.get(i + 4..i + 4 + len)?;
        if ty == 16 {
            let mut j = 2;
            while j < data.len() {
                let l = data[j] as usize;
                let name = data.get(j + 1..j + 1 + l)?;
                alpn.push(String::from_utf8_lossy(name).into_owned());
                j += 1 + l;
            }
        }
        i += 4 + len;
    }
    Some(alpn)
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// The HTTP request lines (`GET /x HTTP/1.1`) or HTTP/2 prefaces anywhere in `bytes`.
pub fn plaintext_http(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let text = String::from_utf8_lossy(bytes);
    for line in text.split("\r\n") {
        let mut parts = line.split(' ');
        let (Some(m), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let method = METHODS.iter().find(|x| m.ends_with(*x));
        if let Some(method) = method {
            if (version == "HTTP/1.1" || version == "HTTP/1.0") && !target.is_empty() {
                out.push(format!("{method} {target} {version}"));
            }
        }
        if line.ends_with("PRI * HTTP/2.0") {
            out.push("PRI * HTTP/2.0".into());
        }
    }
    out
}

/// What a stream carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Carries {
    /// TLS records from the first byte.
    Tls {
        /// The ALPN values of the ClientHello, when the stream starts with one.
        client_hello_alpn: Option<Vec<String>>,
        handshake_records: usize,
        /// Records of content type 23 (0x17): encrypted application data.
        application_data_records: usize,
    },
    /// Not TLS; the HTTP request lines found in it.
    Plain { http_requests: Vec<String> },
    /// No payload.
    Empty,
}

/// A stream and what it carries.
#[derive(Clone, Debug)]
pub struct Flow {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub syn: bool,
    /// `from` opened the connection (see [`Stream::client`]).
    pub client: bool,
    pub gap: bool,
    pub bytes: usize,
    pub carries: Carries,
    /// HTTP request lines anywhere in the stream's bytes, TLS or not (none expected in TLS).
    pub http_requests: Vec<String>,
}

impl Flow {
    pub fn of(s: Stream) -> Flow {
        let http_requests = plaintext_http(&s.bytes);
        let carries = if s.bytes.is_empty() {
            Carries::Empty
        } else if let Some(recs) = tls_records(&s.bytes) {
            let first_hello = recs
                .first()
                .filter(|(ty, _)| *ty == 22)
                .and_then(|(_, body)| client_hello_alpn(body));
            Carries::Tls {
                client_hello_alpn: first_hello,
                handshake_records: recs.iter().filter(|(t, _)| *t == 22).count(),
                application_data_records: recs.iter().filter(|(t, _)| *t == 23).count(),
            }
        } else {
            Carries::Plain {
                http_requests: http_requests.clone(),
            }
        };
        Flow {
            from: s.from,
            to: s.to,
            syn: s.syn,
            client: s.client,
            gap: s.gap,
            bytes: s.bytes.len(),
            carries,
            http_requests,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.carries, Carries::Tls { .. })
    }

    pub fn application_data_records(&self) -> usize {
        match self.carries {
            Carries::Tls {
                application_data_records,
                ..
            } => application_data_records,
            _ => 0,
        }
    }

    /// The ALPN values offered, when the flow is a client's TLS stream from its ClientHello.
    pub fn alpn_offered(&self) -> Option<&[String]> {
        match &self.carries {
            Carries::Tls {
                client_hello_alpn: Some(a),
                ..
            } => Some(a),
            _ => None,
        }
    }
}

/// The connections one client address opened to one server address and port, summed over the
/// client-to-server streams whose opening was captured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hop {
    pub from: Option<Ipv4Addr>,
    pub to: Option<SocketAddrV4>,
    pub connections: usize,
    /// Connections whose client stream is TLS, and those whose ClientHello offers Istio's ALPN.
    pub tls: usize,
    pub istio_alpn: usize,
    /// The ALPN values the first ClientHello offered.
    pub alpn: Option<Vec<String>>,
    pub application_data_records: usize,
    /// Plain-text HTTP request lines sent.
    pub http_requests: Vec<String>,
}

/// [`Hop`]s of `flows`, in order of first connection.
pub fn hops(flows: &[Flow]) -> Vec<Hop> {
    let mut out: Vec<Hop> = Vec::new();
    for f in flows.iter().filter(|f| f.client) {
        let i = match out
            .iter()
            .position(|h| h.from == Some(*f.from.ip()) && h.to == Some(f.to))
        {
            Some(i) => i,
            None => {
                out.push(Hop {
                    from: Some(*f.from.ip()),
                    to: Some(f.to),
                    ..Hop::default()
                });
                out.len() - 1
            }
        };
        let h = &mut out[i];
        h.connections += 1;
        if f.is_tls() {
            h.tls += 1;
        }
        if let Some(a) = f.alpn_offered() {
            if offers_istio_alpn(a) {
                h.istio_alpn += 1;
            }
            if h.alpn.is_none() {
                h.alpn = Some(a.to_vec());
            }
        }
        h.application_data_records += f.application_data_records();
        h.http_requests.extend(f.http_requests.iter().cloned());
    }
    out
}

/// Does `alpn` (a ClientHello's offer) carry one of the values Istio's sidecars offer between
/// sidecars for HTTP or TCP (`istio-http/1.1`, `istio-http/1.0`, `istio-h2`, `istio`)?
pub fn offers_istio_alpn(alpn: &[String]) -> bool {
    alpn.iter()
        .any(|a| ["istio-http/1.1", "istio-http/1.0", "istio-h2", "istio"].contains(&a.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
        frame_flags(src, dst, seq, if syn { 0x02 } else { 0x18 }, payload)
    }

    fn frame_flags(
        src: SocketAddrV4,
        dst: SocketAddrV4,
        seq: u32,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = 20 + 20 + payload.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            6,
            0,
            0,
        ];
        ip.extend_from_slice(&src.ip().octets());
        ip.extend_from_slice(&dst.ip().octets());
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&src.port().to_be_bytes());
        tcp.extend_from_slice(&dst.port().to_be_bytes());
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend(ip);
        f.extend(tcp);
        f.extend_from_slice(payload);
        f
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&65535u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        for f in frames {
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(&(f.len() as u32).to_le_bytes());
            b.extend_from_slice(f);
        }
        b
    }

    /// A TLS 1.3-style ClientHello record offering `alpn`.
    fn client_hello(alpn: &[&str]) -> Vec<u8> {
        let mut list = Vec::new();
        for a in alpn {
            list.push(a.len() as u8);
            list.extend_from_slice(a.as_bytes());
        }
        let mut ext = Vec::new();
        ext.extend_from_slice(&0u16.to_be_bytes()); // server_name, empty
        ext.extend_from_slice(&0u16.to_be_bytes());
        ext.extend_from_slice(&16u16.to_be_bytes());
        ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
        ext.extend(list);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
        hs.extend(body);
        let mut rec = vec![22, 3, 1, (hs.len() >> 8) as u8, hs.len() as u8];
        rec.extend(hs);
        rec
    }

    fn app_data(n: usize) -> Vec<u8> {
        let mut r = vec![23, 3, 3, 0, n as u8];
        r.extend(std::iter::repeat_n(0xab, n));
        r
    }

    #[test]
    fn reassembles_streams_and_reads_tls_and_plain_http() {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 10), 40000);
        let b = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 11), 9080);
        let c = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 12), 40001);
        let hello = client_hello(&["istio-peer-exchange", "istio-http/1.1", "istio"]);
        let data = app_data(40);
        let mut tls = hello.clone();
        tls.extend(&data);
        // The TLS stream split across segments, out of order, with a retransmission.
        let (p1, p2) = tls.split_at(30);
        let isn = 1000u32;
        let plain = b"GET /productpage HTTP/1.1\r\nhost: productpage\r\n\r\n";
        let frames = vec![
            frame(a, b, isn, true, &[]),
            frame_flags(b, a, 4999, 0x12, &[]),
            frame(a, b, isn + 1 + 30, false, p2),
            frame(a, b, isn + 1, false, p1),
            frame(a, b, isn + 1, false, p1),
            frame(b, a, 5000, false, &app_data(10)),
            frame(c, b, 77, true, &[]),
            frame(c, b, 78, false, plain),
        ];
        let packets = parse_pcap(&pcap(&frames)).unwrap();
        assert_eq!(packets.len(), 8);
        let flows: Vec<Flow> = streams(&packets).into_iter().map(Flow::of).collect();
        assert_eq!(flows.len(), 3);
        let ab = &flows[0];
        assert_eq!(
            (ab.from, ab.to, ab.syn, ab.client, ab.gap),
            (a, b, true, true, false)
        );
        assert_eq!(ab.bytes, tls.len());
        assert_eq!(
            ab.alpn_offered().unwrap(),
            ["istio-peer-exchange", "istio-http/1.1", "istio"]
        );
        assert!(offers_istio_alpn(ab.alpn_offered().unwrap()));
        assert_eq!(ab.application_data_records(), 1);
        assert!(ab.http_requests.is_empty());
        let ba = &flows[1];
        assert!(ba.is_tls() && ba.syn && !ba.client && ba.alpn_offered().is_none());
        let cb = &flows[2];
        assert_eq!(
            cb.carries,
            Carries::Plain {
                http_requests: vec!["GET /productpage HTTP/1.1".into()]
            }
        );
        // Per hop: the client streams only.
        let hs = hops(&flows);
        assert_eq!(hs.len(), 2, "{hs:?}");
        assert_eq!(
            (
                hs[0].from,
                hs[0].to,
                hs[0].connections,
                hs[0].tls,
                hs[0].istio_alpn
            ),
            (Some(*a.ip()), Some(b), 1, 1, 1)
        );
        assert_eq!(hs[0].application_data_records, 1);
        assert_eq!(
            (hs[1].tls, hs[1].http_requests.clone()),
            (0, vec!["GET /productpage HTTP/1.1".to_string()])
        );
        // A hole stops the stream there.
        let holed = parse_pcap(&pcap(&[
            frame(a, b, isn, true, &[]),
            frame(a, b, isn + 1 + 30, false, p2),
        ]))
        .unwrap();
        let s = &streams(&holed)[0];
        assert!(s.gap && s.bytes.is_empty());
    }

    #[test]
    fn small_readers() {
        assert_eq!(tls_records(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(
            tls_records(&app_data(3)).unwrap(),
            vec![(23, &[0xab; 3][..])]
        );
        assert!(!offers_istio_alpn(&["h2".into(), "http/1.1".into()]));
        assert_eq!(client_hello_alpn(&[2, 0, 0, 0]), None);
        assert_eq!(
            plaintext_http(b"\x00\x01POST /x HTTP/1.0\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            ["POST /x HTTP/1.0", "PRI * HTTP/2.0"]
        );
        assert_eq!(
            dropped_by_kernel("12 packets captured\n0 packets dropped by kernel\n"),
            Some(0)
        );
        assert!(parse_pcap(b"\x0a\x0d\x0d\x0a").is_err());
    }
}
