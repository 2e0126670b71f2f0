//! Apply: executes planned [`Change`]s against the engine, in the order
//! given, stopping at the first error.
//!
//! It never re-plans: it acts only on the resources the changes name, with
//! the action they carry; consecutive service changes that do not depend on
//! each other run concurrently (a failure stops the apply after its group).
//! It does read live state once (four list calls) to know container ids
//! and numbers, and pulls every image it will need before it stops
//! anything, so an unpullable image leaves the running stack untouched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerStateStatusEnum, HealthStatusEnum, NetworkConnectRequest, NetworkCreateRequest,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    InspectNetworkOptions, ListImagesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptions, StartContainerOptions, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::live::{Live, LiveContainer};
use super::{
    ComposeBackend, archive, binds, build, hash, hooks, image, labels, live, plan, project,
    rollout, spec, subnets,
};
use crate::backend::progress::Tracked;
use crate::backend::{ApplyReport, BackendError, Context};
use crate::model::TargetState;
use crate::model::compose::{DependencyCondition, Project, PullPolicy, Service, UpdateOrder};
use crate::plan::{Action, Change};

/// Executes one apply of one target.
pub struct Applier<'a> {
    pub(super) backend: &'a ComposeBackend,
    desired: &'a TargetState,
    projects: &'a [Project],
    ctx: Context<'a>,
}

type Result<T> = std::result::Result<T, BackendError>;

impl<'a> Applier<'a> {
    pub fn new(
        backend: &'a ComposeBackend,
        desired: &'a TargetState,
        ctx: Context<'a>,
    ) -> Result<Self> {
        Ok(Applier {
            backend,
            desired,
            projects: super::projects(desired)?,
            ctx,
        })
    }

    pub(super) fn docker(&self) -> &Docker {
        &self.backend.docker
    }

