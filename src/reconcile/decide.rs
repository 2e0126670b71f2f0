//! What a reconcile does, decided before anything is done: pure functions
//! of the recorded state, the branch head and the environment's settings.
//!
//! [`what_to_run`] picks the revision — a commit and the registry digest
//! of each followed image (an operator's pin, the head of the branch with
//! the newest digests not marked failed, or the last good revision when
//! the head is marked failed); [`blame`] says what a bad run marks failed;
//! [`may_skip`] says when a trigger may be answered by comparing the live
//! state's fingerprint instead of running the pipeline; [`after`] says what
//! follows from how a run ended (record, retry, mark failed, roll back,
//! suspend — a paused update suspends without rolling back). The daemon's pass and `driftless reconcile` act on these
//! values; neither decides anything itself. No IO, no clock.

use crate::source::CommitId;
use crate::store::{Digests, EnvState, ImageIds, Kind, LastGood, Outcome, Trigger};

/// Why a commit is the one to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An operator pinned it (`driftless rollback`, the API): their
    /// choice is never undone automatically.
    Pinned,
    /// The head of the environment's branch.
    Head,
    /// The last good commit, run because the head (`failed`) is marked
    /// failed — the rollback state a later pass keeps re-applying.
    LastGood { failed: CommitId },
    /// The rollback right after `failed` went bad, in the same reconcile.
    Rollback { failed: CommitId },
}

/// A commit to run, optionally pinned to the image ids it ran with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub commit: CommitId,
    /// Image ids to pin services to (a rollback, or a pin on the last good
    /// commit): `project/service` → `sha256:…`.
    pub pin: Option<ImageIds>,
    /// The registry digest each followed service runs (`project/service`
    /// → `sha256:…`): with the commit, the revision. A followed service
    /// missing here runs its reference as it is.
    pub images: Digests,
    pub origin: Origin,
}

/// What a run applies, for comparing with what was applied last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub commit: CommitId,
    pub pinned_images: bool,
    pub images: Digests,
}

impl Run {
    /// How history names it.
    pub fn kind(&self) -> Kind {
        match self.origin {
            Origin::Pinned | Origin::Head => Kind::Deploy,
            Origin::LastGood { .. } | Origin::Rollback { .. } => Kind::Rollback,
        }
    }

    /// The commit a rollback replaces.
    pub fn rollback_of(&self) -> Option<&CommitId> {
        match &self.origin {
            Origin::LastGood { failed } | Origin::Rollback { failed } => Some(failed),
            Origin::Pinned | Origin::Head => None,
        }
    }

    pub fn key(&self) -> Key {
        Key {
            commit: self.commit.clone(),
            pinned_images: self.pin.is_some(),
            images: self.images.clone(),
        }
    }

    /// The rollback to `last_good` after this run went bad.
    fn rollback_to(&self, last_good: &LastGood) -> Run {
        Run {
            commit: last_good.commit.clone(),
            pin: Some(last_good.image_ids.clone()),
            images: last_good.digests.clone(),
            origin: Origin::Rollback {
                failed: self.commit.clone(),
            },
        }
    }

    /// The followed digests this run deploys that `last_good` did not run.
    pub fn new_images(&self, last_good: Option<&LastGood>) -> Digests {
        self.images
            .iter()
            .filter(|(s, d)| last_good.and_then(|lg| lg.digests.get(*s)) != Some(*d))
            .map(|(s, d)| (s.clone(), d.clone()))
            .collect()
    }

    /// Whether this run is the last good revision again: its commit, and
    /// no digest it did not run.
    pub fn is_revision_of(&self, last_good: Option<&LastGood>) -> bool {
        last_good.is_some_and(|lg| lg.commit == self.commit)
            && self.new_images(last_good).is_empty()
    }
}

/// What a bad run is marked failed for: its commit, unless it is the last
/// good one's (then only the new digests went bad), and every followed
/// digest the last good revision did not run — so neither is deployed
/// again by itself, and the rollback stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blame {
    pub commit: bool,
    pub images: Digests,
}

