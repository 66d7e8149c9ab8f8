//! Process test: a ServiceEntry with `workloadSelector` routes to the WorkloadEntries of its
//! namespace that it selects (real servers on 127.0.0.x), by subset; an entry it does not
//! select, or one of another namespace, gets nothing.

mod common;

use common::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn workload_entry(ns: &str, name: &str, addr: std::net::SocketAddr, labels: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {labels}\n  network: vm-network\n",
        addr.ip(),
        addr.port()
    )
}

#[test]
fn service_entry_workload_selector_routes_to_workload_entries() {
    let rt = rt();
    let v1 = rt.block_on(spawn_http_echo("127.0.0.2:0".parse().unwrap(), "vm-v1"));
    let v2 = rt.block_on(spawn_http_echo("127.0.0.3:0".parse().unwrap(), "vm-v2"));
    let stray = rt.block_on(spawn_http_echo("127.0.0.4:0".parse().unwrap(), "stray"));
    let rules = [
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: vms, namespace: testns}\nspec:\n  hosts: [vms.example.internal]\n  location: MESH_INTERNAL\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: vms}}\n".to_string(),
        workload_entry("testns", "vm-1", v1, "{app: vms, version: v1}"),
        workload_entry("testns", "vm-2", v2, "{app: vms, version: v2}"),
        workload_entry("testns", "other-app", stray, "{app: other, version: v2}"),
        workload_entry("elsewhere", "vm-elsewhere", stray, "{app: vms, version: v2}"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: vms, namespace: testns}\nspec:\n  host: vms.example.internal\n  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]\n".to_string(),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: vms, namespace: testns}\nspec:\n  hosts: [vms.example.internal]\n  http:\n  - match: [{headers: {x-version: {exact: v1}}}]\n    route: [{destination: {host: vms.example.internal, subset: v1}}]\n  - route: [{destination: {host: vms.example.internal, subset: v2}}]\n".to_string(),
    ]
    .join("---\n");
    let dir = RulesDir::new(&[("vms.yaml", &rules)]);
    let mut o = ProxyOpts::new(dir.path());
    // The app dialled the ServiceEntry's host; nothing listens at the original destination.
    o.fixed_outbound = Some("127.0.0.1:9".parse().unwrap());
    let mut p = ProxyProc::start(o);
    p.wait_ready();
    let out = p.ports.outbound_addr();
    for _ in 0..5 {
        let r = http_get(out, "/", &[("Host", "vms.example.internal")]).unwrap();
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(r.json()["server"], "vm-v2");
    }
    let r = http_get(
        out,
        "/v1",
        &[("Host", "vms.example.internal"), ("x-version", "v1")],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["server"], "vm-v1");
    let line = p.wait_log(|l| l["path"] == "/v1");
    assert_eq!(line["upstream"], v1.to_string());
    // The proxy's view: the ServiceEntry's endpoints are the two selected entries.
    let dump = http_get(p.ports.admin_addr(), "/config_dump", &[])
        .unwrap()
        .json();
    let se = dump["rules"]["service_entries"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["meta"]["name"] == "vms"))
        .cloned()
        .unwrap_or_default();
    let addrs: Vec<&str> = se["endpoints"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["address"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(addrs, ["127.0.0.2", "127.0.0.3"], "{se}");
}
