//! One service, key by key, into a resolved [`Service`]: short syntax
//! expanded, `env_file`s and relative bind mounts read from the repo,
//! references to networks, volumes, configs and services checked.

use std::collections::{BTreeMap, BTreeSet};

use super::read::Entry;
use super::resources::ConfigDef;
use super::{Ctx, dotenv, engine, syntax};
use crate::diag::Diagnostic;
use crate::model::Origin;
use crate::model::compose::{
    BIND_LISTING, ConfigFrom, ContextFile, Dependency, DependencyCondition, FailureAction,
    FileMount, Healthcheck, Logging, Mount, Network, Port, ResourceSet, Service, ServiceNetwork,
    Ulimit, UpdateConfig, UpdateOrder, Volume,
};
use crate::source::join_relative;
use crate::yaml::{Node, Value};

/// What a service may refer to.
pub(crate) struct Refs<'r> {
    pub services: &'r BTreeSet<String>,
    pub networks: &'r BTreeMap<String, Network>,
    pub volumes: &'r BTreeMap<String, Volume>,
    pub configs: &'r BTreeMap<String, Option<ConfigDef>>,
    pub secrets: &'r BTreeMap<String, Option<ConfigDef>>,
}

/// Keys of the Compose specification that cannot apply to a Linux Docker
/// engine, with the reason.
fn refused(key: &str) -> Option<&'static str> {
    Some(match key {
        "credential_spec" => {
            "it configures Windows group managed service accounts, which only Windows engines apply"
        }
        "use_api_socket" => {
            "it hands the engine's socket and the deployer's registry credentials to the container, and \
             driftless does not pass its credentials on; bind `/var/run/docker.sock` explicitly if the service needs the engine"
        }
        "models" => {
            "it asks Docker Model Runner for an AI model, which is not part of the Engine API"
        }
        "provider" => {
            "a provider service is run by a plugin of the Compose CLI, the engine has nothing to run"
        }
        _ => return None,
    })
}

/// Converts service `name` (its key node and resolved definition).
pub(crate) fn service(
    ctx: &mut Ctx,
    name: &str,
    key: &Node,
    node: &Node,
    refs: &Refs,
) -> Option<Service> {
    let path = format!("services.{name}");
    let entries = match &node.value {
        Value::Map(entries) => entries.as_slice(),
        Value::Null => {
            ctx.report(
                Diagnostic::error("service has neither `image` nor `build`")
                    .hint("set `image:` to the image to run"),
                key,
                &path,
            );
            return None;
        }
        _ => {
            ctx.error(
                node,
                &path,
                format!("a service must be a mapping, not {}", node.kind()),
            );
            return None;
        }
    };
    let mut s = Service {
        replicas: 1,
        origin: Origin {
            file: key.file.as_deref().unwrap_or(ctx.input.file).to_owned(),
            line: key.line,
        },
        ..Service::default()
    };
    let mut image = None;
    let mut has_build = false;
    let mut environment: Vec<Entry> = Vec::new();
    let mut env_files: Vec<(String, bool, &Node, String)> = Vec::new();
    let mut scale: Option<(i64, &Node)> = None;
    let mut deploy_replicas: Option<(i64, &Node)> = None;
    let mut container_name_node = None;
    let mut start_first: Vec<(&Node, String)> = Vec::new();
    let mut legacy = engine::ServiceResources::default();
    let mut written = engine::DeployResources::default();
    let mut label_files: Vec<(String, &Node, String)> = Vec::new();
    let mut labels = BTreeMap::new();
    let mut labels_node = None;
    let mut pull_refresh_after = None;
    // A refused key (a `provider` service has no image) says all there is.
    let mut refused_key = false;

    for (k, v) in entries {
        let Some(field) = ctx.key(k, &path) else {
            continue;
        };
        let fp = format!("{path}.{field}");
        match field {
            "image" => {
                image = ctx.text(v, &fp);
                match image.as_deref() {
                    Some("") => ctx.error(v, &fp, "`image` is empty"),
                    Some(r) if !ctx.interpolation_failed(v) => {
                        if let Some(why) = super::reference::problem(r) {
                            ctx.report(
                                Diagnostic::error(format!("invalid image reference `{r}`: {why}"))
                                    .hint("write `[registry/]repository[:tag][@sha256:digest]`, as the distribution spec and the engine's pull require"),
                                v,
                                &fp,
                            );
                        }
                    }
                    _ => {}
                }
            }
            "build" => {
                has_build = true;
                s.build = super::build::build(ctx, v, &fp);
            }
            "command" => s.command = command(ctx, v, &fp),
            "entrypoint" => s.entrypoint = command(ctx, v, &fp),
            "environment" => environment = ctx.entries(v, &fp, '='),
            "env_file" => env_files = env_file_list(ctx, v, &fp),
            "ports" => s.ports = ports(ctx, v, &fp),
            "expose" => s.expose = dedup(ctx.texts(v, &fp).into_iter().map(|(t, _)| t)),
            "volumes" => {
                let (mounts, files) = volumes(ctx, v, &fp, refs);
                s.volumes = mounts;
                s.files.extend(files);
            }
            "configs" => s.files.extend(files_of(ctx, v, &fp, refs, Listed::Config)),
            "secrets" => s.secrets = files_of(ctx, v, &fp, refs, Listed::Secret),
            "networks" => s.networks = networks(ctx, v, &fp, refs),
            "network_mode" => {
                if let Some(mode) = ctx.text(v, &fp) {
                    if let Some(other) = mode.strip_prefix("service:")
                        && !refs.services.contains(other)
                    {
                        ctx.error(
                            v,
                            &fp,
                            format!("`network_mode` names service `{other}`, which is not defined"),
                        );
                    }
                    s.network_mode = Some(mode);
                }
            }
            "depends_on" => s.depends_on = depends_on(ctx, name, v, &fp, refs),
            "healthcheck" => s.healthcheck = healthcheck(ctx, v, &fp),
            "restart" => {
                if let Some(policy) = ctx.text(v, &fp) {
                    let valid = matches!(
                        policy.as_str(),
                        "no" | "always" | "unless-stopped" | "on-failure"
                    ) || policy
                        .strip_prefix("on-failure:")
                        .is_some_and(|n| n.parse::<u32>().is_ok());
                    if valid {
                        s.restart = Some(policy);
                    } else {
                        ctx.error(
                            v,
                            &fp,
                            format!("`{policy}` is not a restart policy (no, always, unless-stopped, on-failure[:N])"),
                        );
                    }
                }
            }
            "labels" => {
                labels = ctx.labels(v, &fp);
                labels_node = Some(v);
            }
            "label_file" => label_files = label_file_list(ctx, v, &fp),
            "container_name" => {
                if let Some(cn) = ctx.text(v, &fp) {
                    let mut chars = cn.chars();
                    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
                    if !valid {
                        ctx.error(v, &fp, format!("invalid container name `{cn}`: use letters, digits, `_`, `.` and `-`"));
                    }
                    s.container_name = Some(cn);
                    container_name_node = Some(v);
                }
            }
            "user" => s.user = ctx.text(v, &fp),
            "working_dir" => s.working_dir = ctx.text(v, &fp),
            "hostname" => s.hostname = ctx.text(v, &fp),
            "stop_signal" => s.stop_signal = ctx.text(v, &fp),
            "extra_hosts" => s.extra_hosts = extra_hosts(ctx, v, &fp),
            "read_only" => s.read_only = ctx.bool(v, &fp).unwrap_or(false),
            "privileged" => s.privileged = ctx.bool(v, &fp).unwrap_or(false),
            "init" => s.init = ctx.bool(v, &fp),
            "cap_add" => s.cap_add = dedup(ctx.texts(v, &fp).into_iter().map(|(t, _)| t)),
            "cap_drop" => s.cap_drop = dedup(ctx.texts(v, &fp).into_iter().map(|(t, _)| t)),
            "security_opt" => s.security_opt = dedup(ctx.texts(v, &fp).into_iter().map(|(t, _)| t)),
            "stop_grace_period" => s.stop_grace_period = ctx.duration(v, &fp),
            "ulimits" => s.ulimits = ulimits(ctx, v, &fp),
            "logging" => s.logging = logging(ctx, v, &fp),
            "deploy" => deploy(
                ctx,
                v,
                &fp,
                &mut s,
                &mut deploy_replicas,
                &mut written,
                &mut start_first,
            ),
            "scale" => scale = ctx.int_in(v, &fp, 0..=10_000).map(|n| (n, v)),
            "profiles" => {
                let mut profiles = Vec::new();
                for (p, n) in ctx.texts(v, &fp) {
                    let mut chars = p.chars();
                    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
                    if !valid {
                        ctx.error(n, &fp, format!("invalid profile name `{p}`"));
                    }
                    profiles.push(p);
                }
                s.profiles = dedup(profiles);
            }
            // Which containers `docker compose up` streams logs from: no
            // effect on what runs.
            "attach" => {
                if !matches!(v.value, Value::Bool(_) | Value::String(_)) {
                    ctx.error(v, &fp, "`attach` must be true or false");
                }
            }
            "develop" => ctx.develop(k, &fp),
            "isolation" => match ctx.text(v, &fp).as_deref() {
                // The only value a Linux engine takes.
                Some("default" | "") | None => {}
                Some(other) => ctx.cannot_apply(
                    v,
                    &fp,
                    &format!("isolation: {other}"),
                    "only Windows engines isolate containers; a Linux engine refuses any value but `default`",
                ),
            },
            "pull_refresh_after" => pull_refresh_after = ctx.text(v, &fp).map(|t| (t, v)),
            f if engine::service_key(ctx, f, v, &fp, &mut s, &mut legacy) => {}
            f if f.starts_with("x-") => {}
            f => match refused(f) {
                Some(why) => {
                    refused_key = true;
                    ctx.cannot_apply(k, &fp, f, why)
                }
                None => ctx.unsupported(k, &fp),
            },
        }
    }

    engine::resolve_resources(ctx, &path, &mut s, &legacy, &written);
    if let Some((text, at)) = pull_refresh_after {
        let fp = format!("{path}.pull_refresh_after");
        match engine::refresh_period(&text).or_else(|| crate::duration::parse(&text).ok()) {
            Some(d) if !d.is_zero() => {
                if matches!(s.pull_policy, crate::model::compose::PullPolicy::Refresh(_)) {
                    s.pull_policy = crate::model::compose::PullPolicy::Refresh(d);
                } else {
                    ctx.warning(
                        at,
                        &fp,
                        "`pull_refresh_after` applies to `pull_policy: refresh` only; ignored",
                    );
                }
            }
            _ => ctx.error(
                at,
                &fp,
                format!("`{text}` is not a duration (e.g. `12h`, `7d`)"),
            ),
        }
    }
    s.labels = resolve_labels(ctx, label_files, labels);
    service_references(ctx, name, node, &path, &mut s, refs);

    match (scale, deploy_replicas) {
        (Some((a, node)), Some((b, _))) if a != b => ctx.error(
            node,
            &format!("{path}.scale"),
            format!("`scale: {a}` and `deploy.replicas: {b}` disagree; set one of them"),
        ),
        (Some((n, _)), _) | (None, Some((n, _))) => s.replicas = n as u32,
        (None, None) => {}
    }
    if let (Some(cn), Some(node)) = (&s.container_name, container_name_node)
        && s.replicas > 1
    {
        ctx.report(
            Diagnostic::error(format!(
                "`container_name: {cn}` with {} replicas: container names must be unique",
                s.replicas
            ))
            .hint("remove `container_name` or run one replica"),
            node,
            &format!("{path}.container_name"),
        );
    }
    if let Some(port) = s.ports.iter().find(|p| p.published.is_some()) {
        for (node, fp) in &start_first {
            ctx.report(
                Diagnostic::error(format!(
                    "`order: start-first` with fixed host port {}: the new container \
                     cannot bind it while the old one holds it",
                    port.published.as_deref().unwrap_or_default()
                ))
                .hint("use `order: stop-first`, or publish an ephemeral port behind a proxy"),
                node,
                fp,
            );
        }
    }
    if s.network_mode.is_some() && !s.networks.is_empty() {
        ctx.error(
            node,
            &path,
            "`network_mode` and `networks` cannot be used together",
        );
    }

    s.environment = resolve_environment(ctx, env_files, environment);
    dedup_mounts(&mut s);

    match image {
        Some(image) => s.image = image,
        // Named after the project by the loader (`<project>-<service>`).
        None if s.build.is_some() => {}
        None if has_build || refused_key => return None,
        None => {
            ctx.report(
                Diagnostic::error("service has neither `image` nor `build`")
                    .hint("set `image:` to the image to run"),
                key,
                &path,
            );
            return None;
        }
    }
    if let Some(policy) = s.labels.get(crate::model::compose::IMAGE_UPDATE_LABEL) {
        let at = labels_node.unwrap_or(node);
        let object = format!("{path}.labels");
        match crate::model::compose::ImageUpdate::parse(policy) {
            Err(e) => ctx.error(at, &object, e),
            Ok(_) if s.build.is_some() => ctx.error(
                at,
                &object,
                "a service built from the repo has no registry image to follow; remove the label or the `build:`",
            ),
            Ok(_) if s.image.contains('@') => ctx.error(
                at,
                &object,
                format!("`{}` names a digest, which never moves: follow a tag instead", s.image),
            ),
            Ok(policy) => {
                s.follow = Some(crate::model::compose::Follow {
                    policy,
                    reference: s.image.clone(),
                })
            }
        }
    }
    Some(s)
}

