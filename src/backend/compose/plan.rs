//! The pure planner: desired projects + [`Live`] → ordered [`Change`]s.
//!
//! No IO and no clock: everything it needs is in its arguments, so the
//! plan a dry run prints is exactly what apply executes, and every rule is
//! unit-tested without Docker. Order of the result is apply order: networks,
//! volumes and bound repo directories, services in dependency order, then
//! removals.

use std::collections::{BTreeMap, BTreeSet};

use super::live::{ContainerState, Live, LiveContainer, Ownership};
use super::{binds, build, hash, spec};
use super::{project, rollout};
use crate::backend::{BackendError, Context};
use crate::manifest::Adopt;
use crate::model::compose::{Ipam, IpamPool, Network, Project, PullPolicy, Service};
use crate::plan::{Action, Change, Resource, unified_diff};

/// Plans `projects` against `live` for target `target`.
///
/// Refuses (unless the environment opts into mass removal) a plan that
/// removes more than half of a project's services, or every project of the
/// environment; refuses to take over a project of the same name that it
/// does not own ([`refuse_foreign`]) unless told to adopt it, and then
/// recreates each adopted container (reason `adopted`).
pub fn plan(
    target: &str,
    projects: &[Project],
    live: &Live,
    ctx: Context<'_>,
) -> Result<Vec<Change>, BackendError> {
    let refuse = |message: String| BackendError::Refused {
        target: target.to_owned(),
        message,
    };
    let change = |kind: &str, name: String, action: Action| Change {
        target: target.to_owned(),
        resource: Resource::new(kind, name),
        action,
        detail: None,
        diff: None,
    };

    refuse_foreign(live, ctx).map_err(refuse)?;
    refuse_unsupported(projects, live).map_err(refuse)?;
    let desired_names: BTreeSet<&str> = projects.iter().map(|p| p.name.as_str()).collect();
    let live_projects: BTreeSet<&str> =
        live.containers.iter().map(|c| c.project.as_str()).collect();
    if projects.is_empty() && !live_projects.is_empty() && !ctx.allow.mass_removal {
        return Err(refuse(format!(
            "the render has no Compose project, and this would remove every project of \
             environment `{}` ({}); if that is intended, set `allow.mass_removal: true` for it",
            ctx.environment,
            live_projects.iter().copied().collect::<Vec<_>>().join(", ")
        )));
    }

    let mut changes = Vec::new();
    let mut services = Vec::new();
    let mut removals = Vec::new();
    let rebuilt = rebuilds(projects, live);

    for p in projects {
        // Networks and volumes first: containers need them.
        let mut recreated_networks = BTreeSet::new();
        for (key, net) in project::networks(p) {
            let existing = live.networks.iter().find(|n| n.name == net.name);
            if net.external {
                if existing.is_none() {
                    return Err(refuse(format!(
                        "external network `{}` (project `{}`) does not exist on the engine; \
                         create it or drop `external: true`",
                        net.name, p.name
                    )));
                }
                continue;
            }
            let mut c = change("network", net.name.clone(), Action::Unchanged);
            match existing {
                None => c.action = Action::Create,
                Some(n) => {
                    let live_text = network_text_live(n, &net);
                    let desired_text = network_text(&net);
                    if live_text != desired_text {
                        if let Some(who) = n.owner.describe()
                            && !adoptable(&n.owner, ctx.owner.adopt)
                        {
                            return Err(refuse(format!(
                                "network `{}` (project `{}`) was created by {who} and differs from \
                                 the desired one; driftless recreates only networks it owns: {}",
                                n.name,
                                p.name,
                                how_to_adopt(&n.owner, ctx.environment)
                            )));
                        }
                        c.action = Action::Recreate {
                            reason: "config changed".into(),
                        };
                        c.detail = Some(
                            "its containers are removed first and recreated with their services"
                                .into(),
                        );
                        c.diff = unified_diff(&live_text, &desired_text, ctx.masker);
                        recreated_networks.insert(key.clone());
                    }
                }
            }
            changes.push(c);
        }
        for vol in p.volumes.values() {
            let existing = live.volumes.iter().find(|v| v.name == vol.name);
            if vol.external {
                if existing.is_none() {
                    return Err(refuse(format!(
                        "external volume `{}` (project `{}`) does not exist on the engine; \
                         create it or drop `external: true`",
                        vol.name, p.name
                    )));
                }
                continue;
            }
            let mut c = change("volume", vol.name.clone(), Action::Unchanged);
            match existing {
                None => c.action = Action::Create,
                Some(v) => {
                    let driver = vol.driver.as_deref().unwrap_or("local");
                    let opts_differ = vol
                        .driver_opts
                        .iter()
                        .any(|(k, val)| v.options.get(k) != Some(val));
                    if v.driver != driver || opts_differ {
                        c.detail = Some(format!(
                            "differs from the live volume (driver `{}`, options {:?}); \
                             named volumes are never recreated, so it is left as it is",
                            v.driver, v.options
                        ));
                    }
                }
            }
            changes.push(c);
        }
        for (volume, dir) in binds::of(p) {
            changes.push(bind_change(target, &volume, &dir, live, ctx));
        }

        let mut replaced: BTreeSet<&str> = BTreeSet::new();
        for name in project::start_order(p) {
            let service = &p.services[name];
            let rebuild = rebuilt.get(service.image.as_str()).map(String::as_str);
            let mut c = service_change(target, p, name, service, live, rebuild, ctx);
            let joins_recreated = project::service_networks(service)
                .iter()
                .any(|n| recreated_networks.contains(n));
            if joins_recreated && matches!(c.action, Action::Unchanged | Action::Update) {
                c.action = Action::Recreate {
                    reason: "network changed".into(),
                };
            }
            // A container sharing another's namespace or volumes holds on to
            // the old container: it goes with it (dependencies come first in
            // start order, so `replaced` already has them).
            if matches!(c.action, Action::Unchanged | Action::Update)
                && let Some(dep) = project::shared_with(service).find(|d| replaced.contains(d))
            {
                c.action = Action::Recreate {
                    reason: "dependency recreated".into(),
                };
                c.detail = Some(format!(
                    "it shares a namespace or volumes with `{dep}`, which is replaced"
                ));
            }
            if matches!(c.action, Action::Create | Action::Recreate { .. }) {
                replaced.insert(name);
            }
            if let Action::Recreate { reason } = &c.action
                && let Some(how) = rollout::decide(service, reason)
            {
                let before = c.detail.take().filter(|d| !d.is_empty());
                c.detail = Some(join_detail([before, Some(how.text())]));
            }
            services.push(c);
        }

        // Services that are live but no longer desired.
        let live_services: BTreeSet<&str> = live
            .containers
            .iter()
            .filter(|c| c.project == p.name)
            .map(|c| c.service.as_str())
            .collect();
        let mut removed = 0;
        let mut counted = live_services.len();
        for s in &live_services {
            if let Some(profiles) = p.disabled_services.get(*s) {
                // Compose leaves a service of an inactive profile alone: it
                // is defined, so not an orphan, and not enabled, so not run.
                counted -= 1;
                services.push(Change {
                    target: target.to_owned(),
                    resource: Resource::new("service", format!("{}/{s}", p.name)),
                    action: Action::Unchanged,
                    detail: Some(format!(
                        "disabled (profiles {} not active); its containers are left as they are",
                        profiles.join(", ")
                    )),
                    diff: None,
                });
            } else if !p.services.contains_key(*s) {
                removed += 1;
                removals.push(orphan_service(target, &p.name, s, live, ctx));
            }
        }
        if removed * 2 > counted && !ctx.allow.mass_removal {
            return Err(refuse(format!(
                "the plan removes {removed} of {} services of project `{}`; if that is intended, \
                 set `allow.mass_removal: true` for environment `{}`",
                counted, p.name, ctx.environment
            )));
        }
    }

    // Projects this environment deployed that it no longer renders.
    for gone in live_projects.difference(&desired_names) {
        if !ctx.allow.mass_removal {
            return Err(refuse(format!(
                "project `{gone}` is no longer rendered and the plan would remove all of its \
                 services; if that is intended, set `allow.mass_removal: true` for environment `{}`",
                ctx.environment
            )));
        }
        let gone_services: BTreeSet<&str> = live
            .containers
            .iter()
            .filter(|c| c.project == *gone)
            .map(|c| c.service.as_str())
            .collect();
        for s in gone_services {
            removals.push(orphan_service(target, gone, s, live, ctx));
        }
    }

    changes.extend(services);
    changes.extend(removals);

    // Networks of ours that no desired project uses any more.
    let desired_networks: BTreeSet<String> = projects
        .iter()
        .flat_map(|p| project::networks(p).into_values().map(|n| n.name))
        .collect();
    for n in &live.networks {
        if !desired_networks.contains(&n.name) && n.owner == Ownership::Ours {
            changes.push(change("network", n.name.clone(), Action::Delete));
        }
    }

    // Named volumes are data: kept unless the environment opts in.
    let desired_volumes: BTreeSet<String> = projects
        .iter()
        .flat_map(|p| {
            p.volumes
                .values()
                .map(|v| v.name.clone())
                .chain(binds::of(p).into_keys())
        })
        .collect();
    for v in &live.volumes {
        if desired_volumes.contains(v.name.as_str()) || v.owner != Ownership::Ours {
            continue;
        }
        let mut c = change("volume", v.name.clone(), Action::Delete);
        if !ctx.allow.prune_volumes {
            c.action = Action::Unchanged;
            c.detail = Some(
                "no longer desired; kept (named volumes are deleted only with \
                 `allow.prune_volumes: true`)"
                    .into(),
            );
        }
        changes.push(c);
    }
    Ok(changes)
}

