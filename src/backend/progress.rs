//! What an apply is doing right now, for whoever shows it (the daemon's
//! status): the services whose replicas are being replaced, with how far
//! each has got.
//!
//! The backend only writes: the caller passes a [`Progress`] in the apply's
//! [`Context`](super::Context) and reads it from another task. It is a
//! `tokio::sync::watch` channel, so a reader always sees the latest state
//! and a writer never waits; an apply with no one watching passes none.

use serde::Serialize;
use tokio::sync::watch;

use crate::model::compose::UpdateOrder;

/// The replacements under way in one apply.
#[derive(Debug)]
pub struct Progress {
    tx: watch::Sender<Vec<Replacing>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            tx: watch::Sender::new(Vec::new()),
        }
    }
}

/// One service being replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replacing {
    pub target: String,
    /// `project/service`.
    pub service: String,
    pub order: UpdateOrder,
    /// Replicas replaced so far (a failed replacement counts as done).
    pub done: u32,
    /// Replicas this update replaces.
    pub total: u32,
    pub phase: Phase,
}

/// Where the replacement of a service's current batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// stop-first: the old containers of the batch are stopped.
    StoppingOld,
    /// The new containers are created and started.
    StartingNew,
    /// The new containers are gated on their healthcheck (or `monitor`).
    WaitingHealthy,
    /// start-first: the old containers have left DNS and drain, then stop.
    DrainingOld,
}

impl Phase {
    /// The words the status page and `driftless status` show.
    pub fn text(self) -> &'static str {
        match self {
            Phase::StoppingOld => "stopping old",
            Phase::StartingNew => "starting new",
            Phase::WaitingHealthy => "waiting healthy",
            Phase::DrainingOld => "draining old",
        }
    }
}

impl Replacing {
    /// `local: shop/web start-first, 1 of 2 replicas done, waiting healthy`.
    pub fn text(&self) -> String {
        let order = match self.order {
            UpdateOrder::StartFirst => "start-first",
            UpdateOrder::StopFirst => "stop-first",
        };
        format!(
            "{}: {} {order}, {} of {} replicas done, {}",
            self.target,
            self.service,
            self.done,
            self.total,
            self.phase.text()
        )
    }
}

impl Progress {
    /// The replacements under way now.
    pub fn now(&self) -> Vec<Replacing> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees each change.
    pub fn subscribe(&self) -> watch::Receiver<Vec<Replacing>> {
        self.tx.subscribe()
    }

    /// Starts showing `service` of `target`, replacing `total` replicas;
    /// it is shown until the returned guard is dropped (whatever ended the
    /// replacement: done, failed, or the apply cancelled).
    pub fn track(
        &self,
        target: &str,
        service: &str,
        order: UpdateOrder,
        total: u32,
    ) -> Tracked<'_> {
        let entry = Replacing {
            target: target.to_owned(),
            service: service.to_owned(),
            order,
            done: 0,
            total,
            phase: match order {
                UpdateOrder::StartFirst => Phase::StartingNew,
                UpdateOrder::StopFirst => Phase::StoppingOld,
            },
        };
        self.tx.send_modify(|all| {
            all.retain(|r| !(r.target == target && r.service == service));
            all.push(entry);
        });
        Tracked {
            progress: Some(self),
            target: target.to_owned(),
            service: service.to_owned(),
        }
    }
}

/// A service shown as being replaced, until dropped. With no [`Progress`]
/// (nobody watches) it does nothing.
#[derive(Debug)]
pub struct Tracked<'p> {
    progress: Option<&'p Progress>,
    target: String,
    service: String,
}

impl Tracked<'_> {
    /// A guard for an apply that nobody watches.
    pub fn none() -> Tracked<'static> {
        Tracked {
            progress: None,
            target: String::new(),
            service: String::new(),
        }
    }

    fn modify(&self, f: impl FnOnce(&mut Replacing)) {
        if let Some(p) = self.progress {
            p.tx.send_modify(|all| {
                if let Some(r) = all
                    .iter_mut()
                    .find(|r| r.target == self.target && r.service == self.service)
                {
                    f(r);
                }
            });
        }
    }

    /// The current batch has reached `phase`.
    pub fn phase(&self, phase: Phase) {
        self.modify(|r| r.phase = phase);
    }

    /// One more replica is done.
    pub fn done(&self) {
        self.modify(|r| r.done = (r.done + 1).min(r.total));
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.progress {
            p.tx.send_modify(|all| {
                all.retain(|r| !(r.target == self.target && r.service == self.service));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracked_service_is_shown_until_its_guard_drops() {
        let progress = Progress::default();
        let mut seen = progress.subscribe();
        {
            let web = progress.track("local", "shop/web", UpdateOrder::StartFirst, 2);
            let _db = progress.track("local", "shop/db", UpdateOrder::StopFirst, 1);
            assert!(seen.has_changed().unwrap());
            web.phase(Phase::WaitingHealthy);
            web.done();
            let now = seen.borrow_and_update().clone();
            assert_eq!(now.len(), 2);
            assert_eq!(
                (
                    now[0].service.as_str(),
                    now[0].done,
                    now[0].total,
                    now[0].phase
                ),
                ("shop/web", 1, 2, Phase::WaitingHealthy)
            );
            assert_eq!(now[1].phase, Phase::StoppingOld);
            assert_eq!(
                now[0].text(),
                "local: shop/web start-first, 1 of 2 replicas done, waiting healthy"
            );
            web.done();
            web.done();
            assert_eq!(progress.now()[0].done, 2, "never more than the total");
        }
        assert_eq!(progress.now(), []);
        // Nobody watching: the guard does nothing.
        let none = Tracked::none();
        none.done();
    }
}
