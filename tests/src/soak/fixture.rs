//! What the soak deploys: the backend Service with its three pods (two in subset v1, one in
//! v2) and the client pod, and the rule sets (route, retry, timeout and outlier policy) it
//! alternates between.

use super::{ATTEMPTS, B1, B2, B3, PER_TRY_TIMEOUT, PORT, ROUTE_TIMEOUT};

pub(super) fn lab_yaml() -> String {
    let backend = |name: &str, version: &str| {
        format!(
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: backend, version: {version}}}
spec:
  containers:
  - name: backend
    command: ["lab-app", "http", "--service", "backend", "--version", "{version}", "--port", "{PORT}", "--control"]
    ports: [{{containerPort: {PORT}}}]
    readinessProbe: {{tcpSocket: {{port: {PORT}}}}}
"#
        )
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: backend}}
spec:
  selector: {{app: backend}}
  ports: [{{name: http, port: {PORT}, targetPort: {PORT}}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {{app: client, version: v1}}
spec:
  containers:
  - name: client
    command: ["lab-app", "http", "--service", "client", "--port", "9080"]
    readinessProbe: {{tcpSocket: {{port: 9080}}}}
{}{}{}"#,
        backend(B1, "v1"),
        backend(B2, "v1"),
        backend(B3, "v2")
    )
}

/// The rule sets the soak alternates: two valid ones (weights 80/20 and 60/40) and one with an
/// invalid duration, which every proxy must reject while keeping the last good set.
pub fn rule_sets() -> [(&'static str, String); 3] {
    let set = |w1: u32, w2: u32, timeout: &str| {
        format!(
            r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend}}
spec:
  host: backend
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 50, minHealthPercent: 50}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: [backend]
  http:
  - name: weighted
    route:
    - {{destination: {{host: backend, subset: v1}}, weight: {w1}}}
    - {{destination: {{host: backend, subset: v2}}, weight: {w2}}}
    timeout: {timeout}
    retries: {{attempts: {ATTEMPTS}, perTryTimeout: {}ms, retryOn: "5xx,reset,connect-failure"}}
"#,
            PER_TRY_TIMEOUT.as_millis()
        )
    };
    let t = format!("{}s", ROUTE_TIMEOUT.as_secs());
    [
        ("valid 80/20", set(80, 20, &t)),
        ("valid 60/40", set(60, 40, &t)),
        ("invalid (timeout: banana)", set(70, 30, "banana")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::NS;

    #[test]
    fn rule_sets_validate_as_expected() {
        let sets = rule_sets();
        for (i, (name, yaml)) in sets.iter().enumerate() {
            let ctx = remora_model::rules::LoadContext {
                namespace: NS.into(),
                ..Default::default()
            };
            let r = remora_model::rules::snapshot_from_yaml(&[("rules.yaml", yaml)], &ctx, 1);
            assert_eq!(r.is_ok(), i != 2, "{name}: {:?}", r.err());
        }
    }
}
