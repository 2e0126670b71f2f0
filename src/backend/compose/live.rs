//! Live state: what the engine runs for the projects of one environment.
//!
//! Owns the read side. [`read`] makes exactly four list calls — containers,
//! networks, volumes, images — whatever the number of services (plus one
//! archive read per bound repo directory, [`binds::read_listings`]), and
//! [`Live::from_listings`] turns their answers into plain data that the pure
//! planner consumes (and that unit tests build by hand).
//!
//! It also decides what of the engine is the environment's ([`Ownership`]):
//! resources carrying its instance label, and — from before instance
//! labels — those with its environment label in a project it renders.
//! Resources of a rendered project that someone else deployed are listed
//! with who that is, for the planner to refuse or adopt; anything else on
//! the engine is not listed at all, so it is never changed or pruned.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::Docker;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum, ImageSummary, Network, Volume};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder,
};
use futures_util::TryFutureExt;

use super::build::BuiltImage;
use super::connect::{EngineError, failed};
use super::{binds, image, labels};
use crate::model::compose::{BuildContext, Ipam, IpamPool, Project, PullPolicy, Service};

/// The live state relevant to one environment on one engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    /// Containers of the desired projects (whoever owns them) and of
    /// projects this environment deployed before (found by its instance
    /// label), one-off containers (`compose run`) excluded.
    pub containers: Vec<LiveContainer>,
    pub networks: Vec<LiveNetwork>,
    pub volumes: Vec<LiveVolume>,
    /// Desired image reference → image id, for the references present.
    pub images: BTreeMap<String, String>,
    /// Image id → the registry digests it is known by (`RepoDigests`).
    pub image_digests: BTreeMap<String, Vec<String>>,
    /// Desired references whose pull policy asked the registry, and the
    /// registry holds another image than the local one: reference → digest.
    pub newer_in_registry: BTreeMap<String, String>,
    /// The engine API version of the connection (`None`: not known).
    pub api_version: Option<(u32, u32)>,
    /// Desired references of services with `build:` that are present →
    /// what their image was built from (its build labels).
    pub builds: BTreeMap<String, BuiltImage>,
    /// Volume of a bound repo directory → what it holds of the repo, for
    /// the existing ones whose listing a container could read.
    pub bind_listings: BTreeMap<String, binds::Listing>,
    /// Git URL build context → the commit its ref names now, for the
    /// remotes that answered ([`resolve_git_contexts`]).
    pub git_commits: BTreeMap<String, String>,
}

