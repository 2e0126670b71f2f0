//! Notifications: what the daemon tells people when an environment rolls
//! back, fails, or stops. Two formats: a generic JSON POST (`webhook:`) and
//! Alertmanager's `/api/v2/alerts` (`alertmanager:`).
//!
//! Every text is masked before it is sent. A notification that cannot be
//! delivered is logged and dropped: it never blocks or fails a reconcile.

use crate::source::CommitId;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::manifest::Notification;
use crate::secrets::Masker;

/// What happened, in the words notifications use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A bad commit was rolled back to the last good one.
    RolledBack,
    /// The rollback itself failed: the environment is suspended.
    RollbackFailed,
    /// The first deploy failed (no last good commit): suspended.
    FirstDeployFailed,
    /// A commit failed and automatic rollback is off.
    DeployFailed,
    /// A commit did not render or check: nothing was applied.
    Invalid,
    /// A scheduled backup run failed (the message names the job).
    BackupFailed,
    /// A backup job has not succeeded within twice its interval.
    BackupOverdue,
    /// A scheduled backup time passed while the daemon was down.
    BackupMissed,
}

impl EventKind {
    fn severity(self) -> &'static str {
        match self {
            EventKind::RolledBack
            | EventKind::Invalid
            | EventKind::BackupFailed
            | EventKind::BackupMissed => "warning",
            _ => "critical",
        }
    }

    fn alertname(self) -> &'static str {
        match self {
            EventKind::RolledBack => "DriftlessRolledBack",
            EventKind::RollbackFailed => "DriftlessRollbackFailed",
            EventKind::FirstDeployFailed => "DriftlessFirstDeployFailed",
            EventKind::DeployFailed => "DriftlessDeployFailed",
            EventKind::Invalid => "DriftlessInvalidCommit",
            EventKind::BackupFailed => "DriftlessBackupFailed",
            EventKind::BackupOverdue => "DriftlessBackupOverdue",
            EventKind::BackupMissed => "DriftlessBackupMissed",
        }
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub environment: String,
    pub kind: EventKind,
    /// The commit that failed.
    pub commit: Option<CommitId>,
    /// The commit rolled back to, when there was one.
    pub rolled_back_to: Option<CommitId>,
    pub message: String,
    /// The daemon identity that sends it.
    pub daemon: String,
}

/// Sends events to the notifications an environment names.
#[derive(Debug, Clone)]
pub struct Notifier {
    client: reqwest::Client,
    masker: Masker,
    timeout: Duration,
}

impl Notifier {
    pub fn new(client: reqwest::Client, masker: Masker) -> Self {
        Notifier {
            client,
            masker,
            timeout: Duration::from_secs(10),
        }
    }

    /// Sends `event` to each of `to`; failures are logged.
    pub async fn send(&self, to: &[(String, Notification)], event: &Event) {
        for (name, n) in to {
            let (url, body) = self.body(n, event, SystemTime::now());
            let result = self
                .client
                .post(&url)
                .timeout(self.timeout)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match result {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(notification = %name, kind = ?event.kind, "notification sent");
                }
                Ok(r) => {
                    tracing::warn!(notification = %name, status = r.status().as_u16(), "notification refused")
                }
                Err(e) => {
                    tracing::warn!(notification = %name, error = %self.masker.mask(&e.to_string()), "notification not delivered")
                }
            }
        }
    }

    /// The URL and the masked JSON body for one notification.
    pub fn body(&self, n: &Notification, event: &Event, now: SystemTime) -> (String, String) {
        let now = chrono::DateTime::<chrono::Utc>::from(now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (url, mut doc) = match n {
            Notification::Webhook { url } => {
                let mut doc = serde_json::to_value(event).expect("plain data");
                doc["time"] = now.into();
                (url.clone(), doc)
            }
            Notification::Alertmanager { url } => {
                let mut labels = serde_json::json!({
                    "alertname": event.kind.alertname(),
                    "environment": event.environment,
                    "severity": event.kind.severity(),
                    "service": "driftless",
                    "daemon": event.daemon,
                });
                if let Some(c) = &event.commit {
                    labels["commit"] = crate::source::short(c).into();
                }
                let doc = serde_json::json!([{
                    "labels": labels,
                    "annotations": {
                        "summary": format!("driftless: {} in {}", event.kind.alertname(), event.environment),
                        "description": event.message,
                        "rolled_back_to": event.rolled_back_to.as_deref().unwrap_or_default(),
                    },
                    "startsAt": now,
                }]);
                (format!("{}/api/v2/alerts", url.trim_end_matches('/')), doc)
            }
        };
        self.masker.mask_json(&mut doc);
        (url, doc.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_masked_and_alertmanager_gets_its_format() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let n = Notifier::new(
            reqwest::Client::new(),
            Masker::from_values(["hunter2-secret"]),
        );
        let event = Event {
            environment: "dev".into(),
            kind: EventKind::RolledBack,
            commit: Some("0123456789abcdef0123".into()),
            rolled_back_to: Some("fedcba".into()),
            message: "web unhealthy; TOKEN=hunter2-secret".into(),
            daemon: "ops".into(),
        };
        let (url, body) = n.body(
            &Notification::Alertmanager {
                url: "http://am:9093/".into(),
            },
            &event,
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(url, "http://am:9093/api/v2/alerts");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v[0]["labels"]["alertname"], "DriftlessRolledBack");
        assert_eq!(v[0]["labels"]["commit"], "0123456789ab");
        assert_eq!(v[0]["startsAt"], "1970-01-01T00:00:00Z");
        assert!(!body.contains("hunter2"), "{body}");
        let (_, body) = n.body(
            &Notification::Webhook {
                url: "http://x/hook".into(),
            },
            &event,
            SystemTime::UNIX_EPOCH,
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["kind"], "rolled_back");
        assert_eq!(v["environment"], "dev");
        assert!(!body.contains("hunter2"), "{body}");
    }
}
