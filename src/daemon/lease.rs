//! One leader per environment among driftless replicas, with
//! `coordination.k8s.io/v1` Leases (one Lease per environment, named
//! `driftless-env-<env>`), as client-go's leader election does it:
//!
//! - A replica takes a Lease that is missing, released (no holder) or
//!   expired, by a write that carries the `resourceVersion` it read: of two
//!   replicas racing, the API server lets one win (409 for the other).
//! - "Expired" is judged on the taker's own clock: the record (its
//!   resourceVersion) must stay unchanged for `duration` after this replica
//!   first saw it. Clocks are never compared across machines.
//! - The holder renews every `retry_period`; it counts itself leader only
//!   until `renew_deadline` after the *start* of its last successful
//!   renewal. Since `renew_deadline < duration` and the others count from
//!   when they *saw* that renewal (later), a holder that cannot renew stops
//!   applying at least `duration - renew_deadline` before anyone else may
//!   start.
//! - Right before each apply, [`Elector::fence`] reads the Lease again: the
//!   holder must still be this replica and the resourceVersion the one it
//!   last wrote, and the local deadline must not have passed. A replica that
//!   was paused (stopped, swapped out) and resumes after losing its Lease
//!   finds another holder or a newer resourceVersion and does not apply.
//!
//! What must survive a hand-over — the last good commit with its image ids,
//! failed commits, the pin and the suspension — travels on the Lease itself
//! (annotation `driftless.io/state`, JSON). Only the holder writes it, in
//! the same conditional writes that renew the Lease, so a replica that lost
//! the Lease cannot overwrite its successor's state. A new holder copies it
//! into its local SQLite store (a cache) before its first pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::worker::Dirty;
use crate::source::CommitId;
use crate::store::{
    Control, Digests, EnvState, FailedCommit, FailedImage, ImageIds, LastGood, Store, Trigger,
};

/// The annotation holding the hand-over state.
pub const STATE_ANNOTATION: &str = "driftless.io/state";
/// Failed commits kept on the Lease (newest first); older ones stay only in
/// the holder's local history.
const MAX_FAILED: usize = 50;

/// The name of an environment's Lease.
pub fn lease_name(env: &str) -> String {
    format!("driftless-env-{env}")
}

/// How leader election runs (daemon configuration `leases:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace holding the Leases (the replicas' own).
    pub namespace: String,
    /// Kubeconfig to reach the API server (unset: in-cluster, or KUBECONFIG).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// This replica's holder identity, unique per replica (default: the
    /// pod name, from HOSTNAME).
    pub holder: String,
    /// How long a Lease is valid after its last renewal (default 15 s).
    pub duration: Duration,
    /// The holder stops applying this long after its last successful
    /// renewal started (default 10 s; less than `duration`).
    pub renew_deadline: Duration,
    /// How often the holder renews and the others look (default 2 s).
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Checks the timing relations leader election depends on.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.renew_deadline >= self.duration {
            problems.push(format!(
                "leases.renew_deadline ({}) must be shorter than leases.duration ({}): the holder must stop before others may start",
                crate::duration::format(self.renew_deadline),
                crate::duration::format(self.duration)
            ));
        }
        if self.retry_period >= self.renew_deadline {
            problems.push(format!(
                "leases.retry_period ({}) must be shorter than leases.renew_deadline ({}), or the holder never renews in time",
                crate::duration::format(self.retry_period),
                crate::duration::format(self.renew_deadline)
            ));
        }
        if self.duration.as_secs() < 1 {
            problems.push("leases.duration must be at least 1s".to_owned());
        }
        if self.holder.is_empty() {
            problems.push(
                "leases.holder is empty: set it, or HOSTNAME (the pod name) must be set".to_owned(),
            );
        }
        problems
    }
}

