//! The config hash and the readable definition of a service.
//!
//! Owns what decides "recreate or leave alone": [`config_hash`] is SHA-256
//! over the canonical JSON of the fully resolved service (config file
//! contents included) plus the resolved image id. It is written to the
//! `com.docker.compose.config-hash` label and compared on the next plan.
//! [`definition_text`] is the human form of the same data, stored (masked)
//! in a label so the next plan can show a unified diff against it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::compose::{
    Healthcheck, Hook, Logging, Mount, Namespaces, Port, Resources, Service, ServiceNetwork,
    Ulimit, VolumesFrom,
};

/// The parts of a [`Service`] that shape a container. Left out, as Compose
/// v2 leaves them out of its hash: `replicas` (scaling is not a recreate),
/// `depends_on` (start order only), `profiles`, `pull_policy` (when to
/// pull, not what runs), `update_config` and `rollback_config` (how
/// replicas are replaced), and `origin` (moving a service within its file
/// must not restart it).
///
/// Fields after `resources` came later: each is left out while unset, so
/// the hash of a service that does not use them is what it always was (an
/// upgrade recreates nothing).
#[derive(Serialize)]
struct Definition<'a> {
    image: &'a str,
    command: &'a Option<Vec<String>>,
    entrypoint: &'a Option<Vec<String>>,
    environment: &'a BTreeMap<String, Option<String>>,
    ports: &'a [Port],
    expose: &'a [String],
    volumes: &'a [Mount],
    files: Vec<FileEntry<'a>>,
    networks: &'a BTreeMap<String, ServiceNetwork>,
    network_mode: &'a Option<String>,
    healthcheck: &'a Option<Healthcheck>,
    restart: &'a Option<String>,
    labels: &'a BTreeMap<String, String>,
    container_name: &'a Option<String>,
    user: &'a Option<String>,
    working_dir: &'a Option<String>,
    hostname: &'a Option<String>,
    extra_hosts: &'a [String],
    read_only: bool,
    cap_add: &'a [String],
    cap_drop: &'a [String],
    security_opt: &'a [String],
    privileged: bool,
    init: Option<bool>,
    stop_signal: &'a Option<String>,
    stop_grace_period: Option<Duration>,
    ulimits: &'a BTreeMap<String, Ulimit>,
    logging: &'a Option<Logging>,
    resources: &'a Resources,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tmpfs: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sysctls: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    dns: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    dns_search: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    dns_opt: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    domainname: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac_address: &'a Option<String>,
    #[serde(skip_serializing_if = "Namespaces::is_default")]
    namespaces: &'a Namespaces,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_parent: &'a Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    group_add: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: &'a Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    storage_opt: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tty: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stdin_open: bool,
    #[serde(skip_serializing_if = "<[(String, String)]>::is_empty")]
    links: &'a [(String, String)],
    #[serde(skip_serializing_if = "<[(String, String)]>::is_empty")]
    external_links: &'a [(String, String)],
    #[serde(skip_serializing_if = "<[VolumesFrom]>::is_empty")]
    volumes_from: &'a [VolumesFrom],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: &'a Option<String>,
    #[serde(skip_serializing_if = "<[Hook]>::is_empty")]
    post_start: &'a [Hook],
    #[serde(skip_serializing_if = "<[Hook]>::is_empty")]
    pre_stop: &'a [Hook],
    #[serde(skip_serializing_if = "Option::is_none")]
    shm_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oom_score_adj: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<SecretEntry<'a>>,
}

/// A Compose secret in the canonical form: where it lands and a digest of
/// its value, never the value (nor its length).
#[derive(Serialize)]
struct SecretEntry<'a> {
    target: &'a str,
    source: &'a str,
    mode: u32,
    sha256: String,
    #[serde(skip_serializing_if = "is_root")]
    uid: u32,
    #[serde(skip_serializing_if = "is_root")]
    gid: u32,
}

