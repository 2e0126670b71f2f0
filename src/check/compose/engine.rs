//! The service keys that map one to one onto the engine's container
//! options — resource controls, devices, namespaces, DNS, lifecycle hooks,
//! the pull policy — read as compose-go reads them, and the consistency
//! rules docker compose applies to them (a service key and its
//! `deploy.resources` twin must agree; the engine's own conflicts, such as
//! `cpus` with `cpu_quota`, are refused here rather than at create time).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Ctx, syntax};
use crate::diag::Diagnostic;
use crate::model::compose::{Blkio, Device, DeviceRequest, Hook, PullPolicy, Service, VolumesFrom};
use crate::yaml::{Node, Value};

/// The resource keys set on the service itself, kept with their nodes until
/// `deploy.resources` is known: Compose requires the two spellings to agree.
#[derive(Default)]
pub(crate) struct ServiceResources<'n> {
    pub cpus: Option<(f64, &'n Node)>,
    pub mem_limit: Option<(u64, &'n Node)>,
    pub mem_reservation: Option<(u64, &'n Node)>,
    pub pids_limit: Option<(i64, &'n Node)>,
}

/// What `deploy.resources` set, and whether its `limits` / `reservations`
/// blocks were written at all (an empty block still makes Compose compare).
#[derive(Default)]
pub(crate) struct DeployResources {
    pub limits: bool,
    pub reservations: bool,
}

/// Reads one of the keys this module owns into `s`; returns whether `field`
/// was one of them.
pub(crate) fn service_key<'n>(
    ctx: &mut Ctx,
    field: &str,
    v: &'n Node,
    fp: &str,
    s: &mut Service,
    legacy: &mut ServiceResources<'n>,
) -> bool {
    let r = &mut s.resources;
    match field {
        "cpus" => legacy.cpus = cpus(ctx, v, fp).map(|c| (c, v)),
        "mem_limit" => legacy.mem_limit = ctx.bytes(v, fp).map(|b| (b, v)),
        "mem_reservation" => legacy.mem_reservation = ctx.bytes(v, fp).map(|b| (b, v)),
        "pids_limit" => legacy.pids_limit = ctx.int_in(v, fp, -1..=i64::MAX).map(|n| (n, v)),
        "memswap_limit" => r.memswap_limit = swap_limit(ctx, v, fp),
        "mem_swappiness" => r.mem_swappiness = ctx.int_in(v, fp, 0..=100),
        "cpu_shares" => r.cpu_shares = ctx.int_in(v, fp, 0..=262_144),
        "cpu_period" => r.cpu_period = micros(ctx, v, fp),
        "cpu_quota" => r.cpu_quota = micros(ctx, v, fp),
        "cpu_rt_runtime" => r.cpu_rt_runtime = micros(ctx, v, fp),
        "cpu_rt_period" => r.cpu_rt_period = micros(ctx, v, fp),
        "cpuset" => r.cpuset = cpuset(ctx, v, fp),
        "cpu_count" => r.cpu_count = ctx.int_in(v, fp, 0..=i64::MAX),
        "cpu_percent" => {
            r.cpu_percent = ctx.float(v, fp).filter(|p| {
                let ok = (0.0..=100.0).contains(p);
                if !ok {
                    ctx.error(v, fp, "cpu_percent must be between 0 and 100");
                }
                ok
            })
        }
        "oom_kill_disable" => r.oom_kill_disable = ctx.bool(v, fp).unwrap_or(false),
        "oom_score_adj" => s.oom_score_adj = ctx.int_in(v, fp, -1000..=1000),
        "shm_size" => s.shm_size = ctx.bytes(v, fp),
        "blkio_config" => r.blkio = blkio(ctx, v, fp),
        "devices" => r.devices = devices(ctx, v, fp),
        "device_cgroup_rules" => r.device_cgroup_rules = cgroup_rules(ctx, v, fp),
        "gpus" => {
            let gpus = gpus(ctx, v, fp);
            r.device_requests.splice(0..0, gpus);
        }
        "tmpfs" => s.tmpfs = tmpfs(ctx, v, fp),
        "sysctls" => {
            s.sysctls = ctx
                .entries(v, fp, '=')
                .into_iter()
                .map(|e| (e.key, e.value.unwrap_or_default()))
                .collect()
        }
        "dns" => s.dns = ip_list(ctx, v, fp),
        "dns_search" => s.dns_search = dedup(ctx.text_or_texts(v, fp)),
        "dns_opt" => s.dns_opt = dedup(ctx.texts(v, fp)),
        "domainname" => s.domainname = ctx.text(v, fp),
        "mac_address" => s.mac_address = mac(ctx, v, fp),
        "ipc" => {
            s.namespaces.ipc = namespace(ctx, v, fp, &["host", "private", "shareable", "none"])
        }
        "pid" => s.namespaces.pid = namespace(ctx, v, fp, &["host"]),
        "uts" => s.namespaces.uts = namespace(ctx, v, fp, &["host"]),
        "userns_mode" => s.namespaces.userns_mode = ctx.text(v, fp),
        "cgroup" => {
            s.namespaces.cgroup = ctx.text(v, fp).filter(|c| {
                let ok = matches!(c.as_str(), "host" | "private");
                if !ok {
                    ctx.error(
                        v,
                        fp,
                        format!("`cgroup` must be `host` or `private`, not `{c}`"),
                    );
                }
                ok
            })
        }
        "cgroup_parent" => s.cgroup_parent = ctx.text(v, fp),
        "group_add" => s.group_add = dedup(ctx.texts(v, fp)),
        "runtime" => s.runtime = ctx.text(v, fp),
        "storage_opt" => s.storage_opt = ctx.string_map(v, fp),
        "tty" => s.tty = ctx.bool(v, fp).unwrap_or(false),
        "stdin_open" => s.stdin_open = ctx.bool(v, fp).unwrap_or(false),
        "links" => s.links = links(ctx, v, fp),
        "external_links" => s.external_links = links(ctx, v, fp),
        "volumes_from" => s.volumes_from = volumes_from(ctx, v, fp),
        "annotations" => {
            s.annotations = ctx
                .entries(v, fp, '=')
                .into_iter()
                .map(|e| (e.key, e.value.unwrap_or_default()))
                .collect()
        }
        "platform" => s.platform = platform(ctx, v, fp),
        "pull_policy" => s.pull_policy = pull_policy(ctx, v, fp).unwrap_or_default(),
        "post_start" => s.post_start = hooks(ctx, v, fp),
        "pre_stop" => s.pre_stop = hooks(ctx, v, fp),
        _ => return false,
    }
    true
}

/// Folds the service-level resource keys into `s.resources`, refusing the
/// combinations Compose refuses: a key and its `deploy.resources` twin with
/// distinct values (an unset twin in a written block counts as distinct,
/// as in compose-go), and what the engine refuses at create time.
pub(crate) fn resolve_resources(
    ctx: &mut Ctx,
    path: &str,
    s: &mut Service,
    legacy: &ServiceResources,
    deploy: &DeployResources,
) {
    let r = &mut s.resources;
    fold(
        ctx,
        path,
        legacy.cpus,
        deploy.limits,
        &mut r.limits.cpus,
        "cpus",
        "limits.cpus",
    );
    fold(
        ctx,
        path,
        legacy.mem_limit,
        deploy.limits,
        &mut r.limits.memory,
        "mem_limit",
        "limits.memory",
    );
    fold(
        ctx,
        path,
        legacy.mem_reservation,
        deploy.reservations,
        &mut r.reservations.memory,
        "mem_reservation",
        "reservations.memory",
    );
    fold(
        ctx,
        path,
        legacy.pids_limit,
        deploy.limits,
        &mut r.limits.pids,
        "pids_limit",
        "limits.pids",
    );
    // The engine refuses these pairs at create time; say so with the line.
    let nano = r.limits.cpus.is_some_and(|c| c > 0.0);
    for (key, set) in [
        ("cpu_period", r.cpu_period.is_some_and(|p| p > 0)),
        ("cpu_quota", r.cpu_quota.is_some_and(|q| q > 0)),
    ] {
        if nano && set {
            ctx.diags.push(
                Diagnostic::error(format!(
                    "`cpus` and `{key}` cannot both be set: the engine refuses the pair"
                ))
                .file(s.origin.file.clone())
                .line(s.origin.line)
                .object(format!("{path}.{key}"))
                .hint(
                    "`cpus: 1.5` is `cpu_period: 100000` with `cpu_quota: 150000`; keep one form",
                ),
            );
        }
    }
    if let (Some(swap), Some(mem)) = (r.memswap_limit, r.limits.memory)
        && swap > 0
        && (swap as u64) < mem
    {
        ctx.diags.push(
            Diagnostic::error(format!(
                "`memswap_limit` ({swap} bytes) is below the memory limit ({mem} bytes)"
            ))
            .file(s.origin.file.clone())
            .line(s.origin.line)
            .object(format!("{path}.memswap_limit"))
            .hint("`memswap_limit` is memory plus swap: set it at least to the memory limit, or to -1 for unlimited swap"),
        );
    }
    if r.memswap_limit.is_some_and(|s| s > 0) && r.limits.memory.is_none() {
        ctx.diags.push(
            Diagnostic::error("`memswap_limit` needs a memory limit")
                .file(s.origin.file.clone())
                .line(s.origin.line)
                .object(format!("{path}.memswap_limit"))
                .hint("set `mem_limit` (or `deploy.resources.limits.memory`) as well; the engine refuses swap without it"),
        );
    }
}

/// Folds a service-level resource key into its `deploy.resources` twin
/// (`slot`); with the twin's block written (`written`) they must agree.
fn fold<T: PartialEq + Copy>(
    ctx: &mut Ctx,
    path: &str,
    legacy: Option<(T, &Node)>,
    written: bool,
    slot: &mut Option<T>,
    key: &str,
    twin: &str,
) {
    let Some((value, node)) = legacy else {
        return;
    };
    if written && *slot != Some(value) {
        let (block, field) = twin.split_once('.').unwrap_or((twin, twin));
        ctx.report(
            Diagnostic::error(format!(
                "can't set distinct values on `{key}` and `deploy.resources.{twin}`"
            ))
            .hint(format!(
                "set one of them, or both to the same value (docker compose refuses this too); \
                 a `deploy.resources.{block}` block without `{field}` counts as a different value"
            )),
            node,
            &format!("{path}.{key}"),
        );
    }
    *slot = Some(value);
}

/// A byte size that may also be `-1` (unlimited).
fn swap_limit(ctx: &mut Ctx, node: &Node, path: &str) -> Option<i64> {
    match &node.value {
        Value::Int(-1) => Some(-1),
        Value::String(s) if s.trim() == "-1" => Some(-1),
        _ => ctx.bytes(node, path).and_then(|b| i64::try_from(b).ok()),
    }
}

fn cpus(ctx: &mut Ctx, node: &Node, path: &str) -> Option<f64> {
    ctx.float(node, path).filter(|c| {
        let ok = *c >= 0.0;
        if !ok {
            ctx.error(node, path, "cpus cannot be negative");
        }
        ok
    })
}

/// Microseconds: an integer, or a duration (`400ms`) as compose-go allows
/// for the real-time keys.
fn micros(ctx: &mut Ctx, node: &Node, path: &str) -> Option<i64> {
    if let Value::String(s) = &node.value
        && s.trim().parse::<i64>().is_err()
    {
        return ctx
            .duration(node, path)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    }
    ctx.int_in(node, path, 0..=i64::MAX)
}

/// `0-3`, `0,1`, `1-2,4`.
fn cpuset(ctx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    let text = ctx.text(node, path)?;
    let valid = !text.is_empty()
        && text.split(',').all(|part| {
            let mut ends = part.splitn(2, '-');
            let a = ends.next().map(|a| a.trim().parse::<u32>());
            let b = ends.next().map(|b| b.trim().parse::<u32>());
            match (a, b) {
                (Some(Ok(_)), None) => true,
                (Some(Ok(a)), Some(Ok(b))) => a <= b,
                _ => false,
            }
        });
    if !valid {
        ctx.error(
            node,
            path,
            format!("`{text}` is not a CPU list (e.g. `0-3` or `0,2`)"),
        );
        return None;
    }
    Some(text)
}

fn blkio(ctx: &mut Ctx, node: &Node, path: &str) -> Blkio {
    let mut b = Blkio::default();
    for (k, v) in ctx.map(node, path).unwrap_or_default() {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "weight" => b.weight = ctx.int_in(v, &fp, 10..=1000).map(|w| w as u16),
            "weight_device" => {
                b.weight_device = device_rates(ctx, v, &fp, "weight", |ctx, n, p| {
                    ctx.int_in(n, p, 10..=1000).map(|w| w as u64)
                })
                .into_iter()
                .map(|(d, w)| (d, w as u16))
                .collect()
            }
            "device_read_bps" => {
                b.device_read_bps = device_rates(ctx, v, &fp, "rate", |ctx, n, p| ctx.bytes(n, p))
            }
            "device_write_bps" => {
                b.device_write_bps = device_rates(ctx, v, &fp, "rate", |ctx, n, p| ctx.bytes(n, p))
            }
            "device_read_iops" => {
                b.device_read_iops = device_rates(ctx, v, &fp, "rate", |ctx, n, p| {
                    ctx.int_in(n, p, 0..=i64::MAX).map(|r| r as u64)
                })
            }
            "device_write_iops" => {
                b.device_write_iops = device_rates(ctx, v, &fp, "rate", |ctx, n, p| {
                    ctx.int_in(n, p, 0..=i64::MAX).map(|r| r as u64)
                })
            }
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
    b
}

/// A list of `{path, <value>}` for blkio device limits.
fn device_rates(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    value_key: &str,
    mut read: impl FnMut(&mut Ctx, &Node, &str) -> Option<u64>,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (i, item) in ctx.seq(node, path).unwrap_or_default().iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let (mut dev, mut value) = (None, None);
        for (k, v) in ctx.map(item, &ip).unwrap_or_default() {
            let Some(key) = ctx.key(k, &ip) else {
                continue;
            };
            let fp = format!("{ip}.{key}");
            match key {
                "path" => dev = ctx.text(v, &fp),
                k if k == value_key => value = read(ctx, v, &fp),
                _ => ctx.unsupported(k, &fp),
            }
        }
        match (dev, value) {
            (Some(d), Some(v)) if d.starts_with('/') => out.push((d, v)),
            (Some(d), Some(_)) => {
                ctx.error(item, &ip, format!("device path `{d}` must be absolute"))
            }
            _ => ctx.error(
                item,
                &ip,
                format!("an entry needs `path:` and `{value_key}:`"),
            ),
        }
    }
    out
}

/// `devices`: `/dev/x[:/dev/y[:rwm]]`, `{source, target, permissions}`, or
/// a CDI device name (`vendor.com/class=name`).
fn devices(ctx: &mut Ctx, node: &Node, path: &str) -> Vec<Device> {
    let mut out: Vec<Device> = Vec::new();
    for (i, item) in ctx.seq(node, path).unwrap_or_default().iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let device = match &item.value {
            Value::Map(fields) => {
                let (mut source, mut target, mut permissions) = (None, None, None);
                for (k, v) in fields {
                    let Some(key) = ctx.key(k, &ip) else {
                        continue;
                    };
                    let fp = format!("{ip}.{key}");
                    match key {
                        "source" => source = ctx.text(v, &fp),
                        "target" => target = ctx.text(v, &fp),
                        "permissions" => permissions = ctx.text(v, &fp),
                        k if k.starts_with("x-") => {}
                        _ => ctx.unsupported(k, &fp),
                    }
                }
                let Some(source) = source else {
                    ctx.error(item, &ip, "a device needs `source:`, the path on the host");
                    continue;
                };
                Device {
                    target: target.unwrap_or_else(|| source.clone()),
                    source,
                    permissions: permissions.unwrap_or_else(|| "rwm".into()),
                }
            }
            _ => {
                let Some(spec) = ctx.text(item, &ip) else {
                    continue;
                };
                let parts: Vec<&str> = spec.split(':').collect();
                let (source, target, permissions) = match parts.as_slice() {
                    [s] => (*s, *s, "rwm"),
                    [s, t] => (*s, *t, "rwm"),
                    [s, t, p] => (*s, *t, *p),
                    _ => {
                        ctx.error(
                            item,
                            &ip,
                            format!("`{spec}` is not a device (expected `host[:container[:rwm]]`)"),
                        );
                        continue;
                    }
                };
                Device {
                    source: source.into(),
                    target: target.into(),
                    permissions: permissions.into(),
                }
            }
        };
        if crate::model::compose::is_cdi_name(&device.source) {
            if device.target != device.source {
                ctx.error(
                    item,
                    &ip,
                    format!("CDI device `{}` takes no container path", device.source),
                );
            }
        } else {
            if !device.source.starts_with('/') || !device.target.starts_with('/') {
                ctx.error(
                    item,
                    &ip,
                    format!(
                        "device paths must be absolute (`{}` → `{}`)",
                        device.source, device.target
                    ),
                );
                continue;
            }
            if device.permissions.is_empty()
                || !device
                    .permissions
                    .chars()
                    .all(|c| matches!(c, 'r' | 'w' | 'm'))
            {
                ctx.error(
                    item,
                    &ip,
                    format!(
                        "device permissions `{}` must be a combination of r, w and m",
                        device.permissions
                    ),
                );
                continue;
            }
        }
        if !out.contains(&device) {
            out.push(device);
        }
    }
    out
}

/// `device_cgroup_rules`: `c 1:3 mr`, `b 8:* rw`, `a`.
fn cgroup_rules(ctx: &mut Ctx, node: &Node, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (rule, at) in ctx.texts(node, path) {
        let mut words = rule.split_whitespace();
        let kind_ok = matches!(words.next(), Some("a" | "b" | "c"));
        let numbers_ok = words.next().is_none_or(|mm| {
            mm.split_once(':')
                .is_some_and(|(a, b)| [a, b].iter().all(|n| *n == "*" || n.parse::<u32>().is_ok()))
        });
        let access_ok = words
            .next()
            .is_none_or(|a| !a.is_empty() && a.chars().all(|c| matches!(c, 'r' | 'w' | 'm')));
        if !(kind_ok && numbers_ok && access_ok && words.next().is_none()) {
            ctx.error(
                at,
                path,
                format!("`{rule}` is not a device cgroup rule (e.g. `c 1:3 mr`, `b 8:* rw`)"),
            );
            continue;
        }
        if !out.contains(&rule) {
            out.push(rule);
        }
    }
    out
}

/// `gpus: all` or a list of device requests; each asks for the `gpu`
/// capability on top of its own, as docker compose asks.
fn gpus(ctx: &mut Ctx, node: &Node, path: &str) -> Vec<DeviceRequest> {
    if let Value::String(s) = &node.value {
        if s == "all" {
            return vec![DeviceRequest {
                driver: None,
                count: -1,
                device_ids: Vec::new(),
                capabilities: vec![vec!["gpu".into()]],
                options: BTreeMap::new(),
            }];
        }
        ctx.error(
            node,
            path,
            format!("`gpus` must be `all` or a list, not `{s}`"),
        );
        return Vec::new();
    }
    device_requests(ctx, node, path, false)
        .into_iter()
        .map(|mut r| {
            let caps = r.capabilities.pop().unwrap_or_default();
            let mut caps: Vec<String> = caps.into_iter().filter(|c| c != "gpu").collect();
            caps.push("gpu".into());
            r.capabilities = vec![caps];
            r
        })
        .collect()
}

/// Device requests (`deploy.resources.reservations.devices`, `gpus`
/// entries): `count` (`all` is -1) and `device_ids` are exclusive; neither
/// means all devices. `capabilities` is required unless `gpus` adds one.
pub(crate) fn device_requests(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    need_capabilities: bool,
) -> Vec<DeviceRequest> {
    let mut out = Vec::new();
    for (i, item) in ctx.seq(node, path).unwrap_or_default().iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let mut r = DeviceRequest {
            driver: None,
            count: -1,
            device_ids: Vec::new(),
            capabilities: Vec::new(),
            options: BTreeMap::new(),
        };
        let (mut count, mut ids, mut caps) = (None, None, None);
        for (k, v) in ctx.map(item, &ip).unwrap_or_default() {
            let Some(key) = ctx.key(k, &ip) else {
                continue;
            };
            let fp = format!("{ip}.{key}");
            match key {
                "driver" => r.driver = ctx.text(v, &fp),
                "count" => {
                    count = match &v.value {
                        Value::String(s) if s == "all" => Some(-1),
                        _ => ctx.int_in(v, &fp, 0..=i64::from(u32::MAX)),
                    }
                }
                "device_ids" => ids = Some(dedup(ctx.texts(v, &fp))),
                "capabilities" => caps = Some(dedup(ctx.texts(v, &fp))),
                "options" => {
                    r.options = ctx
                        .entries(v, &fp, '=')
                        .into_iter()
                        .map(|e| (e.key, e.value.unwrap_or_default()))
                        .collect()
                }
                k if k.starts_with("x-") => {}
                _ => ctx.unsupported(k, &fp),
            }
        }
        if count.is_some() && ids.is_some() {
            ctx.error(
                item,
                &ip,
                "`count` and `device_ids` are exclusive: ask for a number of devices or for specific ones",
            );
            continue;
        }
        if caps.is_none() && need_capabilities {
            ctx.error(
                item,
                &ip,
                "a device reservation needs `capabilities:` (e.g. `[gpu]`)",
            );
            continue;
        }
        match (count, ids) {
            (Some(n), None) => r.count = n,
            (None, Some(ids)) => {
                r.count = 0;
                r.device_ids = ids;
            }
            _ => {}
        }
        r.capabilities = vec![caps.unwrap_or_default()];
        out.push(r);
    }
    out
}

