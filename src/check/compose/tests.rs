//! Loader tests: each Compose feature from the user's side, with the line
//! and object path of every error.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::Input;
use crate::diag::{Diagnostic, Diagnostics};
use crate::model::compose::*;

/// An in-memory rendered repo.
pub(super) struct Repo {
    files: BTreeMap<String, Vec<u8>>,
    vars: BTreeMap<String, String>,
    /// Files committed with mode 100755.
    executable: BTreeSet<String>,
    /// Symlinks: path → target text.
    links: BTreeMap<String, String>,
}

impl Repo {
    pub(super) fn new(files: &[(&str, &str)]) -> Repo {
        Repo {
            files: files
                .iter()
                .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
                .collect(),
            vars: BTreeMap::new(),
            executable: BTreeSet::new(),
            links: BTreeMap::new(),
        }
    }

    /// Adds a symlink at `path` to `target` (its files, if any, are given
    /// with [`Repo::new`] as the snapshot resolves them).
    pub(super) fn link(mut self, path: &str, target: &str) -> Repo {
        self.links.insert(path.into(), target.into());
        self
    }

    /// Marks `path` as committed executable (git mode 100755).
    pub(super) fn executable(mut self, path: &str) -> Repo {
        self.executable.insert(path.into());
        self
    }

    pub(super) fn var(mut self, k: &str, v: &str) -> Repo {
        self.vars.insert(k.into(), v.into());
        self
    }

    pub(super) fn load(&self, file: &str) -> Result<(Project, Vec<Diagnostic>), Diagnostics> {
        self.load_opts(file, &super::Options::default())
    }

    pub(super) fn load_opts(
        &self,
        file: &str,
        options: &super::Options,
    ) -> Result<(Project, Vec<Diagnostic>), Diagnostics> {
        // The signature is `ReadFile`'s; `Diagnostic` is large (diag.rs).
        #[allow(clippy::result_large_err)]
        let read = |p: &str| -> Option<Result<Arc<[u8]>, Diagnostic>> {
            self.files.get(p).map(|c| Ok(Arc::from(c.as_slice())))
        };
        // What is under a repo directory (`""`: the root).
        let under = |dir: &str, path: &str| dir.is_empty() || path.starts_with(&format!("{dir}/"));
        let is_dir = |p: &str| -> Vec<String> {
            self.files.keys().filter(|k| under(p, k)).cloned().collect()
        };
        let links_under = |d: &str| -> Vec<(String, String)> {
            self.links
                .iter()
                .filter(|(p, _)| under(d, p))
                .map(|(p, t)| (p.clone(), t.clone()))
                .collect()
        };
        let text = String::from_utf8(self.files[file].clone()).unwrap();
        super::load_with(
            &Input {
                file,
                text: &text,
                default_project_name: "My App",
                variables: &self.vars,
                read: &read,
                is_dir: &is_dir,
                is_executable: &|p: &str| self.executable.contains(p),
                links_under: &links_under,
                yaml: Default::default(),
            },
            options,
        )
    }

    pub(super) fn ok(&self, file: &str) -> (Project, Vec<Diagnostic>) {
        match self.load(file) {
            Ok(r) => r,
            Err(d) => panic!("expected {file} to load:\n{d}"),
        }
    }

    pub(super) fn err(&self, file: &str) -> Vec<Diagnostic> {
        match self.load(file) {
            Ok((p, _)) => panic!("expected {file} to fail, got {p:#?}"),
            Err(d) => d.into_iter().filter(Diagnostic::is_error).collect(),
        }
    }
}

pub(super) fn one(text: &str) -> Repo {
    Repo::new(&[("compose/stack.yaml", text)])
}

