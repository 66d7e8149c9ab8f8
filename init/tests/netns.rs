//! Real traffic through the rules `remora-init` installs (root only).
//!
//! For each configuration of a table mirroring Istio's capture cases (see
//! `anchors/istio/iptables/CASES.md`), a fresh "pod" network namespace is wired to a "peer"
//! namespace with two veth pairs; the real binary programs the pod namespace; probe listeners on
//! 15001/15006 in the pod report `SO_ORIGINAL_DST`, plain app listeners report their local
//! address; connections made as uid 0 / uid 1337 (per-thread credentials) from the pod and from
//! the peer show which listener each reaches and with which original destination.
//!
//! Addresses exist only inside the namespaces: pod eth0 10.213.0.2/24 + fd00:213::2/64 (peer .1),
//! pod eth1 10.215.0.2/24 (peer .1), peer loopback 10.214.0.1 and fd00:214::1 (routed via eth0).

mod common;

use std::io::{Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::libc;
use nix::sys::socket::{
    bind, connect, getsockopt, listen, setsockopt, socket, sockopt, AddressFamily, Backlog,
    SockFlag, SockType, SockaddrIn, SockaddrIn6,
};
use nix::sys::time::TimeVal;

use common::{Netns, DEFAULT_ARGS};

/// Run `f` on a thread that has entered network namespace `ns` (setns is per thread).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
            // SAFETY: setns on a valid fd; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

fn listener(addr: SocketAddr) -> TcpListener {
    let fam = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    match addr {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a)).expect("bind v4"),
        SocketAddr::V6(a) => {
            setsockopt(&fd, sockopt::Ipv6V6Only, &true).expect("IPV6_V6ONLY");
            bind(fd.as_raw_fd(), &SockaddrIn6::from(a)).expect("bind v6")
        }
    }
    listen(&fd, Backlog::new(64).expect("backlog")).expect("listen");
    let l = TcpListener::from(fd);
    l.set_nonblocking(true).expect("nonblocking");
    l
}

fn original_dst(s: &TcpStream) -> String {
    match s.local_addr() {
        Ok(SocketAddr::V4(_)) => match getsockopt(s, sockopt::OriginalDst) {
            Ok(a) => SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )
            .to_string(),
            Err(e) => format!("(SO_ORIGINAL_DST: {e})"),
        },
        Ok(SocketAddr::V6(_)) => match getsockopt(s, sockopt::Ip6tOriginalDst) {
            Ok(a) => SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                0,
                0,
            )
            .to_string(),
            Err(e) => format!("(IP6T_SO_ORIGINAL_DST: {e})"),
        },
        Err(e) => format!("(local_addr: {e})"),
    }
}

/// Listeners served by one thread until dropped. Each accepted connection gets one line,
/// `<role> <address>`: the original destination for the capture listeners, the local address
/// for the others.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Outbound,
    Inbound,
    App,
    Peer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Outbound => "outbound",
            Role::Inbound => "inbound",
            Role::App => "app",
            Role::Peer => "peer",
        }
    }
}