/// `label_file`: one path or a list, relative to the project directory
/// (paths from `extends` and `include` are rebased to it); every file is
/// required.
fn label_file_list<'n>(
    ctx: &mut Ctx,
    node: &'n Node,
    path: &str,
) -> Vec<(String, &'n Node, String)> {
    let mut out = Vec::new();
    for (rel, at) in ctx.text_or_texts(node, path) {
        match join_relative(ctx.input.file, &rel) {
            Ok(p) => out.push((p, at, path.to_owned())),
            Err(e) => ctx.error(at, path, e.to_string()),
        }
    }
    out
}

/// Labels from `label_file`s (in order, env-file syntax), then `labels`
/// over them, as compose-go resolves them.
fn resolve_labels(
    ctx: &mut Ctx,
    files: Vec<(String, &Node, String)>,
    labels: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (repo_path, at, object) in files {
        let Some(text) = ctx.read_text(&repo_path, Some(at), &object) else {
            continue;
        };
        let known = out.clone();
        let lookup = |k: &str| known.get(k).cloned();
        match dotenv::parse(&text, &lookup) {
            Ok(parsed) => out.extend(parsed.entries),
            Err(e) => ctx.diags.push(
                Diagnostic::error(e.message)
                    .file(repo_path)
                    .line(e.line)
                    .hint("a label file takes `key=value` lines, as an env file"),
            ),
        }
    }
    out.extend(labels);
    out
}

