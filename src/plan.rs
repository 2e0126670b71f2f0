//! Plans: what a backend would change on a target, as data.
//!
//! A [`Plan`] is printed by `--dry-run`, stored in history, shown on the
//! status page and executed by apply — the same value in each place. Diffs
//! inside it are masked when they are made (see [`unified_diff`]), so a plan
//! never holds a secret.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::secrets::Masker;
use crate::source::Revision;

/// Every change of one reconcile of one environment, in apply order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub environment: String,
    pub revision: Revision,
    pub changes: Vec<Change>,
}

/// One resource on one target and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Target name from the manifest.
    pub target: String,
    pub resource: Resource,
    pub action: Action,
    /// Short note for humans: `scale 1 → 3`, `pull 127.0.0.1:5000/api:1.4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Unified diff of the resource's definition (live → desired), masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// What a change is about: `service aiops-dev/api`, `Deployment ai/ai-engine`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resource {
    /// `service`, `network`, `volume`, `rule-file`, or a Kubernetes kind.
    pub kind: String,
    /// Qualified name: `project/service`, `namespace/name`, file name.
    pub name: String,
}

impl Resource {
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Resource {
            kind: kind.into(),
            name: name.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    Create,
    /// Changed in place (scale, server-side apply, rule file rewrite).
    Update,
    /// Removed and created again, with the reason (`image changed`,
    /// `config changed`, `container exited`).
    Recreate {
        reason: String,
    },
    Delete,
    Unchanged,
}

impl Action {
    fn symbol(&self) -> char {
        match self {
            Action::Create => '+',
            Action::Update => '~',
            Action::Recreate { .. } => '±',
            Action::Delete => '-',
            Action::Unchanged => ' ',
        }
    }

    fn label(&self) -> String {
        match self {
            Action::Create => "create".to_owned(),
            Action::Update => "update".to_owned(),
            Action::Recreate { reason } => format!("recreate ({reason})"),
            Action::Delete => "delete".to_owned(),
            Action::Unchanged => "unchanged".to_owned(),
        }
    }
}

/// Counts per action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub recreate: usize,
    pub delete: usize,
    pub unchanged: usize,
}

impl Summary {
    /// How many resources change (everything but the unchanged ones).
    pub fn changed(&self) -> usize {
        self.create + self.update + self.recreate + self.delete
    }
}

impl Plan {
    pub fn new(environment: impl Into<String>, revision: Revision) -> Self {
        Plan {
            environment: environment.into(),
            revision,
            changes: Vec::new(),
        }
    }

    /// True when applying would change anything.
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action != Action::Unchanged)
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.changes {
            match c.action {
                Action::Create => s.create += 1,
                Action::Update => s.update += 1,
                Action::Recreate { .. } => s.recreate += 1,
                Action::Delete => s.delete += 1,
                Action::Unchanged => s.unchanged += 1,
            }
        }
        s
    }

    /// Stable JSON form (what history stores and the API serves).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a plan is plain data")
    }

    /// Human text: a summary line, then each change with its diff. Unchanged
    /// resources are listed only with `verbose`. `color` adds ANSI colours.
    pub fn render_text(&self, color: bool, verbose: bool) -> String {
        let paint = |code: &str, s: &str| {
            if color {
                format!("\x1b[{code}m{s}\x1b[0m")
            } else {
                s.to_owned()
            }
        };
        let s = self.summary();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plan for {} at {}: {} to create, {} to update, {} to recreate, {} to delete, {} unchanged",
            self.environment, self.revision, s.create, s.update, s.recreate, s.delete, s.unchanged
        );
        for c in &self.changes {
            if c.action == Action::Unchanged && !verbose {
                continue;
            }
            let colour = match c.action {
                Action::Create => "32",
                Action::Delete => "31",
                Action::Unchanged => "2",
                _ => "33",
            };
            let mut line = format!(
                "{} {}: {} {}  {}",
                c.action.symbol(),
                c.target,
                c.resource.kind,
                c.resource.name,
                c.action.label()
            );
            if let Some(detail) = &c.detail {
                let _ = write!(line, " — {detail}");
            }
            let _ = writeln!(out, "{}", paint(colour, &line));
            if let Some(diff) = &c.diff {
                for l in diff.lines() {
                    let painted = match l.as_bytes().first() {
                        Some(b'+') if !l.starts_with("+++") => paint("32", l),
                        Some(b'-') if !l.starts_with("---") => paint("31", l),
                        Some(b'@') => paint("36", l),
                        _ => l.to_owned(),
                    };
                    let _ = writeln!(out, "    {painted}");
                }
            }
        }
        out
    }
}

/// A unified diff from `live` to `desired`, both masked first so no secret
/// value reaches the diff. `None` when they are equal.
pub fn unified_diff(live: &str, desired: &str, masker: &Masker) -> Option<String> {
    let live = masker.mask(live);
    let desired = masker.mask(desired);
    if live == desired {
        return None;
    }
    let diff = similar::TextDiff::from_lines(live.as_ref(), desired.as_ref());
    Some(
        diff.unified_diff()
            .context_radius(3)
            .header("live", "desired")
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let mut p = Plan::new(
            "dev",
            Revision::Commit {
                id: "abcdef0123".into(),
            },
        );
        p.changes.push(Change {
            target: "local".into(),
            resource: Resource::new("service", "aiops-dev/api"),
            action: Action::Recreate {
                reason: "config changed".into(),
            },
            detail: None,
            diff: unified_diff("a: 1\nb: 2\n", "a: 1\nb: 3\n", &Masker::default()),
        });
        p.changes.push(Change {
            target: "local".into(),
            resource: Resource::new("service", "aiops-dev/db"),
            action: Action::Unchanged,
            detail: None,
            diff: None,
        });
        p
    }

    #[test]
    fn text_shows_summary_and_diff_and_hides_unchanged() {
        let text = plan().render_text(false, false);
        assert!(text.starts_with("plan for dev at abcdef0123: 0 to create, 0 to update, 1 to recreate, 0 to delete, 1 unchanged"), "{text}");
        assert!(
            text.contains("± local: service aiops-dev/api  recreate (config changed)"),
            "{text}"
        );
        assert!(text.contains("    -b: 2\n    +b: 3\n"), "{text}");
        assert!(!text.contains("aiops-dev/db"), "{text}");
        assert!(plan().render_text(false, true).contains("aiops-dev/db"));
    }

    #[test]
    fn json_round_trips_changes() {
        let p = plan();
        let json = p.to_json();
        let changes: Vec<Change> = serde_json::from_value(json["changes"].clone()).unwrap();
        assert_eq!(changes, p.changes);
        assert_eq!(json["changes"][0]["action"]["type"], "recreate");
    }

    #[test]
    fn diff_masks_secrets_before_diffing() {
        let masker = Masker::from_values(["hunter2-secret"]);
        let d = unified_diff("pw: old\n", "pw: hunter2-secret\n", &masker).unwrap();
        assert!(!d.contains("hunter2"), "{d}");
        // A change between two masked values is still a change, shown masked.
        assert!(unified_diff("x", "x", &masker).is_none());
    }
}