impl Server {
    fn start(ns: &str, ports: &[(u16, Role)]) -> Server {
        let listeners: Vec<(TcpListener, Role)> = in_netns(ns, || {
            let mut v = Vec::new();
            for (port, role) in ports {
                v.push((
                    listener(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *port)),
                    *role,
                ));
                v.push((
                    listener(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), *port)),
                    *role,
                ));
            }
            v
        });
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let mut idle = true;
                for (l, role) in &listeners {
                    if let Ok((mut s, _)) = l.accept() {
                        idle = false;
                        let _ = s.set_nonblocking(false);
                        let addr = match role {
                            Role::Outbound | Role::Inbound => original_dst(&s),
                            Role::App | Role::Peer => s
                                .local_addr()
                                .map(|a| a.to_string())
                                .unwrap_or_else(|e| format!("({e})")),
                        };
                        let _ = writeln!(s, "{} {addr}", role.name());
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Who makes a connection.
#[derive(Clone, Copy, Debug)]
struct Who {
    uid: u32,
    gid: u32,
}
const ROOT: Who = Who { uid: 0, gid: 0 };
const PROXY: Who = Who {
    uid: 1337,
    gid: 1337,
};

/// Connect from namespace `ns` as `who` (optionally from `src`) to `dst`; the one line the
/// listener wrote, or `error: ...`.
fn probe(ns: &str, who: Who, src: Option<IpAddr>, dst: SocketAddr) -> String {
    in_netns(ns, || {
        // Raw syscalls change only this thread's credentials (glibc's wrappers would change
        // every thread of the test process). gid first, while still privileged.
        // SAFETY: plain syscalls with integer arguments.
        unsafe {
            if who.gid != 0 {
                let rc = libc::syscall(libc::SYS_setresgid, who.gid, who.gid, who.gid);
                assert_eq!(rc, 0, "setresgid: {}", std::io::Error::last_os_error());
            }
            if who.uid != 0 {
                let rc = libc::syscall(libc::SYS_setresuid, who.uid, who.uid, who.uid);
                assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
            }
        }
        let fam = if dst.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = match socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None) {
            Ok(fd) => fd,
            Err(e) => return format!("error: socket: {e}"),
        };
        // Every probe expects an answer (none relies on a timeout), so a generous bound costs
        // nothing; the listener thread may be slow to be scheduled on a loaded machine.
        let t = TimeVal::new(20, 0);
        let _ = setsockopt(&fd, sockopt::SendTimeout, &t);
        let _ = setsockopt(&fd, sockopt::ReceiveTimeout, &t);
        if let Some(src) = src {
            let r = match SocketAddr::new(src, 0) {
                SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a)),
                SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a)),
            };
            if let Err(e) = r {
                return format!("error: bind {src}: {e}");
            }
        }
        let r = match dst {
            SocketAddr::V4(a) => connect(fd.as_raw_fd(), &SockaddrIn::from(a)),
            SocketAddr::V6(a) => connect(fd.as_raw_fd(), &SockaddrIn6::from(a)),
        };
        if let Err(e) = r {
            return format!("error: connect: {e}");
        }
        let mut s = TcpStream::from(fd);
        let mut line = String::new();
        match s.read_to_string(&mut line) {
            Ok(_) => line.trim().to_string(),
            Err(e) => format!("error: read: {e}"),
        }
    })
}

/// The pod, the peer, their listeners; torn down on drop (servers first, then namespaces).
struct Lab {
    _servers: Vec<Server>,
    pod: Netns,
    peer: Netns,
}

const POD_APP_PORTS: [u16; 4] = [9080, 9081, 15021, 15008];
const PEER_PORTS: [u16; 2] = [8080, 8081];