/// Checks what a service names of the others (`links`, `volumes_from`,
/// `ipc`/`pid: service:x`) and adds the implicit dependencies compose-go
/// adds: the named service starts first, and a recreate of it recreates
/// this one where it shares a namespace or volumes.
fn service_references(
    ctx: &mut Ctx,
    me: &str,
    node: &Node,
    path: &str,
    s: &mut Service,
    refs: &Refs,
) {
    let mut named: Vec<(String, &str, bool)> = Vec::new();
    for (service, _) in &s.links {
        named.push((service.clone(), "links", true));
    }
    for v in s.volumes_from.iter().filter(|v| !v.container) {
        named.push((v.source.clone(), "volumes_from", false));
    }
    for service in s.namespaces.services() {
        named.push((service.to_owned(), "ipc/pid", true));
    }
    for key in ["uts", "userns_mode", "cgroup"] {
        let mode = match key {
            "uts" => &s.namespaces.uts,
            "userns_mode" => &s.namespaces.userns_mode,
            _ => &s.namespaces.cgroup,
        };
        if mode.as_deref().is_some_and(|m| m.starts_with("service:")) {
            ctx.report(
                Diagnostic::error(format!("`{key}` cannot name a service"))
                    .hint("the engine shares this namespace with the host only"),
                node,
                &format!("{path}.{key}"),
            );
        }
    }
    named.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    for (service, key, restart) in named {
        if service == me {
            ctx.error(
                node,
                &format!("{path}.{}", key.split('/').next().unwrap_or(key)),
                format!("`{key}` names the service itself"),
            );
            continue;
        }
        if !refs.services.contains(&service) {
            ctx.error(
                node,
                &format!("{path}.{}", key.split('/').next().unwrap_or(key)),
                format!("`{key}` names service `{service}`, which is not defined"),
            );
            continue;
        }
        s.depends_on.entry(service).or_insert(Dependency {
            condition: DependencyCondition::ServiceStarted,
            restart,
            required: true,
        });
    }
    // `network_mode: service:x` is checked where it is read.
    if let Some(other) = s
        .network_mode
        .as_deref()
        .and_then(|m| m.strip_prefix("service:"))
        .filter(|o| *o != me && refs.services.contains(*o))
    {
        s.depends_on.entry(other.to_owned()).or_insert(Dependency {
            condition: DependencyCondition::ServiceStarted,
            restart: true,
            required: true,
        });
    }
}

/// A command as a list, or a string split like Compose splits it.
fn command(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Vec<String>> {
    match &node.value {
        Value::Null => None,
        Value::Seq(_) => Some(ctx.texts(node, path).into_iter().map(|(t, _)| t).collect()),
        _ => {
            let text = ctx.text(node, path)?;
            match syntax::split_command(&text) {
                Ok(words) => Some(words),
                Err(e) => {
                    ctx.error(node, path, e);
                    None
                }
            }
        }
    }
}

/// `env_file`: a path, a list of paths, or the long form with `required`.
/// Returns (repo path, required, node, object path).
fn env_file_list<'n>(
    ctx: &mut Ctx,
    node: &'n Node,
    path: &str,
) -> Vec<(String, bool, &'n Node, String)> {
    let items: Vec<&Node> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![node],
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let ipath = if node.as_seq().is_some() {
            format!("{path}[{i}]")
        } else {
            path.to_owned()
        };
        let (rel, required) = match &item.value {
            Value::Map(fields) => {
                let mut rel = None;
                let mut required = true;
                for (k, v) in fields {
                    let Some(key) = ctx.key(k, &ipath) else {
                        continue;
                    };
                    let fp = format!("{ipath}.{key}");
                    match key {
                        "path" => rel = ctx.text(v, &fp),
                        "required" => required = ctx.bool(v, &fp).unwrap_or(true),
                        _ => ctx.unsupported(k, &fp),
                    }
                }
                let Some(rel) = rel else {
                    ctx.error(item, &ipath, "`env_file` entry needs `path:`");
                    continue;
                };
                (rel, required)
            }
            _ => match ctx.text(item, &ipath) {
                Some(rel) => (rel, true),
                None => continue,
            },
        };
        match join_relative(ctx.input.file, &rel) {
            Ok(p) => out.push((p, required, item, ipath)),
            Err(e) => ctx.error(item, &ipath, e.to_string()),
        }
    }
    out
}

/// `env_file`s in order, then `environment` over them; a bare `KEY` takes
/// its value from the project's variables, else stays pass-through (`None`).
fn resolve_environment(
    ctx: &mut Ctx,
    env_files: Vec<(String, bool, &Node, String)>,
    environment: Vec<Entry>,
) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    for (repo_path, required, node, object) in env_files {
        let missing = required.then_some(node);
        let Some(text) = ctx.read_text(&repo_path, missing, &object) else {
            continue;
        };
        let vars = ctx.vars.clone();
        let lookup = |k: &str| vars.get(k).cloned();
        match dotenv::parse(&text, &lookup) {
            Ok(parsed) => {
                for (k, v) in parsed.entries {
                    env.insert(k, Some(v));
                }
                for name in parsed.unset {
                    ctx.warn_unset(&name, &repo_path, 0, "");
                }
            }
            Err(e) => ctx.diags.push(
                Diagnostic::error(e.message)
                    .file(repo_path)
                    .line(e.line)
                    .hint("see https://docs.docker.com/compose/how-tos/environment-variables/variable-interpolation/#env-file-syntax"),
            ),
        }
    }
    for e in environment {
        let value = e.value.or_else(|| ctx.vars.get(&e.key).cloned());
        env.insert(e.key, value);
    }
    env
}

