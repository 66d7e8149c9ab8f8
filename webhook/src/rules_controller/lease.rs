//! Leader election with a `coordination.k8s.io/v1` Lease, so two control-plane replicas never
//! both write the rules ConfigMaps. The decision ([`decide`]) is pure; [`Elector`] does the
//! calls. Writes are optimistic (the Lease's resourceVersion): of two replicas taking an
//! expired Lease at once, the API server lets one win and answers the other 409.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// What a replica does about the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Another holder's Lease expired (or names no holder): take it over.
    TakeOver,
    /// Another replica holds it, for about this long still.
    Wait { holder: String, left: Duration },
}

/// The Lease's fields that matter.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub holder: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration: Duration,
}

impl View {
    pub fn of(lease: &Lease) -> View {
        let spec = lease.spec.as_ref();
        View {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renewed: spec
                .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
                .map(|t| t.0),
            duration: Duration::from_secs(
                spec.and_then(|s| s.lease_duration_seconds)
                    .and_then(|d| u64::try_from(d).ok())
                    .unwrap_or(0),
            ),
        }
    }
}

/// The step for `me` at `now`.
pub fn decide(lease: Option<&View>, me: &str, now: Timestamp) -> Step {
    let Some(l) = lease else { return Step::Create };
    match &l.holder {
        Some(h) if h == me => Step::Renew,
        None => Step::TakeOver,
        Some(h) => {
            let expires = l.renewed.and_then(|r| {
                k8s_openapi::jiff::SignedDuration::try_from(l.duration)
                    .ok()
                    .and_then(|d| r.checked_add(d).ok())
            });
            match expires {
                Some(e) if e > now => Step::Wait {
                    holder: h.clone(),
                    left: Duration::try_from(e.duration_since(now)).unwrap_or_default(),
                },
                _ => Step::TakeOver,
            }
        }
    }
}

/// Holds (or waits for) the Lease `namespace/name` as `identity`.
pub struct Elector {
    api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// The answer of one election round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    Leading,
    /// Another holder (name) leads.
    Following(String),
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: i32::try_from(self.duration.as_secs()).ok(),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: create, renew or take over the Lease when it is ours to have. A lost race
    /// (409) is following, not an error.
    pub async fn round(&self) -> Result<Round, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let view = current.as_ref().map(View::of);
        let step = decide(view.as_ref(), &self.identity, now);
        let pp = PostParams::default();
        let res = match (&step, current) {
            (Step::Wait { holder, .. }, _) => return Ok(Round::Following(holder.clone())),
            (Step::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, None, 0)),
                };
                self.api.create(&pp, &lease).await
            }
            (Step::Renew, Some(mut l)) => {
                let old = l.spec.take().unwrap_or_default();
                l.spec = Some(self.spec(now, old.acquire_time, old.lease_transitions.unwrap_or(0)));
                self.api.replace(&self.name, &pp, &l).await
            }
            (Step::TakeOver, Some(mut l)) => {
                let old = l.spec.take().unwrap_or_default();
                l.spec = Some(self.spec(now, None, old.lease_transitions.unwrap_or(0) + 1));
                self.api.replace(&self.name, &pp, &l).await
            }
        };
        match res {
            Ok(_) => Ok(Round::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let holder = self
                    .api
                    .get_opt(&self.name)
                    .await?
                    .as_ref()
                    .map(View::of)
                    .and_then(|v| v.holder)
                    .unwrap_or_else(|| "another replica".to_string());
                Ok(Round::Following(holder))
            }
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up (on shutdown), so another replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut l)) = self.api.get_opt(&self.name).await {
            let ours = l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str());
            if ours {
                if let Some(s) = l.spec.as_mut() {
                    s.holder_identity = None;
                    s.renew_time = None;
                }
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &l)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    #[test]
    fn decisions() {
        let held = |holder: &str, renewed: i64| View {
            holder: Some(holder.to_string()),
            renewed: Some(at(renewed)),
            duration: Duration::from_secs(15),
        };
        assert_eq!(decide(None, "a", at(0)), Step::Create);
        assert_eq!(decide(Some(&held("a", 0)), "a", at(100)), Step::Renew);
        assert_eq!(
            decide(Some(&held("b", 0)), "a", at(10)),
            Step::Wait {
                holder: "b".into(),
                left: Duration::from_secs(5)
            }
        );
        assert_eq!(decide(Some(&held("b", 0)), "a", at(15)), Step::TakeOver);
        assert_eq!(decide(Some(&held("b", 0)), "a", at(16)), Step::TakeOver);
        let released = View {
            holder: None,
            ..held("b", 0)
        };
        assert_eq!(decide(Some(&released), "a", at(1)), Step::TakeOver);
        let never_renewed = View {
            renewed: None,
            ..held("b", 0)
        };
        assert_eq!(decide(Some(&never_renewed), "a", at(1)), Step::TakeOver);
    }
}
