//! The mesh lab in CNI mode: the injector runs with `cni.enabled`, the lab's kubelet calls the
//! real `remora-cni` plugin when it creates a pod's network, and the pods' only init container
//! besides the proxy is the unprivileged `remora-validation`. (Every other scenario runs in this
//! mode too with `REMORA_LAB_CNI=1`.)

use remora_e2e::client::sum;
use remora_e2e::{Lab, LabOptions};
use std::time::{Duration, Instant};

const REQ: &str = "istio_requests_total";

const SHOP: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - {name: web, command: ["lab-app", "http", "--service", "web", "--port", "8080"], readinessProbe: {tcpSocket: {port: 8080}}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers:
  - {name: client, command: ["lab-app", "http", "--service", "client", "--port", "8080"]}
"#;

#[test]
fn pods_are_meshed_by_the_cni_plugin_without_privileged_containers() {
    let mut lab = Lab::start(LabOptions {
        cni: true,
        ..LabOptions::default()
    })
    .expect("lab starts");
    lab.create_namespace("shop", &[("istio-injection", "enabled")])
        .unwrap();
    lab.apply(SHOP, "shop")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs(40)));
    let (web, client) = (
        lab.pod("shop/web").unwrap(),
        lab.pod("shop/client").unwrap(),
    );
    for p in [web, client] {
        assert!(p.reviewed && p.meshed, "{}", p.name);
        let (init, _) = p.spec_containers();
        assert_eq!(init, ["remora-validation", "remora-proxy"], "{}", p.name);
        assert_eq!(
            p.object["metadata"]["annotations"]["remora.dev/capture"], "cni",
            "{}",
            p.name
        );
        // No container of the pod adds a capability or runs as root.
        for c in p.object["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                p.object["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
        {
            let sc = &c["securityContext"];
            if c["name"] == "remora-validation" || c["name"] == "remora-proxy" {
                assert!(sc["capabilities"].get("add").is_none(), "{c}");
                assert_ne!(sc["runAsUser"], 0, "{c}");
            }
        }
        let rules = lab.nat_rules(p).unwrap();
        assert!(rules.contains(":REMORA_OUTPUT"), "{}: {rules}", p.name);
    }
    // Traffic goes through both sidecars.
    let before = (lab.metrics(web).unwrap(), lab.metrics(client).unwrap());
    for _ in 0..3 {
        let r = lab
            .http(client, "web", 8080, "/", &[])
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs(40)));
        assert_eq!(r.status, 200);
        assert_eq!(r.json().unwrap()["service"], "web");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (w, c) = (lab.metrics(web).unwrap(), lab.metrics(client).unwrap());
        let dw = sum(&w, REQ, &[("reporter", "destination")])
            - sum(&before.0, REQ, &[("reporter", "destination")]);
        let dc = sum(&c, REQ, &[("reporter", "source")])
            - sum(&before.1, REQ, &[("reporter", "source")]);
        if dw == 3.0 && dc == 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web inbound counted {dw}, client outbound {dc} (want 3 and 3)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