/// The single error of a file, asserting its line and object path.
pub(super) fn single_error(repo: &Repo, line: u32, object: &str) -> Diagnostic {
    let errors = repo.err("compose/stack.yaml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = errors.into_iter().next().unwrap();
    assert_eq!(e.line, Some(line), "{e}");
    assert_eq!(e.object.as_deref(), Some(object), "{e}");
    assert_eq!(e.file.as_deref(), Some("compose/stack.yaml"));
    e
}

#[test]
fn a_full_service_resolves_every_supported_key() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            r#"
name: shop
x-common: &common
  restart: unless-stopped
services:
  web:
    <<: *common
    image: nginx:1.27
    command: nginx -g "daemon off;"
    entrypoint: ["/docker-entrypoint.sh"]
    environment:
      A: 1
      B: "two"
      PASS:
    env_file:
      - web.env
      - path: missing.env
        required: false
    ports:
      - "8080:80"
      - 443
      - target: 9000
        published: "9000-9001"
        host_ip: 127.0.0.1
        protocol: udp
    expose: ["3000", 3000, "3001/udp"]
    volumes:
      - data:/var/lib/data
      - ./nginx.conf:/etc/nginx/nginx.conf:ro
      - ./html:/usr/share/nginx/html
      - /var/run/docker.sock:/var/run/docker.sock:ro
      - /anonymous
      - type: tmpfs
        target: /tmp
        tmpfs: {size: 64m, mode: 01777}
    configs:
      - site
      - source: inline
        target: /etc/inline.conf
        mode: 0440
    networks:
      front:
        aliases: [www]
        ipv4_address: 172.20.0.10
      back:
    depends_on:
      db:
        condition: service_healthy
        restart: true
    healthcheck:
      test: curl -f http://localhost
      interval: 30s
      timeout: 5s
      retries: 3
      start_period: 1m
    labels: [com.example.tier=front, bare]
    container_name: shop-web
    user: 1000
    working_dir: /srv
    hostname: web
    extra_hosts: ["db.local=10.0.0.2", "cache.local:10.0.0.3"]
    read_only: "true"
    cap_add: [NET_ADMIN, NET_ADMIN]
    cap_drop: [ALL]
    security_opt: ["no-new-privileges:true"]
    privileged: false
    init: true
    stop_signal: SIGQUIT
    stop_grace_period: 1m30s
    ulimits:
      nproc: 65535
      nofile: {soft: 20000, hard: 40000}
    logging:
      driver: json-file
      options: {max-size: 10m, max-file: 3}
    deploy:
      resources:
        limits: {cpus: "0.5", memory: 512M, pids: 100}
        reservations: {cpus: 0.25, memory: 1g}
    profiles: [web]
    x-note: ignored
  db:
    image: postgres:16
    scale: 2
    deploy: {replicas: 2}
    network_mode: host
    extra_hosts: {host.local: 10.0.0.9}
    command: ["postgres", "-c", "max_connections=200"]
    healthcheck:
      test: ["CMD", "pg_isready"]
networks:
  front:
    ipam:
      config: [{subnet: 172.20.0.0/16}]
  back:
    external: true
    name: shared-back
volumes:
  data:
    labels: {backup: daily}
configs:
  site:
    file: ./site.conf
  inline:
    content: "listen ${PORT};"
"#,
        ),
        ("compose/web.env", "A=from-file\nFROM_FILE=yes\n"),
        ("compose/nginx.conf", "events {}\n"),
        ("compose/html/index.html", "<h1>hi</h1>"),
        ("compose/html/img/logo.svg", "<svg/>"),
        ("compose/site.conf", "server {}"),
        ("compose/.env", "PORT=80\nCOMPOSE_PROFILES=web\n"),
    ]);
    let (p, warnings) = repo.ok("compose/stack.yaml");
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(p.name, "shop");
    let web = &p.services["web"];
    assert_eq!(web.image, "nginx:1.27");
    assert_eq!(web.restart.as_deref(), Some("unless-stopped"));
    assert_eq!(
        web.command.as_deref().unwrap(),
        ["nginx", "-g", "daemon off;"]
    );
    assert_eq!(
        web.entrypoint.as_deref().unwrap(),
        ["/docker-entrypoint.sh"]
    );
    assert_eq!(web.environment["A"].as_deref(), Some("1"));
    assert_eq!(web.environment["B"].as_deref(), Some("two"));
    assert_eq!(web.environment["FROM_FILE"].as_deref(), Some("yes"));
    assert_eq!(web.environment["PASS"], None);
    assert_eq!(
        web.ports,
        [
            Port {
                host_ip: None,
                published: Some("8080".into()),
                target: 80,
                protocol: "tcp".into()
            },
            Port {
                host_ip: None,
                published: None,
                target: 443,
                protocol: "tcp".into()
            },
            Port {
                host_ip: Some("127.0.0.1".into()),
                published: Some("9000-9001".into()),
                target: 9000,
                protocol: "udp".into()
            },
        ]
    );
    assert_eq!(web.expose, ["3000", "3001/udp"]);
    assert_eq!(
        web.volumes,
        [
            Mount::Volume {
                subpath: None,
                source: Some("data".into()),
                target: "/var/lib/data".into(),
                read_only: false,
                no_copy: false,
            },
            Mount::RepoDir {
                source: "compose/html".into(),
                target: "/usr/share/nginx/html".into(),
                read_only: false,
                files: web.volumes[1].repo_files().to_vec().into(),
            },
            Mount::Bind {
                recursive: None,
                source: "/var/run/docker.sock".into(),
                target: "/var/run/docker.sock".into(),
                read_only: true,
                selinux: None,
                propagation: None,
                create_host_path: true,
            },
            Mount::Volume {
                subpath: None,
                source: None,
                target: "/anonymous".into(),
                read_only: false,
                no_copy: false,
            },
            Mount::Tmpfs {
                target: "/tmp".into(),
                size: Some(64 << 20),
                mode: Some(0o1777),
            },
        ]
    );
    let files: Vec<(&str, &str, u32)> = web
        .files
        .iter()
        .map(|f| (f.target.as_str(), f.source.as_str(), f.mode))
        .collect();
    assert_eq!(
        files,
        [
            ("/etc/nginx/nginx.conf", "compose/nginx.conf", 0o444),
            ("/site", "compose/site.conf", 0o444),
            ("/etc/inline.conf", "configs.inline", 0o440),
        ]
    );
    // A bound directory is one volume of the project, its files in it.
    let dir: Vec<&str> = web.volumes[1]
        .repo_files()
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(dir, ["img/logo.svg", "index.html"]);
    assert_eq!(web.files[2].content, b"listen 80;");
    assert_eq!(web.networks["front"].aliases, ["www"]);
    assert_eq!(
        web.networks["front"].ipv4_address.as_deref(),
        Some("172.20.0.10")
    );
    assert!(web.networks.contains_key("back"));
    let db_dep = &web.depends_on["db"];
    assert_eq!(db_dep.condition, DependencyCondition::ServiceHealthy);
    assert!(db_dep.restart && db_dep.required);
    let hc = web.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, ["CMD-SHELL", "curl -f http://localhost"]);
    assert_eq!(hc.interval, Some(Duration::from_secs(30)));
    assert_eq!(hc.start_period, Some(Duration::from_secs(60)));
    assert_eq!(hc.retries, Some(3));
    assert_eq!(web.labels["com.example.tier"], "front");
    assert_eq!(web.labels["bare"], "");
    assert_eq!(web.container_name.as_deref(), Some("shop-web"));
    assert_eq!(web.user.as_deref(), Some("1000"));
    assert_eq!(
        web.extra_hosts,
        ["db.local:10.0.0.2", "cache.local:10.0.0.3"]
    );
    assert!(web.read_only && !web.privileged);
    assert_eq!(web.init, Some(true));
    assert_eq!(web.cap_add, ["NET_ADMIN"]);
    assert_eq!(web.stop_grace_period, Some(Duration::from_secs(90)));
    assert_eq!(
        web.ulimits["nproc"],
        Ulimit {
            soft: 65535,
            hard: 65535
        }
    );
    assert_eq!(
        web.ulimits["nofile"],
        Ulimit {
            soft: 20000,
            hard: 40000
        }
    );
    let logging = web.logging.as_ref().unwrap();
    assert_eq!(logging.options["max-file"], "3");
    assert_eq!(web.resources.limits.cpus, Some(0.5));
    assert_eq!(web.resources.limits.memory, Some(512 << 20));
    assert_eq!(web.resources.limits.pids, Some(100));
    assert_eq!(web.resources.reservations.memory, Some(1 << 30));
    assert_eq!(web.replicas, 1);
    assert_eq!(web.profiles, ["web"]);
    assert_eq!(web.origin.line, 6);

    let db = &p.services["db"];
    assert_eq!(db.replicas, 2);
    assert_eq!(db.network_mode.as_deref(), Some("host"));
    assert_eq!(db.extra_hosts, ["host.local:10.0.0.9"]);
    assert_eq!(db.healthcheck.as_ref().unwrap().test, ["CMD", "pg_isready"]);

    assert_eq!(p.networks["front"].name, "shop_front");
    assert_eq!(p.networks["back"].name, "shared-back");
    assert!(p.networks["back"].external);
    assert!(
        !p.networks.contains_key("default"),
        "db uses host, web lists its networks"
    );
    assert_eq!(p.volumes["data"].name, "shop_data");
    assert_eq!(p.volumes["data"].labels["backup"], "daily");
}

