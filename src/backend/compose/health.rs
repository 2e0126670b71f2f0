//! Health after apply: one verdict per desired service.
//!
//! A service is healthy when every replica runs, passes its Docker
//! healthcheck where it has one, and has run through the settle window
//! without a restart. One list call finds the containers; restart counts
//! and health states need an inspect per container (the list call has
//! neither), which is fine here: verify runs after changes, not on every
//! no-op reconcile.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};

use super::live::{ContainerState, Live, LiveContainer};
use super::{ComposeBackend, labels, plan};
use crate::backend::{BackendError, Context, Health, Verdict};
use crate::model::TargetState;
use crate::model::compose::{Project, Service};
use crate::plan::Resource;

/// Verdicts for every desired service of `projects`.
pub async fn health(
    backend: &ComposeBackend,
    desired: &TargetState,
    projects: &[Project],
    ctx: Context<'_>,
) -> Result<Vec<Verdict>, BackendError> {
    let docker = &backend.docker;
    let filter = HashMap::from([("label", vec![labels::PROJECT])]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .map_err(|e| backend.unavailable(e))?;
    let live = Live::from_listings(
        ctx.environment,
        ctx.owner.instance,
        projects,
        &list,
        &[],
        &[],
        &[],
    );
    let now = SystemTime::now();
    let mut verdicts = Vec::new();
    for p in projects {
        for (name, service) in &p.services {
            let containers: Vec<&LiveContainer> = live.service_containers(&p.name, name).collect();
            let mut observations = Vec::new();
            for c in &containers {
                let inspect = docker
                    .inspect_container(&c.id, None::<InspectContainerOptions>)
                    .await;
                let inspect = match inspect {
                    Ok(i) => i,
                    // Removed between list and inspect: judged as missing.
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => continue,
                    Err(e) => return Err(backend.unavailable(e)),
                };
                let state = inspect.state.unwrap_or_default();
                observations.push(Observation {
                    name: c.name.clone(),
                    status: state.status,
                    exit_code: state.exit_code,
                    health: state.health.and_then(|h| h.status),
                    restart_count: inspect.restart_count.unwrap_or(0),
                    started_at: state.started_at.as_deref().and_then(parse_rfc3339),
                    up: plan::is_up(c, service),
                    state: c.state,
                });
            }
            let (health, reason) = judge(service, &observations, now, backend.settle);
            verdicts.push(Verdict {
                target: desired.target.name.clone(),
                resource: Resource::new("service", format!("{}/{name}", p.name)),
                health,
                reason,
            });
        }
    }
    Ok(verdicts)
}

/// What health needs to know about one container.
#[derive(Debug, Clone)]
pub struct Observation {
    pub name: String,
    pub state: ContainerState,
    pub status: Option<ContainerStateStatusEnum>,
    pub exit_code: Option<i64>,
    pub health: Option<HealthStatusEnum>,
    pub restart_count: i64,
    pub started_at: Option<SystemTime>,
    /// Running, or a one-shot service finished with code 0.
    pub up: bool,
}

/// The verdict for one service from its containers' observations; the
/// worst container decides, with its reason. Pure, so it is unit-tested.
pub fn judge(
    service: &Service,
    observations: &[Observation],
    now: SystemTime,
    settle: Duration,
) -> (Health, String) {
    let wanted = service.replicas as usize;
    if observations.len() < wanted {
        return (
            Health::Degraded,
            format!("{}/{wanted} replicas exist", observations.len()),
        );
    }
    let mut worst = (Health::Healthy, String::new());
    let mut note = |h: Health, reason: String| {
        let rank = |h: Health| match h {
            Health::Healthy => 0,
            Health::Progressing => 1,
            Health::Degraded => 2,
        };
        if rank(h) > rank(worst.0) {
            worst = (h, reason);
        }
    };
    let mut completed = 0;
    for o in observations {
        let since_start = o
            .started_at
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        match o.status {
            Some(ContainerStateStatusEnum::EXITED) if o.up => {
                completed += 1;
                continue;
            }
            Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
                note(
                    Health::Degraded,
                    format!(
                        "{} exited with code {}",
                        o.name,
                        o.exit_code.map_or("?".to_owned(), |c| c.to_string())
                    ),
                );
                continue;
            }
            Some(ContainerStateStatusEnum::RESTARTING) => {
                note(
                    Health::Degraded,
                    format!(
                        "{} is restarting (restarted {} times)",
                        o.name, o.restart_count
                    ),
                );
                continue;
            }
            Some(ContainerStateStatusEnum::RUNNING) => {}
            other => {
                note(
                    Health::Degraded,
                    format!(
                        "{} is {}",
                        o.name,
                        other.map_or("in an unknown state".to_owned(), |s| s.to_string())
                    ),
                );
                continue;
            }
        }
        if o.restart_count > 0 && since_start < settle {
            note(
                Health::Degraded,
                format!(
                    "{} restarted {} time{} within the settle window",
                    o.name,
                    o.restart_count,
                    if o.restart_count == 1 { "" } else { "s" }
                ),
            );
            continue;
        }
        match o.health {
            Some(HealthStatusEnum::UNHEALTHY) => {
                note(Health::Degraded, format!("{} is unhealthy", o.name));
                continue;
            }
            Some(HealthStatusEnum::STARTING) => {
                note(
                    Health::Progressing,
                    format!("{} health check starting", o.name),
                );
                continue;
            }
            _ => {}
        }
        if since_start < settle {
            note(
                Health::Progressing,
                format!(
                    "{} running for {:.0?} of the {:.0?} settle window",
                    o.name, since_start, settle
                ),
            );
        }
    }
    if worst.0 == Health::Healthy {
        worst.1 = if completed == observations.len() && completed > 0 {
            "completed successfully".to_owned()
        } else if service.healthcheck.as_ref().is_some_and(|h| !h.disable) {
            format!("{wanted}/{wanted} running and healthy")
        } else {
            format!("{wanted}/{wanted} running")
        };
    }
    worst
}

