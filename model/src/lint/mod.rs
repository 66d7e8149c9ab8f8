//! `remora-proxy validate DIR`: lint a rule set offline — schema errors, unknown subsets,
//! undefined hosts, weights not summing to 100, unreachable (shadowed) routes.

pub mod gateway;
pub mod policy;

use std::fmt;
use std::path::Path;

use crate::host::match_score;
use crate::rules::load::{self, Decoded};
use crate::rules::{DestinationRule, LoadContext, LoadError, VirtualService};

/// One finding: `FILE doc N: FIELD: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    /// 1-based; 0 = the whole file or directory.
    pub document: usize,
    pub field: String,
    pub reason: String,
}

impl From<LoadError> for Finding {
    fn from(e: LoadError) -> Self {
        Finding {
            file: e.file,
            document: e.document,
            field: e.field,
            reason: e.reason,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.document > 0 {
            write!(f, " doc {}", self.document)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The result of a validation: errors make `remora-proxy validate` exit 1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationReport {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl ValidationReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// e.g. `2 errors, 1 warning`.
    pub fn summary_line(&self) -> String {
        let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        format!(
            "{}, {}",
            plural(self.errors.len(), "error"),
            plural(self.warnings.len(), "warning")
        )
    }
}

/// One line per finding: `error: ...` lines first, then `warning: ...` lines.
impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// Validate the rules directory `dir` as the proxy in `ctx` would load it.
pub fn run(dir: &Path, ctx: &LoadContext) -> ValidationReport {
    let mut report = ValidationReport::default();
    let inputs = match load::read_inputs(dir) {
        Ok(i) => i,
        Err(e) => {
            report.errors.push(e.into());
            return report;
        }
    };
    for (name, why) in &inputs.skipped {
        if why != "directory" {
            report.warnings.push(Finding {
                file: name.clone(),
                document: 0,
                field: String::new(),
                reason: format!("not read: {why}"),
            });
        }
    }
    let decoded = load::decode_inputs(&inputs, ctx);
    check_policies(&inputs.files, &decoded, ctx, &mut report);
    check_decoded(decoded, ctx, &mut report);
    report
}

/// Policy parts the loader would reject (see `policy::check`); only when the documents
/// themselves decoded, as the loader checks them only then.
fn check_policies(
    files: &[(String, Vec<u8>)],
    decoded: &Decoded,
    ctx: &LoadContext,
    report: &mut ValidationReport,
) {
    if decoded.errors.is_empty() {
        let errors = crate::lint::policy::check(files, ctx);
        report.errors.extend(errors.into_iter().map(Finding::from));
    }
    // Accepted but not honoured as written (credentialName unread).
    let warnings = crate::lint::policy::warnings(&decoded.destination_rules);
    report
        .warnings
        .extend(warnings.into_iter().map(Finding::from));
}

/// Validate in-memory files (name, YAML text); the same checks as `run`.
pub fn run_files(files: &[(&str, &str)], ctx: &LoadContext) -> ValidationReport {
    let mut sorted: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let inputs = load::Inputs {
        dir: "memory".into(),
        files: sorted,
        skipped: Vec::new(),
        hash: String::new(),
    };
    let mut report = ValidationReport::default();
    let decoded = load::decode_inputs(&inputs, ctx);
    check_policies(&inputs.files, &decoded, ctx, &mut report);
    check_decoded(decoded, ctx, &mut report);
    report
}

fn at(file: &str, document: usize, field: String, reason: String) -> Finding {
    Finding {
        file: file.to_string(),
        document,
        field,
        reason,
    }
}

fn check_decoded(decoded: Decoded, ctx: &LoadContext, report: &mut ValidationReport) {
    report
        .errors
        .extend(decoded.errors.iter().cloned().map(Finding::from));
    report
        .warnings
        .extend(decoded.unknown_fields.iter().cloned().map(Finding::from));
    for ig in &decoded.ignored {
        report.warnings.push(at(
            &ig.file,
            ig.document,
            "kind".to_string(),
            format!("{} {}: {}", ig.kind, ig.name, ig.reason),
        ));
    }
    // WorkloadEntries and the ServiceEntries selecting them (their namespace's, by labels).
    let selects = |se: &crate::rules::ServiceEntry, w: &crate::kinds::WorkloadEntryObject| {
        se.meta.namespace == w.meta.namespace
            && se
                .workload_selector
                .as_ref()
                .is_some_and(|sel| sel.iter().all(|(k, v)| w.entry.labels.get(k) == Some(v)))
    };
    for se in decoded
        .service_entries
        .iter()
        .filter(|s| s.workload_selector.is_some())
    {
        if !decoded.workload_entries.iter().any(|w| selects(se, w)) {
            report.warnings.push(at(
                &se.meta.file,
                se.meta.document,
                "spec.workloadSelector.labels".to_string(),
                format!(
                    "ServiceEntry {} selects no WorkloadEntry of namespace {}: it has no endpoints",
                    se.meta.key(),
                    se.meta.namespace
                ),
            ));
        }
    }
    for w in &decoded.workload_entries {
        if !decoded.service_entries.iter().any(|se| selects(se, w)) {
            report.warnings.push(at(
                &w.meta.file,
                w.meta.document,
                "spec.labels".to_string(),
                format!(
                    "WorkloadEntry {} is selected by no ServiceEntry's workloadSelector in namespace {}: not used",
                    w.meta.key(),
                    w.meta.namespace
                ),
            ));
        }
    }
    // A Gateway is never an error for sidecars; remora's gateway leaves an invalid one out.
    for e in &decoded.gateway_errors {
        report.warnings.push(at(
            &e.file,
            e.document,
            e.field.clone(),
            format!("{} (the gateway leaves this Gateway out)", e.reason),
        ));
    }
    for gw in &decoded.gateways {
        for (field, reason) in crate::gateway::cipher_suite_problems(gw) {
            report.warnings.push(at(
                &gw.meta.file,
                gw.meta.document,
                field,
                format!(
                    "Gateway {}: {reason} (the gateway keeps this server down)",
                    gw.meta.key()
                ),
            ));
        }
    }
    // What a proxy in `ctx.namespace` would not apply (exportTo, Sidecar scope, selectors):
    // build the snapshot as the proxy does (without resolving DNS names).
    if decoded.errors.is_empty() {
        let no_dns = |_: &str| -> Vec<std::net::IpAddr> { Vec::new() };
        let snap = crate::rules::build_snapshot(
            decoded.clone(),
            ctx,
            0,
            String::new(),
            String::new(),
            Vec::new(),
            &no_dns,
        );
        for ig in snap.ignored.iter().skip(decoded.ignored.len()) {
            if ig.reason.starts_with("bound to gateways only")
                || ig.reason.starts_with("merged into")
            {
                continue; // reported below with its field
            }
            if ig.reason.contains("select") && ctx.pod_labels.is_empty() {
                continue; // depends on a pod's labels, which an offline check does not have
            }
            report.warnings.push(at(
                &ig.file,
                ig.document,
                "metadata".to_string(),
                format!(
                    "{} {} is not applied by proxies in namespace {}: {}",
                    ig.kind, ig.name, ctx.namespace, ig.reason
                ),
            ));
        }
        security_warnings(&snap, report);
    }
    let cluster_suffix = format!(".svc.{}", ctx.cluster_domain);
    let host_known = |h: &str| -> bool {
        h.ends_with(&cluster_suffix)
            || decoded
                .service_entries
                .iter()
                .any(|se| se.hosts.iter().any(|p| match_score(p, h).is_some()))
    };
    let best_dr = |h: &str| -> Option<&DestinationRule> {
        let mut best: Option<(usize, &DestinationRule)> = None;
        for dr in &decoded.destination_rules {
            if let Some(s) = match_score(&dr.host, h) {
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, dr));
                }
            }
        }
        best.map(|(_, d)| d)
    };
    let best_se = |h: &str| -> Option<&crate::rules::ServiceEntry> {
        let mut best: Option<(usize, &crate::rules::ServiceEntry)> = None;
        for se in &decoded.service_entries {
            for p in &se.hosts {
                if let Some(s) = match_score(p, h) {
                    if best.is_none_or(|(b, _)| s > b) {
                        best = Some((s, se));
                    }
                }
            }
        }
        best.map(|(_, s)| s)
    };

    for (vi, vs) in decoded.virtual_services.iter().enumerate() {
        let (file, doc) = (&vs.meta.file, vs.meta.document);
        if !vs.applies_to_mesh {
            report.warnings.push(at(
                file,
                doc,
                "spec.gateways".to_string(),
                format!(
                    "VirtualService {} is bound to gateways only (not \"mesh\"); sidecars do not apply it",
                    vs.meta.key()
                ),
            ));
        }
        // The same host in an earlier VirtualService for the mesh: only the first is used
        // (sidecars do not merge them; istioctl analyze reports IST0109 as an error).
        for (hi, h) in vs.hosts.iter().enumerate() {
            if let Some(prev) = decoded.virtual_services[..vi]
                .iter()
                .find(|p| p.applies_to_mesh && vs.applies_to_mesh && p.hosts.contains(h))
            {
                report.errors.push(at(
                    file,
                    doc,
                    format!("spec.hosts[{hi}]"),
                    format!(
                        "host {h} is also defined by VirtualService {} ({} doc {}); sidecars use only that one (IST0109)",
                        prev.meta.key(),
                        prev.meta.file,
                        prev.meta.document
                    ),
                ));
            }
        }
        check_routes(
            vs,
            report,
            &host_known,
            &best_dr,
            &best_se,
            &decoded.destination_rules,
        );
    }

    for (i, sc) in decoded.sidecars.iter().enumerate() {
        let no_selector =
            |s: &crate::rules::Sidecar| s.workload_selector.as_ref().is_none_or(|l| l.is_empty());
        if no_selector(sc) {
            if let Some(prev) = decoded.sidecars[..i]
                .iter()
                .find(|p| p.meta.namespace == sc.meta.namespace && no_selector(p))
            {
                report.warnings.push(at(
                    &sc.meta.file,
                    sc.meta.document,
                    "spec.workloadSelector".to_string(),
                    format!(
                        "namespace {} already has a Sidecar without workloadSelector ({} in {} doc {}); only that one is used",
                        sc.meta.namespace,
                        prev.meta.key(),
                        prev.meta.file,
                        prev.meta.document
                    ),
                ));
            }
        } else if sc.meta.namespace == ctx.root_namespace {
            report.warnings.push(at(
                &sc.meta.file,
                sc.meta.document,
                "spec.workloadSelector".to_string(),
                format!(
                    "a Sidecar in the root namespace {} with a workloadSelector applies only to pods of that namespace, not mesh-wide",
                    ctx.root_namespace
                ),
            ));
        }
    }
    for (i, dr) in decoded.destination_rules.iter().enumerate() {
        if let Some(se) = best_se(&dr.host).filter(|se| {
            se.resolution == crate::rules::Resolution::Static && !se.endpoints.is_empty()
        }) {
            for (si, sub) in dr.subsets.iter().enumerate() {
                let selects = se
                    .endpoints
                    .iter()
                    .any(|e| sub.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
                if !selects {
                    report.warnings.push(at(
                        &dr.meta.file,
                        dr.meta.document,
                        format!("spec.subsets[{si}].labels"),
                        format!(
                            "subset {:?} selects none of the endpoints of ServiceEntry {}",
                            sub.name,
                            se.meta.key()
                        ),
                    ));
                }
            }
        }
        if !host_known(&dr.host) && !dr.host.starts_with('*') {
            report.warnings.push(at(
                &dr.meta.file,
                dr.meta.document,
                "spec.host".to_string(),
                format!(
                    "host {} is not defined by any ServiceEntry and is not a cluster-local service name",
                    dr.host
                ),
            ));
        }
        // Rules of one host in one namespace are merged (as Istio does): say what of this one
        // is dropped.
        let earlier: Vec<&DestinationRule> = decoded.destination_rules[..i]
            .iter()
            .filter(|p| {
                p.host == dr.host
                    && p.meta.namespace == dr.meta.namespace
                    && p.workload_selector == dr.workload_selector
            })
            .collect();
        if !earlier.is_empty() {
            if dr.traffic_policy.is_some() {
                if let Some(tp) = earlier.iter().find(|p| p.traffic_policy.is_some()) {
                    report.warnings.push(at(
                        &dr.meta.file,
                        dr.meta.document,
                        "spec.trafficPolicy".to_string(),
                        format!(
                            "ignored: DestinationRule {} ({} doc {}) for the same host {} already sets trafficPolicy (the rules are merged)",
                            tp.meta.key(),
                            tp.meta.file,
                            tp.meta.document,
                            dr.host
                        ),
                    ));
                }
            }
            for (si, sub) in dr.subsets.iter().enumerate() {
                if let Some(def) = earlier
                    .iter()
                    .find(|p| p.subsets.iter().any(|s| s.name == sub.name))
                {
                    report.warnings.push(at(
                        &dr.meta.file,
                        dr.meta.document,
                        format!("spec.subsets[{si}].name"),
                        format!(
                            "ignored: subset {:?} of host {} is already defined by DestinationRule {} ({} doc {})",
                            sub.name,
                            dr.host,
                            def.meta.key(),
                            def.meta.file,
                            def.meta.document
                        ),
                    ));
                }
            }
        }
    }
    report
        .errors
        .sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
    report
        .warnings
        .sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
}

fn check_routes<'a>(
    vs: &VirtualService,
    report: &mut ValidationReport,
    host_known: &dyn Fn(&str) -> bool,
    best_dr: &dyn Fn(&str) -> Option<&'a DestinationRule>,
    best_se: &dyn Fn(&str) -> Option<&'a crate::rules::ServiceEntry>,
    all_drs: &[DestinationRule],
) {
    let (file, doc) = (&vs.meta.file, vs.meta.document);
    let mut check_destinations = |rp: &str, dests: &[crate::rules::WeightedDestination]| {
        for (di, d) in dests.iter().enumerate() {
            let dp = format!("{rp}.route[{di}].destination");
            let host = &d.destination.host;
            if !host_known(host) {
                report.warnings.push(at(
                    file,
                    doc,
                    format!("{dp}.host"),
                    format!(
                        "host {host} is not defined by any ServiceEntry and is not a cluster-local service name"
                    ),
                ));
            }
            if let (Some(p), Some(se)) = (d.destination.port, best_se(host)) {
                if !se.ports.is_empty() && !se.ports.iter().any(|sp| sp.number == p) {
                    let list: Vec<String> =
                        se.ports.iter().map(|sp| sp.number.to_string()).collect();
                    report.warnings.push(at(
                        file,
                        doc,
                        format!("{dp}.port.number"),
                        format!(
                            "port {p} is not a port of ServiceEntry {} ({})",
                            se.meta.key(),
                            list.join(", ")
                        ),
                    ));
                }
            }
            if let Some(subset) = &d.destination.subset {
                // The best rule for the host, merged with the others of its host and namespace.
                let defined = best_dr(host).is_some_and(|dr| {
                    all_drs.iter().any(|o| {
                        o.host == dr.host
                            && o.meta.namespace == dr.meta.namespace
                            && o.subsets.iter().any(|s| &s.name == subset)
                    })
                });
                if !defined {
                    report.errors.push(at(
                        file,
                        doc,
                        format!("{dp}.subset"),
                        format!("subset {subset:?} is not defined by any DestinationRule for host {host}"),
                    ));
                }
            }
        }
        if dests.len() > 1 {
            let total: u64 = dests.iter().map(|d| d.weight.unwrap_or(0) as u64).sum();
            if total != 100 {
                report.errors.push(at(
                    file,
                    doc,
                    format!("{rp}.route"),
                    format!("weights sum to {total}, not 100"),
                ));
            }
        }
    };
    for (ri, r) in vs.tcp.iter().enumerate() {
        check_destinations(&format!("spec.tcp[{ri}]"), &r.route);
    }
    for (ri, r) in vs.tls.iter().enumerate() {
        check_destinations(&format!("spec.tls[{ri}]"), &r.route);
    }
    for (ri, r) in vs.http.iter().enumerate() {
        check_destinations(&format!("spec.http[{ri}]"), &r.route);
    }
    for (ri, r) in vs.http.iter().enumerate() {
        let rp = format!("spec.http[{ri}]");
        // Reachability.
        for (pi, prev) in vs.http[..ri].iter().enumerate() {
            let catch_all =
                prev.matches.is_empty() || prev.matches.iter().any(|m| m.is_catch_all());
            if catch_all {
                // A warning, as Istio's IST0130: the rule set is valid and loads; Istio's own
                // Bookinfo sample fault-injection-details-v1.yaml has such a route.
                report.warnings.push(at(
                    file,
                    doc,
                    rp.clone(),
                    format!("unreachable: spec.http[{pi}] matches every request before it"),
                ));
                break;
            }
        }
        if report
            .warnings
            .last()
            .is_some_and(|e| e.field == rp && e.file == *file && e.document == doc)
        {
            continue;
        }
        if !r.matches.is_empty() {
            let mut shadowed = Vec::new();
            for (mi, m) in r.matches.iter().enumerate() {
                let earlier = vs.http[..ri].iter().enumerate().find_map(|(pi, p)| {
                    p.matches
                        .iter()
                        .position(|pm| pm == m)
                        .map(|pmi| format!("spec.http[{pi}].match[{pmi}]"))
                });
                if let Some(e) = earlier {
                    shadowed.push((mi, e));
                }
            }
            if shadowed.len() == r.matches.len() {
                let list: Vec<&str> = shadowed.iter().map(|(_, e)| e.as_str()).collect();
                report.warnings.push(at(
                    file,
                    doc,
                    rp.clone(),
                    format!(
                        "unreachable: every match is identical to an earlier one ({})",
                        list.join(", ")
                    ),
                ));
            } else {
                for (mi, e) in shadowed {
                    report.warnings.push(at(
                        file,
                        doc,
                        format!("{rp}.match[{mi}]"),
                        format!("never used: identical to {e}"),
                    ));
                }
            }
        }
    }
}

/// Security policies that do not do what they say for the pod of the snapshot: principal or
/// namespace rules where the effective PeerAuthentication accepts plain text (a plain-text
/// peer has no principal, so such an ALLOW rule never matches it and such a DENY rule never
/// stops it), and several PeerAuthentications at one level (Istio uses the oldest; remora,
/// without creation times, the first in file order).
fn security_warnings(snap: &crate::rules::Snapshot, report: &mut ValidationReport) {
    use crate::security::authorization::Action;
    use crate::security::Scope;
    for p in &snap.authorization_policies {
        for (i, rule) in p.spec.rules.iter().enumerate() {
            let sources: Vec<_> = rule
                .from
                .iter()
                .flatten()
                .filter_map(|f| f.source.as_ref())
                .collect();
            let by_identity = sources.iter().any(|s| {
                !s.principals.is_empty()
                    || !s.namespaces.is_empty()
                    || !s.service_accounts.is_empty()
                    || !s.trust_domains.is_empty()
            }) || rule
                .when
                .iter()
                .any(|c| c.key == "source.principal" || c.key == "source.namespace");
            if !by_identity {
                continue;
            }
            let ports: Vec<u16> = rule
                .to
                .iter()
                .flatten()
                .filter_map(|t| t.operation.as_ref())
                .flat_map(|o| o.ports.iter().map(|p| p.0))
                .collect();
            let ports = if ports.is_empty() { vec![0] } else { ports };
            let Some(d) = ports
                .iter()
                .map(|port| snap.mtls_mode(*port))
                .find(|d| d.mode.allows_plain_text())
            else {
                continue;
            };
            let by = match &d.policy {
                Some(pa) => format!("PeerAuthentication {pa}"),
                None => "no PeerAuthentication: Istio's default".to_string(),
            };
            let effect = if p.spec.action == Action::Allow {
                "plain-text requests are denied by it"
            } else {
                "plain-text requests are not stopped by it"
            };
            report.warnings.push(at(
                &p.meta.file,
                p.meta.document,
                format!("spec.rules[{i}]"),
                format!(
                    "principal rules cannot match plain-text traffic: AuthorizationPolicy {} uses principals or namespaces, and the mTLS mode here is {} ({by}); {effect}",
                    p.meta.key(),
                    d.mode
                ),
            ));
        }
    }
    for scope in [Scope::Mesh, Scope::Namespace, Scope::Workload] {
        let at_level: Vec<_> = snap
            .peer_authentications
            .iter()
            .filter(|p| p.scope == scope)
            .collect();
        for extra in at_level.iter().skip(1) {
            report.warnings.push(at(
                &extra.meta.file,
                extra.meta.document,
                "metadata".to_string(),
                format!(
                    "PeerAuthentication {} is not used: {} ({} doc {}) applies at the same level ({scope:?}) first",
                    extra.meta.key(),
                    at_level[0].meta.key(),
                    at_level[0].meta.file,
                    at_level[0].meta.document
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_plurals() {
        let mut r = ValidationReport::default();
        assert_eq!(r.summary_line(), "0 errors, 0 warnings");
        r.errors.push(Finding {
            file: "a".into(),
            document: 1,
            field: "f".into(),
            reason: "r".into(),
        });
        assert_eq!(r.summary_line(), "1 error, 0 warnings");
        assert_eq!(r.to_string(), "error: a doc 1: f: r\n");
    }

    #[test]
    fn security_findings() {
        let ctx = LoadContext {
            namespace: "foo".into(),
            ..Default::default()
        };
        let ap = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ap, namespace: foo}\nspec:\n  rules: [{from: [{source: {namespaces: [bar]}}]}]\n";
        let r = run_files(&[("a.yaml", ap)], &ctx);
        assert_eq!(
            r.to_string(),
            "warning: a.yaml doc 1: spec.rules[0]: principal rules cannot match plain-text traffic: AuthorizationPolicy foo/ap uses principals or namespaces, and the mTLS mode here is PERMISSIVE (no PeerAuthentication: Istio's default); plain-text requests are denied by it\n"
        );
        let strict = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: again, namespace: istio-system}\nspec: {mtls: {mode: DISABLE}}\n";
        // With Istio's root namespace configured, they are mesh-wide (and the second unused).
        let istio = LoadContext {
            root_namespace: "istio-system".into(),
            ..ctx.clone()
        };
        let r = run_files(&[("a.yaml", ap), ("pa.yaml", strict)], &istio);
        assert_eq!(
            r.to_string(),
            "warning: pa.yaml doc 2: metadata: PeerAuthentication istio-system/again is not used: istio-system/default (pa.yaml doc 1) applies at the same level (Mesh) first\n"
        );
        // Under the default root namespace istio-system is an ordinary namespace: the linter
        // says they do not apply here, naming the root namespace.
        let r = run_files(&[("pa.yaml", strict)], &ctx);
        assert_eq!(
            r.to_string(),
            "warning: pa.yaml doc 1: metadata: PeerAuthentication istio-system/default is not applied by proxies in namespace foo: does not apply to this pod: in namespace istio-system, not this pod's namespace (foo) nor the root namespace (remora-system)\n\
             warning: pa.yaml doc 2: metadata: PeerAuthentication istio-system/again is not applied by proxies in namespace foo: does not apply to this pod: in namespace istio-system, not this pod's namespace (foo) nor the root namespace (remora-system)\n"
        );
        let bad = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: strict}}\n";
        let r = run_files(&[("p.yaml", bad)], &ctx);
        assert_eq!(
            r.to_string(),
            "error: p.yaml doc 1: spec.mtls.mode: unknown variant `strict`, expected one of `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT`\n"
        );
    }

    #[test]
    fn an_invalid_gateway_is_a_warning() {
        let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: default}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: SIMPLE}}]\n";
        let r = run_files(&[("g.yaml", gw)], &LoadContext::default());
        assert!(r.errors.is_empty(), "{r}");
        assert!(
            r.to_string().contains("warning: g.yaml doc 1: spec.servers[0].tls.credentialName: SIMPLE needs credentialName, or serverCertificate and privateKey (the gateway leaves this Gateway out)"),
            "{r}"
        );
    }

    #[test]
    fn a_cipher_suite_the_gateway_cannot_offer_is_a_warning() {
        let gw = |suites: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers: [{{port: {{number: 443, name: https, protocol: HTTPS}}, hosts: ['*'], tls: {{mode: SIMPLE, credentialName: c, cipherSuites: [{suites}]}}}}]\n")
        };
        let r = run_files(
            &[("g.yaml", &gw("ECDHE-RSA-AES128-GCM-SHA256, DES-CBC3-SHA"))],
            &LoadContext::default(),
        );
        assert!(r.errors.is_empty(), "{r}");
        assert!(
            r.to_string().contains(
            "warning: g.yaml doc 1: spec.servers[0].tls.cipherSuites[1]: Gateway default/g: \"DES-CBC3-SHA\" is not supported by remora's TLS library (rustls); supported: ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-CHACHA20-POLY1305, ECDHE-RSA-CHACHA20-POLY1305 (the gateway keeps this server down)\n"),
            "{r}"
        );
        let r = run_files(
            &[("g.yaml", &gw("ECDHE-RSA-AES128-GCM-SHA256"))],
            &LoadContext::default(),
        );
        assert!(!r.to_string().contains("cipherSuites"), "{r}");
    }
}