#[test]
fn project_name_defaults_normalised_and_invalid_names_fail() {
    let (p, _) = one("services: {a: {image: x}}\n").ok("compose/stack.yaml");
    assert_eq!(p.name, "myapp");
    assert_eq!(p.networks["default"].name, "myapp_default");
    let e = single_error(
        &one("name: My_Project\nservices: {a: {image: x}}\n"),
        1,
        "name",
    );
    assert!(e.message.contains("invalid project name"), "{e}");
    assert!(e.hint.unwrap().contains("my_project"));
}

#[test]
fn interpolation_reads_dotenv_overridden_by_the_environment() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            "name: ${PROJECT}\nservices:\n  app:\n    image: app:${TAG:-latest}\n    environment:\n      KEEP: $$HOME\n      FROM_ENV: ${FROM_ENV}\n      MISSING: x${NOPE}y\n      $KEYS_ARE_LITERAL: v\n",
        ),
        ("compose/.env", "# defaults\nPROJECT=shop\nTAG=1.0\nexport FROM_ENV=dotenv\n"),
    ])
    .var("TAG", "2.0");
    let (p, warnings) = repo.ok("compose/stack.yaml");
    let app = &p.services["app"];
    assert_eq!(p.name, "shop");
    assert_eq!(app.image, "app:2.0");
    assert_eq!(app.environment["KEEP"].as_deref(), Some("$HOME"));
    assert_eq!(app.environment["FROM_ENV"].as_deref(), Some("dotenv"));
    assert_eq!(app.environment["MISSING"].as_deref(), Some("xy"));
    assert!(app.environment.contains_key("$KEYS_ARE_LITERAL"));
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].message.contains("`NOPE` is not set"));
    assert_eq!(warnings[0].line, Some(8));
    assert_eq!(
        warnings[0].object.as_deref(),
        Some("services.app.environment.MISSING")
    );
}

