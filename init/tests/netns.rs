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

use std::net::SocketAddr;

use common::lab::*;
use common::DEFAULT_ARGS;

fn run_case(tag: &str, args: &[&str], ipv6: bool, probes: Vec<Probe>) {
    let lab = Lab::new(tag, ipv6);
    // Baseline without rules: each destination is reached directly (proves the probes would
    // tell a capture from a non-capture).
    lab.assert_baseline(tag, &probes);
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
    let failures = lab.failures(&probes);
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
