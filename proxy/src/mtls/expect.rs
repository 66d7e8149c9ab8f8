//! Who the server of a mesh connection must be (pure): the service accounts expected of a
//! destination, decided from what discovery knows of its endpoints' pods, and the check of the
//! SPIFFE id a server presented against the trust domain, the destination's namespace and those
//! service accounts.
//!
//! As Istio does, a client verifies the server's identity against the destination's service
//! accounts. When discovery knows the chosen endpoint's pod and its service account (discovery
//! from the control plane), that account is expected; when it does not know that pod but knows
//! other endpoints' (a pod not seen yet), any of the destination's endpoints' accounts is
//! accepted; when it knows none (the proxy's direct API mode reads pod metadata only), only the
//! trust domain and the namespace are checked.

use std::collections::BTreeSet;
use std::sync::Arc;

use remora_model::rules::endpoints::PodIdentity;

/// The service accounts a destination's server may present, as `(namespace, account)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Accounts {
    /// None known: the trust domain and the namespace are checked, not the account.
    Unknown,
    /// The chosen endpoint's pod's.
    Endpoint(String, String),
    /// Any of the destination's endpoints' (the chosen endpoint's pod is not known).
    Service(BTreeSet<(String, String)>),
}

fn account_of(p: &PodIdentity) -> Option<(String, String)> {
    let sa = p.service_account.as_deref().filter(|s| !s.is_empty())?;
    Some((p.namespace.to_string(), sa.to_string()))
}

/// The accounts expected of a connection to the endpoint whose pod is `chosen` (`None`: not
/// known), among a destination whose endpoints' pods are `all` (`None` for each one not known;
/// read only when the chosen endpoint's account is not known).
pub fn accounts(
    chosen: Option<&PodIdentity>,
    all: impl IntoIterator<Item = Option<Arc<PodIdentity>>>,
) -> Accounts {
    if let Some((ns, sa)) = chosen.and_then(account_of) {
        return Accounts::Endpoint(ns, sa);
    }
    let set: BTreeSet<(String, String)> = all
        .into_iter()
        .flatten()
        .filter_map(|p| account_of(&p))
        .collect();
    if set.is_empty() {
        Accounts::Unknown
    } else {
        Accounts::Service(set)
    }
}