#[test]
fn required_variables_and_bad_templates_fail_with_line_and_path() {
    let e = single_error(
        &one("services:\n  app:\n    image: app:${TAG:?set TAG to the release}\n"),
        3,
        "services.app.image",
    );
    assert!(e.message.contains("set TAG to the release"), "{e}");
    let e = single_error(
        &one("services:\n  app:\n    image: x\n    command: echo ${1}\n"),
        4,
        "services.app.command",
    );
    assert!(e.hint.unwrap().contains("$$"));
    // A `$` that starts no variable stays, as in Compose v2, with a
    // warning at its line (docker-compose 1.x refused it).
    let (p, warnings) =
        one("services:\n  app:\n    image: x\n    command: [sh, -c, 'echo $(date) $ 5']\n")
            .ok("compose/stack.yaml");
    assert_eq!(
        p.services["app"].command.as_ref().unwrap()[2],
        "echo $(date) $ 5"
    );
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let w = &warnings[0];
    assert_eq!(
        (w.file.as_deref(), w.line, w.object.as_deref()),
        (
            Some("compose/stack.yaml"),
            Some(4),
            Some("services.app.command[2]")
        )
    );
    assert!(w.message.contains("`echo $(date) $ 5`"), "{w}");
    assert!(w.hint.as_deref().unwrap().contains("$$(date)"), "{w}");
    // Escaped, it is the same value and says nothing.
    let (p, warnings) =
        one("services:\n  app:\n    image: x\n    command: [sh, -c, 'echo $$(date)']\n")
            .ok("compose/stack.yaml");
    assert_eq!(
        p.services["app"].command.as_ref().unwrap()[2],
        "echo $(date)"
    );
    assert!(warnings.is_empty(), "{warnings:#?}");
}

#[test]
fn invalid_image_references_are_refused_at_their_line() {
    for (image, want) in [
        ("apache/airflow:|version|", "contains `|`"),
        ("elasticsearch:", "the tag after `:` is empty"),
        ("UPPER/Case:1", "must be lowercase"),
    ] {
        let e = single_error(
            &one(&format!("services:\n  app:\n    image: '{image}'\n")),
            3,
            "services.app.image",
        );
        assert!(e.message.contains(&format!("`{image}`")), "{e}");
        assert!(e.message.contains(want), "{e}");
    }
    // An unset variable in the tag is found at validate time too.
    let errors =
        one("services:\n  es:\n    image: elasticsearch:${ES_VERSION}\n").err("compose/stack.yaml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].message.contains("tag after `:` is empty"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].message.contains("`ES_VERSION` is not set"),
        "{}",
        errors[0]
    );
}

