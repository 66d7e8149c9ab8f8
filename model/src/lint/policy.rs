//! Load-time checks of the policy parts of a rule set decoded apart from the kinds: every
//! `RateLimit`. A rule set with an invalid one is rejected as a whole, like any other invalid
//! rule, so the proxy keeps its last good snapshot instead of running a half-applied policy;
//! `remora-proxy validate` reports the same findings. (A DestinationRule's `trafficPolicy` and
//! a route's `corsPolicy` are checked when their rule is decoded.) Also the warnings about
//! `tls` settings remora accepts but does not honour as written.

use crate::policy::traffic::{self, TlsSettings, TrafficPolicySpec};

use crate::rules::{DestinationRule, LoadContext, LoadError};

/// The errors of the policy parts of `files` (name, bytes) decoded apart from the kinds (every
/// `RateLimit`); empty when every one can be put in effect. (A DestinationRule's
/// `trafficPolicy` and a route's `corsPolicy` are checked when their rule is decoded, so their
/// errors are the loader's.)
pub fn check(files: &[(String, Vec<u8>)], ctx: &LoadContext) -> Vec<LoadError> {
    match crate::policy::decode::rate_limits(files, ctx) {
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    }
}

/// One `tls` setting a DestinationRule writes: (field path, subset, port, the setting).
type TlsDecl<'a> = (String, Option<&'a str>, Option<u16>, &'a TlsSettings);

fn walk_tls<'a>(
    tp: Option<&'a TrafficPolicySpec>,
    base: String,
    subset: Option<&'a str>,
    out: &mut Vec<TlsDecl<'a>>,
) {
    let Some(tp) = tp else { return };
    if let Some(t) = &tp.tls {
        out.push((format!("{base}.tls"), subset, None, &t.value));
    }
    for (i, e) in tp.port_level_settings.iter().enumerate() {
        if let Some(t) = &e.tls {
            out.push((
                format!("{base}.portLevelSettings[{i}].tls"),
                subset,
                e.port_number(),
                &t.value,
            ));
        }
    }
}

/// Every place a DestinationRule writes a `tls` setting.
fn tls_declarations(dr: &DestinationRule) -> Vec<TlsDecl<'_>> {
    let mut out = Vec::new();
    walk_tls(
        dr.traffic_policy.as_ref(),
        "spec.trafficPolicy".to_string(),
        None,
        &mut out,
    );
    for (j, s) in dr.subsets.iter().enumerate() {
        walk_tls(
            s.traffic_policy.as_ref(),
            format!("spec.subsets[{j}].trafficPolicy"),
            Some(s.name.as_str()),
            &mut out,
        );
    }
    out
}

/// Every `tls` setting of the DestinationRules that parses: the rule, the setting's field path,
/// what it applies to (`host`, ` subset s`, ` port p`) and the settings.
fn each_tls(
    drs: &[DestinationRule],
    mut f: impl FnMut(&DestinationRule, &str, &str, &traffic::TlsSettings),
) {
    for dr in drs {
        for (field, subset, port, ts) in tls_declarations(dr) {
            let mut target = dr.host.clone();
            if let Some(s) = subset {
                target.push_str(&format!(" subset {s}"));
            }
            if let Some(p) = port {
                target.push_str(&format!(" port {p}"));
            }
            f(dr, &field, &target, ts);
        }
    }
}

fn finding(dr: &DestinationRule, reason: String) -> LoadError {
    LoadError {
        file: dr.meta.file.clone(),
        document: dr.meta.document,
        field: String::new(),
        reason: format!("DestinationRule {}: {reason}", dr.meta.key()),
    }
}

/// The warnings about `tls` settings remora accepts but does not honour as written: one per
/// `credentialName` (the sidecar reads no Secrets). `remora-proxy validate`, `remora analyze`
/// and the webhook's rules validator report them (`validate::run_files`).
pub fn warnings(drs: &[DestinationRule]) -> Vec<LoadError> {
    let mut out = Vec::new();
    each_tls(drs, |dr, field, target, ts| {
        if let Some(n) = &ts.credential_name {
            let consequence = if ts.mode == traffic::TlsKind::Mutual
                && (ts.client_certificate.is_none() || ts.private_key.is_none())
            {
                format!("; without clientCertificate and privateKey, requests to {target} fail with 503 UF")
            } else {
                String::new()
            };
            out.push(finding(
                dr,
                format!("{field}.credentialName {n:?}: ignored: remora does not read Kubernetes Secrets (no SDS){consequence}"),
            ));
        }
    });
    out
}