/// `tmpfs`: a path or a list of `path[:options]`.
fn tmpfs(ctx: &mut Ctx, node: &Node, path: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (entry, at) in ctx.text_or_texts(node, path) {
        let (target, options) = entry.split_once(':').unwrap_or((&entry, ""));
        if !target.starts_with('/') {
            ctx.error(
                at,
                path,
                format!("tmpfs target `{target}` must be an absolute path"),
            );
            continue;
        }
        out.insert(target.to_owned(), options.to_owned());
    }
    out
}

/// `dns`: one address or a list.
fn ip_list(ctx: &mut Ctx, node: &Node, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (ip, at) in ctx.text_or_texts(node, path) {
        if ip.parse::<std::net::IpAddr>().is_err() {
            ctx.error(at, path, format!("`{ip}` is not an IP address"));
            continue;
        }
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// A MAC address, `02:42:ac:11:00:02`.
pub(crate) fn mac(ctx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    let text = ctx.text(node, path)?;
    let parts: Vec<&str> = text.split([':', '-']).collect();
    let valid = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !valid {
        ctx.error(
            node,
            path,
            format!("`{text}` is not a MAC address (e.g. `02:42:ac:11:00:02`)"),
        );
        return None;
    }
    Some(text)
}

/// A namespace mode: one of `modes`, `container:<name>` or `service:<name>`
/// (checked against the project's services by the caller).
fn namespace(ctx: &mut Ctx, node: &Node, path: &str, modes: &[&str]) -> Option<String> {
    let text = ctx.text(node, path)?;
    let named = ["container:", "service:"]
        .iter()
        .any(|p| text.strip_prefix(p).is_some_and(|n| !n.is_empty()));
    if !named && !modes.contains(&text.as_str()) {
        let mut all: Vec<String> = modes.iter().map(|m| format!("`{m}`")).collect();
        all.push("`container:<name>`".into());
        all.push("`service:<name>`".into());
        ctx.error(
            node,
            path,
            format!("`{text}` is not a mode here (use {})", all.join(", ")),
        );
        return None;
    }
    Some(text)
}

/// `links` / `external_links`: `name` or `name:alias`.
fn links(ctx: &mut Ctx, node: &Node, path: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (entry, at) in ctx.texts(node, path) {
        let (name, alias) = match entry.split_once(':') {
            Some((n, a)) => (n, a),
            None => (entry.as_str(), entry.as_str()),
        };
        if name.is_empty() || alias.is_empty() || alias.contains(':') {
            ctx.error(
                at,
                path,
                format!("`{entry}` is not a link (expected `name` or `name:alias`)"),
            );
            continue;
        }
        let link = (name.to_owned(), alias.to_owned());
        if !out.contains(&link) {
            out.push(link);
        }
    }
    out
}

/// `volumes_from`: `service[:ro|rw]` or `container:name[:ro|rw]`.
fn volumes_from(ctx: &mut Ctx, node: &Node, path: &str) -> Vec<VolumesFrom> {
    let mut out = Vec::new();
    for (entry, at) in ctx.texts(node, path) {
        let (container, rest) = match entry.strip_prefix("container:") {
            Some(rest) => (true, rest),
            None => (false, entry.as_str()),
        };
        let (source, mode) = match rest.rsplit_once(':') {
            Some((s, m @ ("ro" | "rw"))) => (s, m),
            _ => (rest, "rw"),
        };
        if source.is_empty() || source.contains(':') {
            ctx.error(
                at,
                path,
                format!("`{entry}` is not a volumes_from entry (expected `service[:ro]` or `container:name[:ro]`)"),
            );
            continue;
        }
        out.push(VolumesFrom {
            source: source.to_owned(),
            container,
            read_only: mode == "ro",
        });
    }
    out
}

/// `os/arch[/variant]`.
fn platform(ctx: &mut Ctx, node: &Node, path: &str) -> Option<String> {
    let text = ctx.text(node, path)?;
    let parts: Vec<&str> = text.split('/').collect();
    let valid = (2..=3).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        });
    if !valid {
        ctx.error(
            node,
            path,
            format!(
                "`{text}` is not a platform (expected `os/arch[/variant]`, e.g. `linux/amd64`)"
            ),
        );
        return None;
    }
    Some(text.to_ascii_lowercase())
}