#[test]
fn an_unset_variable_is_one_error_naming_it_not_one_per_use() {
    let repo = one(
        "services:\n  a:\n    image: app:${TAG}\n    healthcheck:\n      test: [CMD, 'true']\n      interval: ${INTERVAL}\n      timeout: ${INTERVAL}\n  b:\n    image: ${IMAGE}\n    scale: ${INTERVAL}\n",
    );
    let diags = match repo.load("compose/stack.yaml") {
        Ok((p, _)) => panic!("loaded {p:#?}"),
        Err(d) => d.into_iter().collect::<Vec<_>>(),
    };
    let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
    let mut named: Vec<(&str, Option<u32>)> = errors
        .iter()
        .map(|e| {
            let name = ["TAG", "INTERVAL", "IMAGE"]
                .into_iter()
                .find(|n| e.message.contains(&format!("`{n}` is not set")))
                .unwrap_or_else(|| panic!("an error naming no variable: {e}"));
            (name, e.line)
        })
        .collect();
    named.sort();
    assert_eq!(
        named,
        [("IMAGE", Some(9)), ("INTERVAL", Some(6)), ("TAG", Some(3))],
        "{errors:#?}"
    );
    let interval = errors
        .iter()
        .find(|e| e.message.contains("INTERVAL"))
        .unwrap();
    assert!(interval.message.contains("and 2 more values"), "{interval}");
    let hint = interval.hint.as_deref().unwrap();
    assert!(hint.contains("compose/.env` (not in the repo)"), "{hint}");
    // The error replaces the warning about the same variable.
    assert!(diags.iter().all(|d| d.is_error()), "{diags:#?}");
}

#[test]
fn dotenv_errors_point_into_the_env_file() {
    let repo = Repo::new(&[
        ("compose/stack.yaml", "services: {a: {image: x}}\n"),
        ("compose/.env", "A=1\nNOT VALID\n"),
    ]);
    let errors = repo.err("compose/stack.yaml");
    assert_eq!(errors[0].file.as_deref(), Some("compose/.env"));
    assert_eq!(errors[0].line, Some(2));
}

#[test]
fn unsupported_keys_name_their_path() {
    let e = single_error(
        &one(
            "services:\n  web:\n    image: x\n    deploy:\n      replicas: 2\n      placment:\n        constraints: [a]\n",
        ),
        6,
        "services.web.deploy.placment",
    );
    assert_eq!(
        e.to_string().lines().next().unwrap(),
        "error: compose/stack.yaml:6:7: services.web.deploy.placment: key not supported by driftless"
    );
    // Secrets are supported; an undefined one is named with a hint.
    let e = single_error(
        &one("services:\n  web:\n    image: x\n    secrets: [a]\n"),
        4,
        "services.web.secrets[0]",
    );
    assert!(e.hint.unwrap().contains("x-driftless-secret"));
    single_error(
        &one("services: {a: {image: x}}\nsecrets:\n  s: {file: stack.yaml, fil: x}\n"),
        3,
        "secrets.s.fil",
    );
    single_error(
        &one("services: {a: {image: x}}\nnetworks:\n  n:\n    ipam: {drivr: x}\n"),
        4,
        "networks.n.ipam.drivr",
    );
}

#[test]
fn a_service_needs_an_image() {
    let e = single_error(
        &one("services:\n  web:\n    restart: always\n"),
        2,
        "services.web",
    );
    assert!(e.message.contains("neither `image` nor `build`"));
    single_error(&one("services:\n  web:\n"), 2, "services.web");
}

#[test]
fn duplicate_service_names_are_an_error_with_the_line() {
    let errors =
        one("services:\n  web:\n    image: a\n  db:\n    image: b\n  web:\n    image: c\n")
            .err("compose/stack.yaml");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, Some(6));
    assert!(
        errors[0].message.contains("duplicate key `web`"),
        "{}",
        errors[0]
    );
}