/// A config file in the canonical form: its content is hashed, not copied,
/// so the hash input stays small and binary files need no encoding.
#[derive(Serialize)]
struct FileEntry<'a> {
    target: &'a str,
    source: &'a str,
    mode: u32,
    size: usize,
    sha256: String,
    /// Left out for root (the owner before `uid`/`gid` were read).
    #[serde(skip_serializing_if = "is_root")]
    uid: u32,
    #[serde(skip_serializing_if = "is_root")]
    gid: u32,
}

fn is_root(id: &u32) -> bool {
    *id == 0
}

impl<'a> Definition<'a> {
    fn of(service: &'a Service) -> Self {
        // Exhaustive on purpose: a field added to `Service` fails to compile
        // here until someone decides whether it belongs in the hash.
        let Service {
            image,
            command,
            entrypoint,
            environment,
            ports,
            expose,
            volumes,
            files,
            networks,
            network_mode,
            depends_on: _,
            healthcheck,
            restart,
            labels,
            container_name,
            user,
            working_dir,
            hostname,
            extra_hosts,
            read_only,
            cap_add,
            cap_drop,
            security_opt,
            privileged,
            init,
            stop_signal,
            stop_grace_period,
            ulimits,
            logging,
            resources,
            replicas: _,
            profiles: _,
            tmpfs,
            sysctls,
            dns,
            dns_search,
            dns_opt,
            domainname,
            mac_address,
            namespaces,
            cgroup_parent,
            group_add,
            runtime,
            storage_opt,
            tty,
            stdin_open,
            links,
            external_links,
            volumes_from,
            annotations,
            platform,
            pull_policy: _,
            post_start,
            pre_stop,
            shm_size,
            oom_score_adj,
            secrets,
            // What is built is in the image id the hash takes.
            build: _,
            // How replicas are replaced, not what runs.
            update_config: _,
            rollback_config: _,
            // What runs is the image; the label that asks to follow it
            // is among the labels.
            follow: _,
            origin: _,
        } = service;
        Definition {
            image,
            command,
            entrypoint,
            environment,
            ports,
            expose,
            volumes,
            files: files
                .iter()
                .map(|f| FileEntry {
                    target: &f.target,
                    source: &f.source,
                    mode: f.mode,
                    size: f.content.len(),
                    sha256: sha256_hex(&f.content),
                    uid: f.uid,
                    gid: f.gid,
                })
                .collect(),
            networks,
            network_mode,
            healthcheck,
            restart,
            labels,
            container_name,
            user,
            working_dir,
            hostname,
            extra_hosts,
            read_only: *read_only,
            cap_add,
            cap_drop,
            security_opt,
            privileged: *privileged,
            init: *init,
            stop_signal,
            stop_grace_period: *stop_grace_period,
            ulimits,
            logging,
            resources,
            tmpfs,
            sysctls,
            dns,
            dns_search,
            dns_opt,
            domainname,
            mac_address,
            namespaces,
            cgroup_parent,
            group_add,
            runtime,
            storage_opt,
            tty: *tty,
            stdin_open: *stdin_open,
            links,
            external_links,
            volumes_from,
            annotations,
            platform,
            post_start,
            pre_stop,
            shm_size: *shm_size,
            oom_score_adj: *oom_score_adj,
            secrets: secrets
                .iter()
                .map(|f| SecretEntry {
                    target: &f.target,
                    source: &f.source,
                    mode: f.mode,
                    sha256: sha256_hex(&f.content),
                    uid: f.uid,
                    gid: f.gid,
                })
                .collect(),
        }
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The canonical JSON of a service: struct fields in declaration order,
/// maps sorted (the model uses `BTreeMap`s), no whitespace. Stable across
/// runs, processes and machines.
pub fn canonical_json(service: &Service) -> String {
    serde_json::to_string(&Definition::of(service)).expect("a service is plain data")
}

/// The config hash of `service` running `image_id` (`sha256:…`): what the
/// `com.docker.compose.config-hash` label holds. An image id is part of it
/// so a re-pushed tag recreates the service.
pub fn config_hash(service: &Service, image_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(canonical_json(service).as_bytes());
    hasher.update(b"\n");
    hasher.update(image_id.as_bytes());
    hex::encode(hasher.finalize())
}

/// Whether a container labelled `live` (its config hash) already runs
/// `service` on `image_id`. The reference is only a way to name the image:
/// a container created pinned to the id (`sha256:…`, as a rollback creates
/// it) matches the same service named by a tag that resolves to that id
/// again, so moving the tag back recreates nothing.
pub fn hash_matches(live: Option<&str>, service: &Service, image_id: &str) -> bool {
    let Some(live) = live else {
        return false;
    };
    if live == config_hash(service, image_id) {
        return true;
    }
    service.image != image_id && {
        let pinned = Service {
            image: image_id.to_owned(),
            ..service.clone()
        };
        live == config_hash(&pinned, image_id)
    }
}

/// Largest file shown line by line in a diff; larger or binary files show
/// as size and digest only.
const SHOWN_FILE_MAX: usize = 64 * 1024;

/// The readable definition used for diffs: pretty JSON of the canonical
/// definition with the image id, then each text config file line by line
/// (so a changed config file diffs by line, not as one escaped string).
/// `image_id` is `None` when the image is not present yet (dry run).
pub fn definition_text(service: &Service, image_id: Option<&str>) -> String {
    let mut value = serde_json::to_value(Definition::of(service)).expect("plain data");
    if let serde_json::Value::Object(map) = &mut value {
        map.insert(
            "image_id".to_owned(),
            serde_json::Value::String(
                image_id
                    .unwrap_or(if service.build.is_some() {
                        "(built at apply)"
                    } else {
                        "(not present: pull)"
                    })
                    .to_owned(),
            ),
        );
        // What the image is built from: shown (its context as a digest),
        // not hashed — the built image's id is in the hash.
        if let Some(b) = &service.build {
            map.insert(
                "build".to_owned(),
                serde_json::to_value(b).expect("plain data"),
            );
        }
    }
    prune(&mut value);
    // YAML, as users wrote the service; empty and default fields left out so
    // a diff shows what is set, not the whole schema.
    let mut out = serde_saphyr::to_string(&value)
        .unwrap_or_else(|_| serde_json::to_string_pretty(&value).expect("plain data"));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    for f in &service.files {
        match std::str::from_utf8(&f.content) {
            Ok(text) if f.content.len() <= SHOWN_FILE_MAX => {
                let _ = writeln!(out, "--- file {} ---", f.target);
                for line in text.lines() {
                    let _ = writeln!(out, "{line}");
                }
            }
            _ => {}
        }
    }
    out
}

/// The fields two readable definitions (as [`definition_text`] writes them)
/// differ in, named as in the Compose file (`sysctls`, `limits.memory`,
/// `ipc`), in definition order; the image id is left to "image changed".
/// Empty when a definition cannot be read (an older label) or the change
/// is hidden by masking.
pub fn changed_fields(live: &str, desired: &str) -> Vec<String> {
    fn yaml(text: &str) -> Option<serde_json::Value> {
        let head = text.split("\n--- file ").next().unwrap_or(text);
        serde_saphyr::from_str(head).ok()
    }
    let (Some(serde_json::Value::Object(old)), Some(serde_json::Value::Object(new))) =
        (yaml(live), yaml(desired))
    else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = new.keys().collect();
    keys.extend(old.keys().filter(|k| !new.contains_key(*k)));
    let mut out = Vec::new();
    for key in keys {
        let (a, b) = (old.get(key), new.get(key));
        if a == b || key == "image_id" {
            continue;
        }
        match (key.as_str(), a, b) {
            // Grouped in the model, separate keys in the file.
            ("resources" | "namespaces", a, b) => {
                let empty = serde_json::Map::new();
                let map = |v: Option<&serde_json::Value>| match v {
                    Some(serde_json::Value::Object(m)) => m.clone(),
                    _ => empty.clone(),
                };
                let (a, b) = (map(a), map(b));
                let mut inner: Vec<&String> = b.keys().collect();
                inner.extend(a.keys().filter(|k| !b.contains_key(*k)));
                for k in inner {
                    let (x, y) = (a.get(k), b.get(k));
                    if x == y {
                        continue;
                    }
                    let object = |v: Option<&serde_json::Value>| match v {
                        Some(serde_json::Value::Object(m)) => Some(m.clone()),
                        None => Some(serde_json::Map::new()),
                        Some(_) => None,
                    };
                    match (object(x), object(y)) {
                        (Some(x), Some(y)) if !(x.is_empty() && y.is_empty()) => {
                            let mut leaf: Vec<&String> = y.keys().collect();
                            leaf.extend(x.keys().filter(|l| !y.contains_key(*l)));
                            for l in leaf {
                                if x.get(l) != y.get(l) {
                                    out.push(format!("{k}.{l}"));
                                }
                            }
                        }
                        _ => out.push(k.clone()),
                    }
                }
            }
            _ => out.push(key.clone()),
        }
    }
    out
}

/// Drops nulls, `false`, empty strings, lists and maps, recursively — but
/// keeps the networks a service joins with default settings (an empty map
/// under `networks` is still a network joined).
fn prune(value: &mut serde_json::Value) {
    prune_in(value, false);
}

fn prune_in(value: &mut serde_json::Value, keep_empty: bool) {
    use serde_json::Value;
    let empty = |v: &Value| match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) | Value::Number(_) => false,
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                prune_in(v, k == "networks");
            }
            map.retain(|_, v| (keep_empty && v.is_object()) || !empty(v));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| prune_in(v, false)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compose::{FileMount, Healthcheck};