/// A container as listed (no inspect).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveContainer {
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    pub project: String,
    pub service: String,
    /// `com.docker.compose.container-number` (0 when missing).
    pub number: u32,
    pub state: ContainerState,
    /// Exit code parsed from the status text of an exited container.
    pub exit_code: Option<i64>,
    pub image_id: String,
    pub config_hash: Option<String>,
    pub owner: Ownership,
    /// The masked readable definition it was created from.
    pub definition: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LiveNetwork {
    pub id: String,
    pub name: String,
    /// Compose project and key (`com.docker.compose.network`), when labelled.
    pub project: Option<String>,
    pub key: Option<String>,
    pub owner: Ownership,
    pub driver: String,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    pub attachable: bool,
    pub enable_ipv6: bool,
    /// As the engine reports it (pools it chose itself included).
    pub ipam: Ipam,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LiveVolume {
    pub name: String,
    pub project: Option<String>,
    pub key: Option<String>,
    pub owner: Ownership,
    pub driver: String,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

/// Whose a live resource is, as its labels tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// This environment's: it carries the environment's instance label,
    /// or (deployed before instance labels) its environment label and
    /// belongs to a project the environment renders. Such a resource keeps
    /// the old labels until it is next recreated for a reason of its own:
    /// Docker cannot relabel a container, network or volume in place.
    Ours,
    /// Another driftless instance's (its instance label).
    Instance(String),
    /// A driftless environment's from before instance labels, another one
    /// than this (its environment label).
    Environment(String),
    /// Not driftless's: docker compose or another tool created it, with
    /// the `com.docker.compose.version` it wrote, if any.
    Unmanaged { version: Option<String> },
}

impl Ownership {
    /// Who the resource belongs to, or `None` when it is not the
    /// environment's and not of a project it renders (`desired`): then it
    /// is none of the environment's business.
    pub fn of(
        labels: &BTreeMap<String, String>,
        environment: &str,
        instance: &str,
        desired: bool,
    ) -> Option<Ownership> {
        let owner = match (
            labels.get(labels::INSTANCE),
            labels.get(labels::ENVIRONMENT),
        ) {
            (Some(i), _) if i == instance => return Some(Ownership::Ours),
            (Some(i), _) => Ownership::Instance(i.clone()),
            (None, Some(e)) if e == environment => Ownership::Ours,
            (None, Some(e)) => Ownership::Environment(e.clone()),
            (None, None) => Ownership::Unmanaged {
                version: labels.get(labels::VERSION).cloned(),
            },
        };
        desired.then_some(owner)
    }

    /// Who deployed it, in words (`None` for this environment).
    pub fn describe(&self) -> Option<String> {
        match self {
            Ownership::Ours => None,
            Ownership::Instance(i) => Some(format!("another driftless instance, `{i}`")),
            Ownership::Environment(e) => Some(format!("driftless environment `{e}`")),
            // 1.x is the Python `docker-compose`, later ones the plugin.
            Ownership::Unmanaged { version: Some(v) } if v.starts_with("1.") => {
                Some(format!("docker-compose {v}"))
            }
            Ownership::Unmanaged { version: Some(v) } => Some(format!("docker compose {v}")),
            Ownership::Unmanaged { version: None } => Some("another tool".to_owned()),
        }
    }
}

/// Reads the live state for `projects` of the environment of `ctx`: four
/// list calls.
pub async fn read(
    docker: &Docker,
    ctx: crate::backend::Context<'_>,
    projects: &[Project],
) -> Result<Live, EngineError> {
    // One filter on the presence of the project label returns every Compose
    // resource on the engine; the environment's own ones (including those of
    // projects it no longer renders) are picked out client-side, because the
    // engine ANDs label filters and cannot express "project in … or
    // instance = …".
    let compose_only = HashMap::from([("label", vec![labels::PROJECT])]);
    // An `external` network or volume is most often made by hand, with no
    // Compose label: a kind some project uses one of is listed unfiltered
    // (still one call), and the external ones are picked out by name.
    let everything = HashMap::new();
    let networks_filter = if projects
        .iter()
        .any(|p| p.networks.values().any(|n| n.external))
    {
        &everything
    } else {
        &compose_only
    };
    let volumes_filter = if projects
        .iter()
        .any(|p| p.volumes.values().any(|v| v.external))
    {
        &everything
    } else {
        &compose_only
    };
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&compose_only)
                .build(),
        ))
        .map_err(failed("list containers"));
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::default()
                .filters(networks_filter)
                .build(),
        ))
        .map_err(failed("list networks"));
    let volumes = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(volumes_filter)
                .build(),
        ))
        .map_err(failed("list volumes"));
    let images = docker
        .list_images(Some(ListImagesOptionsBuilder::default().build()))
        .map_err(failed("list images"));
    let (containers, networks, volumes, images) =
        futures_util::try_join!(containers, networks, volumes, images)?;
    let mut live = Live::from_listings(
        ctx.environment,
        ctx.owner.instance,
        projects,
        &containers,
        &networks,
        &volumes.volumes.unwrap_or_default(),
        &images,
    );
    // One archive read per bound repo directory (not per container).
    let ours: BTreeSet<String> = live
        .containers
        .iter()
        .filter(|c| c.owner == Ownership::Ours)
        .map(|c| c.id.clone())
        .collect();
    live.bind_listings = binds::read_listings(docker, &ours, projects, &containers, &live.volumes)
        .await
        .map_err(failed("read the bind volumes' listings"))?;
    let version = docker.client_version();
    live.api_version = Some((version.major_version as u32, version.minor_version as u32));
    Ok(live)
}