#[test]
fn all_errors_of_a_file_are_reported() {
    let errors = one(
        "services:\n  a:\n    build: .\n  b:\n    image: x\n    ports: [\"99999:80\"]\n    networks: [nope]\n    volumes: [\"undeclared:/data\"]\n    depends_on: [ghost]\n    restart: sometimes\n    healthcheck: {interval: soon}\n",
    )
    .err("compose/stack.yaml");
    let lines: Vec<Option<u32>> = errors.iter().map(|e| e.line).collect();
    assert_eq!(
        lines,
        [
            Some(3),
            Some(6),
            Some(7),
            Some(8),
            Some(9),
            Some(10),
            Some(11)
        ],
        "{errors:#?}"
    );
}

#[test]
fn references_must_be_defined() {
    let errors = one(
        "services:\n  a:\n    image: x\n    network_mode: service:nope\n    configs: [missing]\n    depends_on:\n      opt: {required: false}\n",
    )
    .load("compose/stack.yaml")
    .unwrap_err();
    let errors: Vec<_> = errors.errors().collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].message.contains("`nope`"));
    assert!(errors[1].message.contains("config `missing`"));
}

#[test]
fn dependency_cycles_are_errors() {
    let errors = one(
        "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [c]}\n  c: {image: x, depends_on: [a]}\n  d: {image: x, depends_on: [d]}\n",
    )
    .err("compose/stack.yaml");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("depends on itself"))
    );
    assert!(
        errors
            .iter()
            .any(|e| e.message == "dependency cycle: a -> b -> c -> a")
    );
}

#[test]
fn extends_in_the_same_file_and_from_another_directory() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            "services:\n  base:\n    image: base\n    environment: {A: 1, B: 1}\n    ports: ['80:80']\n  web:\n    extends: base\n    environment: [B=2]\n    ports: ['81:81']\n  imported:\n    extends:\n      file: ../shared/common.yaml\n      service: worker\n    command: run\n",
        ),
        (
            "shared/common.yaml",
            "services:\n  worker:\n    extends: {service: root}\n    env_file: worker.env\n    volumes: ['./conf:/etc/worker:ro']\n  root:\n    image: worker:${TAG:-1}\n    command: idle\n",
        ),
        ("shared/worker.env", "W=1\n"),
        ("shared/conf/a.yaml", "a: 1\n"),
    ]);
    let (p, _) = repo.ok("compose/stack.yaml");
    let web = &p.services["web"];
    assert_eq!(web.image, "base");
    assert_eq!(web.environment["A"].as_deref(), Some("1"));
    assert_eq!(web.environment["B"].as_deref(), Some("2"));
    assert_eq!(web.ports.len(), 2);
    let imported = &p.services["imported"];
    assert_eq!(imported.image, "worker:1");
    assert_eq!(imported.command.as_deref().unwrap(), ["run"]);
    assert_eq!(imported.environment["W"].as_deref(), Some("1"));
    // The bound directory is relative to the file that names it.
    assert!(matches!(
        &imported.volumes[0],
        Mount::RepoDir { source, target, read_only: true, files }
            if source == "shared/conf" && target == "/etc/worker" && files[0].path == "a.yaml"
    ));
}

#[test]
fn extends_cycles_name_the_chain() {
    let errors = one(
        "services:\n  a:\n    image: x\n    extends: b\n  b:\n    extends: {service: c}\n  c:\n    extends: a\n",
    )
    .err("compose/stack.yaml");
    assert!(
        errors
            .iter()
            .any(|e| e.message == "`extends` cycle: a -> b -> c -> a"),
        "{errors:#?}"
    );
    assert!(errors.iter().all(|e| e.line.is_some()));
    let e = single_error(
        &one("services:\n  a:\n    image: x\n    extends: nope\n"),
        4,
        "services.a.extends",
    );
    assert!(e.message.contains("no service `nope`"));
}

#[test]
fn extends_errors_in_another_file_point_there() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            "services:\n  a:\n    extends: {file: base.yaml, service: b}\n",
        ),
        (
            "compose/base.yaml",
            "services:\n  b:\n    image: x\n    ports: ['bad']\n",
        ),
    ]);
    let errors = repo.err("compose/stack.yaml");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file.as_deref(), Some("compose/base.yaml"));
    assert_eq!(errors[0].line, Some(4));
    let missing = Repo::new(&[(
        "compose/stack.yaml",
        "services:\n  a:\n    extends: {file: nope.yaml, service: b}\n",
    )]);
    let errors = missing.err("compose/stack.yaml");
    assert!(
        errors[0].message.contains("not in the repository"),
        "{errors:#?}"
    );
}

