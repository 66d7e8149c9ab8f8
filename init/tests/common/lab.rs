//! The traffic lab of the root-only tests: a "pod" network namespace wired to a "peer" namespace
//! with two veth pairs, probe listeners on 15001/15006 in the pod that report `SO_ORIGINAL_DST`,
//! plain app listeners that report their local address, and connections made as uid 0 / uid 1337
//! (per-thread credentials) from either side. Used by `remora-init`'s netns tests and by the CNI
//! plugin's (`cni/tests/`), which include this file.
//!
//! Addresses exist only inside the namespaces: pod eth0 10.213.0.2/24 + fd00:213::2/64 (peer .1),
//! pod eth1 10.215.0.2/24 (peer .1), peer loopback 10.214.0.1 and fd00:214::1 (routed via eth0).

#![allow(dead_code)]

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

use super::ns::Netns;

/// Run `f` on a thread that has entered network namespace `ns` (setns is per thread).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
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

pub fn listener(addr: SocketAddr) -> TcpListener {
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

pub fn original_dst(s: &TcpStream) -> String {
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
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Role {
    Outbound,
    Inbound,
    App,
    Peer,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Outbound => "outbound",
            Role::Inbound => "inbound",
            Role::App => "app",
            Role::Peer => "peer",
        }
    }
}

impl Server {
    pub fn start(ns: &str, ports: &[(u16, Role)]) -> Server {
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
pub struct Who {
    pub uid: u32,
    pub gid: u32,
}
pub const ROOT: Who = Who { uid: 0, gid: 0 };
pub const PROXY: Who = Who {
    uid: 1337,
    gid: 1337,
};

/// Connect from namespace `ns` as `who` (optionally from `src`) to `dst`; the one line the
/// listener wrote, or `error: ...`.
pub fn probe(ns: &str, who: Who, src: Option<IpAddr>, dst: SocketAddr) -> String {
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
pub struct Lab {
    _servers: Vec<Server>,
    pub pod: Netns,
    pub peer: Netns,
}

pub const POD_APP_PORTS: [u16; 4] = [9080, 9081, 15021, 15008];
pub const PEER_PORTS: [u16; 2] = [8080, 8081];

impl Lab {
    pub fn new(tag: &str, ipv6: bool) -> Lab {
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
pub enum Side {
    Pod,
    Peer,
}

/// One connection and what it must reach: `"<role> <address>"`.
pub struct Probe {
    pub from: Side,
    pub who: Who,
    pub src: Option<&'static str>,
    pub dst: &'static str,
    pub expect: String,
}

pub fn p(from: Side, who: Who, dst: &'static str, role: &str, addr: &str) -> Probe {
    Probe {
        from,
        who,
        src: None,
        dst,
        expect: format!("{role} {addr}"),
    }
}

/// Captured outbound: reaches 15001 with the original destination `dst`.
pub fn outbound(from: Side, who: Who, dst: &'static str) -> Probe {
    p(from, who, dst, "outbound", dst)
}
/// Captured inbound: reaches 15006 with the original destination `dst`.
pub fn inbound(from: Side, who: Who, dst: &'static str) -> Probe {
    p(from, who, dst, "inbound", dst)
}
/// Not captured, reaches the pod's app listener at `dst`.
pub fn app(from: Side, who: Who, dst: &'static str) -> Probe {
    p(from, who, dst, "app", dst)
}
/// Not captured, reaches the peer's listener at `dst`.
pub fn peer(who: Who, dst: &'static str) -> Probe {
    p(Side::Pod, who, dst, "peer", dst)
}

impl Lab {
    fn ns_of(&self, side: Side) -> &str {
        match side {
            Side::Pod => &self.pod.name,
            Side::Peer => &self.peer.name,
        }
    }

    /// Before any rule: each probe reaches its destination directly (so the probes can tell a
    /// capture from a non-capture).
    pub fn assert_baseline(&self, tag: &str, probes: &[Probe]) {
        for pr in probes {
            let dst: SocketAddr = pr.dst.parse().expect("probe dst");
            let got = probe(
                self.ns_of(pr.from),
                pr.who,
                pr.src.map(|s| s.parse().expect("src")),
                dst,
            );
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
    }

    /// The probes that did not reach what they expect, one line each.
    pub fn failures(&self, probes: &[Probe]) -> Vec<String> {
        let mut failures = Vec::new();
        for pr in probes {
            let dst: SocketAddr = pr.dst.parse().expect("probe dst");
            let got = probe(
                self.ns_of(pr.from),
                pr.who,
                pr.src.map(|s| s.parse().expect("src")),
                dst,
            );
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
        failures
    }
}
