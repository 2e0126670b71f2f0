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
    Healthcheck, Logging, Mount, Port, Resources, Service, ServiceNetwork, Ulimit,
};

/// The parts of a [`Service`] that shape a container. Left out, as Compose
/// v2 leaves them out of its hash: `replicas` (scaling is not a recreate),
/// `depends_on` (start order only), `profiles`, and `origin` (moving a
/// service within its file must not restart it).
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
            serde_json::Value::String(image_id.unwrap_or("(not present: pull)").to_owned()),
        );
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

/// Drops nulls, `false`, empty strings, lists and maps, recursively.
fn prune(value: &mut serde_json::Value) {
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
            for v in map.values_mut() {
                prune(v);
            }
            map.retain(|_, v| !empty(v));
        }
        Value::Array(items) => items.iter_mut().for_each(prune),
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