#[test]
fn reset_and_override_tags() {
    let (p, _) = one(
        "services:\n  init:\n    image: alpine\n    command: sleep infinity\n    ports: ['80:80']\n  base:\n    extends: {service: init}\n    command: !reset null\n    ports: !override ['81:81']\n",
    )
    .ok("compose/stack.yaml");
    assert_eq!(p.services["base"].command, None);
    assert_eq!(p.services["base"].ports.len(), 1);
    assert_eq!(p.services["base"].ports[0].target, 81);
    let e = single_error(
        &one("services:\n  a:\n    image: !custom x\n"),
        3,
        "services.a.image",
    );
    assert!(e.message.contains("`!custom`"));
}

#[test]
fn scale_and_replicas_must_agree() {
    single_error(
        &one("services:\n  a:\n    image: x\n    scale: 2\n    deploy: {replicas: 3}\n"),
        4,
        "services.a.scale",
    );
    let (p, _) = one("services: {a: {image: x, scale: 3}}\n").ok("compose/stack.yaml");
    assert_eq!(p.services["a"].replicas, 3);
}

#[test]
fn relative_binds_must_be_in_the_repo() {
    // The long syntax without `create_host_path` needs the path to exist.
    let e = single_error(
        &one(
            "services:\n  db:\n    image: x\n    volumes:\n      - {type: bind, source: ./data, target: /var/lib/data}\n",
        ),
        5,
        "services.db.volumes[0]",
    );
    assert!(e.hint.unwrap().contains("create_host_path"));
    // The short syntax creates it, as docker compose does: an empty
    // directory, with a warning saying so.
    let (p, warnings) =
        one("services:\n  db:\n    image: x\n    volumes: ['./data:/var/lib/data']\n")
            .ok("compose/stack.yaml");
    assert!(
        matches!(&p.services["db"].volumes[0], Mount::RepoDir { source, files, .. } if source == "compose/data" && files.is_empty())
    );
    assert_eq!(warnings[0].line, Some(4));
    assert!(
        warnings[0].message.contains("empty directory"),
        "{}",
        warnings[0].message
    );
    single_error(
        &one("services:\n  db:\n    image: x\n    volumes: ['../../etc:/etc']\n"),
        4,
        "services.db.volumes[0]",
    );
}

#[test]
fn version_is_a_warning_and_empty_files_fail() {
    let (_, warnings) = one("version: '3.8'\nservices: {a: {image: x}}\n").ok("compose/stack.yaml");
    assert!(warnings[0].message.contains("obsolete"));
    let errors = one("# nothing here\n").err("compose/stack.yaml");
    assert!(errors[0].message.contains("empty"));
    let errors = one("services: {}\n").err("compose/stack.yaml");
    assert!(errors[0].message.contains("no services"));
}

#[test]
fn wrong_shapes_never_panic() {
    let inputs = [
        "[]",
        "services: []",
        "services: {a: [1]}",
        "services: {a: {image: [x]}}",
        "services: {a: {image: x, ports: {a: b}, volumes: 5, environment: 3, labels: [[1]]}}",
        "services: {a: {image: x, healthcheck: [], deploy: [], ulimits: {a: {soft: x}}, logging: 1}}",
        "services: {a: {image: x, networks: {n: [1]}, depends_on: {b: 1}, configs: [{}], extra_hosts: [':']}}",
        "services: {a: {image: x, extends: [1]}}",
        "services: {a: {image: x, extends: {file: '../../../x', service: a}}}",
        "services: {1: {image: x}, ? [a] : b}",
        "networks: 5\nvolumes: [1]\nconfigs: {c: {file: 1, content: 2}}\nservices: {a: {image: x}}",
        "name: 5\nservices: {a: {image: x}}",
        "services: {a: {image: x, command: 'unterminated \"quote'}}",
    ];
    for text in inputs {
        let r = one(text).load("compose/stack.yaml");
        if let Err(d) = r {
            assert!(d.has_errors(), "{text}");
            assert!(d.iter().all(|e| e.file.is_some()), "{text}: {d}");
        }
    }
}