/// The change for the volume of a bound repo directory: created when
/// missing, updated when its listing differs from the commit's files or
/// cannot be read, else unchanged (nothing is sent). Recreates nothing:
/// containers see the volume change as they see a host directory change.
fn bind_change(
    target: &str,
    volume: &str,
    dir: &binds::BoundDir<'_>,
    live: &Live,
    ctx: Context<'_>,
) -> Change {
    let desired = binds::Listing::of(dir.files);
    let files = |n: usize| format!("{n} file{}", if n == 1 { "" } else { "s" });
    let mut detail = format!(
        "repo directory `{}` ({}), mounted by {}",
        if dir.source.is_empty() {
            "."
        } else {
            dir.source
        },
        files(dir.files.len()),
        dir.services.join(", ")
    );
    let exists = live.volumes.iter().any(|v| v.name == volume);
    let (action, diff) = match live.bind_listings.get(volume) {
        _ if !exists => (Action::Create, None),
        Some(l) if l.digest == desired.digest => (Action::Unchanged, None),
        Some(l) => {
            let f = binds::fill_for(dir.files, Some(l));
            detail.push_str(&format!(
                "; {} written, {} removed (files the containers wrote are kept)",
                files(f.write.len()),
                f.remove.len()
            ));
            (
                Action::Update,
                unified_diff(&l.text(), &desired.text(), ctx.masker),
            )
        }
        None => {
            detail.push_str(
                "; what the volume holds is read when it is filled (no container of ours \
                 mounts it now); with its listing gone every file is written again",
            );
            (Action::Update, None)
        }
    };
    Change {
        target: target.to_owned(),
        resource: Resource::new("bind", volume),
        action,
        detail: Some(detail),
        diff,
    }
}

/// Reference → why its image is built before anything runs it: the
/// references of services with `build:` whose present image was not built
/// from this context and these options. A service that only runs such a
/// reference (`image:` alone) is rebuilt with it.
fn rebuilds<'p>(projects: &'p [Project], live: &Live) -> BTreeMap<&'p str, String> {
    let mut out = BTreeMap::new();
    for s in projects.iter().flat_map(|p| p.services.values()) {
        let present = live.images.contains_key(&s.image);
        if let Some(why) = build::needed(s, live.builds.get(&s.image), present, &live.git_commits) {
            out.entry(s.image.as_str()).or_insert(why);
        }
    }
    out
}