/// For the services whose `pull_policy` asks (`always`, or a refresh
/// period that has passed since the image was last tagged), asks the
/// registry which image the reference names now — one call per such
/// image, none for the others — and records the ones that differ from the
/// local image. Nothing is pulled: the plan says what a pull would change.
pub async fn check_registry(
    docker: &Docker,
    projects: &[Project],
    live: &mut Live,
    docker_config: Option<&std::path::Path>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), String> {
    let mut asked: BTreeSet<&str> = BTreeSet::new();
    // A built image is never pulled, so the registry is not asked.
    for s in projects
        .iter()
        .flat_map(|p| p.services.values())
        .filter(|s| s.build.is_none())
    {
        let due = match s.pull_policy {
            PullPolicy::Always => true,
            PullPolicy::Refresh(period) => match live.images.get(&s.image) {
                // Missing: pulled like any missing image.
                None => false,
                Some(_) => {
                    let inspect = docker
                        .inspect_image(&s.image)
                        .await
                        .map_err(|e| format!("inspect image {}: {e}", s.image))?;
                    let tagged = inspect
                        .metadata
                        .and_then(|m| m.last_tag_time)
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                        .map(|t| t.with_timezone(&chrono::Utc));
                    let period =
                        chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX);
                    tagged.is_none_or(|t| now.signed_duration_since(t) > period)
                }
            },
            _ => false,
        };
        if !due || !asked.insert(&s.image) {
            continue;
        }
        let credentials = match docker_config {
            Some(path) => image::credentials(path, image::registry(&s.image))?,
            None => None,
        };
        let remote = docker
            .inspect_registry_image(&s.image, credentials)
            .await
            .map_err(|e| format!("ask the registry about {}: {e}", s.image))?;
        let Some(digest) = remote.descriptor.digest else {
            continue;
        };
        let local = live
            .images
            .get(&s.image)
            .and_then(|id| live.image_digests.get(id));
        if !local.is_some_and(|d| d.contains(&digest)) {
            live.newer_in_registry.insert(s.image.clone(), digest);
        }
    }
    Ok(())
}

/// Longest wait for one remote's ref listing.
const GIT_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// For each git URL build context of the desired services, the commit its
/// ref names now: one ref listing per URL, as `git ls-remote` (a commit id
/// in the URL is its own answer), so a moved branch rebuilds and an
/// unchanged one does not. A remote that cannot be asked from here is
/// logged and left out: its image is then kept while its build options
/// are unchanged (the engine, which fetches the context, may reach what
/// driftless cannot).
pub async fn resolve_git_contexts(projects: &[Project], live: &mut Live) {
    let urls: BTreeSet<&str> = projects
        .iter()
        .flat_map(|p| p.services.values())
        .filter_map(super::build::of)
        .filter_map(|b| match &b.context {
            BuildContext::Remote { url } => Some(url.as_str()),
            BuildContext::Snapshot { .. } => None,
        })
        .collect();
    for url in urls {
        let Some((repo, reference)) = super::build::git_context(url) else {
            continue;
        };
        if let Some(commit) = reference
            .as_deref()
            .filter(|r| r.len() == 40 && r.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            live.git_commits
                .insert(url.to_owned(), commit.to_ascii_lowercase());
            continue;
        }
        let ask = tokio::task::spawn_blocking(move || {
            crate::source::git::ls_remote(&repo, reference.as_deref())
        });
        let why = match tokio::time::timeout(GIT_ASK_TIMEOUT, ask).await {
            Ok(Ok(Ok(commit))) => {
                live.git_commits.insert(url.to_owned(), commit);
                continue;
            }
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer in {} s", GIT_ASK_TIMEOUT.as_secs()),
        };
        tracing::warn!(
            context = %crate::source::git::redact(url),
            error = %why,
            "cannot ask the remote which commit the build context's ref names; \
             its image is rebuilt only when its build options change"
        );
    }
}