/// What a new holder needs to carry on where the last one stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOver {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<HandOverGood>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<HandOverFailed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<CommitId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<String>,
    /// Digests of followed services that failed (the newest 50).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_images: Vec<FailedImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOverGood {
    pub commit: CommitId,
    pub image_ids: ImageIds,
    #[serde(default, skip_serializing_if = "Digests::is_empty")]
    pub digests: Digests,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOverFailed {
    pub commit: CommitId,
    pub reason: String,
    /// Unix milliseconds.
    pub at: i64,
}

impl HandOver {
    /// The environment's state as the local store holds it.
    pub fn read(store: &Store, env: &str) -> Result<HandOver, crate::store::StoreError> {
        let state = store.env_state(env)?;
        let control = state.control;
        let mut failed: Vec<HandOverFailed> = state
            .failed
            .into_iter()
            .map(|f| HandOverFailed {
                commit: f.commit,
                reason: f.reason,
                at: f.failed_at,
            })
            .collect();
        failed.truncate(MAX_FAILED);
        Ok(HandOver {
            last_good: state.last_good.map(|lg| HandOverGood {
                commit: lg.commit,
                image_ids: lg.image_ids,
                digests: lg.digests,
            }),
            failed_images: state.failed_images.into_iter().take(MAX_FAILED).collect(),
            failed,
            pinned: control.pinned,
            suspended: control.suspended,
        })
    }

    /// Makes the local store hold exactly this state for `env` (history
    /// rows are the replica's own and stay), in one transaction.
    pub fn write(&self, store: &Store, env: &str) -> Result<(), crate::store::StoreError> {
        let state = EnvState {
            last_good: self.last_good.as_ref().map(|lg| LastGood {
                commit: lg.commit.clone(),
                image_ids: lg.image_ids.clone(),
                digests: lg.digests.clone(),
                reconcile_id: None,
                recorded_at: 0,
            }),
            failed: self
                .failed
                .iter()
                .map(|f| FailedCommit {
                    commit: f.commit.clone(),
                    reason: f.reason.clone(),
                    failed_at: f.at,
                })
                .collect(),
            failed_images: self.failed_images.clone(),
            control: Control {
                pinned: self.pinned.clone(),
                suspended: self.suspended.clone(),
            },
        };
        store.replace_env_state(env, &state, SystemTime::now())
    }
}

/// What one election step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This replica just became the holder.
    Acquired,
    /// This replica holds the Lease and renewed it.
    Renewed,
    /// Another replica holds it (or it is not ours to take yet).
    Follower,
    /// This replica held it and does no longer.
    Lost,
}

/// Our hold on the Lease.
#[derive(Debug, Clone)]
struct Held {
    /// The Lease as we last wrote it (its resourceVersion is our fence).
    lease: Lease,
    /// Until when we may act without renewing.
    until: Instant,
}

#[derive(Debug, Default)]
struct ElectorState {
    held: Option<Held>,
    /// Someone else's (or nobody's) record — resourceVersion, "" for a
    /// missing Lease — and when this replica first saw it unchanged.
    observed: Option<(String, Instant)>,
}

/// What the electors of one replica share.
#[derive(Debug, Default)]
pub struct Replica {
    /// Leases this replica holds, over all its environments.
    held: AtomicUsize,
    /// One take at a time per replica, so "holds none yet" is decided on
    /// an up-to-date count and one replica cannot take every free Lease at
    /// start-up in a single burst.
    taking: tokio::sync::Mutex<()>,
}

