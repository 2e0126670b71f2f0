//! Top-level `networks`, `volumes` and `configs`: names resolved as Compose
//! resolves them (`<project>_<key>` unless `name:` or `external`), config
//! content read from the repo.

use std::collections::BTreeMap;

use super::Ctx;
use crate::model::compose::{Network, Volume};
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

/// Top-level `networks:`.
pub(crate) fn networks(
    ctx: &mut Ctx,
    node: Option<&Node>,
    project: &Option<String>,
) -> BTreeMap<String, Network> {
    let mut internal = BTreeMap::new();
    let common = top_level(
        ctx,
        node,
        project,
        "network",
        |ctx, key, field, fv, fpath| {
            if field != "internal" {
                return false;
            }
            internal.insert(key.to_owned(), ctx.bool(fv, fpath).unwrap_or(false));
            true
        },
    );
    common
        .into_iter()
        .map(|(key, c)| {
            let network = Network {
                internal: internal.get(&key).copied().unwrap_or(false),
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
        for (fk, fv) in ctx.map(v, &path).unwrap_or_default() {
            let Some(field) = ctx.key(fk, &path) else {
                continue;
            };
            let fpath = format!("{path}.{field}");
            match field {
                "file" => {
                    sources += 1;
                    let Some(rel) = ctx.text(fv, &fpath) else {
                        continue;
                    };
                    let file = fv.file.as_deref().unwrap_or(ctx.input.file).to_owned();
                    match join_relative(&file, &rel) {
                        Ok(repo_path) => {
                            if let Some(bytes) = ctx.read_bytes(&repo_path, Some(fv), &fpath) {
                                def = Some(ConfigDef {
                                    source: repo_path,
                                    content: bytes.to_vec(),
                                });
                            }
                        }
                        Err(e) => ctx.error(fv, &fpath, e.to_string()),
                    }
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
                f if f.starts_with("x-") => {}
                _ => ctx.unsupported(fk, &fpath),
            }
        }
        if sources != 1 {
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