    fn service() -> Service {
        Service {
            image: "driftless-test/busybox:1".into(),
            command: Some(vec!["httpd".into(), "-f".into(), "-p".into(), "80".into()]),
            environment: [
                ("B".to_owned(), Some("2".to_owned())),
                ("A".to_owned(), None),
            ]
            .into(),
            files: vec![FileMount {
                target: "/etc/app.conf".into(),
                source: "config/app.conf".into(),
                content: b"listen 80\n".to_vec(),
                mode: 0o444,
                uid: 0,
                gid: 0,
            }],
            healthcheck: Some(Healthcheck {
                test: vec!["CMD-SHELL".into(), "wget -q -O- http://127.0.0.1/".into()],
                interval: Some(Duration::from_secs(1)),
                timeout: None,
                retries: Some(3),
                start_period: None,
                start_interval: None,
                disable: false,
            }),
            stop_grace_period: Some(Duration::from_millis(1500)),
            replicas: 1,
            ..Service::default()
        }
    }

    /// The hash of a fixed service is a fixed value: the same in every run
    /// and process, and on every machine. If this changes, every deployed
    /// container is recreated on upgrade — change it only on purpose.
    #[test]
    fn config_hash_is_stable() {
        let h = config_hash(&service(), "sha256:0123");
        assert_eq!(h.len(), 64);
        assert_eq!(
            h,
            "25182fcccdff674c48bb824ed27ccc5e03bf88036a3b79c640349073bfc66c05"
        );
    }