/// `pull_policy`, as compose-go reads it (`if_not_present` is `missing`,
/// `daily` is every 24 hours, `every_2h30m`).
fn pull_policy(ctx: &mut Ctx, node: &Node, path: &str) -> Option<PullPolicy> {
    let text = ctx.text(node, path)?;
    let policy = match text.as_str() {
        "always" => PullPolicy::Always,
        "never" => PullPolicy::Never,
        "missing" | "if_not_present" => PullPolicy::Missing,
        "build" => PullPolicy::Build,
        "daily" => PullPolicy::Refresh(Duration::from_secs(24 * 3600)),
        "weekly" => PullPolicy::Refresh(Duration::from_secs(7 * 24 * 3600)),
        // `refresh` alone: `pull_refresh_after` gives the period, daily if unset.
        "refresh" => PullPolicy::Refresh(Duration::from_secs(24 * 3600)),
        other => match other.strip_prefix("every_").map(refresh_period) {
            Some(Some(d)) if !d.is_zero() => PullPolicy::Refresh(d),
            _ => {
                ctx.report(
                    Diagnostic::error(format!("`{text}` is not a pull policy"))
                        .hint("use always, missing, never, build, daily, weekly or every_<duration> (e.g. every_12h)"),
                    node,
                    path,
                );
                return None;
            }
        },
    };
    Some(policy)
}

