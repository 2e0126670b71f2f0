//! Top-level `networks`, `volumes`, `configs` and `secrets`: names resolved
//! as Compose resolves them (`<project>_<key>` unless `name:` or
//! `external`), config content read from the repo, secret values from the
//! repo, the project's variables or driftless's secret source.

use std::collections::BTreeMap;

use super::{Ctx, syntax};
use crate::diag::Diagnostic;
use crate::model::compose::{Ipam, IpamPool, Network, Volume};
use crate::source::join_relative;
use crate::yaml::Node;

/// A top-level config: where its content came from and the content.
#[derive(Debug, Clone)]
pub(crate) struct ConfigDef {
    /// Repo path of the file, or `configs.<name>` for inline content.
    pub source: String,
    pub content: Vec<u8>,
}

/// The keys networks and volumes share.
#[derive(Default)]
struct Common {
    name: String,
    external: bool,
    driver: Option<String>,
    driver_opts: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

/// What only networks set.
#[derive(Default)]
struct NetworkOnly {
    internal: bool,
    attachable: bool,
    enable_ipv6: Option<bool>,
    enable_ipv4: Option<bool>,
    ipam: Ipam,
}

/// Top-level `networks:`.
pub(crate) fn networks(
    ctx: &mut Ctx,
    node: Option<&Node>,
    project: &Option<String>,
) -> BTreeMap<String, Network> {
    let mut only: BTreeMap<String, NetworkOnly> = BTreeMap::new();
    let common = top_level(
        ctx,
        node,
        project,
        "network",
        |ctx, key, field, fv, fpath| {
            let n = only.entry(key.to_owned()).or_default();
            match field {
                "internal" => n.internal = ctx.bool(fv, fpath).unwrap_or(false),
                "attachable" => n.attachable = ctx.bool(fv, fpath).unwrap_or(false),
                "enable_ipv6" => n.enable_ipv6 = ctx.bool(fv, fpath),
                "enable_ipv4" => n.enable_ipv4 = ctx.bool(fv, fpath),
                "ipam" => n.ipam = ipam(ctx, fv, fpath),
                _ => return false,
            }
            true
        },
    );
    common
        .into_iter()
        .map(|(key, c)| {
            let n = only.remove(&key).unwrap_or_default();
            let network = Network {
                internal: n.internal,
                attachable: n.attachable,
                enable_ipv6: n.enable_ipv6,
                enable_ipv4: n.enable_ipv4,
                ipam: n.ipam,
                name: c.name,
                external: c.external,
                driver: c.driver,
                driver_opts: c.driver_opts,
                labels: c.labels,
            };
            (key, network)
        })
        .collect()
}

/// A network's `ipam`: driver, options and address pools, each address
/// checked to be an address, each gateway and range inside its subnet.
fn ipam(ctx: &mut Ctx, node: &Node, path: &str) -> Ipam {
    let mut out = Ipam::default();
    for (k, v) in ctx.map(node, path).unwrap_or_default() {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "driver" => out.driver = ctx.text(v, &fp),
            "options" => out.options = ctx.string_map(v, &fp),
            "config" => {
                for (i, item) in ctx.seq(v, &fp).unwrap_or_default().iter().enumerate() {
                    let ip = format!("{fp}[{i}]");
                    if let Some(pool) = ipam_pool(ctx, item, &ip) {
                        out.config.push(pool);
                    }
                }
            }
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
    out
}

fn ipam_pool(ctx: &mut Ctx, node: &Node, path: &str) -> Option<IpamPool> {
    let mut pool = IpamPool::default();
    let mut at = BTreeMap::new();
    for (k, v) in ctx.map(node, path)? {
        let Some(key) = ctx.key(k, path) else {
            continue;
        };
        let fp = format!("{path}.{key}");
        match key {
            "subnet" => {
                pool.subnet = ctx.text(v, &fp).filter(|s| match syntax::parse_cidr(s) {
                    Ok(_) => true,
                    Err(e) => {
                        ctx.error(v, &fp, e);
                        false
                    }
                })
            }
            "ip_range" => {
                pool.ip_range = ctx.text(v, &fp).filter(|s| match syntax::parse_cidr(s) {
                    Ok(_) => true,
                    Err(e) => {
                        ctx.error(v, &fp, e);
                        false
                    }
                });
                at.insert("ip_range", v);
            }
            "gateway" => {
                pool.gateway = ctx.text(v, &fp).filter(|g| {
                    let ok = g.parse::<std::net::IpAddr>().is_ok();
                    if !ok {
                        ctx.error(v, &fp, format!("gateway `{g}` is not an IP address"));
                    }
                    ok
                });
                at.insert("gateway", v);
            }
            "aux_addresses" => {
                for (host, addr) in ctx.string_map(v, &fp) {
                    if addr.parse::<std::net::IpAddr>().is_err() {
                        ctx.error(
                            v,
                            &format!("{fp}.{host}"),
                            format!("`{addr}` is not an IP address"),
                        );
                    } else {
                        pool.aux_addresses.insert(host, addr);
                    }
                }
                at.insert("aux_addresses", v);
            }
            k if k.starts_with("x-") => {}
            _ => ctx.unsupported(k, &fp),
        }
    }
    // What the engine refuses when it creates the network.
    if let Some(subnet) = pool.subnet.clone() {
        let inside = |a: &str| {
            let (ip, _) = a.split_once('/').unwrap_or((a, ""));
            ip.parse()
                .ok()
                .is_some_and(|ip| syntax::cidr_contains(&subnet, ip).unwrap_or(false))
        };
        let mut outside = Vec::new();
        if let Some(g) = &pool.gateway
            && !inside(g)
        {
            outside.push(("gateway", g.clone()));
        }
        if let Some(r) = &pool.ip_range
            && !inside(r)
        {
            outside.push(("ip_range", r.clone()));
        }
        for a in pool.aux_addresses.values() {
            if !inside(a) {
                outside.push(("aux_addresses", a.clone()));
            }
        }
        for (key, value) in outside {
            let node = at.get(key).copied().unwrap_or(node);
            ctx.error(
                node,
                &format!("{path}.{key}"),
                format!("`{value}` is outside the subnet `{subnet}`"),
            );
        }
    } else if pool.gateway.is_some() || pool.ip_range.is_some() {
        ctx.error(
            node,
            path,
            "an address pool with `gateway` or `ip_range` needs its `subnet`",
        );
    }
    Some(pool)
}

/// Top-level `volumes:`.
pub(crate) fn volumes(
    ctx: &mut Ctx,
    node: Option<&Node>,
    project: &Option<String>,
) -> BTreeMap<String, Volume> {
    let common = top_level(ctx, node, project, "volume", |_, _, _, _, _| false);
    common
        .into_iter()
        .map(|(key, c)| {
            let volume = Volume {
                name: c.name,
                external: c.external,
                driver: c.driver,
                driver_opts: c.driver_opts,
                labels: c.labels,
            };
            (key, volume)
        })
        .collect()
}

/// Top-level `networks:` or `volumes:` (`kind` is `network` or `volume`):
/// the shared keys, and `extra(ctx, key, field, value, path)` for the keys
/// of one kind only (it returns whether it took the field). Any configured
/// field besides `name` is an error on an external resource.
fn top_level(
    ctx: &mut Ctx,
    node: Option<&Node>,
    project: &Option<String>,
    kind: &str,
    mut extra: impl FnMut(&mut Ctx, &str, &str, &Node, &str) -> bool,
) -> BTreeMap<String, Common> {
    let section = format!("{kind}s");
    let mut out = BTreeMap::new();
    let Some(node) = node else { return out };
    let Some(entries) = ctx.map(node, &section) else {
        return out;
    };
    for (k, v) in entries {
        let Some(key) = ctx.key(k, &section) else {
            continue;
        };
        let path = format!("{section}.{key}");
        let mut common = Common::default();
        let mut name = None;
        let mut configured = Vec::new();
        for (fk, fv) in ctx.map(v, &path).unwrap_or_default() {
            let Some(field) = ctx.key(fk, &path) else {
                continue;
            };
            let fpath = format!("{path}.{field}");
            match field {
                "name" => name = ctx.text(fv, &fpath),
                "external" => common.external = external(ctx, fv, &fpath, &mut name),
                "driver" => common.driver = ctx.text(fv, &fpath),
                "driver_opts" => common.driver_opts = ctx.string_map(fv, &fpath),
                "labels" => common.labels = ctx.labels(fv, &fpath),
                f if f.starts_with("x-") => continue,
                _ if extra(ctx, key, field, fv, &fpath) => {}
                _ => {
                    ctx.unsupported(fk, &fpath);
                    continue;
                }
            }
            if !matches!(field, "name" | "external") {
                configured.push(field);
            }
        }
        if common.external && !configured.is_empty() {
            ctx.error(
                v,
                &path,
                format!(
                    "an external {kind} cannot also set {}: it is created outside this project",
                    configured
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        common.name = resolved_name(name, common.external, key, project);
        out.insert(key.to_owned(), common);
    }
    out
}

/// `external: true`, or the legacy `external: {name: x}`.
fn external(ctx: &mut Ctx, node: &Node, path: &str, name: &mut Option<String>) -> bool {
    if let Some(entries) = node.as_map() {
        for (k, v) in entries {
            let Some(key) = ctx.key(k, path) else {
                continue;
            };
            match key {
                "name" => *name = ctx.text(v, &format!("{path}.name")),
                _ => ctx.unsupported(k, &format!("{path}.{key}")),
            }
        }
        return true;
    }
    ctx.bool(node, path).unwrap_or(false)
}

/// The engine name: `name:` as written, the key for an external resource,
/// else `<project>_<key>`.
fn resolved_name(
    name: Option<String>,
    external: bool,
    key: &str,
    project: &Option<String>,
) -> String {
    match (name, external) {
        (Some(name), _) => name,
        (None, true) => key.to_owned(),
        (None, false) => format!("{}_{key}", project.as_deref().unwrap_or_default()),
    }
}

/// Top-level `configs:`; `None` for a config that is defined but broken
/// (already reported), so references to it are not reported again.
pub(crate) fn configs(ctx: &mut Ctx, node: Option<&Node>) -> BTreeMap<String, Option<ConfigDef>> {
    let mut out = BTreeMap::new();
    let Some(node) = node else { return out };
    let Some(entries) = ctx.map(node, "configs") else {
        return out;
    };
    for (k, v) in entries {
        let Some(key) = ctx.key(k, "configs") else {
            continue;
        };
        let path = format!("configs.{key}");
        let mut def = None;
        let mut sources = 0;
        let mut external = false;
        for (fk, fv) in ctx.map(v, &path).unwrap_or_default() {
            let Some(field) = ctx.key(fk, &path) else {
                continue;
            };
            let fpath = format!("{path}.{field}");
            match field {
                "file" => {
                    sources += 1;
                    def = repo_file(ctx, fv, &fpath);
                }
                "content" => {
                    sources += 1;
                    def = ctx.text(fv, &fpath).map(|c| ConfigDef {
                        source: path.clone(),
                        content: c.into_bytes(),
                    });
                }
                "environment" => {
                    sources += 1;
                    let Some(var) = ctx.text(fv, &fpath) else {
                        continue;
                    };
                    match ctx.vars.get(&var).cloned() {
                        Some(value) => {
                            def = Some(ConfigDef {
                                source: path.clone(),
                                content: value.into_bytes(),
                            })
                        }
                        None => ctx.error(fv, &fpath, format!("variable `{var}` is not set")),
                    }
                }
                // Swarm config objects' metadata: no effect on a file
                // copied into the container, as in docker compose.
                "labels" | "name" => {}
                "external" => {
                    external = true;
                    ctx.cannot_apply(
                        fk,
                        &fpath,
                        "external",
                        "an external config is a swarm object; docker compose refuses it too (`unsupported external config`)",
                    );
                }
                "driver" | "template_driver" => {
                    external = true;
                    ctx.cannot_apply(
                        fk,
                        &fpath,
                        field,
                        "config drivers are swarm plugins; docker compose refuses them too",
                    );
                }
                f if f.starts_with("x-") => {}
                _ => ctx.unsupported(fk, &fpath),
            }
        }
        if sources != 1 && !external {
            ctx.error(
                v,
                &path,
                "a config needs exactly one of `file:`, `content:` or `environment:`",
            );
            def = None;
        }
        out.insert(key.to_owned(), def);
    }
    out
}

/// The content of the repo file a config's or secret's `file:` names,
/// relative to the project directory (an included file's `file:` is
/// rebased to it); `None` when it cannot be read (reported).
fn repo_file(ctx: &mut Ctx, node: &Node, path: &str) -> Option<ConfigDef> {
    let rel = ctx.text(node, path)?;
    match join_relative(ctx.input.file, &rel) {
        Ok(repo_path) => {
            let bytes = ctx.read_bytes(&repo_path, Some(node), path)?;
            Some(ConfigDef {
                source: repo_path,
                content: bytes.to_vec(),
            })
        }
        Err(e) => {
            ctx.error(node, path, e.to_string());
            None
        }
    }
}

/// A secret's `file:`: a repo file. A secret is rarely committed, so one
/// that is not in the repo, or a host path, is refused with where
/// driftless takes secret values from instead.
fn secret_file(ctx: &mut Ctx, node: &Node, path: &str, key: &str) -> Option<ConfigDef> {
    let rel = ctx.text(node, path)?;
    let hint = format!(
        "driftless reads `file:` from the repo only, and secrets belong outside Git: replace it with \
         `x-driftless-secret: {key}` and put the value in driftless's secrets directory \
         (`--secrets-dir`) or `{}`, or use `environment:` with a variable",
        crate::secrets::SecretSource::env_var(key)
    );
    let message = match join_relative(ctx.input.file, &rel) {
        Ok(repo_path) => match ctx.read_bytes(&repo_path, None, path) {
            Some(bytes) => {
                return Some(ConfigDef {
                    source: repo_path,
                    content: bytes.to_vec(),
                });
            }
            None => format!("`{repo_path}` is not in the repository"),
        },
        Err(e) => e.to_string(),
    };
    ctx.report(Diagnostic::error(message).hint(hint), node, path);
    None
}

/// Top-level `secrets:` as docker compose delivers them outside swarm:
/// the value of `file:` (a repo file), `environment:` (a variable of the
/// project) or — a driftless extension — `x-driftless-secret: NAME`, read
/// from driftless's secret source (the secrets directory or
/// `DRIFTLESS_SECRET_<NAME>`), never from Git. `None` for a secret that is
/// defined but broken (already reported).
pub(crate) fn secrets(ctx: &mut Ctx, node: Option<&Node>) -> BTreeMap<String, Option<ConfigDef>> {
    let mut out = BTreeMap::new();
    let Some(node) = node else { return out };
    let Some(entries) = ctx.map(node, "secrets") else {
        return out;
    };
    for (k, v) in entries {
        let Some(key) = ctx.key(k, "secrets") else {
            continue;
        };
        let path = format!("secrets.{key}");
        let mut def: Option<ConfigDef> = None;
        let mut sources = 0;
        let mut refused = false;
        for (fk, fv) in ctx.map(v, &path).unwrap_or_default() {
            let Some(field) = ctx.key(fk, &path) else {
                continue;
            };
            let fpath = format!("{path}.{field}");
            match field {
                "file" => {
                    sources += 1;
                    def = secret_file(ctx, fv, &fpath, key);
                }
                "environment" => {
                    sources += 1;
                    let Some(var) = ctx.text(fv, &fpath) else {
                        continue;
                    };
                    match ctx.vars.get(&var).cloned() {
                        Some(value) => {
                            def = Some(ConfigDef {
                                source: path.clone(),
                                content: value.into_bytes(),
                            })
                        }
                        None => ctx.report(
                            Diagnostic::error(format!(
                                "secret `{key}` has no value: variable `{var}` is not set"
                            ))
                            .hint(format!(
                                "set `{var}` in the environment's values or in `.env`, or read the value from driftless's secret source with `x-driftless-secret: <name>`"
                            )),
                            fv,
                            &fpath,
                        ),
                    }
                }
                "x-driftless-secret" => {
                    sources += 1;
                    let Some(name) = ctx.text(fv, &fpath) else {
                        continue;
                    };
                    match ctx.secret(&name) {
                        Ok(value) => {
                            def = Some(ConfigDef {
                                source: path.clone(),
                                content: value.into_bytes(),
                            })
                        }
                        Err(e) => ctx.report(
                            Diagnostic::error(format!("secret `{key}` has no value: {e}")).hint(
                                "driftless reads `x-driftless-secret` values from its secrets directory (`--secrets-dir`) or `DRIFTLESS_SECRET_<NAME>`, never from Git",
                            ),
                            fv,
                            &fpath,
                        ),
                    }
                }
                // Swarm secret objects' metadata: no effect on a file in
                // the container, as in docker compose.
                "name" | "labels" => {}
                "external" => {
                    refused = true;
                    ctx.cannot_apply(
                        fk,
                        &fpath,
                        "external",
                        "an external secret is a swarm object; docker compose refuses it outside swarm too",
                    );
                }
                "driver" | "driver_opts" | "template_driver" => {
                    refused = true;
                    ctx.cannot_apply(
                        fk,
                        &fpath,
                        field,
                        "secret drivers are swarm plugins; docker compose refuses them outside swarm too",
                    );
                }
                f if f.starts_with("x-") => {}
                _ => ctx.unsupported(fk, &fpath),
            }
        }
        if sources != 1 && !refused {
            ctx.report(
                Diagnostic::error(if sources == 0 {
                    format!("secret `{key}` has no value")
                } else {
                    format!("secret `{key}` has more than one value")
                })
                .hint("give it exactly one of `file:` (a repo file), `environment:` (a variable) or `x-driftless-secret:` (a name in driftless's secret source)"),
                k,
                &path,
            );
            def = None;
        }
        if let Some(d) = &def
            && d.content.len() < crate::secrets::MIN_SECRET_LEN
        {
            ctx.report(
                Diagnostic::error(format!(
                    "secret `{key}` is shorter than {} bytes and could not be masked in output",
                    crate::secrets::MIN_SECRET_LEN
                ))
                .hint("use a longer value"),
                k,
                &path,
            );
            def = None;
        }
        out.insert(key.to_owned(), def);
    }
    out
}