    #[test]
    fn a_container_pinned_to_the_id_matches_the_tag_that_resolves_to_it() {
        let s = service();
        let pinned = Service {
            image: "sha256:0123".into(),
            ..service()
        };
        let live = config_hash(&pinned, "sha256:0123");
        assert!(hash_matches(Some(&live), &s, "sha256:0123"));
        assert!(hash_matches(Some(&live), &pinned, "sha256:0123"));
        // Not when the tag resolves elsewhere, nor when anything else changed.
        assert!(!hash_matches(Some(&live), &s, "sha256:4567"));
        let mut other = service();
        other.environment.insert("B".into(), Some("3".into()));
        assert!(!hash_matches(Some(&live), &other, "sha256:0123"));
        assert!(!hash_matches(None, &s, "sha256:0123"));
    }

    #[test]
    fn hash_ignores_replicas_origin_and_depends_on_but_not_config() {
        let base = config_hash(&service(), "sha256:0123");
        let mut s = service();
        s.replicas = 3;
        s.origin.line = 42;
        s.profiles = vec!["debug".into()];
        assert_eq!(config_hash(&s, "sha256:0123"), base);

        let mut s = service();
        s.files[0].content = b"listen 81\n".to_vec();
        assert_ne!(config_hash(&s, "sha256:0123"), base);
        let mut s = service();
        s.environment.insert("B".into(), Some("3".into()));
        assert_ne!(config_hash(&s, "sha256:0123"), base);
        assert_ne!(config_hash(&service(), "sha256:4567"), base);
    }