fn ports(ctx: &mut Ctx, node: &Node, path: &str) -> Vec<Port> {
    let mut out: Vec<Port> = Vec::new();
    let Some(items) = ctx.seq(node, path) else {
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let parsed = match &item.value {
            Value::Map(fields) => long_port(ctx, item, fields, &ipath),
            _ => match ctx.text(item, &ipath) {
                Some(spec) => match syntax::parse_port(&spec) {
                    Ok(ports) => ports,
                    Err(e) => {
                        ctx.error(item, &ipath, e);
                        Vec::new()
                    }
                },
                None => Vec::new(),
            },
        };
        for p in parsed {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

fn long_port(ctx: &mut Ctx, item: &Node, fields: &[(Node, Node)], path: &str) -> Vec<Port> {
    let mut target = None;
    let mut published = None;
    let mut host_ip = None;
    let mut protocol = "tcp".to_owned();
    for (k, v) in fields {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "target" => target = ctx.int_in(v, &fp, 1..=65535).map(|t| t as u16),
            "published" => {
                if let Some(p) = ctx.text(v, &fp) {
                    match syntax::port_range(&p, &p) {
                        Ok(_) => published = Some(p),
                        Err(e) => ctx.error(v, &fp, e),
                    }
                }
            }
            "host_ip" => {
                if let Some(ip) = ctx.text(v, &fp) {
                    if ip.parse::<std::net::IpAddr>().is_err() {
                        ctx.error(v, &fp, format!("`{ip}` is not an IP address"));
                    }
                    host_ip = Some(ip);
                }
            }
            "protocol" => {
                if let Some(p) = ctx.text(v, &fp) {
                    let p = p.to_ascii_lowercase();
                    if matches!(p.as_str(), "tcp" | "udp" | "sctp") {
                        protocol = p;
                    } else {
                        ctx.error(
                            v,
                            &fp,
                            format!("protocol must be tcp, udp or sctp, not `{p}`"),
                        );
                    }
                }
            }
            "mode" => {
                if let Some(m) = ctx.text(v, &fp)
                    && !matches!(m.as_str(), "host" | "ingress")
                {
                    ctx.error(
                        v,
                        &fp,
                        format!("port mode must be `host` or `ingress`, not `{m}`"),
                    );
                }
            }
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
    match target {
        Some(target) => vec![Port {
            host_ip,
            published,
            target,
            protocol,
        }],
        None => {
            ctx.error(item, path, "a port needs `target:`, the container port");
            Vec::new()
        }
    }
}

/// Mounts and the files of relative bind mounts of files.
fn volumes(ctx: &mut Ctx, node: &Node, path: &str, refs: &Refs) -> (Vec<Mount>, Vec<FileMount>) {
    let mut mounts = Vec::new();
    let mut files = Vec::new();
    let Some(items) = ctx.seq(node, path) else {
        return (mounts, files);
    };
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let spec = match &item.value {
            Value::Map(fields) => long_volume(ctx, item, fields, &ipath),
            _ => ctx
                .text(item, &ipath)
                .and_then(|text| short_volume(ctx, item, &text, &ipath)),
        };
        let Some(spec) = spec else { continue };
        if !spec.target.starts_with('/') {
            ctx.error(
                item,
                &ipath,
                format!("mount target `{}` must be an absolute path", spec.target),
            );
            continue;
        }
        let VolumeSpec {
            kind,
            target,
            read_only,
            bind,
            no_copy,
            subpath,
        } = spec;
        if no_copy && !matches!(kind, Kind::Volume(_)) {
            ctx.warning(
                item,
                &ipath,
                "`nocopy` applies to volumes only; it has no effect on this mount",
            );
        }
        match kind {
            Kind::Volume(source) => {
                if let Some(name) = &source
                    && !refs.volumes.contains_key(name)
                {
                    ctx.report(
                        Diagnostic::error(format!("volume `{name}` is not defined"))
                            .hint(format!("declare it under the top-level `volumes:` (`volumes: {{{name}: {{}}}}`)")),
                        item,
                        &ipath,
                    );
                }
                mounts.push(Mount::Volume {
                    source,
                    target,
                    read_only,
                    no_copy,
                    subpath,
                });
            }
            Kind::Image { source, subpath } => mounts.push(Mount::Image {
                source,
                target,
                read_only,
                subpath,
            }),
            Kind::Tmpfs { size, mode } => mounts.push(Mount::Tmpfs { target, size, mode }),
            Kind::Bind(source) if syntax::is_windows_path(&source) => ctx.report(
                Diagnostic::error(format!("bind source `{source}` is a Windows path"))
                    .hint("driftless deploys to Linux Docker engines; use an absolute Linux path"),
                item,
                &ipath,
            ),
            Kind::Bind(source) if source.starts_with('/') => mounts.push(Mount::Bind {
                source,
                target,
                read_only,
                selinux: bind.selinux,
                propagation: bind.propagation,
                recursive: bind.recursive.clone(),
                create_host_path: bind.create_host_path,
            }),
            Kind::Bind(source) if source.starts_with('~') => {
                if source != "~" && !source.starts_with("~/") {
                    ctx.report(
                        Diagnostic::error(format!("bind source `{source}` names another user's home directory"))
                            .hint("docker compose expands only `~` and `~/…` (the home of the user running it); use an absolute host path"),
                        item,
                        &ipath,
                    );
                    continue;
                }
                ctx.warning(
                    item,
                    &ipath,
                    format!(
                        "bind source `{source}`: `~` is the home directory of the user running driftless \
                         (for the daemon, the daemon's own `HOME`), as docker compose expands it for \
                         whoever runs it; on a remote engine that path must exist on the engine's host"
                    ),
                );
                mounts.push(Mount::Bind {
                    source,
                    target,
                    read_only,
                    selinux: bind.selinux,
                    propagation: bind.propagation,
                    recursive: bind.recursive.clone(),
                    create_host_path: bind.create_host_path,
                });
            }
            Kind::Bind(source) => {
                if bind.propagation.is_some() {
                    ctx.warning(
                        item,
                        &ipath,
                        format!(
                            "bind propagation has no effect on `{source}`: files from the repo are \
                             delivered through the API, not bound from a host path"
                        ),
                    );
                }
                let mode = if read_only { 0o444 } else { 0o644 };
                match repo_bind(ctx, item, &ipath, &source, bind.create_host_path) {
                    RepoBind::File(repo_path, content) => files.push(FileMount {
                        target,
                        source: repo_path,
                        content: content.to_vec(),
                        mode,
                        uid: 0,
                        gid: 0,
                    }),
                    RepoBind::Dir(repo_path, dir_files) => mounts.push(Mount::RepoDir {
                        source: repo_path,
                        target,
                        read_only,
                        files: dir_files.into(),
                    }),
                    RepoBind::Refused => {}
                }
            }
        }
    }
    (mounts, files)
}

enum Kind {
    Volume(Option<String>),
    Bind(String),
    /// `type: image`: the image reference and `image.subpath`.
    Image {
        source: String,
        subpath: Option<String>,
    },
    Tmpfs {
        size: Option<u64>,
        mode: Option<u32>,
    },
}

struct VolumeSpec {
    kind: Kind,
    target: String,
    read_only: bool,
    bind: BindSpec,
    no_copy: bool,
    subpath: Option<String>,
}

/// The bind options of one mount, as written.
#[derive(Default)]
struct BindSpec {
    selinux: Option<String>,
    propagation: Option<String>,
    create_host_path: bool,
    /// `recursive` other than `enabled`.
    recursive: Option<String>,
}

/// `bind.recursive` values other than the default `enabled`.
const RECURSIVE: [&str; 3] = ["disabled", "writable", "readonly"];

/// Bind propagation modes the engine takes.
const PROPAGATIONS: [&str; 6] = [
    "rprivate", "private", "rshared", "shared", "rslave", "slave",
];

fn short_volume(ctx: &mut Ctx, item: &Node, text: &str, path: &str) -> Option<VolumeSpec> {
    let v = match syntax::parse_volume(text) {
        Ok(v) => v,
        Err(e) => {
            ctx.error(item, path, e);
            return None;
        }
    };
    let mut read_only = false;
    let mut no_copy = false;
    // The short syntax creates a missing host path, as docker-compose v1 did.
    let mut bind = BindSpec {
        create_host_path: true,
        ..BindSpec::default()
    };
    for option in &v.options {
        match option.as_str() {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "nocopy" => no_copy = true,
            "z" | "Z" => bind.selinux = Some(option.clone()),
            p if PROPAGATIONS.contains(&p) => bind.propagation = Some(p.to_owned()),
            // Mount consistency is a Docker Desktop (macOS) hint; engines ignore it.
            "cached" | "delegated" | "consistent" => {}
            other => {
                ctx.report(
                    Diagnostic::error(format!(
                        "volume option `{other}` is not supported by driftless"
                    ))
                    .hint("supported options: `ro`, `rw`, `nocopy`, `z`, `Z`, and the propagation modes `rprivate`, `private`, `rshared`, `shared`, `rslave`, `slave`"),
                    item,
                    path,
                );
            }
        }
    }
    let kind = match v.source {
        None => Kind::Volume(None),
        Some(source) if syntax::is_path(&source) => Kind::Bind(source),
        Some(source) => Kind::Volume(Some(source)),
    };
    if !matches!(kind, Kind::Bind(_)) && (bind.selinux.is_some() || bind.propagation.is_some()) {
        ctx.warning(
            item,
            path,
            "`z`, `Z` and propagation modes apply to bind mounts; the engine ignores them on a volume",
        );
        bind = BindSpec::default();
    }
    Some(VolumeSpec {
        kind,
        target: v.target,
        read_only,
        bind,
        no_copy,
        subpath: None,
    })
}

fn long_volume(
    ctx: &mut Ctx,
    item: &Node,
    fields: &[(Node, Node)],
    path: &str,
) -> Option<VolumeSpec> {
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut read_only = false;
    let mut tmpfs_size = None;
    let mut tmpfs_mode = None;
    let mut bind = BindSpec::default();
    let mut no_copy = false;
    let mut subpath = None;
    let mut image_subpath = None;
    for (k, v) in fields {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "type" => kind = ctx.text(v, &fp).map(|t| (t, v)),
            "source" => source = ctx.text(v, &fp),
            "target" => target = ctx.text(v, &fp),
            "read_only" => read_only = ctx.bool(v, &fp).unwrap_or(false),
            "consistency" => {}
            "bind" => bind = bind_options(ctx, v, &fp),
            "volume" => {
                for (vk, vv) in ctx.map(v, &fp).unwrap_or_default() {
                    let Some(vkey) = ctx.key(vk, &fp) else {
                        continue;
                    };
                    let vp = format!("{fp}.{vkey}");
                    match vkey {
                        "nocopy" => no_copy = ctx.bool(vv, &vp).unwrap_or(false),
                        "subpath" => subpath = ctx.text(vv, &vp).filter(|p| !p.is_empty()),
                        // docker compose reads `labels` (the schema has it)
                        // and drops it: its model of a volume mount has no
                        // labels, so the engine never sees them.
                        "labels" => {
                            ctx.labels(vv, &vp);
                            ctx.warning(
                                vk,
                                &vp,
                                "docker compose ignores `volume.labels` on a mount, and so does driftless; label a named volume with the top-level `volumes.<name>.labels`",
                            );
                        }
                        k if k.starts_with("x-") => {}
                        _ => ctx.unsupported(vk, &vp),
                    }
                }
            }
            "image" => {
                for (ik, iv) in ctx.map(v, &fp).unwrap_or_default() {
                    let Some(ikey) = ctx.key(ik, &fp) else {
                        continue;
                    };
                    let ip = format!("{fp}.{ikey}");
                    match ikey {
                        "subpath" => {
                            image_subpath = ctx.text(iv, &ip).filter(|p| !p.is_empty());
                            if image_subpath.as_deref().is_some_and(|p| {
                                p.starts_with('/') || p.split('/').any(|c| c == "..")
                            }) {
                                ctx.error(
                                    iv,
                                    &ip,
                                    "`image.subpath` must be a path inside the image, relative and without `..`",
                                );
                                image_subpath = None;
                            }
                        }
                        k if k.starts_with("x-") => {}
                        _ => ctx.unsupported(ik, &ip),
                    }
                }
            }
            "tmpfs" => {
                for (tk, tv) in ctx.map(v, &fp).unwrap_or_default() {
                    let Some(tkey) = ctx.key(tk, &fp) else {
                        continue;
                    };
                    let tp = format!("{fp}.{tkey}");
                    match tkey {
                        "size" => {
                            tmpfs_size = match &tv.value {
                                Value::Int(n) if *n >= 0 => Some(*n as u64),
                                _ => {
                                    ctx.text(tv, &tp)
                                        .and_then(|t| match syntax::parse_bytes(&t) {
                                            Ok(n) => Some(n),
                                            Err(e) => {
                                                ctx.error(tv, &tp, e);
                                                None
                                            }
                                        })
                                }
                            }
                        }
                        // As docker compose: the engine mount's
                        // `TmpfsOptions.Mode`, what `--mount
                        // type=tmpfs,tmpfs-mode=…` sets.
                        "mode" => tmpfs_mode = file_mode(ctx, tv, &tp),
                        k if k.starts_with("x-") => {}
                        _ => ctx.unsupported(tk, &tp),
                    }
                }
            }
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
    let Some(target) = target else {
        ctx.error(
            item,
            path,
            "a mount needs `target:`, the path in the container",
        );
        return None;
    };
    if bind.recursive.is_some() && (bind.create_host_path || bind.selinux.is_some()) {
        ctx.report(
            Diagnostic::error("`bind.recursive` cannot be combined with `create_host_path` or `selinux`")
                .hint("the engine takes those only in the `-v host:target:opts` form, which has no recursion option; drop one of them"),
            item,
            path,
        );
        return None;
    }
    let kind = match kind {
        None => {
            ctx.error(
                item,
                path,
                "a mount needs `type:` (volume, bind, tmpfs or image)",
            );
            return None;
        }
        Some((t, tnode)) => match t.as_str() {
            "volume" => Kind::Volume(source),
            "bind" => match source {
                Some(source) => Kind::Bind(source),
                None => {
                    ctx.error(item, path, "a bind mount needs `source:`");
                    return None;
                }
            },
            "tmpfs" => Kind::Tmpfs {
                size: tmpfs_size,
                mode: tmpfs_mode,
            },
            "image" => match source.filter(|s| !s.is_empty()) {
                Some(source) => Kind::Image {
                    source,
                    subpath: image_subpath,
                },
                None => {
                    ctx.error(
                        item,
                        path,
                        "an image mount needs `source:`, the image reference",
                    );
                    return None;
                }
            },
            other => {
                ctx.error(
                    tnode,
                    &format!("{path}.type"),
                    format!("mount type `{other}` is not supported by driftless (volume, bind, tmpfs, image)"),
                );
                return None;
            }
        },
    };
    Some(VolumeSpec {
        kind,
        target,
        read_only,
        bind,
        no_copy,
        subpath,
    })
}

/// A long-syntax mount's `bind:` map: `propagation`, `create_host_path`,
/// `selinux` (`z` or `Z`).
fn bind_options(ctx: &mut Ctx, node: &Node, path: &str) -> BindSpec {
    let mut bind = BindSpec::default();
    for (bk, bv) in ctx.map(node, path).unwrap_or_default() {
        let Some(bkey) = ctx.key(bk, path) else {
            continue;
        };
        let bp = format!("{path}.{bkey}");
        match bkey {
            "create_host_path" => bind.create_host_path = ctx.bool(bv, &bp).unwrap_or(false),
            "recursive" => {
                if let Some(r) = ctx.text(bv, &bp) {
                    if RECURSIVE.contains(&r.as_str()) {
                        bind.recursive = Some(r);
                    } else if r != "enabled" {
                        ctx.error(
                            bv,
                            &bp,
                            format!("`recursive` must be `enabled`, `disabled`, `writable` or `readonly`, not `{r}`"),
                        );
                    }
                }
            }
            "propagation" => {
                if let Some(p) = ctx.text(bv, &bp) {
                    if PROPAGATIONS.contains(&p.as_str()) {
                        bind.propagation = Some(p);
                    } else {
                        ctx.error(
                            bv,
                            &bp,
                            format!(
                                "bind propagation must be one of {}, not `{p}`",
                                PROPAGATIONS.join(", ")
                            ),
                        );
                    }
                }
            }
            "selinux" => {
                if let Some(l) = ctx.text(bv, &bp) {
                    if l == "z" || l == "Z" {
                        bind.selinux = Some(l);
                    } else {
                        ctx.error(
                            bv,
                            &bp,
                            format!("`selinux` must be `z` (shared) or `Z` (private), not `{l}`"),
                        );
                    }
                }
            }
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(bk, &bp),
        }
    }
    bind
}

/// What a relative bind source is in the repo.
enum RepoBind {
    /// A file: its repo path and content, copied into each container.
    File(String, std::sync::Arc<[u8]>),
    /// A directory (or, created like a missing host path, nothing yet):
    /// its repo path and files.
    Dir(String, Vec<ContextFile>),
    /// Reported.
    Refused,
}

/// The repo file or directory at `rel` (relative to the Compose file).
fn repo_bind(
    ctx: &mut Ctx,
    item: &Node,
    path: &str,
    rel: &str,
    create_host_path: bool,
) -> RepoBind {
    let repo_path = match join_relative(ctx.input.file, rel) {
        Ok(p) => p,
        Err(e) => {
            ctx.error(item, path, e.to_string());
            return RepoBind::Refused;
        }
    };
    if let Some(bytes) = ctx.read_bytes(&repo_path, None, path) {
        return RepoBind::File(repo_path, bytes);
    }
    let under = (ctx.input.is_dir)(&repo_path);
    if under.is_empty() {
        if !create_host_path {
            ctx.report(
                Diagnostic::error(format!("bind source `{rel}` (`{repo_path}`) is not a file or directory in the repository"))
                    .hint("commit it, or set `bind: {create_host_path: true}` for an empty directory the containers fill (the short syntax creates it)"),
                item,
                path,
            );
            return RepoBind::Refused;
        }
        ctx.warning(
            item,
            path,
            format!(
                "bind source `{rel}` (`{repo_path}`) is not in the repository: it starts as an empty \
                 directory, as docker compose creates a missing host path"
            ),
        );
        return RepoBind::Dir(repo_path, Vec::new());
    }
    let prefix = if repo_path.is_empty() {
        String::new()
    } else {
        format!("{repo_path}/")
    };
    let mut files = Vec::new();
    for file in under {
        let Some(sub) = file.strip_prefix(&prefix) else {
            continue;
        };
        let sub = sub.to_owned();
        if sub == BIND_LISTING {
            ctx.report(
                Diagnostic::error(format!(
                    "`{file}` has the name driftless keeps its listing of a bound directory under"
                ))
                .hint(format!(
                    "rename it: `{BIND_LISTING}` in a bound directory is driftless's"
                )),
                item,
                path,
            );
            continue;
        }
        if let Some(content) = ctx.read_bytes(&file, Some(item), path) {
            files.push(ContextFile {
                mode: super::build::mode_of((ctx.input.is_executable)(&file)),
                path: sub,
                content,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    RepoBind::Dir(repo_path, files)
}

/// Which top-level resource a service-level list refers to.
#[derive(Clone, Copy, PartialEq)]
enum Listed {
    Config,
    Secret,
}

/// Service-level `configs:` or `secrets:` as files: a config lands at
/// `/<source>` unless `target` says otherwise, a secret at
/// `/run/secrets/<source>` (a relative `target` is under `/run/secrets`),
/// as docker compose places them outside swarm.
fn files_of(ctx: &mut Ctx, node: &Node, path: &str, refs: &Refs, kind: Listed) -> Vec<FileMount> {
    let (noun, defs, dir) = match kind {
        Listed::Config => ("config", refs.configs, ""),
        Listed::Secret => ("secret", refs.secrets, "/run/secrets"),
    };
    let mut out = Vec::new();
    let Some(items) = ctx.seq(node, path) else {
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let (mut uid, mut gid) = (0, 0);
        let (source, target, mode) = match &item.value {
            Value::Map(fields) => {
                let mut source = None;
                let mut target = None;
                let mut mode = 0o444;
                for (k, v) in fields {
                    let Some(key) = ctx.key(k, &ipath) else {
                        continue;
                    };
                    let fp = format!("{ipath}.{key}");
                    match key {
                        "source" => source = ctx.text(v, &fp),
                        "target" => target = ctx.text(v, &fp),
                        "mode" => mode = file_mode(ctx, v, &fp).unwrap_or(mode),
                        "uid" => uid = owner_id(ctx, v, &fp),
                        "gid" => gid = owner_id(ctx, v, &fp),
                        k if k.starts_with("x-") => {}
                        _ => ctx.unsupported(k, &fp),
                    }
                }
                let Some(source) = source else {
                    ctx.error(
                        item,
                        &ipath,
                        format!("a {noun} needs `source:`, the name of a top-level {noun}"),
                    );
                    continue;
                };
                (source, target, mode)
            }
            _ => match ctx.text(item, &ipath) {
                Some(source) => (source, None, 0o444),
                None => continue,
            },
        };
        let target = match target {
            Some(t) if t.starts_with('/') => t,
            Some(t) => format!("{dir}/{t}"),
            None => format!("{dir}/{source}"),
        };
        let hint = match kind {
            Listed::Config => {
                "declare it under the top-level `configs:` with `file:` or `content:`"
            }
            Listed::Secret => {
                "declare it under the top-level `secrets:` with `file:`, `environment:` or `x-driftless-secret:`"
            }
        };
        match defs.get(&source) {
            None => ctx.report(
                Diagnostic::error(format!("{noun} `{source}` is not defined")).hint(hint),
                item,
                &ipath,
            ),
            Some(None) => {}
            Some(Some(def)) => {
                let mount = FileMount {
                    target,
                    source: def.source.clone(),
                    content: def.content.clone(),
                    mode,
                    uid,
                    gid,
                };
                match out
                    .iter()
                    .position(|m: &FileMount| m.target == mount.target)
                {
                    Some(j) => out[j] = mount,
                    None => out.push(mount),
                }
            }
        }
    }
    out
}

/// A numeric user or group id (`"103"`), as docker compose writes it into
/// the archive it copies configs with.
fn owner_id(ctx: &mut Ctx, node: &Node, path: &str) -> u32 {
    ctx.int_in(node, path, 0..=i64::from(u32::MAX))
        .map_or(0, |n| n as u32)
}

/// A file mode: an integer (`0440` in YAML is octal, as in Compose) or an
/// octal string (`"0440"`).
fn file_mode(ctx: &mut Ctx, node: &Node, path: &str) -> Option<u32> {
    let mode = match &node.value {
        Value::Int(n) => u32::try_from(*n).ok(),
        Value::String(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
        _ => None,
    };
    match mode {
        Some(m) if m <= 0o7777 => Some(m),
        _ => {
            ctx.error(node, path, "must be a file mode such as 0440");
            None
        }
    }
}

fn networks(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    refs: &Refs,
) -> BTreeMap<String, ServiceNetwork> {
    let mut out = BTreeMap::new();
    let check = |ctx: &mut Ctx, name: &str, at: &Node, p: &str| {
        if name != "default" && !refs.networks.contains_key(name) {
            ctx.report(
                Diagnostic::error(format!("network `{name}` is not defined")).hint(format!(
                    "declare it under the top-level `networks:` (`networks: {{{name}: {{}}}}`)"
                )),
                at,
                p,
            );
        }
    };
    match &node.value {
        Value::Seq(_) => {
            for (name, item) in ctx.texts(node, path) {
                check(ctx, &name, item, path);
                out.insert(name, ServiceNetwork::default());
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                let Some(name) = ctx.key(k, path) else {
                    continue;
                };
                let np = format!("{path}.{name}");
                check(ctx, name, k, &np);
                let mut attachment = ServiceNetwork::default();
                for (fk, fv) in ctx.map(v, &np).unwrap_or_default() {
                    let Some(field) = ctx.key(fk, &np) else {
                        continue;
                    };
                    let fp = format!("{np}.{field}");
                    match field {
                        "aliases" => {
                            attachment.aliases =
                                dedup(ctx.texts(fv, &fp).into_iter().map(|(t, _)| t))
                        }
                        "ipv4_address" | "ipv6_address" => {
                            let Some(ip) = ctx.text(fv, &fp) else {
                                continue;
                            };
                            let v6 = field == "ipv6_address";
                            let parsed = ip
                                .parse::<std::net::IpAddr>()
                                .ok()
                                .filter(|a| a.is_ipv6() == v6);
                            match parsed {
                                None => ctx.error(
                                    fv,
                                    &fp,
                                    format!(
                                        "`{ip}` is not an IPv{} address",
                                        if v6 { 6 } else { 4 }
                                    ),
                                ),
                                Some(addr) => static_ip_in_subnet(ctx, refs, name, addr, fv, &fp),
                            }
                            if v6 {
                                attachment.ipv6_address = Some(ip);
                            } else {
                                attachment.ipv4_address = Some(ip);
                            }
                        }
                        "link_local_ips" => {
                            let mut ips = Vec::new();
                            for (ip, at) in ctx.texts(fv, &fp) {
                                if ip.parse::<std::net::IpAddr>().is_err() {
                                    ctx.error(at, &fp, format!("`{ip}` is not an IP address"));
                                } else if !ips.contains(&ip) {
                                    ips.push(ip);
                                }
                            }
                            attachment.link_local_ips = ips;
                        }
                        "mac_address" => attachment.mac_address = engine::mac(ctx, fv, &fp),
                        "driver_opts" => attachment.driver_opts = ctx.string_map(fv, &fp),
                        "priority" => attachment.priority = ctx.int(fv, &fp).unwrap_or(0),
                        "gw_priority" => attachment.gw_priority = ctx.int(fv, &fp).unwrap_or(0),
                        "interface_name" => attachment.interface_name = ctx.text(fv, &fp),
                        f if f.starts_with("x-") => {}
                        _ => ctx.unsupported(fk, &fp),
                    }
                }
                out.insert(name.to_owned(), attachment);
            }
        }
        Value::Null => {}
        _ => ctx.error(
            node,
            path,
            format!(
                "must be a list or a mapping of networks, not {}",
                node.kind()
            ),
        ),
    }
    out
}

/// A static address must fall in one of the network's configured subnets:
/// the engine assigns fixed addresses only on networks with a user-set
/// subnet, and refuses one outside it when the container starts.
fn static_ip_in_subnet(
    ctx: &mut Ctx,
    refs: &Refs,
    network: &str,
    addr: std::net::IpAddr,
    at: &Node,
    path: &str,
) {
    let Some(net) = refs.networks.get(network) else {
        if network == "default" {
            ctx.report(
                Diagnostic::error(format!("static address `{addr}` on the implicit `default` network, which has no subnet"))
                    .hint("declare `networks: {default: {ipam: {config: [{subnet: ...}]}}}`, or another network with a subnet"),
                at,
                path,
            );
        }
        return;
    };
    if net.external {
        return;
    }
    let subnets: Vec<&str> = net
        .ipam
        .config
        .iter()
        .filter_map(|p| p.subnet.as_deref())
        .filter(|s| s.contains(':') == addr.is_ipv6())
        .collect();
    if subnets.is_empty() {
        ctx.report(
            Diagnostic::error(format!(
                "static address `{addr}` on network `{network}`, which has no IPv{} subnet configured",
                if addr.is_ipv6() { 6 } else { 4 }
            ))
            .hint(format!("the engine assigns fixed addresses only within a configured subnet: set `networks.{network}.ipam.config[].subnet`")),
            at,
            path,
        );
        return;
    }
    if !subnets
        .iter()
        .any(|s| syntax::cidr_contains(s, addr).unwrap_or(false))
    {
        ctx.report(
            Diagnostic::error(format!(
                "static address `{addr}` is outside the subnet of network `{network}` ({})",
                subnets.join(", ")
            ))
            .hint("pick an address inside the subnet, or change the network's `ipam.config`"),
            at,
            path,
        );
    }
}

fn depends_on(
    ctx: &mut Ctx,
    me: &str,
    node: &Node,
    path: &str,
    refs: &Refs,
) -> BTreeMap<String, Dependency> {
    let mut out = BTreeMap::new();
    let mut deps: Vec<(String, &Node, Dependency)> = Vec::new();
    let default = Dependency {
        condition: DependencyCondition::ServiceStarted,
        restart: false,
        required: true,
    };
    match &node.value {
        Value::Seq(_) => {
            for (name, item) in ctx.texts(node, path) {
                deps.push((name, item, default.clone()));
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries {
                let Some(name) = ctx.key(k, path) else {
                    continue;
                };
                let dp = format!("{path}.{name}");
                let mut dep = default.clone();
                for (fk, fv) in ctx.map(v, &dp).unwrap_or_default() {
                    let Some(field) = ctx.key(fk, &dp) else {
                        continue;
                    };
                    let fp = format!("{dp}.{field}");
                    match field {
                        "condition" => match ctx.text(fv, &fp).as_deref() {
                            Some("service_started") => dep.condition = DependencyCondition::ServiceStarted,
                            Some("service_healthy") => dep.condition = DependencyCondition::ServiceHealthy,
                            Some("service_completed_successfully") => {
                                dep.condition = DependencyCondition::ServiceCompletedSuccessfully
                            }
                            Some(other) => ctx.error(
                                fv,
                                &fp,
                                format!("`{other}` is not a condition (service_started, service_healthy, service_completed_successfully)"),
                            ),
                            None => {}
                        },
                        "restart" => dep.restart = ctx.bool(fv, &fp).unwrap_or(false),
                        "required" => dep.required = ctx.bool(fv, &fp).unwrap_or(true),
                        f if f.starts_with("x-") => {}
                        _ => ctx.unsupported(fk, &fp),
                    }
                }
                deps.push((name.to_owned(), k, dep));
            }
        }
        Value::Null => {}
        _ => ctx.error(
            node,
            path,
            format!(
                "must be a list or a mapping of services, not {}",
                node.kind()
            ),
        ),
    }
    for (name, at, dep) in deps {
        if name == me {
            ctx.error(at, path, format!("service `{me}` depends on itself"));
            continue;
        }
        if !refs.services.contains(&name) {
            if dep.required {
                ctx.error(at, path, format!("depends on undefined service `{name}`"));
            } else {
                ctx.warning(
                    at,
                    path,
                    format!("optional dependency `{name}` is not defined; ignored"),
                );
            }
            continue;
        }
        out.insert(name, dep);
    }
    out
}

fn healthcheck(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Healthcheck> {
    let entries = ctx.map(node, path)?;
    let mut hc = Healthcheck {
        test: Vec::new(),
        interval: None,
        timeout: None,
        retries: None,
        start_period: None,
        start_interval: None,
        disable: false,
    };
    for (k, v) in entries {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "test" => match &v.value {
                Value::Seq(_) => {
                    let test: Vec<String> = ctx.texts(v, &fp).into_iter().map(|(t, _)| t).collect();
                    match test.first().map(String::as_str) {
                        Some("NONE" | "CMD" | "CMD-SHELL") => hc.test = test,
                        _ => ctx.report(
                            Diagnostic::error("a healthcheck test list must start with `CMD`, `CMD-SHELL` or `NONE`")
                                .hint("e.g. `[\"CMD\", \"curl\", \"-f\", \"http://localhost\"]`, or a string for a shell command"),
                            v,
                            &fp,
                        ),
                    }
                }
                _ => {
                    if let Some(cmd) = ctx.text(v, &fp) {
                        if cmd.trim().is_empty() {
                            ctx.error(v, &fp, "the healthcheck test is empty");
                        }
                        hc.test = vec!["CMD-SHELL".to_owned(), cmd];
                    }
                }
            },
            "interval" => hc.interval = ctx.duration(v, &fp),
            "timeout" => hc.timeout = ctx.duration(v, &fp),
            "start_period" => hc.start_period = ctx.duration(v, &fp),
            "start_interval" => hc.start_interval = ctx.duration(v, &fp),
            "retries" => {
                hc.retries = ctx
                    .int_in(v, &fp, 0..=i64::from(u32::MAX))
                    .map(|n| n as u32)
            }
            "disable" => hc.disable = ctx.bool(v, &fp).unwrap_or(false),
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
    if hc.disable {
        hc.test = vec!["NONE".to_owned()];
    } else if hc.test.first().map(String::as_str) == Some("NONE") {
        hc.disable = true;
    }
    Some(hc)
}

/// `extra_hosts` as `host:ip` (list of `host:ip` / `host=ip`, or a mapping
/// of host to one IP or a list of them).
pub(crate) fn extra_hosts(ctx: &mut Ctx, node: &Node, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |ctx: &mut Ctx, host: &str, ip: &str, at: &Node| {
        if host.is_empty() || ip.is_empty() {
            ctx.error(at, path, format!("`{host}:{ip}`: expected `host:ip`"));
            return;
        }
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        if ip.parse::<std::net::IpAddr>().is_err() && ip != "host-gateway" {
            ctx.error(
                at,
                path,
                format!("`{ip}` is not an IP address (or `host-gateway`)"),
            );
            return;
        }
        let entry = format!("{host}:{ip}");
        if !out.contains(&entry) {
            out.push(entry);
        }
    };
    match &node.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                let Some(host) = ctx.key(k, path) else {
                    continue;
                };
                let hp = format!("{path}.{host}");
                for (ip, at) in ctx.text_or_texts(v, &hp) {
                    push(ctx, host, &ip, at);
                }
            }
        }
        _ => {
            for (entry, at) in ctx.texts(node, path) {
                let (host, ip) = entry
                    .split_once('=')
                    .or_else(|| entry.split_once(':'))
                    .unwrap_or((&entry, ""));
                push(ctx, host, ip, at);
            }
        }
    }
    out
}

fn ulimits(ctx: &mut Ctx, node: &Node, path: &str) -> BTreeMap<String, Ulimit> {
    let mut out = BTreeMap::new();
    for (k, v) in ctx.map(node, path).unwrap_or_default() {
        let Some(name) = ctx.key(k, path) else {
            continue;
        };
        let up = format!("{path}.{name}");
        let limit = match &v.value {
            Value::Map(fields) => {
                let (mut soft, mut hard) = (None, None);
                for (fk, fv) in fields {
                    let Some(field) = ctx.key(fk, &up) else {
                        continue;
                    };
                    let fp = format!("{up}.{field}");
                    match field {
                        "soft" => soft = ctx.int(fv, &fp),
                        "hard" => hard = ctx.int(fv, &fp),
                        _ => ctx.unsupported(fk, &fp),
                    }
                }
                match (soft, hard) {
                    (Some(soft), Some(hard)) => {
                        if soft > hard {
                            ctx.error(
                                v,
                                &up,
                                format!("soft limit {soft} is above the hard limit {hard}"),
                            );
                        }
                        Ulimit { soft, hard }
                    }
                    _ => {
                        ctx.error(
                            v,
                            &up,
                            "a ulimit needs both `soft:` and `hard:` (or a single number)",
                        );
                        continue;
                    }
                }
            }
            _ => match ctx.int(v, &up) {
                Some(n) => Ulimit { soft: n, hard: n },
                None => continue,
            },
        };
        out.insert(name.to_owned(), limit);
    }
    out
}

fn logging(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Logging> {
    let mut logging = Logging {
        driver: None,
        options: BTreeMap::new(),
    };
    for (k, v) in ctx.map(node, path)? {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "driver" => logging.driver = ctx.text(v, &fp),
            "options" => logging.options = ctx.string_map(v, &fp),
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
    Some(logging)
}

/// `deploy`: replicas, resources, the restart policy and the update and
/// rollback configs map onto the engine; the swarm-only keys are ignored,
/// as docker compose ignores them (noted once per file). Each explicit
/// `order: start-first` is pushed onto `start_first` (checked against
/// fixed host ports once the whole service is read).
fn deploy<'n>(
    ctx: &mut Ctx,
    node: &'n Node,
    path: &str,
    s: &mut Service,
    replicas: &mut Option<(i64, &'n Node)>,
    written: &mut engine::DeployResources,
    start_first: &mut Vec<(&'n Node, String)>,
) {
    for (k, v) in ctx.map(node, path).unwrap_or_default() {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "replicas" => *replicas = ctx.int_in(v, &fp, 0..=10_000).map(|n| (n, v)),
            "mode" => match ctx.text(v, &fp).as_deref() {
                // One engine is one node: `global` is one replica.
                Some("replicated" | "global" | "") | None => {}
                Some(other) => ctx.cannot_apply(
                    v,
                    &fp,
                    &format!("deploy.mode: {other}"),
                    "it runs a swarm job; docker compose runs `replicated` and `global` services only",
                ),
            },
            "resources" => {
                for (rk, rv) in ctx.map(v, &fp).unwrap_or_default() {
                    let Some(rkey) = ctx.key(rk, &fp) else {
                        continue;
                    };
                    let rp = format!("{fp}.{rkey}");
                    match rkey {
                        "limits" => {
                            written.limits = true;
                            s.resources.limits = resource_set(ctx, rv, &rp, true, s)
                        }
                        "reservations" => {
                            written.reservations = true;
                            s.resources.reservations = resource_set(ctx, rv, &rp, false, s)
                        }
                        k if k.starts_with("x-") => {}
                        _ => ctx.unsupported(rk, &rp),
                    }
                }
            }
            "restart_policy" => restart_policy(ctx, v, &fp, s),
            "update_config" => s.update_config = update_config(ctx, v, &fp, start_first),
            "rollback_config" => {
                s.rollback_config = UpdateConfig {
                    rollback: true,
                    ..update_config(ctx, v, &fp, start_first)
                }
            }
            "labels" | "placement" | "endpoint_mode" => ctx.swarm_only(k, &fp),
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
}

/// `deploy.update_config` / `deploy.rollback_config`, Swarm's keys and
/// defaults.
fn update_config<'n>(
    ctx: &mut Ctx,
    node: &'n Node,
    path: &str,
    start_first: &mut Vec<(&'n Node, String)>,
) -> UpdateConfig {
    let mut u = UpdateConfig {
        from: ConfigFrom::Compose,
        ..UpdateConfig::default()
    };
    for (k, v) in ctx.map(node, path).unwrap_or_default() {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "order" => match ctx.text(v, &fp).as_deref() {
                Some("stop-first") => u.order = Some(UpdateOrder::StopFirst),
                Some("start-first") => {
                    u.order = Some(UpdateOrder::StartFirst);
                    start_first.push((v, fp));
                }
                Some(other) => ctx.error(
                    v,
                    &fp,
                    format!("`{other}` is not an update order (stop-first, start-first)"),
                ),
                None => {}
            },
            "parallelism" => {
                if let Some(n) = ctx.int_in(v, &fp, 0..=10_000) {
                    u.parallelism = n as u32;
                }
            }
            "delay" => u.delay = ctx.duration(v, &fp).unwrap_or(u.delay),
            "monitor" => u.monitor = ctx.duration(v, &fp).unwrap_or(u.monitor),
            "failure_action" => match ctx.text(v, &fp).as_deref() {
                Some("pause") => u.failure_action = FailureAction::Pause,
                Some("rollback") => u.failure_action = FailureAction::Rollback,
                Some("continue") => u.failure_action = FailureAction::Continue,
                Some(other) => ctx.error(
                    v,
                    &fp,
                    format!("`{other}` is not a failure action (pause, rollback, continue)"),
                ),
                None => {}
            },
            "max_failure_ratio" => match ctx.float(v, &fp) {
                Some(r) if (0.0..=1.0).contains(&r) => u.max_failure_ratio = r,
                Some(r) => ctx.error(v, &fp, format!("{r} is not a ratio between 0 and 1")),
                None => {}
            },
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
    u
}

/// `deploy.restart_policy` overrides `restart`, as docker compose maps it:
/// `none` → `no`, `any` → `always`, `on-failure` with `max_attempts`.
fn restart_policy(ctx: &mut Ctx, node: &Node, path: &str, s: &mut Service) {
    let mut condition = None;
    let mut attempts = None;
    for (k, v) in ctx.map(node, path).unwrap_or_default() {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "condition" => {
                condition = match ctx.text(v, &fp).as_deref() {
                    Some("none" | "no") => Some("no"),
                    Some("on-failure") => Some("on-failure"),
                    Some("any" | "always") => Some("always"),
                    Some("unless-stopped") => Some("unless-stopped"),
                    Some(other) => {
                        ctx.error(
                            v,
                            &fp,
                            format!("`{other}` is not a restart condition (none, on-failure, any)"),
                        );
                        return;
                    }
                    None => return,
                }
            }
            "max_attempts" => {
                attempts = ctx.int_in(v, &fp, 0..=i64::from(u32::MAX)).map(|n| (n, v))
            }
            "delay" | "window" => ctx.swarm_only(k, &fp),
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
    // No condition is the engine's default, `no`: docker compose passes the
    // empty condition through, and `deploy.restart_policy` wins over `restart`.
    let condition = condition.unwrap_or("no");
    s.restart = Some(match attempts {
        Some((n, _)) if n > 0 && condition == "on-failure" => format!("on-failure:{n}"),
        Some((n, a)) if n > 0 => {
            ctx.error(
                a,
                &format!("{path}.max_attempts"),
                format!("`max_attempts` applies to `condition: on-failure` only; the engine refuses it with `{condition}`"),
            );
            return;
        }
        _ => condition.to_owned(),
    });
}

fn resource_set(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    limits: bool,
    s: &mut Service,
) -> ResourceSet {
    let mut set = ResourceSet::default();
    for (k, v) in ctx.map(node, path).unwrap_or_default() {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "cpus" => {
                set.cpus = ctx.float(v, &fp).filter(|c| {
                    let ok = *c >= 0.0;
                    if !ok {
                        ctx.error(v, &fp, "cpus cannot be negative");
                    }
                    ok
                })
            }
            "memory" => set.memory = ctx.bytes(v, &fp),
            "pids" if limits => set.pids = ctx.int_in(v, &fp, -1..=i64::MAX),
            "devices" if !limits => {
                let requests = engine::device_requests(ctx, v, &fp, true);
                s.resources.device_requests.extend(requests);
            }
            "generic_resources" if !limits => ctx.swarm_only(k, &fp),
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
    set
}

/// Removes repeated entries, keeping the first position.
fn dedup(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Compose keeps one mount per container path: a later one replaces an
/// earlier one in place.
fn dedup_mounts(s: &mut Service) {
    let target = |m: &Mount| match m {
        Mount::Volume { target, .. }
        | Mount::Bind { target, .. }
        | Mount::RepoDir { target, .. }
        | Mount::Image { target, .. }
        | Mount::Tmpfs { target, .. } => target.clone(),
    };
    let mut mounts: Vec<Mount> = Vec::new();
    for m in std::mem::take(&mut s.volumes) {
        match mounts.iter().position(|x| target(x) == target(&m)) {
            Some(i) => mounts[i] = m,
            None => mounts.push(m),
        }
    }
    s.volumes = mounts;
    let mut files: Vec<FileMount> = Vec::new();
    for f in std::mem::take(&mut s.files) {
        match files.iter().position(|x| x.target == f.target) {
            Some(i) => files[i] = f,
            None => files.push(f),
        }
    }
    s.files = files;
}
