//! The webhook port speaks TLS 1.2 and 1.3 only: real clients pinned to each version. TLS 1.2 and
//! 1.3 handshakes complete and get an HTTP answer; a TLS 1.1 and a TLS 1.0 ClientHello (built
//! here byte by byte, and from `openssl s_client` when that is installed) get no ServerHello; a
//! plaintext HTTP request is never served (the only answer is the fixed "HTTPS only" 400 line).
//! Server and clients on 127.0.0.1 only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use remora_webhook::config::{Config, ConfigHandle};
use remora_webhook::server::{self, Running, ServeOptions};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

struct Certs {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    Certs {
        _dir: dir,
        cert,
        key,
        cert_pem: ck.cert.pem(),
    }
}

async fn start(c: &Certs) -> Running {
    server::start(ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert: c.cert.clone(),
        key: c.key.clone(),
        config: ConfigHandle::fixed(Config::default()),
        reload_poll: Duration::from_millis(500),
        drain: Duration::from_secs(1),
        limits: Default::default(),
    })
    .await
    .unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    // Generous: the server answers (or closes) at once; a loaded machine may be slow to.
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Everything the server sends until it closes or goes quiet for 5 s.
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if out.len() > 1 << 20 {
            return out;
        }
    }
}

/// The server's first flight: waits (up to 30 s, for a loaded machine) for the first bytes,
/// then reads until 500 ms of quiet (the server waits for our next move).
fn read_some(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = vec![0u8; 4096];
    let n = s.read(&mut out).unwrap_or(0);
    out.truncate(n);
    if n == 0 {
        return out;
    }
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    out.extend(read_all(s));
    out
}

/// A TLS 1.2 / 1.3 client (rustls, ring) pinned to exactly `version`, trusting only `ca_pem`.
fn client_for(
    version: &'static rustls::SupportedProtocolVersion,
    ca_pem: &str,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Handshake with `cfg`, then GET /healthz; returns the negotiated version and the answer.
fn get_healthz(addr: SocketAddr, cfg: rustls::ClientConfig) -> (rustls::ProtocolVersion, String) {
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut sock = connect(addr);
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let v = conn.protocol_version().expect("handshake completed");
    (v, String::from_utf8_lossy(&answer).to_string())
}

/// A ClientHello that offers only `client_version` (no supported_versions extension), with
/// suites a TLS 1.0/1.1 server would accept. Record layer version 3.1, as real clients send.
fn legacy_client_hello(client_version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&client_version);
    body.extend((0u8..32).map(|i| i.wrapping_mul(7).wrapping_add(3))); // random
    body.push(0); // session id
    let suites: &[u16] = &[
        0xc02b, 0xc02f, 0xc013, 0xc014, 0xc009, 0x002f, 0x0035, 0x000a,
    ];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut ext = Vec::new();
    // server_name: localhost
    let host = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    ext.extend_from_slice(&0u16.to_be_bytes());
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    // supported_groups: secp256r1, x25519
    ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x17, 0x00, 0x1d]);
    // ec_point_formats: uncompressed
    ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    if client_version == [3, 3] {
        // signature_algorithms (TLS 1.2 only): ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256,
        // rsa_pkcs1_sha256.
        ext.extend_from_slice(&[
            0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01,
        ]);
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1u8];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Whether `bytes` (TLS records from the server) hold a ServerHello.
fn has_server_hello(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while rest.len() >= 6 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest[0] == 0x16 && rest[5] == 2 {
            return true;
        }
        rest = &rest[(5 + len).min(rest.len())..];
    }
    false
}