/// One finding per DestinationRule/subset/port that uses `ISTIO_MUTUAL`, for a proxy that has
/// no workload identity (`--ca-address off`): there such traffic goes in plain text, and the
/// proxy says so.
pub fn istio_mutual_without_identity(drs: &[DestinationRule]) -> Vec<LoadError> {
    let mut out = Vec::new();
    each_tls(drs, |dr, field, target, ts| {
        if ts.mode == traffic::TlsKind::IstioMutual {
            out.push(finding(
                dr,
                format!("{field}.mode ISTIO_MUTUAL: this proxy has no workload identity (--ca-address off); traffic to {target} goes in plain text between sidecars"),
            ));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::load;

    /// The loader's errors and the policy check's, as the linter reports them.
    fn errors_of(yaml: &str) -> Vec<String> {
        let ctx = LoadContext::default();
        let files = vec![("rules.yaml".to_string(), yaml.as_bytes().to_vec())];
        let inputs = load::Inputs {
            dir: std::path::PathBuf::from("memory"),
            files: files.clone(),
            skipped: Vec::new(),
            hash: String::new(),
        };
        let decoded = load::decode_inputs(&inputs, &ctx);
        decoded
            .errors
            .iter()
            .chain(check(&files, &ctx).iter())
            .map(ToString::to_string)
            .collect()
    }

    const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
                      metadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n";

    #[test]
    fn credential_name_is_a_warning_and_istio_mutual_a_finding_only_without_identity() {
        let yaml = format!(
            "{DR}  trafficPolicy:\n    tls: {{mode: ISTIO_MUTUAL}}\n    portLevelSettings:\n    \
             - port: {{number: 9080}}\n      tls: {{mode: ISTIO_MUTUAL}}\n  subsets:\n  \
             - name: v1\n    labels: {{version: v1}}\n    \
             trafficPolicy: {{tls: {{mode: MUTUAL, credentialName: reviews-client}}}}\n  \
             - name: v2\n    labels: {{version: v2}}\n    \
             trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n"
        );
        assert_eq!(errors_of(&yaml), Vec::<String>::new());
        let ctx = LoadContext::default();
        let report = crate::lint::run_files(&[("rules.yaml", yaml.as_str())], &ctx);
        assert!(report.is_ok(), "{report}");
        let w: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
        let host = "reviews.default.svc.cluster.local";
        // ISTIO_MUTUAL is mesh mTLS now: the offline linter says nothing of it.
        assert_eq!(
            w,
            vec![format!("rules.yaml doc 1: DestinationRule default/reviews: spec.subsets[0].trafficPolicy.tls.credentialName \"reviews-client\": ignored: remora does not read Kubernetes Secrets (no SDS); without clientCertificate and privateKey, requests to {host} subset v1 fail with 503 UF")]
        );
        // A proxy without a workload identity says, per declaration, that it sends plain text.
        let files = vec![("rules.yaml".to_string(), yaml.as_bytes().to_vec())];
        let inputs = load::Inputs {
            dir: std::path::PathBuf::from("memory"),
            files,
            skipped: Vec::new(),
            hash: String::new(),
        };
        let decoded = load::decode_inputs(&inputs, &ctx);
        let got: Vec<String> = istio_mutual_without_identity(&decoded.destination_rules)
            .iter()
            .map(ToString::to_string)
            .collect();
        let tail = "this proxy has no workload identity (--ca-address off); traffic to";
        assert_eq!(
            got,
            vec![
                format!("rules.yaml doc 1: DestinationRule default/reviews: spec.trafficPolicy.tls.mode ISTIO_MUTUAL: {tail} {host} goes in plain text between sidecars"),
                format!("rules.yaml doc 1: DestinationRule default/reviews: spec.trafficPolicy.portLevelSettings[0].tls.mode ISTIO_MUTUAL: {tail} {host} port 9080 goes in plain text between sidecars"),
                format!("rules.yaml doc 1: DestinationRule default/reviews: spec.subsets[1].trafficPolicy.tls.mode ISTIO_MUTUAL: {tail} {host} subset v2 goes in plain text between sidecars"),
            ]
        );
    }

    #[test]
    fn valid_policies_pass() {
        let yaml = format!(
            "{DR}  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n    \
             portLevelSettings:\n    - port: {{number: 9080}}\n      \
             connectionPool: {{http: {{http1MaxPendingRequests: 10}}}}\n  \
             subsets:\n  - name: v1\n    labels: {{version: v1}}\n    \
             trafficPolicy: {{loadBalancer: {{simple: LEAST_REQUEST}}}}\n"
        );
        assert_eq!(errors_of(&yaml), Vec::<String>::new());
    }

    #[test]
    fn invalid_subset_and_port_level_policies_are_named() {
        let yaml = format!(
            "{DR}  subsets:\n  - name: v2\n    labels: {{version: v2}}\n    \
             trafficPolicy: {{loadBalancer: {{simple: FASTEST}}}}\n"
        );
        // The decoder names the subset and the port-level entry by their field path.
        assert_eq!(
            errors_of(&yaml),
            vec!["rules.yaml doc 1: spec.subsets[0].trafficPolicy.loadBalancer.simple: \"FASTEST\" is not ROUND_ROBIN, RANDOM, LEAST_REQUEST or PASSTHROUGH"]
        );

        let yaml = format!(
            "{DR}  trafficPolicy:\n    portLevelSettings:\n    - port: {{number: 9080}}\n      \
             tls: {{mode: SOMETIMES}}\n"
        );
        assert_eq!(
            errors_of(&yaml),
            vec!["rules.yaml doc 1: spec.trafficPolicy.portLevelSettings[0].tls.mode: \"SOMETIMES\" is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"]
        );
    }

    #[test]
    fn the_loader_and_validate_reject_the_whole_set() {
        let bad =
            format!("{DR}  trafficPolicy: {{outlierDetection: {{consecutive5xxErrors: -3}}}}\n");
        let ctx = LoadContext::default();
        let errs = crate::rules::snapshot_from_yaml(&[("a.yaml", bad.as_str())], &ctx, 1)
            .expect_err("an invalid trafficPolicy rejects the rule set");
        assert_eq!(
            errs[0].to_string(),
            "a.yaml doc 1: spec.trafficPolicy.outlierDetection.consecutive5xxErrors: -3 is not a non-negative integer"
        );
        let report = crate::lint::run_files(&[("a.yaml", bad.as_str())], &ctx);
        assert!(!report.is_ok());
        assert!(report.to_string().contains("outlierDetection"), "{report}");
        let good =
            format!("{DR}  trafficPolicy: {{outlierDetection: {{consecutive5xxErrors: 3}}}}\n");
        assert!(crate::rules::snapshot_from_yaml(&[("a.yaml", good.as_str())], &ctx, 1).is_ok());
        assert!(crate::lint::run_files(&[("a.yaml", good.as_str())], &ctx).is_ok());
    }

    #[test]
    fn byte_order_marks_and_syntax_errors_end_the_policy_scan() {
        let ctx = LoadContext::default();
        let vs = "\u{feff}apiVersion: networking.istio.io/v1\r\nkind: VirtualService\r\n\
                  metadata: {name: web}\r\nspec: {hosts: [web], http: [{route: [{destination: {host: web}}]}]}\r\n";
        let files = vec![("a.yaml".to_string(), vs.as_bytes().to_vec())];
        assert!(check(&files, &ctx).is_empty());
        let broken = vec![(
            "b.yaml".to_string(),
            b"kind: [unclosed\n---\nkind: x\n".to_vec(),
        )];
        assert!(
            check(&broken, &ctx).is_empty(),
            "syntax errors are the loader's to report"
        );
    }

    #[test]
    fn invalid_cors_and_rate_limit_are_errors() {
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                  metadata: {name: web, namespace: default}\nspec:\n  hosts: [web]\n  http:\n  \
                  - route:\n    - destination: {host: web}\n    \
                  corsPolicy: {allowOrigins: [{regex: \"(\"}]}\n";
        // Decoded with its VirtualService: the error names the document and the field path.
        assert_eq!(
            errors_of(vs),
            vec!["rules.yaml doc 1: spec.http[0].corsPolicy.allowOrigins[0].regex: invalid regex \"(\": error: unclosed group"]
        );

        let rl = "apiVersion: remora.dev/v1alpha1\nkind: RateLimit\n\
                  metadata: {name: rl, namespace: default}\nspec: {}\n";
        let errs = errors_of(rl);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0], "rules.yaml: doc 1: spec.host: required string");
    }
}
