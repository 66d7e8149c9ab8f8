//! The real capture path: inside a network namespace this test creates, iptables/ip6tables
//! REDIRECT the client's connections to the proxy (running as uid 1337 on the default ports
//! 15001/15006/15020/15021/15090, exempt from capture), which recovers the original destination
//! with SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST (IPv6). No testing hooks are used.
//! All traffic stays inside the namespace; it is deleted on drop, even on failure.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const APP_OUT: u16 = 18080;
const APP_IN: u16 = 18081;
const BANNER: u16 = 18025;

fn setup_capture(ns: &NetNs) {
    let v4 = [
        // The proxy's own traffic (uid 1337) is never captured.
        "-t nat -A OUTPUT -p tcp -m owner --uid-owner 1337 -j RETURN",
        // "Outbound" app traffic to these ports goes to 15001.
        &format!(
            "-t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport {APP_OUT} -j REDIRECT --to-ports 15001"
        ),
        &format!(
            "-t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport {BANNER} -j REDIRECT --to-ports 15001"
        ),
        // "Inbound" traffic for the app's port goes to 15006.
        &format!(
            "-t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport {APP_IN} -j REDIRECT --to-ports 15006"
        ),
    ];
    for rule in v4 {
        let args: Vec<&str> = rule.split_whitespace().collect();
        ns.exec("iptables", &args).expect("iptables");
    }
    let v6 = [
        "-t nat -A OUTPUT -p tcp -m owner --uid-owner 1337 -j RETURN",
        &format!("-t nat -A OUTPUT -p tcp -d ::1 --dport {APP_OUT} -j REDIRECT --to-ports 15001"),
    ];
    for rule in v6 {
        let args: Vec<&str> = rule.split_whitespace().collect();
        ns.exec("ip6tables", &args).expect("ip6tables");
    }
}

fn ns_get(ns: &NetNs, addr: SocketAddr, path: &'static str) -> HttpResp {
    ns.run_blocking(move || http_get(addr, path, &[("Host", "svc.testns:18080")]))
        .unwrap_or_else(|e| panic!("GET {addr}{path} inside the netns: {e}"))
}

#[test]
fn redirect_capture_ipv4_ipv6_inbound_server_first_and_loop() {
    let ns = NetNs::create();
    setup_capture(&ns);
    let rt = ns.runtime();
    let out4 = rt.block_on(spawn_http_echo(
        SocketAddr::from(([127, 0, 0, 1], APP_OUT)),
        "out-v4",
    ));
    let out6 = rt.block_on(spawn_http_echo(
        format!("[::1]:{APP_OUT}").parse().unwrap(),
        "out-v6",
    ));
    let app = rt.block_on(spawn_http_echo(
        SocketAddr::from(([127, 0, 0, 1], APP_IN)),
        "app",
    ));
    rt.block_on(spawn_server_first(SocketAddr::from((
        [127, 0, 0, 1],
        BANNER,
    ))));

    let rules = RulesDir::new(&[]);
    std::fs::set_permissions(rules.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut o = ProxyOpts::new(rules.path());
    o.ports = Ports {
        outbound: 15001,
        inbound: 15006,
        admin: 15020,
        health: 15021,
        prometheus: 15090,
    };
    o.netns = Some(ns.name.clone());
    o.extra_args.push("--ipv6=on".into());
    let mut p = ProxyProc::start(o);

    // Ready (polled from inside the namespace).
    let deadline = Instant::now() + Duration::from_secs(WAIT_START_S);
    loop {
        let r =
            ns.run_blocking(|| http_get("127.0.0.1:15021".parse().unwrap(), "/healthz/ready", &[]));
        if matches!(r, Ok(ref r) if r.status == 200) {
            break;
        }
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!("proxy exited ({st}); stderr:\n{}", p.stderr_text());
        }
        assert!(
            Instant::now() < deadline,
            "not ready; stderr:\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // IPv4 outbound: the client dials the app's address; iptables sends it to 15001.
    let r = ns_get(&ns, out4, "/v4");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let v = r.json();
    assert_eq!(v["server"], "out-v4");
    let line = p.wait_log(|l| l["path"] == "/v4");
    assert_eq!(line["original_dst"], out4.to_string());
    assert_eq!(line["direction"], "outbound");

    // IPv6 outbound through [::1]:15001 and IP6T_SO_ORIGINAL_DST.
    let r = ns_get(&ns, out6, "/v6");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["server"], "out-v6");
    let line = p.wait_log(|l| l["path"] == "/v6");
    assert_eq!(line["original_dst"], out6.to_string());

    // Inbound: redirected to 15006, forwarded to the app from 127.0.0.6.
    let r = ns_get(&ns, app, "/in");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let v = r.json();
    assert_eq!(v["server"], "app");
    let peer: SocketAddr = v["peer"].as_str().unwrap().parse().unwrap();
    assert_eq!(peer.ip().to_string(), "127.0.0.6");
    let line = p.wait_log(|l| l["path"] == "/in");
    assert_eq!(line["direction"], "inbound");
    assert_eq!(line["original_dst"], app.to_string());

    // A server-first protocol through the capture.
    let banner = ns.run_blocking(|| {
        let s = TcpStream::connect(("127.0.0.1", BANNER)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut b = String::new();
        r.read_line(&mut b).unwrap();
        (&s).write_all(b"PING\r\n").unwrap();
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        (b, l)
    });
    assert_eq!(banner.0, "220 remora-test banner ready\r\n");
    assert_eq!(banner.1, "echo: PING\r\n");
    let line = p.wait_log(|l| l["kind"] == "tcp");
    assert_eq!(line["original_dst"], format!("127.0.0.1:{BANNER}"));
    assert_eq!(line["bytes_received"], 6);

    // Dialing the proxy's listener directly is a loop: refused, closed, counted.
    let n = ns.run_blocking(|| {
        use std::io::Read;
        let mut s = TcpStream::connect(("127.0.0.1", 15001)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap_or(0)
    });
    assert_eq!(n, 0);
    p.wait_stderr("is the proxy's own listener");
    let m = ns
        .run_blocking(|| http_get("127.0.0.1:15090".parse().unwrap(), "/stats/prometheus", &[]))
        .unwrap()
        .body_text();
    assert_eq!(
        metric_value(&m, "remora_refused_connections_total", &["reason=\"loop\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "istio_requests_total", &["reporter=\"source\""]),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "istio_tcp_connections_closed_total",
            &["reporter=\"source\""]
        ),
        1.0,
        "{m}"
    );
    drop(p);
    drop(rt);
}