    #[test]
    fn engine_keys_change_the_hash_and_show_in_the_definition_but_pull_policy_does_not() {
        let base = config_hash(&service(), "sha256:0123");
        let mut s = service();
        s.pull_policy = crate::model::compose::PullPolicy::Always;
        assert_eq!(config_hash(&s, "sha256:0123"), base);
        let mut s = service();
        s.sysctls.insert("net.core.somaxconn".into(), "1024".into());
        assert_ne!(config_hash(&s, "sha256:0123"), base);
        let text = definition_text(&s, Some("sha256:0123"));
        assert!(
            text.contains("sysctls:\n  net.core.somaxconn: \"1024\"\n"),
            "{text}"
        );
        let mut s = service();
        s.resources.cpu_shares = Some(512);
        assert_ne!(config_hash(&s, "sha256:0123"), base);
        assert!(definition_text(&s, None).contains("cpu_shares: 512"));
        let mut s = service();
        s.tmpfs.insert("/run".into(), String::new());
        assert_ne!(config_hash(&s, "sha256:0123"), base);
    }

    #[test]
    fn changed_fields_name_the_compose_keys() {
        let base = definition_text(&service(), Some("sha256:0123"));
        let mut s = service();
        s.sysctls.insert("net.core.somaxconn".into(), "1024".into());
        s.resources.limits.memory = Some(1 << 30);
        s.resources.cpu_shares = Some(512);
        s.namespaces.ipc = Some("host".into());
        s.files[0].content = b"listen 81\n".to_vec();
        let changed = definition_text(&s, Some("sha256:4567"));
        assert_eq!(
            changed_fields(&base, &changed),
            ["files", "ipc", "cpu_shares", "limits.memory", "sysctls"]
        );
        s = service();
        s.environment.remove("B");
        assert_eq!(
            changed_fields(&base, &definition_text(&s, Some("sha256:0123"))),
            ["environment"]
        );
        assert!(changed_fields("", &base).is_empty());
    }

    #[test]
    fn an_image_mount_is_in_the_hash_and_its_change_names_volumes() {
        use crate::model::compose::Mount;
        let image = |subpath: Option<&str>| Mount::Image {
            source: "registry.example/assets:2".into(),
            target: "/assets".into(),
            read_only: true,
            subpath: subpath.map(Into::into),
        };
        let base = service();
        let mut s = service();
        s.volumes.push(image(None));
        let mounted = config_hash(&s, "sha256:0123");
        assert_ne!(mounted, config_hash(&base, "sha256:0123"));
        let text = definition_text(&s, Some("sha256:0123"));
        assert!(
            text.contains("type: image") && text.contains("source: registry.example/assets:2"),
            "{text}"
        );
        let mut sub = service();
        sub.volumes.push(image(Some("www")));
        assert_ne!(config_hash(&sub, "sha256:0123"), mounted);
        assert_eq!(
            changed_fields(&text, &definition_text(&sub, Some("sha256:0123"))),
            ["volumes"]
        );
    }

    #[test]
    fn definition_text_shows_files_line_by_line() {
        let text = definition_text(&service(), Some("sha256:0123"));
        assert!(text.contains("image_id: sha256:0123\n"), "{text}");
        assert!(
            !text.contains("null") && !text.contains("privileged"),
            "{text}"
        );
        assert!(
            text.contains("--- file /etc/app.conf ---\nlisten 80\n"),
            "{text}"
        );
        assert!(!text.contains("\"origin\""), "{text}");
    }
}