impl Live {
    /// Builds the live state of the environment whose ownership id is
    /// `instance` from the engine's list answers.
    pub fn from_listings(
        environment: &str,
        instance: &str,
        projects: &[Project],
        containers: &[ContainerSummary],
        networks: &[Network],
        volumes: &[Volume],
        images: &[ImageSummary],
    ) -> Live {
        let desired: BTreeSet<&str> = projects.iter().map(|p| p.name.as_str()).collect();
        let owner = |project: Option<&str>, labels: &BTreeMap<String, String>| {
            let desired = project.is_some_and(|p| desired.contains(p));
            Ownership::of(labels, environment, instance, desired)
        };

        let mut live_containers = Vec::new();
        for c in containers {
            let labels: BTreeMap<String, String> =
                c.labels.clone().unwrap_or_default().into_iter().collect();
            let Some(project) = labels.get(labels::PROJECT).cloned() else {
                continue;
            };
            let Some(owner) = owner(Some(&project), &labels) else {
                continue;
            };
            if labels.get(labels::ONEOFF).is_some_and(|v| v == "True") {
                continue;
            }
            let status = c.status.clone().unwrap_or_default();
            let state = match c.state {
                Some(ContainerSummaryStateEnum::CREATED) => ContainerState::Created,
                Some(ContainerSummaryStateEnum::RUNNING) => ContainerState::Running,
                Some(ContainerSummaryStateEnum::PAUSED) => ContainerState::Paused,
                Some(ContainerSummaryStateEnum::RESTARTING) => ContainerState::Restarting,
                Some(ContainerSummaryStateEnum::EXITED) => ContainerState::Exited,
                Some(ContainerSummaryStateEnum::DEAD) => ContainerState::Dead,
                _ => ContainerState::Other,
            };
            live_containers.push(LiveContainer {
                id: c.id.clone().unwrap_or_default(),
                name: c
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .unwrap_or_default(),
                service: labels.get(labels::SERVICE).cloned().unwrap_or_default(),
                number: labels
                    .get(labels::CONTAINER_NUMBER)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                state,
                exit_code: exit_code(&status),
                image_id: c.image_id.clone().unwrap_or_default(),
                config_hash: labels.get(labels::CONFIG_HASH).cloned(),
                owner,
                definition: labels.get(labels::DEFINITION).cloned(),
                project,
                labels,
            });
        }
        live_containers.sort_by(|a, b| {
            (&a.project, &a.service, a.number).cmp(&(&b.project, &b.service, b.number))
        });

        let mut live_networks = Vec::new();
        for n in networks {
            let labels: BTreeMap<String, String> =
                n.labels.clone().unwrap_or_default().into_iter().collect();
            let project = labels.get(labels::PROJECT).cloned();
            let name = n.name.clone().unwrap_or_default();
            let desired_name = projects
                .iter()
                .any(|p| p.networks.values().any(|net| net.name == name));
            // A network a project names (an external one included) is
            // listed whoever made it; the planner decides what it may do.
            let Some(owner) = owner(project.as_deref(), &labels).or_else(|| {
                desired_name.then(|| Ownership::of(&labels, environment, instance, true))?
            }) else {
                continue;
            };
            live_networks.push(LiveNetwork {
                id: n.id.clone().unwrap_or_default(),
                name,
                project,
                key: labels.get(labels::NETWORK).cloned(),
                owner,
                driver: n.driver.clone().unwrap_or_default(),
                internal: n.internal.unwrap_or(false),
                options: n.options.clone().unwrap_or_default().into_iter().collect(),
                attachable: n.attachable.unwrap_or(false),
                enable_ipv6: n.enable_ipv6.unwrap_or(false),
                ipam: n.ipam.as_ref().map(live_ipam).unwrap_or_default(),
                labels,
            });
        }
        live_networks.sort_by(|a, b| a.name.cmp(&b.name));

        let mut live_volumes = Vec::new();
        for v in volumes {
            let labels: BTreeMap<String, String> = v.labels.clone().into_iter().collect();
            let project = labels.get(labels::PROJECT).cloned();
            let desired_name = projects
                .iter()
                .any(|p| p.volumes.values().any(|vol| vol.name == v.name));
            let Some(owner) = owner(project.as_deref(), &labels).or_else(|| {
                desired_name.then(|| Ownership::of(&labels, environment, instance, true))?
            }) else {
                continue;
            };
            live_volumes.push(LiveVolume {
                name: v.name.clone(),
                project,
                key: labels.get(labels::VOLUME).cloned(),
                owner,
                driver: v.driver.clone(),
                options: v.options.clone().into_iter().collect(),
                labels,
            });
        }
        live_volumes.sort_by(|a, b| a.name.cmp(&b.name));

        let references: BTreeSet<&str> = projects
            .iter()
            .flat_map(|p| p.services.values().flat_map(Service::images))
            .collect();
        let resolved = image::resolve(references, images);
        let image_digests = images
            .iter()
            .filter(|i| resolved.values().any(|id| *id == i.id))
            .map(|i| {
                let digests = i
                    .repo_digests
                    .iter()
                    .filter_map(|d| d.rsplit_once('@').map(|(_, d)| d.to_owned()))
                    .collect();
                (i.id.clone(), digests)
            })
            .collect();
        let builds = projects
            .iter()
            .flat_map(|p| p.services.values())
            .filter(|s| s.build.is_some())
            .filter_map(|s| {
                let id = resolved.get(&s.image)?;
                let image = images.iter().find(|i| i.id == *id)?;
                Some((s.image.clone(), BuiltImage::from_labels(&image.labels)))
            })
            .collect();
        Live {
            containers: live_containers,
            networks: live_networks,
            volumes: live_volumes,
            images: resolved,
            image_digests,
            newer_in_registry: BTreeMap::new(),
            api_version: None,
            builds,
            bind_listings: BTreeMap::new(),
            git_commits: BTreeMap::new(),
        }
    }