/// Parses the engine's RFC 3339 UTC timestamps
/// (`2024-05-01T12:00:00.123456789Z`); the zero time
/// (`0001-01-01T00:00:00Z`, never started) is `None`.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.strip_suffix('Z')?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if y < 1970 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let digits: String = frac.chars().take(9).collect();
    let nanos = format!("{digits:0<9}").parse::<u32>().ok()?;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_engine_timestamps() {
        let t = parse_rfc3339("2024-05-01T12:00:01.5Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_714_564_801, 500_000_000)
        );
        assert!(parse_rfc3339("0001-01-01T00:00:00Z").is_none());
    }

    fn running(name: &str, started: SystemTime) -> Observation {
        Observation {
            name: name.into(),
            state: ContainerState::Running,
            status: Some(ContainerStateStatusEnum::RUNNING),
            exit_code: Some(0),
            health: None,
            restart_count: 0,
            started_at: Some(started),
            up: true,
        }
    }

    #[test]
    fn judges_settle_restarts_health_and_exits() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let settle = Duration::from_secs(10);
        let svc = Service {
            replicas: 1,
            ..Service::default()
        };
        let old = running("a", now - Duration::from_secs(60));
        assert_eq!(
            judge(&svc, std::slice::from_ref(&old), now, settle).0,
            Health::Healthy
        );

        let fresh = running("a", now - Duration::from_secs(2));
        assert_eq!(
            judge(&svc, std::slice::from_ref(&fresh), now, settle).0,
            Health::Progressing
        );

        let restarted = Observation {
            restart_count: 2,
            ..fresh.clone()
        };
        let (h, reason) = judge(&svc, &[restarted], now, settle);
        assert_eq!(h, Health::Degraded);
        assert!(reason.contains("restarted 2 times"), "{reason}");

        let starting = Observation {
            health: Some(HealthStatusEnum::STARTING),
            ..old.clone()
        };
        assert_eq!(judge(&svc, &[starting], now, settle).0, Health::Progressing);

        let exited = Observation {
            status: Some(ContainerStateStatusEnum::EXITED),
            state: ContainerState::Exited,
            exit_code: Some(137),
            up: false,
            ..old.clone()
        };
        let (h, reason) = judge(&svc, &[exited], now, settle);
        assert_eq!(
            (h, reason.as_str()),
            (Health::Degraded, "a exited with code 137")
        );

        assert_eq!(judge(&svc, &[], now, settle).0, Health::Degraded);
    }
}