/// The first alert's description, if the server answered with an alert record.
fn alert(bytes: &[u8]) -> Option<u8> {
    (bytes.len() >= 7 && bytes[0] == 0x15).then(|| bytes[6])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls12_and_tls13_are_served() {
    let c = certs();
    let server = start(&c).await;
    let addr = server.addr;
    let ca = c.cert_pem.clone();
    tokio::task::spawn_blocking(move || {
        // TLS 1.2 and 1.3, each pinned: handshake, verified certificate, HTTP answer.
        for (v, want) in [
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        ] {
            let (got, answer) = get_healthz(addr, client_for(v, &ca));
            assert_eq!(got, want);
            assert!(answer.starts_with("HTTP/1.1 200"), "{want:?}: {answer}");
        }

        // A client that does not trust the certificate does not get through either (the check
        // is real: same code path, other CA).
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cfg = client_for(&rustls::version::TLS13, &other.cert.pem());
        let mut conn = rustls::ClientConnection::new(
            Arc::new(cfg),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut sock = connect(addr);
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        assert!(tls.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").is_err());

        // Control: the hand-built ClientHello is well formed (as TLS 1.2 it gets a ServerHello).
        let mut s = connect(addr);
        s.write_all(&legacy_client_hello([3, 3])).unwrap();
        let back = read_some(&mut s);
        assert!(has_server_hello(&back), "TLS 1.2 control: {back:?}");

        // TLS 1.1 and 1.0 ClientHellos: no ServerHello; a fatal alert (protocol_version 70 or
        // handshake_failure 40) or a close.
        for (name, v) in [("TLS 1.1", [3u8, 2u8]), ("TLS 1.0", [3, 1])] {
            let mut s = connect(addr);
            s.write_all(&legacy_client_hello(v)).unwrap();
            let back = read_all(&mut s);
            assert!(
                !has_server_hello(&back),
                "{name}: the server answered with a ServerHello"
            );
            if let Some(a) = alert(&back) {
                assert!(
                    a == 70 || a == 40,
                    "{name}: alert {a}, want protocol_version (70) or handshake_failure (40)"
                );
            }
        }

        // Plaintext HTTP on the TLS port is never served: neither a review nor a health check
        // is processed. The only bytes back are the fixed one-line refusal (a 400 that says the
        // port is HTTPS only, as Go's net/http answers), then a close.
        for req in [
            &b"POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"[..],
            &b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        ] {
            let mut s = connect(addr);
            s.write_all(req).unwrap();
            let back = String::from_utf8_lossy(&read_all(&mut s)).to_string();
            assert!(
                back.is_empty() || back.starts_with("HTTP/1.1 400 "),
                "plaintext was answered: {back:?}"
            );
            assert!(!back.contains("AdmissionReview") && !back.contains("\r\n\r\nok"), "{back:?}");
            if !back.is_empty() {
                assert!(back.contains("HTTPS only"), "{back:?}");
            }
        }
    })
    .await
    .unwrap();
    server.shutdown().await;
}

/// The same with a second, independent TLS implementation (OpenSSL's `s_client`), when installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_client_agrees() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not installed: skipping the OpenSSL cross-check");
        return;
    }
    let c = certs();
    let server = start(&c).await;
    let addr = server.addr.to_string();
    let ca = c.cert.clone();
    tokio::task::spawn_blocking(move || {
        let run = |flag: &str| -> (bool, String) {
            let mut child = std::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &addr,
                    "-servername",
                    "localhost",
                    flag,
                ])
                .args(["-CAfile", ca.to_str().unwrap(), "-verify_return_error"])
                // Let OpenSSL 3 offer the old versions at all (its default security level refuses).
                .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // Closing stdin ends s_client after the handshake.
            drop(child.stdin.take());
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let ok = text.contains("Verify return code: 0 (ok)")
                && !text.contains("Cipher is (NONE)")
                && !text.contains("New, (NONE), Cipher is (NONE)");
            (ok, text)
        };
        for (flag, want_ok, proto) in [
            ("-tls1_3", true, "TLSv1.3"),
            ("-tls1_2", true, "TLSv1.2"),
            ("-tls1_1", false, ""),
            ("-tls1", false, ""),
        ] {
            let (ok, text) = run(flag);
            assert_eq!(ok, want_ok, "openssl {flag}:\n{text}");
            if want_ok {
                assert!(
                    text.contains(&format!("Protocol  : {proto}"))
                        || text.contains(&format!("New, {proto}")),
                    "openssl {flag}:\n{text}"
                );
            }
        }
    })
    .await
    .unwrap();
    server.shutdown().await;
}

/// Certificates are checked before they are served: a key that does not belong to the
/// certificate, or a file without a certificate, stops the start with a message naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_checked_before_use() {
    let good = certs();
    let other = certs();
    let opts = |cert: PathBuf, key: PathBuf| ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert,
        key,
        config: ConfigHandle::fixed(Config::default()),
        reload_poll: Duration::from_millis(500),
        drain: Duration::from_secs(1),
        limits: Default::default(),
    };
    let e = match server::start(opts(good.cert.clone(), other.key.clone())).await {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("a certificate with another certificate's key was served"),
    };
    assert!(e.contains("does not fit"), "{e}");
    assert!(e.contains(&other.key.display().to_string()), "{e}");
    let junk = good._dir.path().join("junk.crt");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = match server::start(opts(junk.clone(), good.key.clone())).await {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("a file without a certificate was served"),
    };
    assert!(e.contains(&junk.display().to_string()), "{e}");
    // The matching pair starts.
    let s = server::start(opts(good.cert.clone(), good.key.clone()))
        .await
        .unwrap();
    s.shutdown().await;
}