/// Leader election for one environment in this replica.
pub struct Elector {
    env: String,
    name: String,
    api: Api<Lease>,
    settings: Arc<LeaseSettings>,
    store: Arc<Store>,
    /// What this replica's electors share.
    replica: Arc<Replica>,
    /// Serialises election steps and fences, so a fence never reads a
    /// renewal of our own whose answer we have not yet processed.
    state: tokio::sync::Mutex<ElectorState>,
    /// Set when the local state changed and should reach the Lease soon.
    changed: Notify,
    /// Cheap, lock-free view of "leader until" for the worker.
    leader_until: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("env", &self.env)
            .field("lease", &self.name)
            .field("holder", &self.settings.holder)
            .finish()
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Why a lease step, the fence before an apply, or the lease client failed;
/// each keeps the error it came from.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("this replica does not hold lease {0}")]
    NotHeld(String),
    #[error("lease {name} was not renewed within {deadline}; not applying")]
    Expired { name: String, deadline: String },
    #[error("lease {name} changed hands (now held by {by}); not applying")]
    ChangedHands { name: String, by: String },
    /// The API server refused or could not be reached.
    #[error("{action} lease {name}: {}", api_message(source))]
    Api {
        action: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot store the handed-over state: {0}")]
    HandOver(#[source] crate::store::StoreError),
    #[error("cannot read kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no kubeconfig and not running in a cluster: {0}")]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    pub fn new(
        env: &str,
        client: kube::Client,
        settings: Arc<LeaseSettings>,
        store: Arc<Store>,
        replica: Arc<Replica>,
    ) -> Elector {
        Elector {
            env: env.to_owned(),
            name: lease_name(env),
            api: Api::namespaced(client, &settings.namespace),
            settings,
            store,
            replica,
            state: tokio::sync::Mutex::new(ElectorState::default()),
            changed: Notify::new(),
            leader_until: std::sync::Mutex::new(None),
        }
    }

    /// Whether this replica may act on the environment now: it holds the
    /// Lease and its last renewal is recent enough.
    pub fn is_leader(&self) -> bool {
        self.leader_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Asks for the local state to be written to the Lease at the next
    /// step, which comes at once (a pass recorded something).
    pub fn state_changed(&self) {
        self.changed.notify_one();
    }

    /// Checks, right before an apply, that this replica still holds the
    /// Lease: locally (deadline) and on the server (holder and the
    /// resourceVersion it last wrote). Costs one GET.
    pub async fn fence(&self) -> Result<(), LeaseError> {
        let mut state = self.state.lock().await;
        let Some(held) = state.held.clone() else {
            return Err(LeaseError::NotHeld(self.name.clone()));
        };
        if Instant::now() >= held.until {
            self.drop_hold(&mut state);
            return Err(LeaseError::Expired {
                name: self.name.clone(),
                deadline: crate::duration::format(self.settings.renew_deadline),
            });
        }
        let live = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(self.api_error("cannot read"))?;
        let ours = held.lease.metadata.resource_version.as_deref();
        match live {
            Some(l)
                if l.metadata.resource_version.as_deref() == ours
                    && holder_of(&l) == Some(self.settings.holder.as_str()) =>
            {
                Ok(())
            }
            other => {
                let by = other
                    .as_ref()
                    .and_then(holder_of)
                    .unwrap_or("nobody")
                    .to_owned();
                self.drop_hold(&mut state);
                Err(LeaseError::ChangedHands {
                    name: self.name.clone(),
                    by,
                })
            }
        }
    }

    fn api_error(&self, action: &'static str) -> impl FnOnce(kube::Error) -> LeaseError {
        let name = self.name.clone();
        move |source| LeaseError::Api {
            action,
            name,
            source,
        }
    }

    fn drop_hold(&self, state: &mut ElectorState) {
        if state.held.take().is_some() {
            self.replica.held.fetch_sub(1, Ordering::SeqCst);
        }
        *self.leader_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn set_hold(&self, state: &mut ElectorState, lease: Lease, started: Instant) {
        let until = started + self.settings.renew_deadline;
        if state.held.is_none() {
            self.replica.held.fetch_add(1, Ordering::SeqCst);
        }
        state.held = Some(Held { lease, until });
        state.observed = None;
        *self.leader_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
    }

    /// The hand-over annotation from the local store.
    async fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        let mut a = std::collections::BTreeMap::new();
        let env = self.env.clone();
        match self.store.call(move |s| HandOver::read(s, &env)).await {
            Ok(state) => {
                a.insert(
                    STATE_ANNOTATION.to_owned(),
                    serde_json::to_string(&state).expect("plain data"),
                );
            }
            Err(e) => {
                tracing::error!(env = %self.env, error = %e, "cannot read the state to hand over")
            }
        }
        a
    }

    /// One election step: renew what we hold, or look and take what is
    /// free or expired.
    pub async fn step(&self) -> Result<Step, LeaseError> {
        let mut state = self.state.lock().await;
        let started = Instant::now();
        if let Some(held) = state.held.clone() {
            let lease = self.renewed(held.lease, |_| {}).await;
            return match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(written) => {
                    self.set_hold(&mut state, written, started);
                    Ok(Step::Renewed)
                }
                Err(e) if is_conflict(&e) => {
                    tracing::warn!(env = %self.env, lease = %self.name, "lease changed under us; stepping down");
                    self.drop_hold(&mut state);
                    Ok(Step::Lost)
                }
                Err(e) => {
                    // Keep trying until the local deadline; is_leader()
                    // turns false by itself when it passes.
                    if Instant::now() >= held.until {
                        self.drop_hold(&mut state);
                        tracing::warn!(env = %self.env, error = %api_message(&e), "cannot renew the lease in time; stepping down");
                        return Ok(Step::Lost);
                    }
                    Err(self.api_error("renew")(e))
                }
            };
        }

        let _taking = self.replica.taking.lock().await;
        let live = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(self.api_error("read"))?;
        let now = Instant::now();
        let rv = live
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone())
            .unwrap_or_default();
        let seen_since = match &state.observed {
            Some((seen, since)) if *seen == rv => *since,
            _ => {
                state.observed = Some((rv.clone(), now));
                now
            }
        };
        let holder = live.as_ref().and_then(holder_of).map(str::to_owned);
        let lease_duration = live
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.lease_duration_seconds)
            .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
            .filter(|d| !d.is_zero())
            .unwrap_or(self.settings.duration);
        let unchanged_for = now.duration_since(seen_since);
        let may_take = match &holder {
            // Free (missing, or released): a replica holding nothing takes
            // it at once; one that holds some waits one lease duration, so
            // at start-up environments spread over the replicas.
            None => {
                self.replica.held.load(Ordering::SeqCst) == 0
                    || unchanged_for >= self.settings.duration
            }
            Some(h) if *h == self.settings.holder => true,
            Some(_) => unchanged_for >= lease_duration,
        };
        if !may_take {
            return Ok(Step::Follower);
        }
        let micro = now_micro();
        let result = match live {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        labels: Some(
                            [
                                ("app.kubernetes.io/managed-by", "driftless"),
                                ("driftless.io/environment", self.env.as_str()),
                            ]
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect(),
                        ),
                        annotations: Some(self.annotations().await),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(micro, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                let transitions = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0);
                let inherited = lease
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(STATE_ANNOTATION))
                    .cloned();
                if let Some(json) = inherited {
                    // Take over the predecessor's state before anything else
                    // can read the local cache. The write below is
                    // conditional: if it loses, the next holder's state
                    // replaces this again on our next acquisition.
                    match serde_json::from_str::<HandOver>(&json) {
                        Ok(h) => {
                            let env = self.env.clone();
                            if let Err(e) = self.store.call(move |s| h.write(s, &env)).await {
                                return Err(LeaseError::HandOver(e));
                            }
                        }
                        Err(e) => {
                            tracing::error!(env = %self.env, error = %e, "the lease's state annotation is unreadable; keeping the local state")
                        }
                    }
                }
                lease.spec = Some(self.spec(micro, transitions + 1));
                lease
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .extend(self.annotations().await);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(written) => {
                tracing::info!(env = %self.env, lease = %self.name, holder = %self.settings.holder, previous = ?holder, "acquired the environment's lease");
                self.set_hold(&mut state, written, started);
                Ok(Step::Acquired)
            }
            // Another replica was quicker: it holds it now.
            Err(e) if is_conflict(&e) => Ok(Step::Follower),
            Err(e) => Err(self.api_error("take")(e)),
        }
    }

    /// Gives the Lease up (graceful shutdown, after every pass finished):
    /// the holder is cleared in a conditional write that also carries the
    /// latest state, so a replica holding nothing takes it at once instead
    /// of waiting for it to expire. Does nothing when not the holder.
    pub async fn release(&self) {
        let mut state = self.state.lock().await;
        let Some(held) = state.held.clone() else {
            return;
        };
        self.drop_hold(&mut state);
        let lease = self
            .renewed(held.lease, |spec| spec.holder_identity = None)
            .await;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                tracing::info!(env = %self.env, lease = %self.name, "released the environment's lease")
            }
            Err(e) => {
                tracing::warn!(env = %self.env, error = %api_message(&e), "cannot release the lease; it expires by itself")
            }
        }
    }

    /// Our Lease with a fresh renewTime and the local state, for a
    /// conditional write; `edit` changes the spec further.
    async fn renewed(&self, mut lease: Lease, edit: impl FnOnce(&mut LeaseSpec)) -> Lease {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(now_micro());
        edit(spec);
        lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .extend(self.annotations().await);
        lease
    }

    fn spec(&self, now: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.holder.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// Runs leader election for one environment until `cancel`: a step every
/// `retry_period` (sooner when the local state changed), marking the
/// environment dirty when this replica becomes its holder.
pub async fn run(elector: Arc<Elector>, dirty: Arc<Dirty>, cancel: CancellationToken) {
    let period = elector.settings.retry_period;
    loop {
        match elector.step().await {
            Ok(Step::Acquired) => dirty.mark(Trigger::Startup),
            Ok(Step::Lost) => {
                tracing::warn!(env = %elector.env, "lost the environment's lease; no longer applying it")
            }
            Ok(Step::Renewed | Step::Follower) => {}
            Err(e) => tracing::warn!(env = %elector.env, error = %e, "leader election step failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(period) => {}
            _ = elector.changed.notified() => {}
        }
    }
}

/// A kube client for the Leases: the configured kubeconfig, else the
/// default search (KUBECONFIG, ~/.kube/config), else in-cluster.
pub async fn client(settings: &LeaseSettings) -> Result<kube::Client, LeaseError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kubeconfig = |source| LeaseError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let file = Kubeconfig::read_from(path).map_err(kubeconfig)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig)?
        }
        None => kube::Config::infer().await.map_err(LeaseError::NoConfig)?,
    };
    kube::Client::try_from(config).map_err(LeaseError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            namespace: "d".into(),
            kubeconfig: None,
            holder: "a".into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn timing_relations_are_checked() {
        assert!(settings().check().is_empty());
        let mut s = settings();
        s.renew_deadline = Duration::from_secs(15);
        assert!(s.check()[0].contains("must be shorter than leases.duration"));
        let mut s = settings();
        s.retry_period = Duration::from_secs(10);
        assert!(s.check()[0].contains("never renews in time"));
    }

    #[test]
    fn hand_over_state_round_trips_through_the_store() {
        let a = Store::open_in_memory().unwrap();
        let now = SystemTime::now();
        let ids = ImageIds::from([("p/web".to_owned(), "sha256:1".to_owned())]);
        a.set_last_good("prod", &"c1".into(), &ids, None, now)
            .unwrap();
        a.mark_failed("prod", &"c2".into(), "unhealthy", now)
            .unwrap();
        a.suspend("prod", "by hand", now).unwrap();
        let state = HandOver::read(&a, "prod").unwrap();
        let json = serde_json::to_string(&state).unwrap();

        let b = Store::open_in_memory().unwrap();
        b.mark_failed("prod", &"stale".into(), "old", now).unwrap();
        serde_json::from_str::<HandOver>(&json)
            .unwrap()
            .write(&b, "prod")
            .unwrap();
        assert_eq!(HandOver::read(&b, "prod").unwrap(), state);
        assert_eq!(b.last_good("prod").unwrap().unwrap().image_ids, ids);
        assert!(b.failed("prod", &"stale".into()).unwrap().is_none());
        assert_eq!(
            b.control("prod").unwrap().suspended.as_deref(),
            Some("by hand")
        );
    }
}