/// The change for one desired service; `rebuild` says why its image is
/// built first, if it is.
fn service_change(
    target: &str,
    p: &Project,
    name: &str,
    service: &Service,
    live: &Live,
    rebuild: Option<&str>,
    ctx: Context<'_>,
) -> Change {
    // A rebuilt image's id is known only once it is built.
    let image_id = live
        .images
        .get(&service.image)
        .map(String::as_str)
        .filter(|_| rebuild.is_none());
    let desired_text = ctx
        .masker
        .mask(&hash::definition_text(service, image_id))
        .into_owned();
    // A replacement an interrupted apply left under its temporary name is
    // removed by the next one, and its replica judged without it.
    let (leftovers, containers): (Vec<&LiveContainer>, Vec<&LiveContainer>) = live
        .service_containers(&p.name, name)
        .partition(|c| rollout::is_temporary(c));
    let mut c = Change {
        target: target.to_owned(),
        resource: Resource::new("service", format!("{}/{name}", p.name)),
        action: Action::Unchanged,
        detail: None,
        diff: None,
    };
    let newer = live.newer_in_registry.get(&service.image);
    let pull = if let Some(why) = rebuild {
        Some(format!("build {} ({why})", service.image))
    } else if image_id.is_none() {
        Some(format!("pull {}", service.image))
    } else {
        newer.map(|digest| {
            format!(
                "pull {} (pull_policy {}: the registry holds {digest})",
                service.image,
                policy_name(service.pull_policy)
            )
        })
    };

    if containers.is_empty() {
        c.action = Action::Create;
        c.detail = Some(join_detail([Some(replicas_text(service.replicas)), pull]));
        c.diff = unified_diff("", &desired_text, ctx.masker);
        return c;
    }

    // Replicas that run the desired definition and image (after a paused
    // update, those it replaced): the apply leaves them, and the diff is
    // the one of the others. Not when a newer image is pulled first.
    let current = |c: &LiveContainer| {
        newer.is_none()
            && image_id.is_some_and(|id| {
                c.image_id == id && hash::hash_matches(c.config_hash.as_deref(), service, id)
            })
    };
    let live_text = containers
        .iter()
        .filter(|c| !current(c))
        .chain(&containers)
        .find_map(|c| c.definition.clone())
        .unwrap_or_default();
    let recreate = |reason: &str| Action::Recreate {
        reason: reason.to_owned(),
    };
    let image_changed = match image_id {
        None => true,
        Some(id) => newer.is_some() || containers.iter().any(|c| c.image_id != id),
    };
    let config_changed = containers.iter().any(|c| {
        !image_id.is_some_and(|id| hash::hash_matches(c.config_hash.as_deref(), service, id))
    });
    let failed: Vec<&&LiveContainer> = containers.iter().filter(|c| !is_up(c, service)).collect();

    let adopted: Vec<&&LiveContainer> = containers
        .iter()
        .filter(|c| c.owner != Ownership::Ours)
        .collect();
    if !adopted.is_empty() {
        // Only reached when the environment may adopt (`refuse_foreign`).
        c.action = recreate("adopted");
        let fields = hash::changed_fields(&live_text, &desired_text);
        let same_config = image_id.is_some_and(|id| {
            adopted
                .iter()
                .all(|a| hash::hash_matches(a.config_hash.as_deref(), service, id))
        });
        let config = if same_config {
            "the same configuration".to_owned()
        } else if !live_text.is_empty() {
            if fields.is_empty() {
                "another configuration".to_owned()
            } else {
                format!("another configuration ({})", fields.join(", "))
            }
        } else {
            "a configuration driftless cannot compare (no driftless definition, and \
             its config hash is another tool's)"
                .to_owned()
        };
        let image = if image_changed {
            "another image"
        } else {
            "the same image"
        };
        let who = adopted[0].owner.describe().unwrap_or_default();
        let names: Vec<&str> = adopted.iter().map(|a| a.name.as_str()).collect();
        c.detail = Some(join_detail([
            Some(format!(
                "adopt {} from {who}: {image}, {config}; recreated so that it carries this \
                 environment's ownership label (Docker cannot relabel a container)",
                names.join(", ")
            )),
            pull,
            scale_text(&containers, service),
        ]));
        c.diff = unified_diff(&live_text, &desired_text, ctx.masker);
        return c;
    }

    if image_changed || config_changed {
        c.action = recreate(&if let Some(why) = rebuild {
            format!("image rebuilt: {why}")
        } else if image_changed {
            "image changed".to_owned()
        } else {
            let fields = hash::changed_fields(&live_text, &desired_text);
            if fields.is_empty() {
                "config changed".to_owned()
            } else {
                format!("config changed: {}", fields.join(", "))
            }
        });
        c.diff = unified_diff(&live_text, &desired_text, ctx.masker);
        let masked_only = c.diff.is_none().then(|| {
            if live_text.is_empty() {
                "live containers carry no driftless definition to diff against".to_owned()
            } else {
                "the change is in a masked (secret) value".to_owned()
            }
        });
        let up_to_date = containers.iter().filter(|c| current(c)).count();
        let rest = (up_to_date > 0).then(|| {
            format!(
                "{up_to_date} of {} replicas already run it and are kept",
                containers.len()
            )
        });
        c.detail = Some(join_detail([
            pull,
            masked_only,
            rest,
            scale_text(&containers, service),
        ]))
        .filter(|d| !d.is_empty());
    } else if !leftovers.is_empty() {
        c.action = recreate("replacement interrupted");
        let names: Vec<&str> = leftovers.iter().map(|l| l.name.as_str()).collect();
        c.detail = Some(join_detail([
            Some(format!("remove {}", names.join(", "))),
            gaps(&containers, service).map(|g| {
                g.iter()
                    .map(|n| {
                        format!(
                            "recreate {}",
                            project::container_name(&p.name, name, service, *n)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            scale_text(&containers, service),
        ]));
    } else if !failed.is_empty() {
        c.action = recreate("container exited");
        let states: Vec<String> = failed
            .iter()
            .map(|f| match (f.state, f.exit_code) {
                (ContainerState::Exited, Some(code)) => {
                    format!("{} exited with code {code}", f.name)
                }
                (state, _) => format!("{} is {}", f.name, state_name(state)),
            })
            .collect();
        c.detail = Some(states.join(", "));
    } else if let Some(gaps) = gaps(&containers, service) {
        c.action = recreate("container missing");
        c.detail = Some(
            gaps.iter()
                .map(|n| {
                    format!(
                        "{} missing",
                        project::container_name(&p.name, name, service, *n)
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        );
    } else if let Some(scale) = scale_text(&containers, service) {
        c.action = Action::Update;
        c.detail = Some(scale);
    }
    c
}

/// Replica numbers missing below the highest live one: containers removed
/// out of band (a missing number above it may as well be a scale up).
fn gaps(containers: &[&LiveContainer], service: &Service) -> Option<Vec<u32>> {
    let numbers: BTreeSet<u32> = containers.iter().map(|c| c.number).collect();
    let highest = numbers.iter().copied().max().unwrap_or(0);
    let gaps: Vec<u32> = (1..highest.min(service.replicas + 1))
        .filter(|n| !numbers.contains(n))
        .collect();
    (!gaps.is_empty()).then_some(gaps)
}

/// `scale 1 → 3` when the live replicas are not exactly numbers 1..=n.
fn scale_text(containers: &[&LiveContainer], service: &Service) -> Option<String> {
    let numbers: BTreeSet<u32> = containers.iter().map(|c| c.number).collect();
    let wanted: BTreeSet<u32> = (1..=service.replicas).collect();
    if numbers == wanted && containers.len() == wanted.len() {
        return None;
    }
    Some(format!("scale {} → {}", containers.len(), service.replicas))
}

/// Whether a container counts as up: running, or — for a one-shot service
/// that is not restarted — exited with code 0 (a finished migration job is
/// done, not broken, and must not run again on every reconcile).
pub(crate) fn is_up(c: &LiveContainer, service: &Service) -> bool {
    match c.state {
        ContainerState::Running | ContainerState::Restarting => true,
        ContainerState::Exited => {
            c.exit_code == Some(0)
                && matches!(
                    service.restart.as_deref(),
                    None | Some("no") | Some("on-failure")
                )
        }
        _ => false,
    }
}

fn state_name(state: ContainerState) -> &'static str {
    match state {
        ContainerState::Created => "created but not started",
        ContainerState::Running => "running",
        ContainerState::Paused => "paused",
        ContainerState::Restarting => "restarting",
        ContainerState::Exited => "exited",
        ContainerState::Dead => "dead",
        ContainerState::Other => "in an unknown state",
    }
}

fn orphan_service(
    target: &str,
    project: &str,
    service: &str,
    live: &Live,
    ctx: Context<'_>,
) -> Change {
    let containers: Vec<&LiveContainer> = live.service_containers(project, service).collect();
    let live_text = containers
        .iter()
        .find_map(|c| c.definition.clone())
        .unwrap_or_default();
    let names = containers
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    // In an adopted project: a service the other tool ran that the
    // desired project does not have.
    let detail = match containers.iter().find_map(|c| c.owner.describe()) {
        Some(who) => format!("not in the desired project; adopt from {who} and remove {names}"),
        None => format!("no longer desired; remove {names}"),
    };
    Change {
        target: target.to_owned(),
        resource: Resource::new("service", format!("{project}/{service}")),
        action: Action::Delete,
        detail: Some(detail),
        diff: unified_diff(&live_text, "", ctx.masker),
    }
}

fn replicas_text(n: u32) -> String {
    if n == 1 {
        "1 replica".to_owned()
    } else {
        format!("{n} replicas")
    }
}

fn join_detail<const N: usize>(parts: [Option<String>; N]) -> String {
    parts.into_iter().flatten().collect::<Vec<_>>().join("; ")
}

/// The compared form of a desired network (what a recreate would change).
/// The settings that came later (`attachable`, IPv6, `ipam`) appear only
/// when set, so a network created before them compares as it did.
pub(crate) fn network_text(net: &Network) -> String {
    let opts: BTreeMap<&String, &String> = net.driver_opts.iter().collect();
    let mut text = format!(
        "driver: {}\ninternal: {}\noptions: {:?}\n",
        net.driver.as_deref().unwrap_or("bridge"),
        net.internal,
        opts
    );
    if net.attachable {
        text.push_str("attachable: true\n");
    }
    if net.enable_ipv6 == Some(true) {
        text.push_str("enable_ipv6: true\n");
    }
    // Only while set, so a network without labels reads as it always did.
    if !net.labels.is_empty() {
        text.push_str(&format!("labels: {:?}\n", net.labels));
    }
    let ipam = &net.ipam;
    if let Some(driver) = &ipam.driver {
        text.push_str(&format!("ipam driver: {driver}\n"));
    }
    if !ipam.options.is_empty() {
        text.push_str(&format!("ipam options: {:?}\n", ipam.options));
    }
    for pool in &ipam.config {
        let mut line = String::from("ipam pool:");
        for (k, v) in [
            ("subnet", &pool.subnet),
            ("ip_range", &pool.ip_range),
            ("gateway", &pool.gateway),
        ] {
            if let Some(v) = v {
                line.push_str(&format!(" {k}={v}"));
            }
        }
        if !pool.aux_addresses.is_empty() {
            line.push_str(&format!(" aux_addresses={:?}", pool.aux_addresses));
        }
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// The live network in the desired network's terms: what the engine chose
/// by itself (a pool when none was asked for, a gateway, the `default` IPAM
/// driver) is left out, so only what the file sets can differ.
fn network_text_live(n: &super::live::LiveNetwork, desired: &Network) -> String {
    let want = &desired.ipam;
    let mut ipam = Ipam {
        driver: want.driver.as_ref().and(
            n.ipam
                .driver
                .clone()
                .filter(|d| d != "default")
                .or(Some("default".into())),
        ),
        options: if want.options.is_empty() {
            BTreeMap::new()
        } else {
            n.ipam.options.clone()
        },
        config: Vec::new(),
    };
    if !want.config.is_empty() {
        ipam.config = n
            .ipam
            .config
            .iter()
            .enumerate()
            .map(|(i, live)| match want.config.get(i) {
                Some(w) => IpamPool {
                    subnet: w.subnet.as_ref().and(live.subnet.clone()),
                    ip_range: w.ip_range.as_ref().and(live.ip_range.clone()),
                    gateway: w.gateway.as_ref().and(live.gateway.clone()),
                    aux_addresses: live.aux_addresses.clone(),
                },
                None => live.clone(),
            })
            .collect();
    }
    // The file's labels: not the ones Compose and driftless add.
    let labels = n
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with("com.docker.compose.") && !k.starts_with("io.driftless."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    network_text(&Network {
        name: n.name.clone(),
        driver: Some(n.driver.clone()),
        internal: n.internal,
        labels,
        driver_opts: n.options.clone(),
        attachable: n.attachable,
        enable_ipv6: Some(n.enable_ipv6),
        ipam,
        ..Network::default()
    })
}

/// The words of a pull policy, for plan details.
fn policy_name(policy: PullPolicy) -> String {
    match policy {
        PullPolicy::Always => "always".into(),
        PullPolicy::Refresh(d) => format!("every {}", crate::duration::format(d)),
        PullPolicy::Never => "never".into(),
        PullPolicy::Build => "build".into(),
        PullPolicy::Missing => "missing".into(),
    }
}

/// Whether `adopt` lets the environment take over what `owner` holds.
fn adoptable(owner: &Ownership, adopt: Adopt) -> bool {
    match owner {
        Ownership::Ours => true,
        Ownership::Unmanaged { .. } => adopt != Adopt::No,
        Ownership::Instance(_) | Ownership::Environment(_) => adopt == Adopt::Any,
    }
}

/// What to do about a project held by `owner`, for a refusal.
fn how_to_adopt(owner: &Ownership, environment: &str) -> String {
    match owner {
        Ownership::Instance(other) => format!(
            "two driftless instances cannot own one project; if `{other}` is this repo under \
             an earlier URL or path, set `instance: {other}` for environment `{environment}` \
             in driftless.yaml to keep the project as it is; otherwise give one of them \
             another project name, or move the project to this one by running \
             `driftless reconcile --env {environment} --adopt` once, which recreates its \
             containers (`adopt: true` in driftless.yaml does not take another instance's \
             project; `--dry-run` shows what would be recreated)"
        ),
        Ownership::Environment(_) => format!(
            "two driftless environments cannot own one project; give one of them another \
             project name, or move the project to this one by running \
             `driftless reconcile --env {environment} --adopt` once (`adopt: true` in \
             driftless.yaml does not take another instance's project; `--dry-run` shows what \
             would be recreated)"
        ),
        _ => format!(
            "to take it over, set `adopt: true` for environment `{environment}` in driftless.yaml \
             or run `driftless reconcile --env {environment} --adopt` (add `--dry-run` to see \
             which containers would be recreated and why), or give the project another name"
        ),
    }
}

/// Refuses a plan for projects of the same name as desired ones whose
/// containers another tool or another driftless instance deployed, unless
/// the environment may adopt them: one line per such project, all at once.
fn refuse_foreign(live: &Live, ctx: Context<'_>) -> Result<(), String> {
    let mut held: BTreeMap<&str, (&Ownership, &str)> = BTreeMap::new();
    for c in &live.containers {
        if !adoptable(&c.owner, ctx.owner.adopt) {
            held.entry(c.project.as_str())
                .or_insert((&c.owner, c.name.as_str()));
        }
    }
    if held.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = held
        .into_iter()
        .map(|(project, (owner, container))| {
            let who = owner.describe().unwrap_or_default();
            format!(
                "project `{project}` is deployed on this engine by {who} (container {container}), \
                 not by this environment (instance `{}`); {}",
                ctx.owner.instance,
                how_to_adopt(owner, ctx.environment)
            )
        })
        .collect();
    Err(lines.join("\n"))
}

/// What the engine or the policy cannot do, refused before anything is
/// planned: keys the engine's API version does not know (docker compose
/// refuses `healthcheck.start_interval` the same way), and images that
/// `pull_policy: never` forbids pulling.
fn refuse_unsupported(projects: &[Project], live: &Live) -> Result<(), String> {
    for p in projects {
        for (name, s) in &p.services {
            if s.pull_policy == PullPolicy::Never
                && s.build.is_none()
                && !live.images.contains_key(&s.image)
            {
                return Err(format!(
                    "service {}/{name}: image {} is not present and `pull_policy: never` forbids pulling it; \
                     load it onto the engine or change the policy",
                    p.name, s.image
                ));
            }
        }
        let Some(have) = live.api_version else {
            continue;
        };
        for (key, need) in spec::api_requirements(p) {
            if have < need {
                return Err(format!(
                    "{key} needs Docker Engine API {}.{} or later; this engine speaks {}.{}, \
                     and would ignore or refuse it",
                    need.0, need.1, have.0, have.1
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::compose::live::{LiveNetwork, LiveVolume};
    use crate::manifest::Allow;
    use crate::model::compose::Volume;
    use crate::secrets::Masker;

    const IMG: &str = "sha256:1111";

    fn project() -> Project {
        let svc = |env: &str| Service {
            image: "app:1".into(),
            environment: [("MODE".to_owned(), Some(env.to_owned()))].into(),
            replicas: 1,
            ..Service::default()
        };
        Project {
            disabled_services: Default::default(),
            name: "shop".into(),
            services: [
                ("api".to_owned(), svc("api")),
                ("web".to_owned(), svc("web")),
                ("db".to_owned(), svc("db")),
            ]
            .into(),
            networks: BTreeMap::new(),
            volumes: [(
                "data".to_owned(),
                Volume {
                    name: "shop_data".into(),
                    ..Volume::default()
                },
            )]
            .into(),
            origin: Default::default(),
        }
    }

    fn container(p: &Project, service: &str, number: u32) -> LiveContainer {
        let s = &p.services[service];
        LiveContainer {
            id: format!("id-{service}-{number}"),
            name: format!("{}-{service}-{number}", p.name),
            project: p.name.clone(),
            service: service.into(),
            number,
            state: ContainerState::Running,
            exit_code: None,
            image_id: IMG.into(),
            config_hash: Some(hash::config_hash(s, IMG)),
            owner: Ownership::Ours,
            definition: Some(hash::definition_text(s, Some(IMG))),
            labels: BTreeMap::new(),
        }
    }

    /// Live state exactly as an apply of `p` leaves it.
    fn deployed(p: &Project) -> Live {
        Live {
            containers: p.services.keys().map(|s| container(p, s, 1)).collect(),
            networks: vec![LiveNetwork {
                id: "n1".into(),
                name: "shop_default".into(),
                project: Some("shop".into()),
                key: Some("default".into()),
                owner: Ownership::Ours,
                driver: "bridge".into(),
                internal: false,
                labels: BTreeMap::new(),
                options: BTreeMap::new(),
                attachable: false,
                enable_ipv6: false,
                ipam: Ipam::default(),
            }],
            volumes: vec![LiveVolume {
                name: "shop_data".into(),
                project: Some("shop".into()),
                key: Some("data".into()),
                owner: Ownership::Ours,
                driver: "local".into(),
                labels: BTreeMap::new(),
                options: BTreeMap::new(),
            }],
            images: [("app:1".to_owned(), IMG.to_owned())].into(),
            ..Live::default()
        }
    }

    fn run(projects: &[Project], live: &Live, allow: &Allow) -> Result<Vec<Change>, BackendError> {
        run_adopting(projects, live, allow, Adopt::No)
    }

    fn run_adopting(
        projects: &[Project],
        live: &Live,
        allow: &Allow,
        adopt: Adopt,
    ) -> Result<Vec<Change>, BackendError> {
        let masker = Masker::from_values(["supersecret"]);
        plan(
            "local",
            projects,
            live,
            Context {
                environment: "dev",
                masker: &masker,
                allow,
                owner: crate::backend::Owner {
                    instance: "dev@github.com/acme/a",
                    adopt,
                },
                progress: None,
            },
        )
    }

    fn actions(changes: &[Change]) -> Vec<(String, Action)> {
        changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .map(|c| (c.resource.name.clone(), c.action.clone()))
            .collect()
    }

    #[test]
    fn first_deploy_creates_network_volume_then_services_with_planned_pulls() {
        let p = project();
        let changes = run(&[p], &Live::default(), &Allow::default()).unwrap();
        let names: Vec<_> = changes.iter().map(|c| c.resource.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "shop_default",
                "shop_data",
                "shop/api",
                "shop/db",
                "shop/web"
            ]
        );
        assert!(changes.iter().all(|c| c.action == Action::Create));
        assert_eq!(changes[2].detail.as_deref(), Some("1 replica; pull app:1"));
        assert!(
            changes[2]
                .diff
                .as_ref()
                .unwrap()
                .contains("+image: app:1\n")
        );
    }

    #[test]
    fn deployed_state_plans_no_change_and_twice_the_same() {
        let p = project();
        let live = deployed(&p);
        let a = run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap();
        assert!(actions(&a).is_empty(), "{a:#?}");
        let b = run(&[p], &live, &Allow::default()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn env_change_recreates_only_that_service_with_a_masked_diff() {
        let mut p = project();
        let live = deployed(&p);
        p.services
            .get_mut("api")
            .unwrap()
            .environment
            .insert("TOKEN".into(), Some("supersecret".into()));
        let changes = run(&[p], &live, &Allow::default()).unwrap();
        let acts = actions(&changes);
        assert_eq!(
            acts,
            [(
                "shop/api".to_owned(),
                Action::Recreate {
                    reason: "config changed".into()
                }
            )]
        );
        let diff = changes
            .iter()
            .find(|c| c.resource.name == "shop/api")
            .unwrap()
            .diff
            .clone()
            .unwrap();
        assert!(diff.contains("+  TOKEN: ******\n"), "{diff}");
        assert!(!diff.contains("supersecret"));
    }

    #[test]
    fn image_change_exited_and_scale() {
        let p = project();
        let mut live = deployed(&p);
        live.images.insert("app:1".into(), "sha256:2222".into());
        let acts = actions(&run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap());
        assert_eq!(acts.len(), 3);
        assert!(acts.iter().all(|(_, a)| *a
            == Action::Recreate {
                reason: "image changed".into()
            }));

        let mut live = deployed(&p);
        live.containers[0].state = ContainerState::Exited;
        live.containers[0].exit_code = Some(137);
        let changes = run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap();
        let api = changes
            .iter()
            .find(|c| c.resource.name == "shop/api")
            .unwrap();
        assert_eq!(
            api.action,
            Action::Recreate {
                reason: "container exited".into()
            }
        );
        assert_eq!(
            api.detail.as_deref(),
            Some("shop-api-1 exited with code 137")
        );

        let mut scaled = p.clone();
        scaled.services.get_mut("web").unwrap().replicas = 3;
        let changes = run(&[scaled], &deployed(&p), &Allow::default()).unwrap();
        let web = changes
            .iter()
            .find(|c| c.resource.name == "shop/web")
            .unwrap();
        assert_eq!(
            (web.action.clone(), web.detail.as_deref()),
            (Action::Update, Some("scale 1 → 3"))
        );
    }

    #[test]
    fn each_replaced_service_says_its_order_and_why() {
        use crate::model::compose::{Mount, Port};
        let mut p = project();
        p.services.get_mut("api").unwrap().container_name = Some("api".into());
        p.services.get_mut("web").unwrap().ports = vec![Port {
            host_ip: None,
            published: Some("8080".into()),
            target: 80,
            protocol: "tcp".into(),
        }];
        p.services.get_mut("db").unwrap().volumes = vec![Mount::Volume {
            subpath: None,
            source: Some("data".into()),
            target: "/data".into(),
            read_only: false,
            no_copy: false,
        }];
        let mut stateless = p.services["web"].clone();
        stateless.ports.clear();
        stateless.replicas = 2;
        p.services.insert("front".into(), stateless);
        let mut live = deployed(&p);
        live.containers.push(container(&p, "front", 2));
        live.images.insert("app:1".into(), "sha256:2222".into());
        let changes = run(&[p], &live, &Allow::default()).unwrap();
        let detail = |name: &str| {
            changes
                .iter()
                .find(|c| c.resource.name == name)
                .and_then(|c| c.detail.clone())
                .unwrap()
        };
        assert_eq!(
            detail("shop/api"),
            "stop-first, 1 at a time (`container_name: api`: two containers cannot hold one name)"
        );
        assert_eq!(
            detail("shop/web"),
            "stop-first, 1 at a time (publishes fixed host port 8080: two containers cannot bind it)"
        );
        assert!(
            detail("shop/db")
                .starts_with("stop-first, 1 at a time (mounts named volume `data` read-write"),
            "{}",
            detail("shop/db")
        );
        assert_eq!(
            detail("shop/front"),
            "start-first, 1 at a time (no container_name, fixed host port or address, or read-write named volume)"
        );
    }

    #[test]
    fn a_leftover_temporary_replacement_is_removed_and_its_replica_recreated() {
        let mut p = project();
        p.services.get_mut("web").unwrap().replicas = 2;
        let mut live = deployed(&p);
        // Killed after the old shop-web-2 was removed, before the rename.
        let mut next = container(&p, "web", 2);
        next.name = rollout::temporary_name("shop-web-2");
        next.labels
            .insert(super::super::labels::TEMPORARY.into(), next.name.clone());
        live.containers.push(next);
        let changes = run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap();
        let web = changes
            .iter()
            .find(|c| c.resource.name == "shop/web")
            .unwrap();
        assert_eq!(
            web.action,
            Action::Recreate {
                reason: "replacement interrupted".into()
            }
        );
        assert_eq!(
            web.detail.as_deref(),
            Some("remove shop-web-2-driftless-next; scale 1 → 2")
        );
        // Killed before the old one was stopped: only the leftover goes.
        let mut both = live.clone();
        both.containers.push(container(&p, "web", 2));
        let changes = run(&[p], &both, &Allow::default()).unwrap();
        let web = changes
            .iter()
            .find(|c| c.resource.name == "shop/web")
            .unwrap();
        assert_eq!(
            web.detail.as_deref(),
            Some("remove shop-web-2-driftless-next")
        );
    }

    #[test]
    fn a_replica_removed_out_of_band_is_a_missing_container() {
        let mut p = project();
        p.services.get_mut("web").unwrap().replicas = 3;
        let mut live = deployed(&p);
        live.containers.push(container(&p, "web", 3));
        let changes = run(&[p], &live, &Allow::default()).unwrap();
        let web = changes
            .iter()
            .find(|c| c.resource.name == "shop/web")
            .unwrap();
        assert_eq!(
            web.action,
            Action::Recreate {
                reason: "container missing".into()
            }
        );
        assert_eq!(web.detail.as_deref(), Some("shop-web-2 missing"));
    }

    #[test]
    fn a_completed_one_shot_job_is_left_alone() {
        let p = project();
        let mut live = deployed(&p);
        live.containers[0].state = ContainerState::Exited;
        live.containers[0].exit_code = Some(0);
        assert!(actions(&run(&[p], &live, &Allow::default()).unwrap()).is_empty());
    }

    #[test]
    fn a_bound_directory_is_one_volume_updated_in_place() {
        use crate::model::compose::{ContextFile, Mount};
        let files = |text: &str| -> std::sync::Arc<[ContextFile]> {
            vec![ContextFile {
                path: "app.conf".into(),
                mode: 0o644,
                content: std::sync::Arc::from(text.as_bytes()),
            }]
            .into()
        };
        let with_dir = |text: &str| {
            let mut p = project();
            for s in p.services.values_mut() {
                s.volumes.push(Mount::RepoDir {
                    source: "compose/shared".into(),
                    target: "/shared".into(),
                    read_only: false,
                    files: files(text),
                });
            }
            p
        };
        let volume = binds::volume_name("shop", "compose/shared");
        let bind = |changes: &[Change]| -> Vec<Change> {
            changes
                .iter()
                .filter(|c| c.resource.kind == "bind")
                .cloned()
                .collect()
        };
        let v1 = with_dir("v1");
        // First deploy: one volume for both services, before them.
        let changes = run(
            std::slice::from_ref(&v1),
            &Live::default(),
            &Allow::default(),
        )
        .unwrap();
        let first = bind(&changes);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].resource.name, volume);
        assert_eq!(first[0].action, Action::Create);
        let detail = first[0].detail.as_deref().unwrap();
        assert!(
            detail.contains("`compose/shared`") && detail.contains("api, db, web"),
            "{detail}"
        );
        let at = |kind: &str| {
            changes
                .iter()
                .position(|c| c.resource.kind == kind)
                .unwrap()
        };
        assert!(at("bind") < at("service"));

        let mut live = deployed(&v1);
        live.volumes.push(LiveVolume {
            name: volume.clone(),
            project: Some("shop".into()),
            key: None,
            owner: Ownership::Ours,
            driver: "local".into(),
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
        });
        live.bind_listings
            .insert(volume.clone(), binds::Listing::of(&files("v1")));
        // Same content: nothing to send, nothing recreated.
        let changes = run(std::slice::from_ref(&v1), &live, &Allow::default()).unwrap();
        assert!(
            changes.iter().all(|c| c.action == Action::Unchanged),
            "{changes:#?}"
        );

        // Changed content: the volume is updated, no service recreated.
        let changes = run(&[with_dir("v2")], &live, &Allow::default()).unwrap();
        let update = bind(&changes);
        assert_eq!(update[0].action, Action::Update);
        assert!(update[0].diff.as_deref().unwrap().contains("app.conf"));
        assert!(
            changes
                .iter()
                .filter(|c| c.resource.kind == "service")
                .all(|c| c.action == Action::Unchanged)
        );

        // A listing that cannot be read: written again, said so.
        live.bind_listings.clear();
        let changes = run(std::slice::from_ref(&v1), &live, &Allow::default()).unwrap();
        let unknown = bind(&changes);
        assert_eq!(unknown[0].action, Action::Update);
        assert!(
            unknown[0]
                .detail
                .as_deref()
                .unwrap()
                .contains("read when it is filled")
        );

        // No longer bound: kept like a named volume unless pruning is allowed.
        let changes = run(&[project()], &live, &Allow::default()).unwrap();
        let kept = changes.iter().find(|c| c.resource.name == volume).unwrap();
        assert_eq!(
            (kept.resource.kind.as_str(), &kept.action),
            ("volume", &Action::Unchanged)
        );
        let allow = Allow {
            prune_volumes: true,
            ..Allow::default()
        };
        let changes = run(&[project()], &live, &allow).unwrap();
        let pruned = changes.iter().find(|c| c.resource.name == volume).unwrap();
        assert_eq!(pruned.action, Action::Delete);
    }

    #[test]
    fn removed_service_is_deleted_and_its_volume_kept() {
        let mut p = project();
        let live = deployed(&p);
        p.services.remove("web");
        p.volumes.clear();
        let changes = run(&[p], &live, &Allow::default()).unwrap();
        assert_eq!(actions(&changes), [("shop/web".to_owned(), Action::Delete)]);
        let vol = changes
            .iter()
            .find(|c| c.resource.name == "shop_data")
            .unwrap();
        assert_eq!(vol.action, Action::Unchanged);
        assert!(vol.detail.as_deref().unwrap().contains("kept"), "{vol:?}");

        let mut p = project();
        p.services.remove("web");
        p.volumes.clear();
        let allow = Allow {
            prune_volumes: true,
            ..Allow::default()
        };
        let changes = run(&[p], &live, &allow).unwrap();
        assert_eq!(
            actions(&changes).last().unwrap(),
            &("shop_data".to_owned(), Action::Delete)
        );
    }

    #[test]
    fn mass_removal_is_refused_unless_allowed() {
        let mut p = project();
        let live = deployed(&p);
        p.services.remove("web");
        p.services.remove("db");
        let err = run(std::slice::from_ref(&p), &live, &Allow::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("removes 2 of 3 services of project `shop`"),
            "{err}"
        );
        assert!(err.contains("allow.mass_removal"), "{err}");
        let allow = Allow {
            mass_removal: true,
            ..Allow::default()
        };
        assert_eq!(actions(&run(&[p], &live, &allow).unwrap()).len(), 2);

        let err = run(&[], &live, &Allow::default()).unwrap_err().to_string();
        assert!(err.contains("no Compose project"), "{err}");
    }

    #[test]
    fn a_service_of_an_inactive_profile_is_neither_created_nor_pruned() {
        let mut p = project();
        let live = deployed(&p);
        // `web` and `db` move to a profile that is not active: their running
        // containers are left alone (and do not count as a mass removal).
        for s in ["web", "db"] {
            p.services.remove(s);
            p.disabled_services.insert(s.into(), vec!["extra".into()]);
        }
        let changes = run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap();
        assert!(actions(&changes).is_empty(), "{changes:#?}");
        let web = changes
            .iter()
            .find(|c| c.resource.name == "shop/web")
            .unwrap();
        assert!(
            web.detail
                .as_deref()
                .unwrap()
                .contains("profiles extra not active"),
            "{web:?}"
        );
        // Not deployed yet: nothing is created for them.
        let changes = run(&[p], &Live::default(), &Allow::default()).unwrap();
        let names: Vec<_> = actions(&changes).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["shop_default", "shop_data", "shop/api"]);
    }

    #[test]
    fn network_config_change_recreates_it_and_its_services() {
        let mut p = project();
        let live = deployed(&p);
        p.networks.insert(
            "default".into(),
            Network {
                name: "shop_default".into(),
                internal: true,
                ..Network::default()
            },
        );
        let changes = run(&[p], &live, &Allow::default()).unwrap();
        let acts = actions(&changes);
        assert_eq!(
            acts[0],
            (
                "shop_default".to_owned(),
                Action::Recreate {
                    reason: "config changed".into()
                }
            )
        );
        assert_eq!(acts.len(), 4);
        assert_eq!(
            acts[1].1,
            Action::Recreate {
                reason: "network changed".into()
            }
        );
    }

    #[test]
    fn a_project_of_another_environment_is_not_taken_over() {
        let p = project();
        let mut live = deployed(&p);
        live.containers[0].owner = Ownership::Environment("prod".into());
        let err = run(&[p], &live, &Allow::default()).unwrap_err().to_string();
        assert!(
            err.contains("deployed on this engine by driftless environment `prod`"),
            "{err}"
        );
    }

    /// `p` as `docker-compose 1.29.2 up -d` leaves it: same names, its own
    /// config hashes, no driftless labels.
    fn started_by_compose(p: &Project) -> Live {
        let mut live = deployed(p);
        for c in &mut live.containers {
            c.owner = Ownership::Unmanaged {
                version: Some("1.29.2".into()),
            };
            c.config_hash = Some("0f3c-compose-hash".into());
            c.definition = None;
        }
        for n in &mut live.networks {
            n.owner = Ownership::Unmanaged {
                version: Some("1.29.2".into()),
            };
        }
        for v in &mut live.volumes {
            v.owner = Ownership::Unmanaged {
                version: Some("1.29.2".into()),
            };
        }
        live
    }

    #[test]
    fn a_project_another_tool_started_is_refused_with_how_to_adopt_it() {
        let p = project();
        let live = started_by_compose(&p);
        let err = run(std::slice::from_ref(&p), &live, &Allow::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("project `shop` is deployed on this engine by docker-compose 1.29.2"),
            "{err}"
        );
        assert!(err.contains("`adopt: true`"), "{err}");
        assert!(err.contains("--adopt"), "{err}");
        assert_eq!(err.lines().count(), 1, "one line per project: {err}");
    }

    #[test]
    fn adopting_recreates_each_container_and_keeps_the_network_and_volume() {
        let p = project();
        let live = started_by_compose(&p);
        let changes = run_adopting(
            std::slice::from_ref(&p),
            &live,
            &Allow::default(),
            Adopt::Unmanaged,
        )
        .unwrap();
        let acts = actions(&changes);
        assert_eq!(
            acts.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["shop/api", "shop/db", "shop/web"]
        );
        assert!(
            acts.iter().all(|(_, a)| *a
                == Action::Recreate {
                    reason: "adopted".into()
                }),
            "{acts:?}"
        );
        let api = changes
            .iter()
            .find(|c| c.resource.name == "shop/api")
            .unwrap();
        let detail = api.detail.as_deref().unwrap();
        assert!(
            detail.starts_with("adopt shop-api-1 from docker-compose 1.29.2: the same image, a configuration driftless cannot compare"),
            "{detail}"
        );
        // A service the compose project ran that the file no longer has
        // goes too, saying it was adopted.
        let mut extra = live.clone();
        let mut old = extra.containers[0].clone();
        old.service = "cron".into();
        old.name = "shop_cron_1".into();
        extra.containers.push(old);
        let changes = run_adopting(
            std::slice::from_ref(&p),
            &extra,
            &Allow::default(),
            Adopt::Unmanaged,
        )
        .unwrap();
        let cron = changes
            .iter()
            .find(|c| c.resource.name == "shop/cron")
            .unwrap();
        assert_eq!(cron.action, Action::Delete);
        assert_eq!(
            cron.detail.as_deref(),
            Some(
                "not in the desired project; adopt from docker-compose 1.29.2 and remove shop_cron_1"
            )
        );
        // Once recreated, the containers are the environment's own.
        let mut after = live.clone();
        for c in &mut after.containers {
            *c = container(&p, &c.service, 1);
        }
        assert!(actions(&run(&[p], &after, &Allow::default()).unwrap()).is_empty());
    }

    #[test]
    fn what_another_tool_created_is_never_pruned() {
        let p = project();
        let mut live = started_by_compose(&p);
        live.containers.clear();
        // The project is no longer rendered: its network and volume are
        // not this environment's, so nothing is deleted, even when allowed.
        let allow = Allow {
            prune_volumes: true,
            mass_removal: true,
            ..Allow::default()
        };
        assert!(actions(&run(&[], &live, &allow).unwrap()).is_empty());
        let mut ours = deployed(&p);
        ours.containers.clear();
        assert_eq!(actions(&run(&[], &ours, &allow).unwrap()).len(), 2);
    }

    #[test]
    fn a_differing_network_another_tool_created_is_not_recreated_without_adopt() {
        let mut p = project();
        let mut live = started_by_compose(&p);
        live.containers.clear();
        p.networks.insert(
            "default".into(),
            Network {
                name: "shop_default".into(),
                internal: true,
                ..Network::default()
            },
        );
        let err = run(std::slice::from_ref(&p), &live, &Allow::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "network `shop_default` (project `shop`) was created by docker-compose 1.29.2"
            ),
            "{err}"
        );
        let changes = run_adopting(&[p], &live, &Allow::default(), Adopt::Unmanaged).unwrap();
        assert_eq!(
            actions(&changes)[0],
            (
                "shop_default".to_owned(),
                Action::Recreate {
                    reason: "config changed".into()
                }
            )
        );
    }

    #[test]
    fn another_instances_project_needs_the_one_time_flag() {
        let p = project();
        let mut live = deployed(&p);
        for c in &mut live.containers {
            c.owner = Ownership::Instance("dev@github.com/acme/b".into());
        }
        for adopt in [Adopt::No, Adopt::Unmanaged] {
            let err = run_adopting(std::slice::from_ref(&p), &live, &Allow::default(), adopt)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("by another driftless instance, `dev@github.com/acme/b`"),
                "{err}"
            );
            assert!(
                err.contains(
                    "`adopt: true` in driftless.yaml does not take another instance's project"
                ),
                "{err}"
            );
            assert!(
                err.contains("set `instance: dev@github.com/acme/b` for environment `dev`"),
                "{err}"
            );
        }
        let changes = run_adopting(&[p], &live, &Allow::default(), Adopt::Any).unwrap();
        let api = changes
            .iter()
            .find(|c| c.resource.name == "shop/api")
            .unwrap();
        assert_eq!(
            api.action,
            Action::Recreate {
                reason: "adopted".into()
            }
        );
        assert!(
            api.detail
                .as_deref()
                .unwrap()
                .contains("the same image, the same configuration"),
            "{api:?}"
        );
    }

    #[test]
    fn keys_the_engine_does_not_know_are_refused_before_planning() {
        let mut p = project();
        p.services.get_mut("api").unwrap().annotations = [("a".to_owned(), "b".to_owned())].into();
        let mut live = deployed(&p);
        live.api_version = Some((1, 41));
        let err = run(std::slice::from_ref(&p), &live, &Allow::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("services.api.annotations needs Docker Engine API 1.43 or later; this engine speaks 1.41"),
            "{err}"
        );
        live.api_version = Some((1, 44));
        assert!(run(&[p], &live, &Allow::default()).is_ok());
    }

    #[test]
    fn pull_policies_never_and_always() {
        let mut p = project();
        p.services.get_mut("api").unwrap().pull_policy = PullPolicy::Never;
        let mut live = deployed(&p);
        assert!(
            actions(&run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap()).is_empty()
        );
        live.images.clear();
        let err = run(std::slice::from_ref(&p), &live, &Allow::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`pull_policy: never` forbids pulling it"),
            "{err}"
        );

        // The registry holds another image: a recreate that says so.
        let mut p = project();
        p.services.get_mut("web").unwrap().pull_policy = PullPolicy::Always;
        let mut live = deployed(&p);
        assert!(
            actions(&run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap()).is_empty()
        );
        live.newer_in_registry
            .insert("app:1".into(), "sha256:feed".into());
        let changes = run(&[p], &live, &Allow::default()).unwrap();
        let web = changes
            .iter()
            .find(|c| c.resource.name == "shop/web")
            .unwrap();
        assert_eq!(
            web.action,
            Action::Recreate {
                reason: "image changed".into()
            }
        );
        assert!(
            web.detail
                .as_deref()
                .unwrap()
                .contains("pull app:1 (pull_policy always: the registry holds sha256:feed)"),
            "{web:?}"
        );
    }

    #[test]
    fn a_service_sharing_a_namespace_goes_with_the_one_it_shares() {
        let mut p = project();
        let web = p.services.get_mut("web").unwrap();
        web.network_mode = Some("service:api".into());
        web.depends_on.insert(
            "api".into(),
            crate::model::compose::Dependency {
                condition: crate::model::compose::DependencyCondition::ServiceStarted,
                restart: true,
                required: true,
            },
        );
        let live = deployed(&p);
        assert!(
            actions(&run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap()).is_empty()
        );
        p.services
            .get_mut("api")
            .unwrap()
            .environment
            .insert("X".into(), Some("1".into()));
        let changes = run(&[p], &live, &Allow::default()).unwrap();
        let acts = actions(&changes);
        assert_eq!(
            acts,
            [
                (
                    "shop/api".to_owned(),
                    Action::Recreate {
                        reason: "config changed: environment".into()
                    }
                ),
                (
                    "shop/web".to_owned(),
                    Action::Recreate {
                        reason: "dependency recreated".into()
                    }
                ),
            ]
        );
    }

    /// The diff of `shop_default`, which the plan recreates because its
    /// config changed.
    fn recreated_default_network(changes: &[Change]) -> String {
        let net = changes
            .iter()
            .find(|c| c.resource.name == "shop_default")
            .unwrap();
        assert_eq!(
            net.action,
            Action::Recreate {
                reason: "config changed".into()
            }
        );
        net.diff.clone().unwrap()
    }

    /// A network's `labels:` in the file are compared with the live ones
    /// (not the Compose and driftless labels): changing them recreates the
    /// network, as any other network setting does.
    #[test]
    fn network_labels_from_the_file_are_compared() {
        let mut p = project();
        let mut live = deployed(&p);
        live.networks[0].labels = [
            (super::super::labels::PROJECT.to_owned(), "shop".to_owned()),
            (
                super::super::labels::ENVIRONMENT.to_owned(),
                "dev".to_owned(),
            ),
        ]
        .into();
        assert!(
            actions(&run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap()).is_empty(),
            "only Compose's and driftless's own labels: unchanged"
        );
        let team = [("com.example.team".to_owned(), "shop".to_owned())];
        p.networks.insert(
            "default".into(),
            Network {
                name: "shop_default".into(),
                labels: team.clone().into(),
                ..Network::default()
            },
        );
        let changes = run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap();
        let diff = recreated_default_network(&changes);
        assert!(
            diff.contains("+labels: {\"com.example.team\": \"shop\"}"),
            "{diff}"
        );
        live.networks[0].labels.extend(team);
        assert!(actions(&run(&[p], &live, &Allow::default()).unwrap()).is_empty());
    }

    #[test]
    fn ipam_compares_what_the_file_sets_not_what_the_engine_chose() {
        let mut p = project();
        let mut live = deployed(&p);
        // The engine picked a pool and a gateway by itself.
        live.networks[0].ipam = Ipam {
            driver: Some("default".into()),
            config: vec![IpamPool {
                subnet: Some("172.18.0.0/16".into()),
                gateway: Some("172.18.0.1".into()),
                ..IpamPool::default()
            }],
            options: BTreeMap::new(),
        };
        assert!(
            actions(&run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap()).is_empty()
        );

        p.networks.insert(
            "default".into(),
            Network {
                name: "shop_default".into(),
                ipam: Ipam {
                    config: vec![IpamPool {
                        subnet: Some("172.18.0.0/16".into()),
                        ..IpamPool::default()
                    }],
                    ..Ipam::default()
                },
                ..Network::default()
            },
        );
        assert!(
            actions(&run(std::slice::from_ref(&p), &live, &Allow::default()).unwrap()).is_empty()
        );

        p.networks.get_mut("default").unwrap().ipam.config[0].subnet = Some("172.30.0.0/16".into());
        let changes = run(&[p], &live, &Allow::default()).unwrap();
        let diff = recreated_default_network(&changes);
        assert!(diff.contains("-ipam pool: subnet=172.18.0.0/16"), "{diff}");
        assert!(diff.contains("+ipam pool: subnet=172.30.0.0/16"), "{diff}");
    }
}