impl Lab {
    fn new(tag: &str, ipv6: bool) -> Lab {
        let pod = Netns::new(&format!("{tag}-pod"));
        let peer = Netns::new(&format!("{tag}-peer"));
        for ifname in ["eth0", "eth1"] {
            pod.ip(&[
                "link", "add", ifname, "type", "veth", "peer", "name", ifname, "netns", &peer.name,
            ]);
            pod.ip(&["link", "set", ifname, "up"]);
            peer.ip(&["link", "set", ifname, "up"]);
        }
        pod.ip(&["addr", "add", "10.213.0.2/24", "dev", "eth0"]);
        peer.ip(&["addr", "add", "10.213.0.1/24", "dev", "eth0"]);
        pod.ip(&["addr", "add", "10.215.0.2/24", "dev", "eth1"]);
        peer.ip(&["addr", "add", "10.215.0.1/24", "dev", "eth1"]);
        peer.ip(&["addr", "add", "10.214.0.1/32", "dev", "lo"]);
        pod.ip(&["route", "add", "10.214.0.0/24", "via", "10.213.0.1"]);
        if ipv6 {
            pod.ip(&["addr", "add", "fd00:213::2/64", "dev", "eth0", "nodad"]);
            peer.ip(&["addr", "add", "fd00:213::1/64", "dev", "eth0", "nodad"]);
            peer.ip(&["addr", "add", "fd00:214::1/128", "dev", "lo"]);
            pod.ip(&["route", "add", "fd00:214::/64", "via", "fd00:213::1"]);
            // The proxy's IPv6 inbound-forwarding source address.
            pod.ip(&["addr", "add", "::6/128", "dev", "lo"]);
        }
        let mut pod_ports = vec![(15001, Role::Outbound), (15006, Role::Inbound)];
        pod_ports.extend(POD_APP_PORTS.iter().map(|p| (*p, Role::App)));
        let peer_ports: Vec<(u16, Role)> = PEER_PORTS.iter().map(|p| (*p, Role::Peer)).collect();
        let servers = vec![
            Server::start(&pod.name, &pod_ports),
            Server::start(&peer.name, &peer_ports),
        ];
        Lab {
            _servers: servers,
            pod,
            peer,
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Pod,
    Peer,
}

/// One connection and what it must reach: `"<role> <address>"`.
struct Probe {
    from: Side,
    who: Who,
    src: Option<&'static str>,
    dst: &'static str,
    expect: String,
}

fn p(from: Side, who: Who, dst: &'static str, role: &str, addr: &str) -> Probe {
    Probe {
        from,
        who,
        src: None,
        dst,
        expect: format!("{role} {addr}"),
    }
}

/// Captured outbound: reaches 15001 with the original destination `dst`.
fn outbound(from: Side, who: Who, dst: &'static str) -> Probe {
    p(from, who, dst, "outbound", dst)
}
/// Captured inbound: reaches 15006 with the original destination `dst`.
fn inbound(from: Side, who: Who, dst: &'static str) -> Probe {
    p(from, who, dst, "inbound", dst)
}
/// Not captured, reaches the pod's app listener at `dst`.
fn app(from: Side, who: Who, dst: &'static str) -> Probe {
    p(from, who, dst, "app", dst)
}
/// Not captured, reaches the peer's listener at `dst`.
fn peer(who: Who, dst: &'static str) -> Probe {
    p(Side::Pod, who, dst, "peer", dst)
}

fn run_case(tag: &str, args: &[&str], ipv6: bool, probes: Vec<Probe>) {
    let lab = Lab::new(tag, ipv6);
    // Baseline without rules: each destination is reached directly (proves the probes would
    // tell a capture from a non-capture).
    for pr in &probes {
        let ns = match pr.from {
            Side::Pod => &lab.pod.name,
            Side::Peer => &lab.peer.name,
        };
        let dst: SocketAddr = pr.dst.parse().expect("probe dst");
        let got = probe(ns, pr.who, pr.src.map(|s| s.parse().expect("src")), dst);
        let direct_role = if dst.port() >= 9000 || dst.port() == 15008 || dst.port() == 15021 {
            "app"
        } else {
            "peer"
        };
        assert_eq!(
            got,
            format!("{direct_role} {dst}"),
            "{tag}: baseline {}",
            pr.dst
        );
    }

    let out = lab.pod.init(args);
    assert!(
        out.contains("IPv4: installed rules match the plan"),
        "{out}"
    );
    if ipv6 {
        assert!(
            out.contains("IPv6: installed rules match the plan"),
            "{out}"
        );
    }
    let mut failures = Vec::new();
    for pr in &probes {
        let ns = match pr.from {
            Side::Pod => &lab.pod.name,
            Side::Peer => &lab.peer.name,
        };
        let dst: SocketAddr = pr.dst.parse().expect("probe dst");
        let got = probe(ns, pr.who, pr.src.map(|s| s.parse().expect("src")), dst);
        if got != pr.expect {
            failures.push(format!(
                "  from {} as uid {} gid {}{} to {}: expected {:?}, got {:?}",
                match pr.from {
                    Side::Pod => "pod",
                    Side::Peer => "peer",
                },
                pr.who.uid,
                pr.who.gid,
                pr.src.map(|s| format!(" src {s}")).unwrap_or_default(),
                pr.dst,
                pr.expect,
                got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{tag} ({args:?}):\n{}\nremora-init output:\n{out}",
        failures.join("\n")
    );
}

fn args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = DEFAULT_ARGS.to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn all_ports_default_sidecar() {
    use Side::*;
    run_case(
        "all",
        DEFAULT_ARGS,
        false,
        vec![
            inbound(Peer, ROOT, "10.213.0.2:9080"),
            inbound(Peer, PROXY, "10.213.0.2:9081"),
            app(Peer, ROOT, "10.213.0.2:15021"),
            app(Peer, ROOT, "10.213.0.2:15008"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
            outbound(Pod, ROOT, "10.214.0.1:8081"),
            peer(PROXY, "10.213.0.1:8080"),
            app(Pod, ROOT, "127.0.0.1:9080"),
            app(Pod, PROXY, "127.0.0.1:9080"),
            app(Pod, ROOT, "10.213.0.2:9080"),
            inbound(Pod, PROXY, "10.213.0.2:9080"),
            app(Pod, PROXY, "10.213.0.2:15008"),
            Probe {
                src: Some("127.0.0.6"),
                ..app(Pod, PROXY, "10.213.0.2:9080")
            },
        ],
    );
}

#[test]
fn listed_inbound_ports() {
    use Side::*;
    run_case(
        "listed",
        &["-b", "9080", "-i", "*"],
        false,
        vec![
            inbound(Peer, ROOT, "10.213.0.2:9080"),
            app(Peer, ROOT, "10.213.0.2:9081"),
            app(Peer, ROOT, "10.213.0.2:15021"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
        ],
    );
}

#[test]
fn excluded_inbound_ports() {
    use Side::*;
    run_case(
        "inexcl",
        &["-b", "*", "-d", "9081", "-i", "*"],
        false,
        vec![
            app(Peer, ROOT, "10.213.0.2:9081"),
            inbound(Peer, ROOT, "10.213.0.2:9080"),
            // Not in -d this time, so captured.
            inbound(Peer, ROOT, "10.213.0.2:15021"),
        ],
    );
}

#[test]
fn included_outbound_ports() {
    use Side::*;
    run_case(
        "outincl",
        &["-b", "", "-i", "", "-q", "8080"],
        false,
        vec![
            outbound(Pod, ROOT, "10.213.0.1:8080"),
            peer(ROOT, "10.213.0.1:8081"),
            peer(PROXY, "10.213.0.1:8080"),
            app(Peer, ROOT, "10.213.0.2:9080"),
        ],
    );
}

#[test]
fn excluded_outbound_ports() {
    use Side::*;
    run_case(
        "outexcl",
        &args(&["-o", "8081"]),
        false,
        vec![
            peer(ROOT, "10.213.0.1:8081"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
        ],
    );
}

#[test]
fn included_cidrs() {
    use Side::*;
    run_case(
        "cidrincl",
        &["-b", "*", "-i", "10.214.0.0/24"],
        false,
        vec![
            outbound(Pod, ROOT, "10.214.0.1:8080"),
            peer(ROOT, "10.213.0.1:8080"),
            peer(PROXY, "10.214.0.1:8080"),
        ],
    );
}

#[test]
fn excluded_cidrs() {
    use Side::*;
    run_case(
        "cidrexcl",
        &args(&["-x", "10.214.0.0/24"]),
        false,
        vec![
            peer(ROOT, "10.214.0.1:8080"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
        ],
    );
}

#[test]
fn excluded_interface() {
    use Side::*;
    run_case(
        "ifexcl",
        &args(&["-c", "eth1"]),
        false,
        vec![
            app(Peer, ROOT, "10.215.0.2:9080"),
            inbound(Peer, ROOT, "10.213.0.2:9080"),
            peer(ROOT, "10.215.0.1:8080"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
        ],
    );
}

#[test]
fn virtual_interface_inbound_is_captured_as_outbound() {
    use Side::*;
    run_case(
        "virt",
        &args(&["-k", "eth1"]),
        false,
        vec![
            outbound(Peer, ROOT, "10.215.0.2:9080"),
            inbound(Peer, ROOT, "10.213.0.2:9080"),
        ],
    );
}

#[test]
fn gid_owner() {
    use Side::*;
    let gid_only = Who { uid: 0, gid: 2000 };
    run_case(
        "gid",
        &["-b", "*", "-i", "*", "-u", "1337", "-g", "2000"],
        false,
        vec![
            peer(gid_only, "10.213.0.1:8080"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
            peer(PROXY, "10.213.0.1:8080"),
            // The uid rules come first (as in Istio): a non-proxy uid calling its own pod IP over
            // lo is returned before the gid hairpin rule is reached.
            app(Pod, gid_only, "10.213.0.2:9080"),
            app(Pod, gid_only, "127.0.0.1:9080"),
        ],
    );
}

#[test]
fn ipv6_pod() {
    use Side::*;
    // --ipv6 is left at auto: the pod's global fd00:213::2 turns IPv6 on.
    run_case(
        "v6",
        DEFAULT_ARGS,
        true,
        vec![
            inbound(Peer, ROOT, "[fd00:213::2]:9080"),
            app(Peer, ROOT, "[fd00:213::2]:15021"),
            outbound(Pod, ROOT, "[fd00:213::1]:8080"),
            outbound(Pod, ROOT, "[fd00:214::1]:8081"),
            peer(PROXY, "[fd00:213::1]:8080"),
            app(Pod, ROOT, "[::1]:9080"),
            app(Pod, ROOT, "[fd00:213::2]:9080"),
            inbound(Pod, PROXY, "[fd00:213::2]:9080"),
            Probe {
                src: Some("::6"),
                ..app(Pod, PROXY, "[fd00:213::2]:9080")
            },
            // IPv4 is still captured alongside.
            inbound(Peer, ROOT, "10.213.0.2:9080"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
        ],
    );
}

#[test]
fn ipv6_cidrs_are_per_family() {
    use Side::*;
    run_case(
        "v6cidr",
        &["-b", "*", "-i", "fd00:214::/64", "-x", "fd00:213::1"],
        true,
        vec![
            outbound(Pod, ROOT, "[fd00:214::1]:8080"),
            peer(ROOT, "[fd00:213::1]:8080"),
            // No IPv4 range given: IPv4 outbound is not captured.
            peer(ROOT, "10.214.0.1:8080"),
        ],
    );
}

#[test]
fn legacy_backend_captures_the_same_way() {
    use Side::*;
    run_case(
        "legacy",
        &args(&["--iptables-mode", "legacy"]),
        false,
        vec![
            inbound(Peer, ROOT, "10.213.0.2:9080"),
            app(Peer, ROOT, "10.213.0.2:15021"),
            outbound(Pod, ROOT, "10.213.0.1:8080"),
            peer(PROXY, "10.213.0.1:8080"),
            inbound(Pod, PROXY, "10.213.0.2:9080"),
            Probe {
                src: Some("127.0.0.6"),
                ..app(Pod, PROXY, "10.213.0.2:9080")
            },
        ],
    );
}

#[test]
fn owner_groups_include() {
    use Side::*;
    let in_group = Who { uid: 0, gid: 3000 };
    run_case(
        "grpincl",
        &args(&["--outbound-owner-groups", "3000"]),
        false,
        vec![
            outbound(Pod, in_group, "10.213.0.1:8080"),
            peer(ROOT, "10.213.0.1:8080"),
            // Inbound is not affected by owner groups.
            inbound(Peer, ROOT, "10.213.0.2:9080"),
        ],
    );
}

#[test]
fn owner_groups_exclude_by_name() {
    use Side::*;
    // "root" is resolved to gid 0 by remora-init before planning.
    run_case(
        "grpexcl",
        &args(&["--outbound-owner-groups-exclude", "root"]),
        false,
        vec![
            peer(ROOT, "10.213.0.1:8080"),
            outbound(Pod, Who { uid: 0, gid: 3000 }, "10.213.0.1:8080"),
        ],
    );
}

#[test]
fn cleanup_restores_direct_traffic() {
    let lab = Lab::new("cleanup", false);
    let pod = &lab.pod.name;
    let peer_ns = &lab.peer.name;
    let to_peer: SocketAddr = "10.213.0.1:8080".parse().expect("addr");
    let to_pod: SocketAddr = "10.213.0.2:9080".parse().expect("addr");
    lab.pod.init(DEFAULT_ARGS);
    assert_eq!(probe(pod, ROOT, None, to_peer), "outbound 10.213.0.1:8080");
    assert_eq!(
        probe(peer_ns, ROOT, None, to_pod),
        "inbound 10.213.0.2:9080"
    );
    // Applying twice changes nothing observable either.
    lab.pod.init(DEFAULT_ARGS);
    assert_eq!(probe(pod, ROOT, None, to_peer), "outbound 10.213.0.1:8080");
    lab.pod.init(&["--cleanup"]);
    assert_eq!(probe(pod, ROOT, None, to_peer), "peer 10.213.0.1:8080");
    assert_eq!(probe(peer_ns, ROOT, None, to_pod), "app 10.213.0.2:9080");
}