pub fn blame(run: &Run, last_good: Option<&LastGood>) -> Blame {
    let images = run.new_images(last_good);
    let same_commit = last_good.is_some_and(|lg| lg.commit == run.commit);
    Blame {
        commit: !same_commit || images.is_empty(),
        images,
    }
}

/// Whether `run`, ended as `outcome`, rolled something back (what
/// `driftless_rollbacks_total` counts): the rollback right after a bad
/// deploy, or a re-run of the last good commit that had to change what was
/// live — not every later pass that finds the rolled-back state in place.
pub fn rolled_back(run: &Run, outcome: Outcome) -> bool {
    match run.origin {
        Origin::Rollback { .. } => true,
        Origin::LastGood { .. } => outcome != Outcome::Unchanged,
        Origin::Pinned | Origin::Head => false,
    }
}

/// What a reconcile should run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Run(Run),
    /// The head is marked failed and there is nothing else to run (no last
    /// good commit, it is the head itself, or automatic rollback is off):
    /// wait for a newer commit.
    Wait {
        failed: CommitId,
    },
}

/// Picks what runs: a pin first, then the head unless it is marked failed,
/// then the last good revision when automatic rollback is on. `newest` is
/// the newest digest the registry named per followed service: the head
/// runs each unless it is marked failed, in which case the service keeps
/// the digest of the last good revision (so a rollback stays until a newer
/// digest appears).
pub fn what_to_run(
    state: &EnvState,
    head: &CommitId,
    automatic_rollback: bool,
    newest: &Digests,
) -> Decision {
    let last_good = state.last_good.as_ref();
    if let Some(pinned) = &state.control.pinned {
        let at_last_good = last_good.filter(|lg| &lg.commit == pinned);
        return Decision::Run(Run {
            commit: pinned.clone(),
            pin: at_last_good.map(|lg| lg.image_ids.clone()),
            images: at_last_good
                .map(|lg| lg.digests.clone())
                .unwrap_or_default(),
            origin: Origin::Pinned,
        });
    }
    if !state.failed.iter().any(|f| &f.commit == head) {
        let mut images = Digests::new();
        for (service, digest) in newest {
            if !state.image_failed(service, digest) {
                images.insert(service.clone(), digest.clone());
            } else if let Some(good) = last_good.and_then(|lg| lg.digests.get(service)) {
                images.insert(service.clone(), good.clone());
            }
        }
        return Decision::Run(Run {
            commit: head.clone(),
            pin: None,
            images,
            origin: Origin::Head,
        });
    }
    match last_good {
        Some(lg) if &lg.commit != head && automatic_rollback => Decision::Run(Run {
            commit: lg.commit.clone(),
            pin: Some(lg.image_ids.clone()),
            images: lg.digests.clone(),
            origin: Origin::LastGood {
                failed: head.clone(),
            },
        }),
        _ => Decision::Wait {
            failed: head.clone(),
        },
    }
}

/// Whether `trigger` may be answered by comparing the live state's
/// fingerprint with the one after the last pass, instead of running the
/// pipeline: a poll, a ref change or a repeated webhook that finds the same
/// commit applied. The drift timer, retries, start-up and operators always
/// run it.
pub fn may_skip(trigger: Trigger, applied: Option<&Key>, run: &Key) -> bool {
    !always_plans(trigger) && applied == Some(run)
}

/// Whether a pass for `trigger` always plans against the live state (so it
/// is a drift check): every trigger but a poll, a ref change or a webhook,
/// which may end at the live fingerprint ([`may_skip`]). Only such passes
/// push the drift timer back; otherwise frequent polls would keep the drift
/// check from ever running.
pub fn always_plans(trigger: Trigger) -> bool {
    !matches!(
        trigger,
        Trigger::Poll | Trigger::Watch | Trigger::Webhook | Trigger::Image
    )
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// In the desired state and healthy.
    Good,
    /// Render or check failed: nothing was applied.
    Invalid,
    /// The commit failed the signature check the daemon requires: nothing
    /// was read from it, nothing applied. Followed up like [`Ended::Invalid`].
    Unverified,
    /// A backend refused the plan: nothing was applied.
    Refused,
    /// Applying failed or the result is unhealthy.
    Bad,
    /// Applying stopped part-way because a service asks for it
    /// (`failure_action: pause`): half updated, and meant to stay so.
    Paused,
    /// The repo, an engine or the store was unreachable: nothing ran to an
    /// end.
    Transient,
}