    /// Live containers of one service, by container number.
    pub fn service_containers<'a>(
        &'a self,
        project: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a LiveContainer> + 'a {
        self.containers
            .iter()
            .filter(move |c| c.project == project && c.service == service)
    }
}

fn live_ipam(ipam: &bollard::models::Ipam) -> Ipam {
    Ipam {
        driver: ipam.driver.clone(),
        config: ipam
            .config
            .iter()
            .flatten()
            .map(|c| IpamPool {
                subnet: c.subnet.clone().filter(|s| !s.is_empty()),
                ip_range: c.ip_range.clone().filter(|s| !s.is_empty()),
                gateway: c.gateway.clone().filter(|s| !s.is_empty()),
                aux_addresses: c
                    .auxiliary_addresses
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            })
            .collect(),
        options: ipam
            .options
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

/// `Exited (137) 3 seconds ago` → 137. The list call has no exit code
/// field; its status text is stable across engine versions.
fn exit_code(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split_once(')')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exit_code_from_status() {
        assert_eq!(exit_code("Exited (137) 3 seconds ago"), Some(137));
        assert_eq!(exit_code("Exited (0) About a minute ago"), Some(0));
        assert_eq!(exit_code("Up 2 minutes (healthy)"), None);
    }

    /// A container of `project` with the given driftless labels.
    fn summary(project: &str, driftless: &[(&str, &str)], oneoff: bool) -> ContainerSummary {
        let labels = [
            (labels::PROJECT, project),
            (labels::SERVICE, "web"),
            (labels::CONTAINER_NUMBER, "1"),
            (labels::ONEOFF, if oneoff { "True" } else { "False" }),
        ]
        .into_iter()
        .chain(driftless.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        ContainerSummary {
            id: Some(format!("id-{project}")),
            names: Some(vec![format!("/{project}-web-1")]),
            state: Some(ContainerSummaryStateEnum::RUNNING),
            labels: Some(labels),
            ..ContainerSummary::default()
        }
    }

    fn projects(names: &[&str]) -> Vec<Project> {
        names
            .iter()
            .map(|n| Project {
                disabled_services: Default::default(),
                name: (*n).into(),
                services: BTreeMap::new(),
                networks: BTreeMap::new(),
                volumes: BTreeMap::new(),
                origin: Default::default(),
            })
            .collect()
    }

    fn owners(live: &Live) -> Vec<(&str, &Ownership)> {
        live.containers
            .iter()
            .map(|c| (c.project.as_str(), &c.owner))
            .collect()
    }

    const OURS: (&str, &str) = (labels::INSTANCE, "dev@github.com/acme/a");

    #[test]
    fn lists_the_instances_own_and_whoever_holds_a_desired_project() {
        let env = |e| (labels::ENVIRONMENT, e);
        let live = Live::from_listings(
            "dev",
            OURS.1,
            &projects(&["shop", "legacy", "taken", "compose"]),
            &[
                summary("shop", &[env("dev"), OURS], false),
                summary("shop", &[env("dev"), OURS], true),
                // Ours from before instance labels: a desired project.
                summary("legacy", &[env("dev")], false),
                // Another repo's `dev`, in a project both render.
                summary("taken", &[env("dev"), (labels::INSTANCE, "dev@b")], false),
                summary("compose", &[(labels::VERSION, "1.29.2")], false),
                // Not desired: ours by instance (pruned), the others unseen.
                summary("retired", &[env("dev"), OURS], false),
                summary("old", &[env("dev")], false),
                summary(
                    "other-repo",
                    &[env("dev"), (labels::INSTANCE, "dev@b")],
                    false,
                ),
                summary("manual", &[], false),
            ],
            &[],
            &[],
            &[],
        );
        assert_eq!(
            owners(&live),
            [
                (
                    "compose",
                    &Ownership::Unmanaged {
                        version: Some("1.29.2".into())
                    }
                ),
                ("legacy", &Ownership::Ours),
                ("retired", &Ownership::Ours),
                ("shop", &Ownership::Ours),
                ("taken", &Ownership::Instance("dev@b".into())),
            ]
        );
        assert_eq!(live.containers[0].number, 1);
    }

    #[test]
    fn the_images_a_service_mounts_are_live_images_too() {
        let mut project = projects(&["shop"]).remove(0);
        project.services.insert(
            "web".into(),
            Service {
                image: "nginx:1".into(),
                volumes: vec![crate::model::compose::Mount::Image {
                    source: "assets:2".into(),
                    target: "/srv".into(),
                    read_only: true,
                    subpath: None,
                }],
                ..Service::default()
            },
        );
        let image = |id: &str, tag: &str| ImageSummary {
            id: id.into(),
            repo_tags: vec![tag.into()],
            ..ImageSummary::default()
        };
        let listed = [image("sha256:n", "nginx:1"), image("sha256:a", "assets:2")];
        let live = Live::from_listings("dev", OURS.1, &[project], &[], &[], &[], &listed);
        // Present: the apply pulls neither (a missing one it would pull).
        assert_eq!(
            live.images.get("nginx:1").map(String::as_str),
            Some("sha256:n")
        );
        assert_eq!(
            live.images.get("assets:2").map(String::as_str),
            Some("sha256:a")
        );
    }

    #[test]
    fn says_which_tool_deployed_a_project() {
        let unmanaged = |v: Option<&str>| Ownership::Unmanaged {
            version: v.map(str::to_owned),
        };
        assert_eq!(
            unmanaged(Some("1.29.2")).describe().as_deref(),
            Some("docker-compose 1.29.2")
        );
        assert_eq!(
            unmanaged(Some("2.24.6")).describe().as_deref(),
            Some("docker compose 2.24.6")
        );
        assert_eq!(unmanaged(None).describe().as_deref(), Some("another tool"));
        assert_eq!(Ownership::Ours.describe(), None);
    }

    #[test]
    fn a_legacy_label_of_another_environment_is_not_ours() {
        let live = Live::from_listings(
            "dev",
            OURS.1,
            &projects(&["shop"]),
            &[summary("shop", &[(labels::ENVIRONMENT, "prod")], false)],
            &[],
            &[],
            &[],
        );
        assert_eq!(
            owners(&live),
            [("shop", &Ownership::Environment("prod".into()))]
        );
    }

    /// An `external` network or volume made by hand carries no Compose
    /// label; it is read by its name, so the plan finds it (it was
    /// refused as missing), while an unlabelled one nobody names is not.
    #[test]
    fn external_resources_without_labels_are_read_by_name() {
        use crate::model::compose::{Network as DesiredNetwork, Volume as DesiredVolume};
        let projects = vec![Project {
            name: "shop".into(),
            networks: [(
                "edge".to_owned(),
                DesiredNetwork {
                    name: "traefik".into(),
                    external: true,
                    ..DesiredNetwork::default()
                },
            )]
            .into(),
            volumes: [(
                "certs".to_owned(),
                DesiredVolume {
                    name: "le-certs".into(),
                    external: true,
                    ..DesiredVolume::default()
                },
            )]
            .into(),
            ..Project::default()
        }];
        let network = |name: &str| Network {
            name: Some(name.into()),
            ..Network::default()
        };
        let volume = |name: &str| Volume {
            name: name.into(),
            ..Volume::default()
        };
        let live = Live::from_listings(
            "dev",
            OURS.1,
            &projects,
            &[],
            &[network("traefik"), network("bridge")],
            &[volume("le-certs"), volume("somebody-elses")],
            &[],
        );
        let networks: Vec<_> = live.networks.iter().map(|n| n.name.as_str()).collect();
        let volumes: Vec<_> = live.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!((networks, volumes), (vec!["traefik"], vec!["le-certs"]));
        assert_eq!(live.volumes[0].project, None);
    }
}