    /// Shows `resource` as being replaced (`total` replicas, `order`) in
    /// the apply's progress, until the guard is dropped.
    pub(super) fn track(&self, resource: &str, order: UpdateOrder, total: usize) -> Tracked<'a> {
        match self.ctx.progress {
            Some(p) => p.track(
                self.target(),
                resource,
                order,
                u32::try_from(total).unwrap_or(u32::MAX),
            ),
            None => Tracked::none(),
        }
    }

    fn target(&self) -> &str {
        &self.desired.target.name
    }

    pub(super) fn error(&self, resource: &str, message: impl std::fmt::Display) -> BackendError {
        BackendError::Apply {
            target: self.target().to_owned(),
            resource: resource.to_owned(),
            message: self.ctx.masker.mask(&message.to_string()).into_owned(),
        }
    }

    /// [`BackendError::Paused`] for `resource`, `message` masked.
    pub(super) fn paused(&self, resource: &str, message: impl std::fmt::Display) -> BackendError {
        BackendError::Paused {
            target: self.target().to_owned(),
            resource: resource.to_owned(),
            message: self.ctx.masker.mask(&message.to_string()).into_owned(),
        }
    }

    /// The desired service a change names (`project/service`).
    fn service(&self, name: &str) -> Option<(&'a Project, &'a str, &'a Service)> {
        let (p, s) = name.split_once('/')?;
        let project = self.projects.iter().find(|x| x.name == p)?;
        let (key, service) = project.services.get_key_value(s)?;
        Some((project, key.as_str(), service))
    }

    /// Runs `changes`; returns what was applied and every desired service's
    /// image id.
    /// Applies `changes`, planned from `live` (not read again).
    pub async fn run(&self, changes: &[Change], live: &Live) -> Result<ApplyReport> {
        // Check the whole list before touching anything.
        let mut references = BTreeSet::new();
        // Present images the pull policy wants pulled again (`always` on
        // every change of the service, a refresh when the plan found the
        // registry holds another image).
        let mut refresh = BTreeSet::new();
        for c in changes {
            let name = &c.resource.name;
            match (c.resource.kind.as_str(), &c.action) {
                ("service", Action::Delete | Action::Unchanged) => {}
                ("service", _) => {
                    let (_, _, s) = self.service(name).ok_or_else(|| {
                        self.error(name, "the change names a service that is not desired")
                    })?;
                    if let Some(f) = s.unwritable_file() {
                        return Err(self.error(
                            name,
                            format!(
                                "config file {f} cannot be copied in: the service is `read_only` \
                                 and the engine refuses to write to a read-only root file system; \
                                 mount a volume at its directory or drop `read_only`"
                            ),
                        ));
                    }
                    // Pulled when missing: the service's image (unless it is
                    // built, below) and the images it mounts.
                    let mut images = s.images();
                    if build::of(s).is_some() {
                        images.next();
                    }
                    references.extend(images);
                    let image_changed = matches!(&c.action, Action::Recreate { reason } if reason == "image changed");
                    match s.pull_policy {
                        PullPolicy::Always if image_changed || c.action == Action::Create => {
                            refresh.insert(s.image.as_str());
                        }
                        PullPolicy::Refresh(_) if image_changed => {
                            refresh.insert(s.image.as_str());
                        }
                        _ => {}
                    }
                }
                ("volume", Action::Delete) if !self.ctx.allow.prune_volumes => {
                    return Err(BackendError::Refused {
                        target: self.target().to_owned(),
                        message: format!(
                            "volume {name}: deleting a named volume needs `allow.prune_volumes: true`"
                        ),
                    });
                }
                ("bind", Action::Create | Action::Update) => {
                    self.bound_dir(name)?;
                }
                ("network" | "volume" | "bind", _) => {}
                (kind, _) => {
                    return Err(self.error(name, format!("unknown resource kind `{kind}`")));
                }
            }
        }

        if changes.iter().all(|c| c.action == Action::Unchanged) {
            // Nothing to do: the image ids the report carries are the
            // plan's.
            let mut report = ApplyReport::default();
            self.report_images(&live.images, &mut report);
            return Ok(report);
        }
        let live = live.clone();
        // Builds, then pulls, before anything is stopped: a failed build or
        // pull leaves the running stack as it was.
        let built = self.build_images(changes, &live).await?;
        let images = self
            .ensure_images(&references, &refresh, &live, built)
            .await?;

        let state = State {
            live,
            images,
            removed: Mutex::new(BTreeSet::new()),
        };
        let mut report = ApplyReport::default();
        let pending: Vec<&Change> = changes
            .iter()
            .filter(|c| c.action != Action::Unchanged)
            .collect();
        let mut i = 0;
        while i < pending.len() {
            let c = pending[i];
            if c.resource.kind != "service" {
                match c.resource.kind.as_str() {
                    "network" => self.network(c, &state).await?,
                    "bind" => self.bind(c, &state).await?,
                    _ => self.volume(c).await?,
                }
                report.applied.push(c.clone());
                i += 1;
                continue;
            }
            // Consecutive service changes none of which depends on another
            // run side by side (as Compose does): the plan's order already
            // puts every dependency in an earlier group.
            let mut group = vec![c];
            while let Some(next) = pending.get(i + group.len()) {
                if next.resource.kind != "service" || self.depends_on_any(next, &group) {
                    break;
                }
                group.push(next);
            }
            i += group.len();
            // Collected first: a closure inside the stream type trips the
            // `Send` check of the trait's future (higher-ranked lifetimes).
            let futures: Vec<_> = group
                .iter()
                .map(|c| self.service_change(c, &state))
                .collect();
            let results: Vec<Result<()>> = futures_util::stream::iter(futures)
                .buffered(PARALLEL)
                .collect()
                .await;
            for (c, result) in group.iter().zip(results) {
                result?;
                report.applied.push((*c).clone());
            }
        }
        self.report_images(&state.images, &mut report);
        Ok(report)
    }

    /// Whether the service `c` names depends on a service of `group`.
    fn depends_on_any(&self, c: &Change, group: &[&Change]) -> bool {
        let Some((p, _, service)) = self.service(&c.resource.name) else {
            return false;
        };
        group.iter().any(|g| {
            g.resource
                .name
                .split_once('/')
                .is_some_and(|(gp, gs)| gp == p.name && service.depends_on.contains_key(gs))
        })
    }

    /// Every desired image reference.
    fn references(&self) -> BTreeSet<&'a str> {
        self.projects
            .iter()
            .flat_map(|p| p.services.values().flat_map(Service::images))
            .collect()
    }

    fn report_images(&self, images: &BTreeMap<String, String>, report: &mut ApplyReport) {
        for p in self.projects {
            for (name, s) in &p.services {
                if let Some(id) = images.get(&s.image) {
                    report
                        .image_ids
                        .insert(format!("{}/{name}", p.name), id.clone());
                }
            }
        }
    }

    /// Builds the images of the changed services whose image was not built
    /// from their context and options (as the plan found), each reference
    /// once; returns whether anything was built. A failed build is an error
    /// with the tail of its log, before anything is changed.
    async fn build_images(&self, changes: &[Change], live: &Live) -> Result<bool> {
        let mut done: BTreeSet<&str> = BTreeSet::new();
        for c in changes {
            if c.resource.kind != "service"
                || matches!(c.action, Action::Unchanged | Action::Delete)
            {
                continue;
            }
            let Some((_, _, s)) = self.service(&c.resource.name) else {
                continue;
            };
            let Some(b) = build::of(s) else { continue };
            let present = live.images.contains_key(&s.image);
            if done.contains(s.image.as_str())
                || build::needed(s, live.builds.get(&s.image), present, &live.git_commits).is_none()
            {
                continue;
            }
            let credentials = match self.backend.docker_config.as_deref() {
                Some(path) => image::all_credentials(path).map_err(|e| {
                    self.error(&c.resource.name, format!("registry credentials: {e}"))
                })?,
                None => Default::default(),
            };
            build::build(self.docker(), s, b, &credentials, &live.git_commits)
                .await
                .map_err(|e| {
                    self.error(
                        &c.resource.name,
                        format!(
                            "building image {} failed; nothing was changed: {e}",
                            s.image
                        ),
                    )
                })?;
            done.insert(s.image.as_str());
        }
        Ok(!done.is_empty())
    }

    /// Pulls the references that are not present, and those in `refresh`;
    /// returns reference → id for every desired image present afterwards
    /// (listed again when `built` says images were built). Runs before any
    /// change.
    async fn ensure_images(
        &self,
        references: &BTreeSet<&str>,
        refresh: &BTreeSet<&str>,
        live: &Live,
        built: bool,
    ) -> Result<BTreeMap<String, String>> {
        let missing: Vec<&str> = references
            .iter()
            .copied()
            .filter(|r| !live.images.contains_key(*r) || refresh.contains(r))
            .collect();
        if missing.is_empty() && !built {
            return Ok(live.images.clone());
        }
        for reference in &missing {
            if self.policy(reference) == Some(PullPolicy::Never) {
                return Err(self.error(
                    reference,
                    "the image is not present and `pull_policy: never` forbids pulling it",
                ));
            }
            self.pull(
                reference,
                self.platform(reference),
                self.backend.docker_config.as_deref(),
            )
            .await?;
        }
        let listed = self
            .docker()
            .list_images(Some(ListImagesOptionsBuilder::default().build()))
            .await
            .map_err(|e| self.backend.unavailable(e))?;
        let resolved = image::resolve(self.references(), &listed);
        for reference in &missing {
            if !resolved.contains_key(*reference) {
                return Err(self.error(
                    reference,
                    "pulled, but the engine does not list the image under this reference",
                ));
            }
        }
        Ok(resolved)
    }

    /// The pull policy of the services running `reference` (the strictest:
    /// `never` wins).
    fn policy(&self, reference: &str) -> Option<PullPolicy> {
        let policies: Vec<PullPolicy> = self
            .projects
            .iter()
            .flat_map(|p| p.services.values())
            .filter(|s| s.image == reference)
            .map(|s| s.pull_policy)
            .collect();
        policies
            .iter()
            .find(|p| **p == PullPolicy::Never)
            .or(policies.first())
            .copied()
    }

    /// The `platform` a service running `reference` asks for.
    fn platform(&self, reference: &str) -> Option<&'a str> {
        self.projects
            .iter()
            .flat_map(|p| p.services.values())
            .filter(|s| s.image == reference)
            .find_map(|s| s.platform.as_deref())
    }

    async fn pull(
        &self,
        reference: &str,
        platform: Option<&str>,
        config: Option<&std::path::Path>,
    ) -> Result<()> {
        let registry = image::registry(reference);
        let credentials = match config {
            Some(path) => image::credentials(path, registry)
                .map_err(|e| self.error(reference, format!("registry credentials: {e}")))?,
            None => None,
        };
        let (from_image, tag) = image::pull_parts(reference);
        let mut options = CreateImageOptionsBuilder::default().from_image(&from_image);
        if let Some(tag) = &tag {
            options = options.tag(tag);
        }
        if let Some(platform) = platform {
            options = options.platform(platform);
        }
        tracing::info!(image = reference, registry, "pulling image");
        let mut stream = self
            .docker()
            .create_image(Some(options.build()), None, credentials);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                return Err(self.error(
                    reference,
                    format!("cannot pull image {reference}: {e}; nothing was changed"),
                ));
            }
        }
        Ok(())
    }

    async fn network(&self, c: &Change, state: &State) -> Result<()> {
        let name = &c.resource.name;
        match &c.action {
            Action::Create => self.create_network(name, None).await,
            Action::Recreate { .. } => {
                // The engine removes a network only with no endpoints: our
                // containers on it go (their services are recreated later in
                // this plan), anything else is disconnected.
                let net = self
                    .docker()
                    .inspect_network(name, None::<InspectNetworkOptions>)
                    .await
                    .map_err(|e| self.error(name, e))?;
                let old_subnet = net
                    .ipam
                    .as_ref()
                    .and_then(|i| i.config.as_ref())
                    .into_iter()
                    .flatten()
                    .find_map(|c| crate::pools::Ipv4Net::parse(c.subnet.as_deref()?).ok());
                for id in net.containers.unwrap_or_default().into_keys() {
                    match state.live.containers.iter().find(|c| c.id == id) {
                        Some(ours) => {
                            let ours = ours.clone();
                            self.remove_container(&ours, None, state).await?;
                        }
                        None => self
                            .docker()
                            .disconnect_network(
                                name,
                                bollard::models::NetworkDisconnectRequest {
                                    container: id.clone(),
                                    force: Some(true),
                                },
                            )
                            .await
                            .map_err(|e| self.error(name, e))?,
                    }
                }
                self.docker()
                    .remove_network(name)
                    .await
                    .map_err(|e| self.error(name, e))?;
                self.create_network(name, old_subnet).await
            }
            Action::Delete => self
                .docker()
                .remove_network(name)
                .await
                .or_else(not_found)
                .map_err(|e| self.error(name, e)),
            Action::Update | Action::Unchanged => Ok(()),
        }
    }

    /// Creates the desired network `name`; one that takes its subnet from
    /// the target's address pools asks for `old_subnet` (a recreated
    /// network's) first.
    async fn create_network(
        &self,
        name: &str,
        old_subnet: Option<crate::pools::Ipv4Net>,
    ) -> Result<()> {
        let (project, key, net) = self
            .projects
            .iter()
            .find_map(|p| {
                project::networks(p)
                    .into_iter()
                    .find(|(_, n)| n.name == name)
                    .map(|(k, n)| (p, k, n))
            })
            .ok_or_else(|| self.error(name, "the change names a network that is not desired"))?;
        let mut labels_map: HashMap<String, String> = net.labels.clone().into_iter().collect();
        labels_map.insert(labels::PROJECT.into(), project.name.clone());
        labels_map.insert(labels::NETWORK.into(), key);
        labels_map.insert(labels::VERSION.into(), labels::VERSION_VALUE.into());
        labels_map.insert(labels::ENVIRONMENT.into(), self.ctx.environment.into());
        labels_map.insert(labels::INSTANCE.into(), self.ctx.owner.instance.into());
        let pools = subnets::of(self.desired);
        let ipam = if subnets::wants_pool(&pools, &net) {
            let used = subnets::used(self.docker()).await.map_err(|e| {
                self.error(name, format!("list networks for the address pools: {e}"))
            })?;
            let subnet = subnets::pick(&pools, &used, old_subnet, name, self.target())
                .map_err(|m| self.error(name, m))?;
            subnets::ipam_with(subnet)
        } else {
            net.ipam.clone()
        };
        self.docker()
            .create_network(NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some(net.driver.clone().unwrap_or_else(|| "bridge".into())),
                internal: Some(net.internal),
                attachable: net.attachable.then_some(true),
                enable_ipv6: net.enable_ipv6,
                enable_ipv4: net.enable_ipv4,
                ipam: (!ipam.is_empty()).then(|| spec::ipam(&ipam)),
                options: Some(net.driver_opts.clone().into_iter().collect()),
                labels: Some(labels_map),
                ..NetworkCreateRequest::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| self.error(name, network_create_error(&e, ipam.is_empty())))
    }

    async fn volume(&self, c: &Change) -> Result<()> {
        let name = &c.resource.name;
        match &c.action {
            Action::Create => {
                let (project, key, vol) = self
                    .projects
                    .iter()
                    .find_map(|p| {
                        p.volumes
                            .iter()
                            .find(|(_, v)| &v.name == name)
                            .map(|(k, v)| (p, k, v))
                    })
                    .ok_or_else(|| {
                        self.error(name, "the change names a volume that is not desired")
                    })?;
                let mut labels_map: HashMap<String, String> =
                    vol.labels.clone().into_iter().collect();
                labels_map.insert(labels::PROJECT.into(), project.name.clone());
                labels_map.insert(labels::VOLUME.into(), key.clone());
                labels_map.insert(labels::VERSION.into(), labels::VERSION_VALUE.into());
                labels_map.insert(labels::ENVIRONMENT.into(), self.ctx.environment.into());
                labels_map.insert(labels::INSTANCE.into(), self.ctx.owner.instance.into());
                self.docker()
                    .create_volume(VolumeCreateRequest {
                        name: Some(name.clone()),
                        driver: Some(vol.driver.clone().unwrap_or_else(|| "local".into())),
                        driver_opts: Some(vol.driver_opts.clone().into_iter().collect()),
                        labels: Some(labels_map),
                        ..VolumeCreateRequest::default()
                    })
                    .await
                    .map(|_| ())
                    .map_err(|e| self.error(name, e))
            }
            // Checked in `run`: only with `allow.prune_volumes`.
            Action::Delete => self
                .docker()
                .remove_volume(name, None::<RemoveVolumeOptions>)
                .await
                .or_else(not_found)
                .map_err(|e| self.error(name, e)),
            _ => Ok(()),
        }
    }

    /// The desired bound repo directory whose volume is `volume`.
    fn bound_dir(&self, volume: &str) -> Result<(&'a Project, binds::BoundDir<'a>)> {
        self.projects
            .iter()
            .find_map(|p| binds::of(p).remove(volume).map(|d| (p, d)))
            .ok_or_else(|| {
                self.error(
                    volume,
                    "the change names a bound directory that is not desired",
                )
            })
    }

    /// Creates (when the plan says so) and fills the volume of a bound repo
    /// directory, with the image of a service that binds it: what changed
    /// since the listing the volume holds is written, what driftless wrote
    /// and the repo no longer holds is removed.
    async fn bind(&self, c: &Change, state: &State) -> Result<()> {
        let volume = &c.resource.name;
        let (project, dir) = self.bound_dir(volume)?;
        // Created for an update too: creating an existing volume changes
        // nothing, and one removed since the plan comes back labelled
        // (a helper's mount would create it without labels).
        let labels_map = HashMap::from([
            (labels::PROJECT.to_owned(), project.name.clone()),
            (labels::VERSION.to_owned(), labels::VERSION_VALUE.to_owned()),
            (
                labels::ENVIRONMENT.to_owned(),
                self.ctx.environment.to_owned(),
            ),
            (
                labels::INSTANCE.to_owned(),
                self.ctx.owner.instance.to_owned(),
            ),
            (labels::BIND_SOURCE.to_owned(), dir.source.to_owned()),
        ]);
        let created = self
            .docker()
            .create_volume(VolumeCreateRequest {
                name: Some(volume.clone()),
                driver: Some("local".into()),
                labels: Some(labels_map),
                ..VolumeCreateRequest::default()
            })
            .await
            .map_err(|e| self.error(volume, e))?;
        if created.labels.get(labels::INSTANCE).map(String::as_str) != Some(self.ctx.owner.instance)
        {
            return Err(self.error(
                volume,
                format!(
                    "a volume of this name exists that driftless did not create for environment \
                     `{}` (instance `{}`); it is left alone: remove or rename it to let driftless \
                     deliver the directory `{}`",
                    self.ctx.environment, self.ctx.owner.instance, dir.source
                ),
            ));
        }
        // The binding services' images first, then the project's others.
        let mut images: Vec<&str> = Vec::new();
        let services = dir
            .services
            .iter()
            .filter_map(|s| project.services.get(*s))
            .chain(project.services.values());
        for id in services.filter_map(|s| state.images.get(&s.image)) {
            if !images.contains(&id.as_str()) {
                images.push(id);
            }
        }
        let holds = match (&c.action, state.live.bind_listings.get(volume)) {
            (Action::Create, _) => binds::Holds::Nothing,
            (_, Some(listing)) => binds::Holds::Listing(listing),
            (_, None) => binds::Holds::Unknown,
        };
        let (written, removed) = binds::fill(self.docker(), volume, &images, dir.files, holds)
            .await
            .map_err(|e| self.error(volume, e))?;
        tracing::info!(%volume, written, removed, "filled the volume of a bound directory");
        Ok(())
    }

    async fn service_change(&self, c: &Change, state: &State) -> Result<()> {
        let name = &c.resource.name;
        if c.action == Action::Delete {
            let (p, s) = name
                .split_once('/')
                .ok_or_else(|| self.error(name, "not a `project/service` name"))?;
            let doomed: Vec<LiveContainer> = state.live.service_containers(p, s).cloned().collect();
            // Highest numbers first, as a scale down does.
            for container in doomed.iter().rev() {
                self.remove_container(container, None, state).await?;
            }
            return Ok(());
        }
        let (p, service_name, service) = self
            .service(name)
            .ok_or_else(|| self.error(name, "the change names a service that is not desired"))?;
        // A recreated network or a replaced namespace owner takes every
        // replica; any other change replaces only the replicas that do not
        // run the desired definition — after a paused update, the rest.
        let force =
            matches!(&c.action, Action::Recreate { reason } if rollout::replaces_current(reason));
        // A changed definition rolls out in batches; other changes (scale,
        // exited containers) replace what is wrong at once.
        let order = match &c.action {
            Action::Recreate { reason } => rollout::decide(service, reason).map(|d| d.order),
            _ => None,
        };
        self.converge(p, service_name, service, force, order, state)
            .await
    }

    /// Brings one service to its desired replicas: removes extra containers
    /// and outdated ones (highest numbers first) — or, in a rollout
    /// (`order`), replaces running outdated ones in batches, each new one
    /// gated on health ([`rollout`]) — then creates and starts the missing
    /// numbers after waiting for the service's dependencies.
    async fn converge(
        &self,
        p: &Project,
        name: &str,
        service: &Service,
        force: bool,
        order: Option<UpdateOrder>,
        state: &State,
    ) -> Result<()> {
        let resource = format!("{}/{name}", p.name);
        if service.container_name.is_some() && service.replicas > 1 {
            return Err(self.error(
                &resource,
                "`container_name` cannot be used with more than one replica",
            ));
        }
        let image_id = state.images.get(&service.image).cloned().ok_or_else(|| {
            self.error(&resource, format!("image {} is not present", service.image))
        })?;
        let config_hash = hash::config_hash(service, &image_id);
        let definition = self
            .ctx
            .masker
            .mask(&hash::definition_text(service, Some(&image_id)))
            .into_owned();

        let live: Vec<LiveContainer> = state
            .live
            .service_containers(&p.name, name)
            .filter(|c| !state.is_removed(&c.id))
            .cloned()
            .collect();
        let mut kept = BTreeSet::new();
        let mut replace = Vec::new();
        for c in live.iter().rev() {
            let outdated = force
                || !hash::hash_matches(c.config_hash.as_deref(), service, &image_id)
                || c.image_id != image_id
                || !plan::is_up(c, service);
            let extra = rollout::is_temporary(c)
                || c.number == 0
                || c.number > service.replicas
                || kept.contains(&c.number);
            if !extra && outdated && order.is_some() && c.state == live::ContainerState::Running {
                kept.insert(c.number);
                replace.push(c);
            } else if extra || outdated {
                self.remove_container(c, Some(service), state).await?;
            } else {
                kept.insert(c.number);
            }
        }
        let missing: Vec<u32> = (1..=service.replicas)
            .filter(|n| !kept.contains(n))
            .collect();
        if missing.is_empty() && replace.is_empty() {
            return Ok(());
        }
        self.wait_for_dependencies(p, name, service, &resource)
            .await?;
        let replica = |number| spec::Replica {
            project: p,
            service_name: name,
            service,
            number,
            image_id: &image_id,
            config_hash: &config_hash,
            definition: &definition,
            environment: self.ctx.environment,
            instance: self.ctx.owner.instance,
        };
        replace.reverse();
        if let Some(order) = order {
            self.roll_out(order, &replace, &replica, &resource, state)
                .await?;
        }
        for number in missing {
            self.create_and_start(&replica(number), &resource).await?;
        }
        Ok(())
    }

    async fn create_and_start(&self, r: &spec::Replica<'_>, resource: &str) -> Result<()> {
        let name = project::container_name(&r.project.name, r.service_name, r.service, r.number);
        self.create_as(r, &name, false, resource).await.map(drop)
    }

    /// Creates, fills, connects and starts replica `r` as container `name`
    /// (`temporary`: a start-first replacement, marked so that an
    /// interrupted one is recognised); returns its id.
    pub(super) async fn create_as(
        &self,
        r: &spec::Replica<'_>,
        name: &str,
        temporary: bool,
        resource: &str,
    ) -> Result<String> {
        let (mut body, mut extra_networks) = spec::container(r);
        if temporary {
            body.labels
                .get_or_insert_with(Default::default)
                .insert(labels::TEMPORARY.to_owned(), name.to_owned());
            // Out of the service's DNS until it is healthy: Docker's DNS
            // would answer with it as soon as it starts, before its server
            // listens. [`rollout`] gives it its aliases once it is gated.
            let endpoints = body
                .networking_config
                .iter_mut()
                .flat_map(|n| n.endpoints_config.iter_mut().flat_map(|e| e.values_mut()))
                .chain(extra_networks.iter_mut().map(|(_, e)| e));
            for endpoint in endpoints {
                endpoint.aliases = None;
            }
        }
        tracing::info!(container = %name, "creating container");
        let mut options = CreateContainerOptionsBuilder::default().name(name);
        if let Some(platform) = &r.service.platform {
            options = options.platform(platform);
        }
        let created = self
            .docker()
            .create_container(Some(options.build()), body)
            .await
            .map_err(|e| self.error(resource, format!("create {name}: {e}")))?;
        let id = created.id;
        if !r.service.files.is_empty() || !r.service.secrets.is_empty() {
            let files: Vec<_> = r
                .service
                .files
                .iter()
                .chain(&r.service.secrets)
                .cloned()
                .collect();
            let tar = archive::files_tar(&files)
                .map_err(|e| self.error(resource, format!("config files archive: {e}")))?;
            self.docker()
                .upload_to_container(
                    &id,
                    Some(UploadToContainerOptionsBuilder::default().path("/").build()),
                    bollard::body_full(tar.into()),
                )
                .await
                .map_err(|e| self.error(resource, format!("copy config files into {name}: {e}")))?;
        }
        for (network, endpoint) in extra_networks {
            self.docker()
                .connect_network(
                    &network,
                    NetworkConnectRequest {
                        container: id.clone(),
                        endpoint_config: Some(endpoint),
                    },
                )
                .await
                .map_err(|e| self.error(resource, format!("connect {name} to {network}: {e}")))?;
        }
        self.docker()
            .start_container(&id, None::<StartContainerOptions>)
            .await
            .map_err(|e| self.error(resource, format!("start {name}: {e}")))?;
        for hook in &r.service.post_start {
            hooks::run(self.docker(), &id, hook).await.map_err(|e| {
                self.error(
                    resource,
                    format!(
                        "post_start hook of {name}: {}",
                        crate::diag::error_chain(&e)
                    ),
                )
            })?;
        }
        Ok(id)
    }

    /// Stops (with the service's grace period) and removes a container.
    pub(super) async fn remove_container(
        &self,
        c: &LiveContainer,
        service: Option<&Service>,
        state: &State,
    ) -> Result<()> {
        if state.is_removed(&c.id) {
            return Ok(());
        }
        let resource = format!("{}/{}", c.project, c.service);
        tracing::info!(container = %c.name, "removing container");
        let running = matches!(c.state, live::ContainerState::Running);
        for hook in service.filter(|_| running).map_or(&[][..], |s| &s.pre_stop) {
            match hooks::run(self.docker(), &c.id, hook).await {
                Ok(()) => {}
                // Already stopped or gone: there is nothing to prepare.
                Err(e) if e.container_gone() => break,
                Err(e) => {
                    return Err(self.error(
                        &resource,
                        format!(
                            "pre_stop hook of {}: {}",
                            c.name,
                            crate::diag::error_chain(&e)
                        ),
                    ));
                }
            }
        }
        let grace = service
            .and_then(|s| s.stop_grace_period)
            .unwrap_or(Duration::from_secs(10));
        self.docker()
            .stop_container(
                &c.id,
                Some(
                    StopContainerOptionsBuilder::default()
                        .t(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX))
                        .build(),
                ),
            )
            .await
            .or_else(not_modified)
            .or_else(not_found)
            .map_err(|e| self.error(&resource, format!("stop {}: {e}", c.name)))?;
        self.docker()
            .remove_container(
                &c.id,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(false)
                        .build(),
                ),
            )
            .await
            .or_else(not_found)
            .map_err(|e| self.error(&resource, format!("remove {}: {e}", c.name)))?;
        state
            .removed
            .lock()
            .expect("no panics while held")
            .insert(c.id.clone());
        Ok(())
    }

    /// Waits until each `service_healthy` dependency is healthy and each
    /// `service_completed_successfully` one has exited with code 0.
    async fn wait_for_dependencies(
        &self,
        p: &Project,
        name: &str,
        service: &Service,
        resource: &str,
    ) -> Result<()> {
        for (dep, d) in &service.depends_on {
            if d.condition == DependencyCondition::ServiceStarted {
                continue;
            }
            let Some(dep_service) = p.services.get(dep) else {
                if d.required {
                    return Err(self.error(
                        resource,
                        format!("depends on `{dep}`, which is not in the project"),
                    ));
                }
                continue;
            };
            let deadline = Instant::now() + self.backend.dependency_timeout;
            let started = Instant::now();
            loop {
                match self
                    .dependency_state(p, dep, dep_service, d.condition)
                    .await?
                {
                    DepState::Ready => break,
                    DepState::Failed(why) => {
                        return Err(self.error(
                            resource,
                            format!("dependency `{dep}` of `{name}` failed: {why}"),
                        ));
                    }
                    DepState::Waiting(why) => {
                        if Instant::now() >= deadline {
                            return Err(self.error(
                                resource,
                                format!(
                                    "gave up after {:?} waiting for dependency `{dep}` of `{name}` \
                                     ({}): {why}",
                                    started.elapsed(),
                                    match d.condition {
                                        DependencyCondition::ServiceHealthy => "service_healthy",
                                        _ => "service_completed_successfully",
                                    }
                                ),
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn dependency_state(
        &self,
        p: &Project,
        dep: &str,
        dep_service: &Service,
        condition: DependencyCondition,
    ) -> Result<DepState> {
        for number in 1..=dep_service.replicas {
            let cname = project::container_name(&p.name, dep, dep_service, number);
            let inspect = match self
                .docker()
                .inspect_container(&cname, None::<InspectContainerOptions>)
                .await
            {
                Ok(i) => i,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(DepState::Waiting(format!("{cname} does not exist"))),
                Err(e) => return Err(self.backend.unavailable(e)),
            };
            let st = inspect.state.unwrap_or_default();
            let exited = matches!(
                st.status,
                Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
            );
            match condition {
                DependencyCondition::ServiceCompletedSuccessfully => {
                    if exited {
                        if st.exit_code != Some(0) {
                            return Ok(DepState::Failed(format!(
                                "{cname} exited with code {}",
                                st.exit_code.unwrap_or(-1)
                            )));
                        }
                    } else {
                        return Ok(DepState::Waiting(format!("{cname} has not finished")));
                    }
                }
                DependencyCondition::ServiceHealthy => {
                    if exited {
                        return Ok(DepState::Failed(format!(
                            "{cname} exited with code {}",
                            st.exit_code.unwrap_or(-1)
                        )));
                    }
                    match st.health.and_then(|h| h.status) {
                        Some(HealthStatusEnum::HEALTHY) => {}
                        Some(HealthStatusEnum::UNHEALTHY) => {
                            return Ok(DepState::Failed(format!("{cname} is unhealthy")));
                        }
                        None | Some(HealthStatusEnum::NONE) | Some(HealthStatusEnum::EMPTY) => {
                            return Ok(DepState::Failed(format!(
                                "{cname} has no healthcheck, so `service_healthy` cannot be met"
                            )));
                        }
                        Some(HealthStatusEnum::STARTING) => {
                            return Ok(DepState::Waiting(format!("{cname} health is starting")));
                        }
                    }
                }
                DependencyCondition::ServiceStarted => {}
            }
        }
        Ok(DepState::Ready)
    }
}

enum DepState {
    Ready,
    Waiting(String),
    Failed(String),
}

/// What apply has learned and done so far.
pub(super) struct State {
    live: Live,
    images: BTreeMap<String, String>,
    /// Container ids removed by this apply (services in one group run
    /// concurrently; the lock is never held across an await).
    removed: Mutex<BTreeSet<String>>,
}

impl State {
    fn is_removed(&self, id: &str) -> bool {
        self.removed
            .lock()
            .expect("no panics while held")
            .contains(id)
    }
}

/// Service changes run at once within a group.
const PARALLEL: usize = 8;

/// A 404 from a removal means it is already gone: the desired outcome.
fn not_found(e: bollard::errors::Error) -> std::result::Result<(), bollard::errors::Error> {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => Ok(()),
        e => Err(e),
    }
}

/// A 304 from a stop means the container was not running.
fn not_modified(e: bollard::errors::Error) -> std::result::Result<(), bollard::errors::Error> {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        } => Ok(()),
        e => Err(e),
    }
}

/// Why a network could not be created, with what to do when the engine's
/// address pools are used up (a 20.10 engine's defaults give about 30
/// bridge networks; each project network without `ipam` takes one).
fn network_create_error(e: &bollard::errors::Error, without_ipam: bool) -> String {
    let text = e.to_string();
    if without_ipam && text.contains("could not find an available, non-overlapping") {
        return format!(
            "{text}: the engine's address pools are used up, one subnet per network. \
             Remove networks nothing uses (`docker network prune`), give the engine more \
             or smaller pools (`default-address-pools` in /etc/docker/daemon.json, e.g. \
             {{\"base\": \"10.200.0.0/16\", \"size\": 24}}, then restart it), let driftless \
             give project networks subnets from a range of yours (`address_pools: [{{base: \
             10.200.0.0/16, size: 24}}]` on the Docker target in driftless.yaml), or give this \
             network a subnet of its own (`ipam: {{config: [{{subnet: …}}]}}`)"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compose::{FileMount, Mount};

    #[test]
    fn read_only_services_take_files_only_under_writable_mounts() {
        let file = |target: &str| FileMount {
            target: target.into(),
            source: "x".into(),
            content: Vec::new(),
            mode: 0o444,
            uid: 0,
            gid: 0,
        };
        let mut s = Service {
            read_only: true,
            files: vec![file("/conf/app.conf")],
            volumes: vec![Mount::Volume {
                subpath: None,
                source: None,
                target: "/conf".into(),
                read_only: false,
                no_copy: false,
            }],
            ..Service::default()
        };
        assert_eq!(s.unwritable_file(), None);
        s.files.push(file("/etc/other.conf"));
        assert_eq!(s.unwritable_file(), Some("/etc/other.conf"));
        s.read_only = false;
        assert_eq!(s.unwritable_file(), None);
    }

    #[test]
    fn exhausted_address_pools_say_what_to_do() {
        let e = bollard::errors::Error::DockerResponseServerError {
            status_code: 403,
            message: "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network".into(),
        };
        let text = network_create_error(&e, true);
        assert!(
            text.starts_with("Docker responded with status code 403: could not find"),
            "{text}"
        );
        for hint in [
            "docker network prune",
            "default-address-pools",
            "address_pools:",
            "ipam",
        ] {
            assert!(text.contains(hint), "{hint}: {text}");
        }
        // Another error, or a network with its own subnet, is left as is.
        assert_eq!(network_create_error(&e, false), e.to_string());
        let other = bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message: "network with name x already exists".into(),
        };
        assert_eq!(network_create_error(&other, true), other.to_string());
    }
}