/// A refresh period: a Go duration that may also use `d` (days) and `w`
/// (weeks), as compose-go's `every_` accepts.
pub(crate) fn refresh_period(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        let unit_end = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| digits + i);
        let secs = match &rest[digits..unit_end] {
            "w" => 7 * 24 * 3600,
            "d" => 24 * 3600,
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            _ => return None,
        };
        total += Duration::from_secs(n.checked_mul(secs)?);
        rest = &rest[unit_end..];
    }
    Some(total)
}

/// `post_start` / `pre_stop`: a list of hooks, each a command with optional
/// user, privileged, working_dir and environment.
fn hooks(ctx: &mut Ctx, node: &Node, path: &str) -> Vec<Hook> {
    let mut out = Vec::new();
    for (i, item) in ctx.seq(node, path).unwrap_or_default().iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let mut hook = Hook {
            command: Vec::new(),
            user: None,
            privileged: false,
            working_dir: None,
            environment: BTreeMap::new(),
        };
        let mut has_command = false;
        for (k, v) in ctx.map(item, &ip).unwrap_or_default() {
            let Some(key) = ctx.key(k, &ip) else {
                continue;
            };
            let fp = format!("{ip}.{key}");
            match key {
                "command" => {
                    has_command = true;
                    hook.command = match &v.value {
                        Value::Seq(_) => ctx.texts(v, &fp).into_iter().map(|(t, _)| t).collect(),
                        _ => match ctx.text(v, &fp).map(|t| syntax::split_command(&t)) {
                            Some(Ok(words)) => words,
                            Some(Err(e)) => {
                                ctx.error(v, &fp, e);
                                Vec::new()
                            }
                            None => Vec::new(),
                        },
                    }
                }
                "user" => hook.user = ctx.text(v, &fp),
                "privileged" => hook.privileged = ctx.bool(v, &fp).unwrap_or(false),
                "working_dir" => hook.working_dir = ctx.text(v, &fp),
                "environment" => {
                    for e in ctx.entries(v, &fp, '=') {
                        let value = e.value.or_else(|| ctx.vars.get(&e.key).cloned());
                        hook.environment.insert(e.key, value.unwrap_or_default());
                    }
                }
                k if k.starts_with("x-") => {}
                _ => ctx.unsupported(k, &fp),
            }
        }
        if !has_command || hook.command.is_empty() {
            ctx.error(
                item,
                &ip,
                "a hook needs `command:`, what to run in the container",
            );
            continue;
        }
        out.push(hook);
    }
    out
}

fn dedup(items: Vec<(String, &Node)>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (item, _) in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_periods_read_days_and_weeks() {
        assert_eq!(refresh_period("12h"), Some(Duration::from_secs(12 * 3600)));
        assert_eq!(
            refresh_period("1w2d"),
            Some(Duration::from_secs(9 * 24 * 3600))
        );
        assert_eq!(refresh_period("2h30m"), Some(Duration::from_secs(9000)));
        for bad in ["", "h", "12", "3y", "1.5h"] {
            assert_eq!(refresh_period(bad), None, "{bad}");
        }
    }
}