#[test]
fn deep_and_hostile_files_fail_fast_or_load_without_overflow() {
    // Just under the nesting limit: every walk over the tree runs on this
    // (2 MiB) test thread.
    let deep = "[".repeat(120) + "'$X'" + &"]".repeat(120);
    let text = format!("x-deep: {deep}\nservices:\n  a:\n    image: x\n    labels: {{deep: ok}}\n");
    one(&text).ok("compose/stack.yaml");
    // Past it, and an alias bomb: one located error naming the limit.
    let deeper = "[".repeat(10_000) + &"]".repeat(10_000);
    let errors =
        one(&format!("x: {deeper}\nservices: {{a: {{image: x}}}}\n")).err("compose/stack.yaml");
    assert!(errors[0].message.contains("limit"), "{errors:#?}");
    let mut bomb = String::from("x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "x-a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    bomb.push_str("services: {a: {image: x}}\n");
    let errors = one(&bomb).err("compose/stack.yaml");
    assert!(
        errors[0].message.starts_with("YAML limit hit"),
        "{errors:#?}"
    );
    assert!(errors[0].line.is_some());
}

#[test]
fn networks_and_volumes_resolve_names_and_external_ones_take_no_settings() {
    let (p, _) = one(
        "name: shop\nservices:\n  web: {image: busybox:1}\n\
         networks:\n  front: {internal: true, labels: {tier: edge}}\n  shared: {external: true}\n  legacy: {external: {name: old-net}}\n\
         volumes:\n  data: {driver: local, driver_opts: {type: tmpfs}}\n  named: {name: exact}\n",
    )
    .ok("compose/stack.yaml");
    assert_eq!(p.networks["front"].name, "shop_front");
    assert!(p.networks["front"].internal);
    assert_eq!(p.networks["front"].labels["tier"], "edge");
    assert_eq!(p.networks["shared"].name, "shared");
    assert!(p.networks["shared"].external);
    assert_eq!(p.networks["legacy"].name, "old-net");
    assert_eq!(p.volumes["data"].name, "shop_data");
    assert_eq!(p.volumes["data"].driver_opts["type"], "tmpfs");
    assert_eq!(p.volumes["named"].name, "exact");

    let e = single_error(
        &one(
            "services:\n  web: {image: busybox:1}\nnetworks:\n  n:\n    external: true\n    internal: true\n",
        ),
        5,
        "networks.n",
    );
    assert!(
        e.message
            .contains("external network cannot also set `internal`"),
        "{e}"
    );
    let e = single_error(
        &one(
            "services:\n  web: {image: busybox:1}\nvolumes:\n  v:\n    external: true\n    driver: local\n",
        ),
        5,
        "volumes.v",
    );
    assert!(
        e.message
            .contains("external volume cannot also set `driver`"),
        "{e}"
    );
    // `internal` is a network key only.
    single_error(
        &one("services:\n  web: {image: busybox:1}\nvolumes:\n  v: {internal: true}\n"),
        4,
        "volumes.v.internal",
    );
}

mod binds;
mod include;
mod profiles;
mod secrets;

#[test]
fn an_image_update_label_follows_the_tag_and_refuses_what_it_cannot_follow() {
    let (p, _) = one(
        "services:\n  web:\n    image: 127.0.0.1:5000/app:stable\n    labels:\n      driftless.io/image-update: digest\n  db:\n    image: postgres:16\n",
    )
    .ok("compose/stack.yaml");
    let follow = p.services["web"].follow.as_ref().unwrap();
    assert_eq!(follow.policy, ImageUpdate::Digest);
    assert_eq!(follow.reference, "127.0.0.1:5000/app:stable");
    assert!(p.services["db"].follow.is_none());
    for (policy, says) in [
        ("latest", "not an image update policy"),
        ("semver:~1.4", "not supported yet"),
        ("regex:^v[0-9]+$", "not supported yet"),
    ] {
        let e = single_error(
            &one(&format!(
                "services:\n  web:\n    image: app:stable\n    labels:\n      driftless.io/image-update: \"{policy}\"\n"
            )),
            5,
            "services.web.labels",
        );
        assert!(e.message.contains(says), "{policy}: {e}");
    }
    let e = single_error(
        &one(&format!(
            "services:\n  web:\n    image: app@sha256:{}\n    labels: [\"driftless.io/image-update=digest\"]\n",
            "a".repeat(64)
        )),
        4,
        "services.web.labels",
    );
    assert!(e.message.contains("never moves"), "{e}");
}