/// The environment's settings [`after`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `rollback.automatic`.
    pub automatic_rollback: bool,
    /// `allow.remove_on_failed_first_deploy`.
    pub remove_on_failed_first_deploy: bool,
}

/// Why an environment is suspended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suspension {
    /// The operator's pinned commit failed: their choice is not undone.
    PinnedFailed,
    /// The first deploy failed: there is no good state to return to.
    FirstDeployFailed,
    /// `failed` went bad and so did the rollback from it.
    RollbackFailed { failed: CommitId },
    /// The head's update paused (`failure_action: pause`, as Swarm): it
    /// stays half updated, is neither marked failed nor rolled back, and
    /// `resume` continues the update with the branch's head.
    UpdatePaused,
}

/// What follows from how a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Record it; a healthy deploy's commit becomes the last good one.
    Record { last_good: bool },
    /// The rollback from `failed` is healthy: record it (the last good
    /// commit stays as it is) and say so.
    RolledBack { failed: CommitId },
    /// Retry after a backoff (nothing is marked).
    Retry,
    /// Nothing was applied: record, notify, and mark the commit failed
    /// when `mark_failed` (never a pin, never the last good commit).
    Reject { mark_failed: bool },
    /// The last good commit went bad when applied again (drift corrected
    /// into a crash loop): there is nothing older to return to, and it is
    /// never marked failed — that would switch self-healing off. Say so;
    /// the next pass retries it with backoff.
    RetryLastGood,
    /// Applied and bad, and automatic rollback is off: mark it failed and
    /// notify; what was applied stays.
    MarkFailed,
    /// Mark it failed, then run this rollback.
    RollBack(Run),
    /// Stop reconciling until an operator resumes.
    Suspend {
        why: Suspension,
        /// The commit is marked failed as well.
        mark_failed: bool,
        /// Remove what the first deploy created.
        remove_created: bool,
    },
}