/// Why a server's identity was refused; `label` is the metric's `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub label: &'static str,
    pub message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn list(set: &BTreeSet<(String, String)>) -> String {
    set.iter()
        .map(|(n, s)| format!("{n}/{s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Is `id` (the SPIFFE id the server presented) of `trust_domain`, of `namespace` when one is
/// expected, and one of `accounts`?
pub fn check(
    id: &str,
    trust_domain: &str,
    namespace: Option<&str>,
    accounts: &Accounts,
) -> Result<(), Refused> {
    let refused = |label, message| Err(Refused { label, message });
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return refused("server_identity", format!("{id:?} is not a SPIFFE id"));
    };
    let td = rest.split_once('/').map_or(rest, |(td, _)| td);
    if !td.eq_ignore_ascii_case(trust_domain) {
        return refused(
            "server_trust_domain",
            format!("{id} is from trust domain {td:?}, not {trust_domain:?}"),
        );
    }
    let ns_sa = remora_model::workload::spiffe_ns_sa(id);
    if let Some(ns) = namespace {
        if ns_sa.is_none_or(|(n, _)| n != ns) {
            return refused(
                "server_namespace",
                format!("{id} is not an identity of namespace {ns:?}"),
            );
        }
    }
    let is = |want: &(String, String)| ns_sa.is_some_and(|(n, s)| n == want.0 && s == want.1);
    match accounts {
        Accounts::Unknown => Ok(()),
        Accounts::Endpoint(n, s) if is(&(n.clone(), s.clone())) => Ok(()),
        Accounts::Endpoint(n, s) => refused(
            "server_service_account",
            format!("{id} is not the service account of the endpoint's pod ({n}/{s})"),
        ),
        Accounts::Service(set) if set.iter().any(is) => Ok(()),
        Accounts::Service(set) => refused(
            "server_service_account",
            format!(
                "{id} is not one of the service accounts of the destination's endpoints ({})",
                list(set)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, sa: Option<&str>) -> PodIdentity {
        PodIdentity {
            namespace: Arc::from(ns),
            workload: Arc::from("w"),
            labels: Arc::default(),
            service_account: sa.map(Arc::from),
        }
    }

    fn pair(ns: &str, sa: &str) -> (String, String) {
        (ns.to_string(), sa.to_string())
    }

    #[test]
    fn expected_accounts_table() {
        let reviews = Arc::new(pod("shop", Some("reviews")));
        let ratings = Arc::new(pod("shop", Some("ratings")));
        let unknown_sa = Arc::new(pod("shop", None));
        let empty_sa = Arc::new(pod("shop", Some("")));
        type Case<'a> = (
            &'a str,
            Option<&'a Arc<PodIdentity>>,
            Vec<Option<&'a Arc<PodIdentity>>>,
            Accounts,
        );
        let cases: Vec<Case> = vec![
            (
                "the chosen endpoint's account wins",
                Some(&reviews),
                vec![Some(&reviews), Some(&ratings)],
                Accounts::Endpoint("shop".into(), "reviews".into()),
            ),
            (
                "chosen pod unknown: the destination's accounts",
                None,
                vec![Some(&reviews), None, Some(&ratings), Some(&reviews)],
                Accounts::Service([pair("shop", "ratings"), pair("shop", "reviews")].into()),
            ),
            (
                "chosen pod known without an account: the destination's accounts",
                Some(&unknown_sa),
                vec![Some(&unknown_sa), Some(&ratings)],
                Accounts::Service([pair("shop", "ratings")].into()),
            ),
            (
                "direct API mode: no account anywhere",
                Some(&unknown_sa),
                vec![Some(&unknown_sa), None],
                Accounts::Unknown,
            ),
            (
                "an empty account counts as unknown",
                Some(&empty_sa),
                vec![Some(&empty_sa)],
                Accounts::Unknown,
            ),
            ("nothing known", None, vec![], Accounts::Unknown),
        ];
        for (what, chosen, all, want) in cases {
            let all = all.into_iter().map(|p| p.cloned());
            assert_eq!(accounts(chosen.map(|p| &**p), all), want, "{what}");
        }
    }

    #[test]
    fn server_identity_table() {
        let td = "cluster.local";
        let ep = Accounts::Endpoint("shop".into(), "reviews".into());
        let svc = Accounts::Service([pair("shop", "reviews"), pair("shop", "ratings")].into());
        // (id, namespace expected, accounts, Ok or the reason label)
        type Case<'a> = (&'a str, Option<&'a str>, &'a Accounts, Result<(), &'a str>);
        let cases: &[Case] = &[
            (
                "spiffe://cluster.local/ns/shop/sa/reviews",
                Some("shop"),
                &ep,
                Ok(()),
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/ratings",
                Some("shop"),
                &ep,
                Err("server_service_account"),
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/ratings",
                Some("shop"),
                &svc,
                Ok(()),
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/web",
                Some("shop"),
                &svc,
                Err("server_service_account"),
            ),
            // The account's namespace counts, not only its name.
            (
                "spiffe://cluster.local/ns/books/sa/reviews",
                None,
                &ep,
                Err("server_service_account"),
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/anything",
                Some("shop"),
                &Accounts::Unknown,
                Ok(()),
            ),
            (
                "spiffe://cluster.local/ns/books/sa/reviews",
                Some("shop"),
                &Accounts::Unknown,
                Err("server_namespace"),
            ),
            (
                "spiffe://evil.example/ns/shop/sa/reviews",
                Some("shop"),
                &ep,
                Err("server_trust_domain"),
            ),
            (
                "spiffe://cluster.local/ns/shop/sa/reviews/extra",
                Some("shop"),
                &ep,
                Err("server_namespace"),
            ),
            (
                "https://cluster.local/ns/shop/sa/reviews",
                None,
                &Accounts::Unknown,
                Err("server_identity"),
            ),
        ];
        for (id, ns, acc, want) in cases {
            let got = check(id, td, *ns, acc).map_err(|r| r.label);
            assert_eq!(got, *want, "{id} {ns:?} {acc:?}");
        }
        let e = check(
            "spiffe://cluster.local/ns/shop/sa/ratings",
            td,
            Some("shop"),
            &ep,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "spiffe://cluster.local/ns/shop/sa/ratings is not the service account of the endpoint's pod (shop/reviews)"
        );
        let e = check("spiffe://cluster.local/ns/shop/sa/web", td, None, &svc).unwrap_err();
        assert!(
            e.message.ends_with("(shop/ratings, shop/reviews)"),
            "{}",
            e.message
        );
    }
}