/// What follows from `run` ending as `ended`, given the last good commit
/// recorded before it ran.
pub fn after(run: &Run, ended: Ended, last_good: Option<&LastGood>, policy: Policy) -> Next {
    let is_last_good = run.is_revision_of(last_good);
    match (ended, &run.origin) {
        (Ended::Transient, _) => Next::Retry,
        (Ended::Good, Origin::Rollback { failed }) => Next::RolledBack {
            failed: failed.clone(),
        },
        (Ended::Good, origin) => Next::Record {
            last_good: matches!(origin, Origin::Pinned | Origin::Head),
        },
        // The rollback itself failed, whatever the way: stop, no flapping.
        (_, Origin::Rollback { failed }) => Next::Suspend {
            why: Suspension::RollbackFailed {
                failed: failed.clone(),
            },
            mark_failed: false,
            remove_created: false,
        },
        (Ended::Invalid | Ended::Unverified | Ended::Refused, origin) => Next::Reject {
            mark_failed: !matches!(origin, Origin::Pinned) && !is_last_good,
        },
        // Only a new commit's update pauses (Swarm's `pause`); re-applying
        // the last good state or a pin that stops part-way went bad.
        (Ended::Paused, Origin::Head) if !is_last_good => Next::Suspend {
            why: Suspension::UpdatePaused,
            mark_failed: false,
            remove_created: false,
        },
        (Ended::Bad | Ended::Paused, Origin::Pinned) => Next::Suspend {
            why: Suspension::PinnedFailed,
            mark_failed: false,
            remove_created: false,
        },
        (Ended::Bad | Ended::Paused, Origin::LastGood { .. }) => Next::RetryLastGood,
        (Ended::Bad | Ended::Paused, Origin::Head) => match last_good {
            None => Next::Suspend {
                why: Suspension::FirstDeployFailed,
                mark_failed: true,
                remove_created: policy.remove_on_failed_first_deploy,
            },
            Some(_) if is_last_good => Next::RetryLastGood,
            Some(_) if !policy.automatic_rollback => Next::MarkFailed,
            Some(lg) => Next::RollBack(run.rollback_to(lg)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Control, FailedCommit};

    fn c(s: &str) -> CommitId {
        CommitId::new(s)
    }

    fn ids(s: &str) -> ImageIds {
        [("p/web".to_owned(), format!("sha256:{s}"))].into()
    }

    fn good(commit: &str) -> LastGood {
        LastGood {
            commit: c(commit),
            image_ids: ids(commit),
            digests: Digests::new(),
            reconcile_id: Some(1),
            recorded_at: 0,
        }
    }

    fn state(last_good: Option<&str>, failed: &[&str], pinned: Option<&str>) -> EnvState {
        EnvState {
            last_good: last_good.map(good),
            failed: failed
                .iter()
                .map(|f| FailedCommit {
                    commit: c(f),
                    reason: "bad".into(),
                    failed_at: 0,
                })
                .collect(),
            failed_images: Vec::new(),
            control: Control {
                pinned: pinned.map(c),
                ..Control::default()
            },
        }
    }

    fn run(commit: &str, origin: Origin) -> Run {
        Run {
            commit: c(commit),
            pin: None,
            images: Digests::new(),
            origin,
        }
    }

    #[test]
    fn what_to_run_covers_every_branch() {
        let head = |s| run(s, Origin::Head);
        let cases: Vec<(&str, EnvState, bool, Decision)> = vec![
            (
                "the head when nothing is marked",
                state(Some("a"), &[], None),
                true,
                Decision::Run(head("h")),
            ),
            (
                "the head on a first deploy",
                state(None, &[], None),
                true,
                Decision::Run(head("h")),
            ),
            (
                "another failed commit does not matter",
                state(Some("a"), &["x"], None),
                true,
                Decision::Run(head("h")),
            ),
            (
                "a failed head runs the last good commit pinned",
                state(Some("a"), &["h"], None),
                true,
                Decision::Run(Run {
                    commit: c("a"),
                    pin: Some(ids("a")),
                    images: Digests::new(),
                    origin: Origin::LastGood { failed: c("h") },
                }),
            ),
            (
                "a failed head waits when automatic rollback is off",
                state(Some("a"), &["h"], None),
                false,
                Decision::Wait { failed: c("h") },
            ),
            (
                "a failed head waits without a last good commit",
                state(None, &["h"], None),
                true,
                Decision::Wait { failed: c("h") },
            ),
            (
                "a failed head that is the last good commit waits",
                state(Some("h"), &["h"], None),
                true,
                Decision::Wait { failed: c("h") },
            ),
            (
                "a pin wins over a failed head",
                state(Some("a"), &["h"], Some("p")),
                true,
                Decision::Run(run("p", Origin::Pinned)),
            ),
            (
                "a pin on the last good commit runs its image ids",
                state(Some("a"), &[], Some("a")),
                true,
                Decision::Run(Run {
                    commit: c("a"),
                    pin: Some(ids("a")),
                    images: Digests::new(),
                    origin: Origin::Pinned,
                }),
            ),
            (
                "a pin on a failed commit runs it anyway",
                state(Some("a"), &["p"], Some("p")),
                false,
                Decision::Run(run("p", Origin::Pinned)),
            ),
        ];
        for (name, state, automatic, want) in cases {
            assert_eq!(
                what_to_run(&state, &c("h"), automatic, &Digests::new()),
                want,
                "{name}"
            );
        }
    }

    fn digests(pairs: &[(&str, &str)]) -> Digests {
        pairs
            .iter()
            .map(|(s, d)| (s.to_string(), d.to_string()))
            .collect()
    }

    /// The revision a pass runs: the newest digests, except one marked
    /// failed, which gives way to the last good revision's digest — the
    /// rollback stays until a newer digest appears.
    #[test]
    fn what_to_run_follows_the_newest_digest_unless_it_failed() {
        let mut st = state(Some("h"), &[], None);
        st.last_good.as_mut().unwrap().digests = digests(&[("p/web", "sha256:1")]);
        let newest = digests(&[("p/web", "sha256:2"), ("p/api", "sha256:9")]);
        let images = |st: &EnvState, newest: &Digests| match what_to_run(st, &c("h"), true, newest)
        {
            Decision::Run(r) => r.images,
            d => panic!("{d:?}"),
        };
        assert_eq!(images(&st, &newest), newest, "new digests are deployed");
        st.failed_images.push(crate::store::FailedImage {
            service: "p/web".into(),
            digest: "sha256:2".into(),
            reason: "unhealthy".into(),
            failed_at: 0,
        });
        assert_eq!(
            images(&st, &newest),
            digests(&[("p/api", "sha256:9"), ("p/web", "sha256:1")]),
            "a failed digest keeps the last good one"
        );
        let newer = digests(&[("p/web", "sha256:3")]);
        assert_eq!(images(&st, &newer), newer, "a newer digest is tried");
        // Without a last good digest, the failed one is left out: the
        // service runs its reference as the commit names it.
        st.last_good.as_mut().unwrap().digests.clear();
        assert!(images(&st, &digests(&[("p/web", "sha256:2")])).is_empty());
        // A failed head runs the last good revision with its digests.
        let mut st = state(Some("a"), &["h"], None);
        st.last_good.as_mut().unwrap().digests = digests(&[("p/web", "sha256:1")]);
        assert_eq!(images(&st, &newest), digests(&[("p/web", "sha256:1")]));
    }

    /// A bad image on the last good commit is rolled back, and only the
    /// image is marked: the commit stays deployable with a fixed image.
    #[test]
    fn a_bad_image_on_the_last_good_commit_rolls_back_and_blames_the_image() {
        let on = Policy {
            automatic_rollback: true,
            remove_on_failed_first_deploy: false,
        };
        let mut lg = good("a");
        lg.digests = digests(&[("p/web", "sha256:1")]);
        let update = Run {
            images: digests(&[("p/web", "sha256:2")]),
            ..run("a", Origin::Head)
        };
        assert!(!update.is_revision_of(Some(&lg)));
        let Next::RollBack(back) = after(&update, Ended::Bad, Some(&lg), on) else {
            panic!("not rolled back");
        };
        assert_eq!(
            back.images, lg.digests,
            "rolled back to the last good digest"
        );
        assert_eq!(back.pin, Some(lg.image_ids.clone()));
        assert_eq!(
            blame(&update, Some(&lg)),
            Blame {
                commit: false,
                images: digests(&[("p/web", "sha256:2")])
            }
        );
        // A new commit with a new image: both are marked.
        let both = Run {
            images: digests(&[("p/web", "sha256:2")]),
            ..run("h", Origin::Head)
        };
        assert_eq!(
            blame(&both, Some(&lg)),
            Blame {
                commit: true,
                images: digests(&[("p/web", "sha256:2")])
            }
        );
        // A new commit with the last good digest: the commit alone.
        let commit_only = Run {
            images: lg.digests.clone(),
            ..run("h", Origin::Head)
        };
        assert_eq!(
            blame(&commit_only, Some(&lg)),
            Blame {
                commit: true,
                images: Digests::new()
            }
        );
        // The last good revision itself going bad is retried, never marked.
        let again = Run {
            images: lg.digests.clone(),
            ..run("a", Origin::Head)
        };
        assert_eq!(
            after(&again, Ended::Bad, Some(&lg), on),
            Next::RetryLastGood
        );
    }

    #[test]
    fn only_passes_that_cannot_skip_count_as_drift_checks() {
        for t in Trigger::ALL {
            let skips = matches!(
                t,
                Trigger::Poll | Trigger::Watch | Trigger::Webhook | Trigger::Image
            );
            assert_eq!(always_plans(*t), !skips, "{t:?}");
        }
        assert!(always_plans(Trigger::Drift));
    }

    #[test]
    fn only_a_repeated_trigger_of_the_applied_key_may_skip() {
        let key = |commit: &str, pinned_images| Key {
            commit: c(commit),
            pinned_images,
            images: Digests::new(),
        };
        let applied = key("a", false);
        for (trigger, skip) in [
            (Trigger::Poll, true),
            (Trigger::Watch, true),
            (Trigger::Webhook, true),
            (Trigger::Image, true),
            (Trigger::Drift, false),
            (Trigger::Retry, false),
            (Trigger::Startup, false),
            (Trigger::Manual, false),
        ] {
            assert_eq!(
                may_skip(trigger, Some(&applied), &key("a", false)),
                skip,
                "{trigger:?}"
            );
        }
        assert!(!may_skip(Trigger::Poll, None, &key("a", false)));
        assert!(!may_skip(Trigger::Poll, Some(&applied), &key("b", false)));
        assert!(!may_skip(Trigger::Poll, Some(&applied), &key("a", true)));
    }

    /// Name, run, how it ended, last good commit, settings, what follows.
    type Case<'a> = (&'a str, &'a Run, Ended, Option<&'a LastGood>, Policy, Next);

    #[test]
    fn after_covers_every_branch() {
        let on = Policy {
            automatic_rollback: true,
            remove_on_failed_first_deploy: false,
        };
        let off = Policy {
            automatic_rollback: false,
            ..on
        };
        let remove = Policy {
            remove_on_failed_first_deploy: true,
            ..on
        };
        let lg = good("a");
        let head = run("h", Origin::Head);
        let pinned = run("p", Origin::Pinned);
        let lg_again = run("a", Origin::Head);
        let restored = Run {
            pin: Some(ids("a")),
            ..run("a", Origin::LastGood { failed: c("h") })
        };
        let rollback = Run {
            pin: Some(ids("a")),
            ..run("a", Origin::Rollback { failed: c("h") })
        };
        let suspend = |why| Next::Suspend {
            why,
            mark_failed: false,
            remove_created: false,
        };
        let rollback_failed = suspend(Suspension::RollbackFailed { failed: c("h") });
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // Healthy.
            ("a healthy head becomes last good", &head, Ended::Good, Some(&lg), on, Next::Record { last_good: true }),
            ("a healthy first deploy becomes last good", &head, Ended::Good, None, on, Next::Record { last_good: true }),
            ("a healthy pin becomes last good", &pinned, Ended::Good, Some(&lg), on, Next::Record { last_good: true }),
            ("a healthy rollback state keeps last good", &restored, Ended::Good, Some(&lg), on, Next::Record { last_good: false }),
            ("a healthy rollback says so", &rollback, Ended::Good, Some(&lg), on, Next::RolledBack { failed: c("h") }),
            // Transient, whatever ran.
            ("an unreachable engine retries a head", &head, Ended::Transient, Some(&lg), on, Next::Retry),
            ("an unreachable engine retries a pin", &pinned, Ended::Transient, Some(&lg), on, Next::Retry),
            ("an unreachable engine retries a rollback", &rollback, Ended::Transient, Some(&lg), on, Next::Retry),
            // Nothing applied.
            ("an invalid head is marked failed", &head, Ended::Invalid, Some(&lg), on, Next::Reject { mark_failed: true }),
            ("a refused head is marked failed", &head, Ended::Refused, None, on, Next::Reject { mark_failed: true }),
            ("an invalid pin is not marked", &pinned, Ended::Invalid, Some(&lg), on, Next::Reject { mark_failed: false }),
            ("a refused pin is not marked", &pinned, Ended::Refused, Some(&lg), on, Next::Reject { mark_failed: false }),
            ("an invalid last good commit is not marked", &lg_again, Ended::Invalid, Some(&lg), on, Next::Reject { mark_failed: false }),
            ("an invalid rollback state is not marked", &restored, Ended::Invalid, Some(&lg), on, Next::Reject { mark_failed: false }),
            ("an invalid rollback suspends", &rollback, Ended::Invalid, Some(&lg), on, rollback_failed.clone()),
            ("a refused rollback suspends", &rollback, Ended::Refused, Some(&lg), on, rollback_failed.clone()),
            // Applied and bad.
            ("a bad head rolls back", &head, Ended::Bad, Some(&lg), on, Next::RollBack(rollback.clone())),
            ("a bad head with automatic rollback off is marked", &head, Ended::Bad, Some(&lg), off, Next::MarkFailed),
            ("a bad first deploy suspends", &head, Ended::Bad, None, on, Next::Suspend { why: Suspension::FirstDeployFailed, mark_failed: true, remove_created: false }),
            ("a bad first deploy removes what it created when allowed", &head, Ended::Bad, None, remove, Next::Suspend { why: Suspension::FirstDeployFailed, mark_failed: true, remove_created: true }),
            ("a bad last good commit is retried, never marked", &lg_again, Ended::Bad, Some(&lg), on, Next::RetryLastGood),
            ("a bad last good commit is retried with rollback off", &lg_again, Ended::Bad, Some(&lg), off, Next::RetryLastGood),
            ("a bad rollback state is retried, never marked", &restored, Ended::Bad, Some(&lg), on, Next::RetryLastGood),
            ("a bad pin suspends", &pinned, Ended::Bad, Some(&lg), on, suspend(Suspension::PinnedFailed)),
            ("a bad pin suspends without a last good commit", &pinned, Ended::Bad, None, on, suspend(Suspension::PinnedFailed)),
            ("a bad rollback suspends", &rollback, Ended::Bad, Some(&lg), on, rollback_failed.clone()),
            // Paused part-way (`failure_action: pause`).
            ("a paused head suspends, neither marked nor rolled back", &head, Ended::Paused, Some(&lg), on, suspend(Suspension::UpdatePaused)),
            ("a paused head suspends with rollback off", &head, Ended::Paused, Some(&lg), off, suspend(Suspension::UpdatePaused)),
            ("a paused head suspends without a last good commit", &head, Ended::Paused, None, remove, suspend(Suspension::UpdatePaused)),
            ("a paused last good commit is retried", &lg_again, Ended::Paused, Some(&lg), on, Next::RetryLastGood),
            ("a paused rollback state is retried", &restored, Ended::Paused, Some(&lg), on, Next::RetryLastGood),
            ("a paused pin suspends as failed", &pinned, Ended::Paused, Some(&lg), on, suspend(Suspension::PinnedFailed)),
            ("a paused rollback suspends as failed", &rollback, Ended::Paused, Some(&lg), on, rollback_failed),
        ];
        for (name, run, ended, last_good, policy, want) in cases {
            assert_eq!(after(run, ended, last_good, policy), want, "{name}");
        }
    }

    #[test]
    fn only_runs_that_change_what_is_live_back_count_as_rollbacks() {
        let failed = || c("h");
        let cases = [
            (
                Origin::Rollback { failed: failed() },
                Outcome::Healthy,
                true,
            ),
            (Origin::Rollback { failed: failed() }, Outcome::Failed, true),
            (
                Origin::LastGood { failed: failed() },
                Outcome::Healthy,
                true,
            ),
            (
                Origin::LastGood { failed: failed() },
                Outcome::Unchanged,
                false,
            ),
            (Origin::Head, Outcome::Healthy, false),
            (Origin::Pinned, Outcome::Healthy, false),
        ];
        for (origin, outcome, want) in cases {
            let r = run("g", origin.clone());
            assert_eq!(rolled_back(&r, outcome), want, "{origin:?} {outcome:?}");
        }
    }

    #[test]
    fn a_rollback_names_the_commit_it_replaces() {
        let Next::RollBack(rb) = after(
            &run("h", Origin::Head),
            Ended::Bad,
            Some(&good("a")),
            Policy {
                automatic_rollback: true,
                remove_on_failed_first_deploy: false,
            },
        ) else {
            panic!("no rollback")
        };
        assert_eq!(rb.kind(), Kind::Rollback);
        assert_eq!(rb.rollback_of(), Some(&c("h")));
        assert_eq!(
            rb.key(),
            Key {
                commit: c("a"),
                pinned_images: true,
                images: Digests::new(),
            }
        );
        assert_eq!(run("h", Origin::Head).kind(), Kind::Deploy);
        assert_eq!(run("p", Origin::Pinned).rollback_of(), None);
    }
}
