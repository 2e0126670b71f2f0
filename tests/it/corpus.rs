//! The check-stage loaders against the shared corpus: Compose files and
//! Kubernetes manifests written by other projects. Every file either loads
//! into the model or fails with located errors; nothing panics or hangs.
//! The counts and the reason for every rejected file are pinned here, so a
//! change in what driftless accepts shows up as a test diff.
//!
//! Expected values are compared with `SANITY.tsv` (what PyYAML found).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use driftless::check::{compose, kube};
use driftless::diag::{Diagnostic, Diagnostics};
use driftless::model::compose::Project;

use super::support;

/// Longest a single file may take (debug build, 2 cores): a hang guard.
const DEADLINE: Duration = Duration::from_secs(60);

/// The corpus as a rendered repo: repo paths are relative to its root, and
/// reads are confined to it (no absolute paths, no `..`, no symlinks out).
#[derive(Clone)]
struct CorpusRepo {
    root: PathBuf,
}

impl CorpusRepo {
    fn new() -> Self {
        let root = support::corpus().canonicalize().expect("corpus directory");
        CorpusRepo { root }
    }

    /// A repo rooted at `root` (a fixture directory).
    fn at(root: &Path) -> Self {
        CorpusRepo {
            root: root.canonicalize().expect("fixture directory"),
        }
    }

    /// The file at a repo path, if it is a file inside the corpus.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        if path.starts_with('/') || path.split('/').any(|p| p == "..") {
            return None;
        }
        let full = self.root.join(path).canonicalize().ok()?;
        full.starts_with(&self.root).then_some(full)
    }

    // The signature is `compose::ReadFile`'s; `Diagnostic` is large (diag.rs).
    #[allow(clippy::result_large_err)]
    fn read(&self, path: &str) -> Option<Result<Arc<[u8]>, Diagnostic>> {
        let full = self.resolve(path)?;
        if !full.is_file() {
            return None;
        }
        Some(
            std::fs::read(&full)
                .map(Arc::from)
                .map_err(|e| Diagnostic::error(e.to_string()).file(path)),
        )
    }

    /// Whether the file has its owner's execute bit, as git records it.
    fn is_executable(&self, path: &str) -> bool {
        use std::os::unix::fs::PermissionsExt;
        self.resolve(path)
            .and_then(|f| std::fs::metadata(f).ok())
            .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o100 != 0)
    }

    fn files_under(&self, path: &str) -> Vec<String> {
        let Some(dir) = self.resolve(path).filter(|d| d.is_dir()) else {
            return Vec::new();
        };
        walk(&dir)
            .into_iter()
            .filter_map(|f| Some(f.strip_prefix(&self.root).ok()?.to_str()?.to_owned()))
            .collect()
    }

    /// Repo paths of the YAML files under `folder`, sorted.
    fn yaml_files(&self, folder: &str) -> Vec<String> {
        self.files_under(folder)
            .into_iter()
            .filter(|p| p.ends_with(".yaml") || p.ends_with(".yml"))
            .collect()
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs `f` on its own thread; a panic or a hang fails the test naming `what`.
fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(value)) => value,
        Ok(Err(_)) => panic!("{what}: the loader panicked"),
        Err(_) => panic!("{what}: the loader did not finish within {DEADLINE:?}"),
    }
}

/// `SANITY.tsv`: file → (documents, info).
fn sanity() -> BTreeMap<String, (usize, String)> {
    let text = std::fs::read_to_string(support::corpus().join("SANITY.tsv")).expect("SANITY.tsv");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let docs = cols.get(3)?.parse().ok()?;
            Some((
                cols[0].to_owned(),
                (docs, cols.get(4).unwrap_or(&"").to_string()),
            ))
        })
        .collect()
}

/// The class of a Compose error, for the table below.
fn compose_class(d: &Diagnostic) -> String {
    let m = d.message.as_str();
    let last = |object: &Option<String>| {
        let o = object.as_deref().unwrap_or("");
        let o = o.split('[').next().unwrap_or(o);
        o.rsplit('.').next().unwrap_or(o).to_owned()
    };
    if m.starts_with("build context") && m.ends_with("is not a directory in the repository") {
        // The corpus holds Compose files, not the contexts they build.
        "build context not in corpus".into()
    } else if m.starts_with("Dockerfile") && m.ends_with("is not in the repository") {
        "dockerfile not in corpus".into()
    } else if m.starts_with("build context") && m.contains("is outside the repository") {
        "build context outside repo".into()
    } else if m.contains("needs BuildKit") {
        "buildkit only".into()
    } else if m == "key not supported by driftless" {
        format!("unsupported {}", last(&d.object))
    } else if m.starts_with("bind source")
        && m.ends_with("is not a file or directory in the repository")
    {
        "bind source not in repo".into()
    } else if let Some(what) = m
        .strip_prefix("cannot apply `")
        .and_then(|r| r.strip_suffix("` on a Docker engine"))
    {
        format!("cannot apply {what}")
    } else if m.starts_with("static address") && m.contains("is outside the subnet") {
        "static address outside its subnet".into()
    } else if m.starts_with("`order: start-first` with fixed host port") {
        "start-first with fixed host port".into()
    } else if m.ends_with("is a Windows path") {
        "windows path".into()
    } else if m.ends_with("is not in the repository") {
        "file not in repo".into()
    } else if m.starts_with("dependency cycle") || m.contains("depends on itself") {
        "depends_on cycle".into()
    } else if m.starts_with("`extends` cycle") {
        "extends cycle".into()
    } else if m.starts_with("`include` cycle") {
        "include cycle".into()
    } else if m.starts_with("secret `") && m.contains("has no value") {
        "secret without value".into()
    } else if m.starts_with("invalid interpolation") || m.starts_with("required variable") {
        "interpolation".into()
    } else if m.starts_with("empty Compose file") {
        "empty file".into()
    } else if m.starts_with("no `services:`") {
        "no services".into()
    } else if m.contains("neither `image` nor `build`") {
        "no image".into()
    } else if m.ends_with("is not defined") || m.contains("undefined service") {
        "undefined reference".into()
    } else if m.contains("path is not allowed") {
        "path outside repo".into()
    } else if m.contains("is not set") {
        "unset variable".into()
    } else if m.contains("container names must be unique") {
        "container_name with replicas".into()
    } else if m.starts_with("`network_mode` and `networks`") {
        "network_mode with networks".into()
    } else if m.starts_with("a config needs exactly one of") {
        "config without content".into()
    } else if m.contains("another user's home directory") {
        "home-relative bind".into()
    } else if m.starts_with("must be") || m.contains(", not ") {
        "wrong type".into()
    } else if [
        "is not a",
        "is empty",
        "expected",
        "empty duration",
        "needs both",
        "must be an absolute path",
    ]
    .iter()
    .any(|p| m.contains(p))
    {
        "invalid value".into()
    } else {
        format!("other: {m}")
    }
}

/// Every rejected Compose file of the corpus and the classes of its errors.
const COMPOSE_REJECTED: &[(&str, &str)] = &[
    (
        "compose/awesome-angular.yaml",
        "build context not in corpus",
    ),
    (
        "compose/awesome-aspnet-mssql.yaml",
        "build context not in corpus",
    ),
    (
        "compose/awesome-flask-redis.yaml",
        "dockerfile not in corpus",
    ),
    (
        "compose/awesome-nginx-aspnet-mysql.yaml",
        "build context not in corpus, file not in repo",
    ),
    (
        "compose/awesome-nginx-flask-mysql.yaml",
        "build context not in corpus, file not in repo",
    ),
    (
        "compose/awesome-nginx-golang-postgres.yaml",
        "bind source not in repo, build context not in corpus, file not in repo",
    ),
    (
        "compose/awesome-nginx-nodejs-redis.yaml",
        "build context not in corpus",
    ),
    (
        "compose/awesome-react-express-mysql.yaml",
        "build context not in corpus, file not in repo",
    ),
    (
        "compose/awesome-react-nginx.yaml",
        "dockerfile not in corpus",
    ),
    (
        "compose/awesome-sparkjava-mysql.yaml",
        "build context not in corpus, file not in repo",
    ),
    (
        "compose/awesome-spring-postgres.yaml",
        "build context not in corpus, file not in repo",
    ),
    ("compose/awesome-vuejs.yaml", "build context not in corpus"),
    (
        "compose/awesome-wasmedge-mysql-nginx.yaml",
        "build context not in corpus",
    ),
    (
        "compose/compose-go/cli/testdata/simple/compose-with-paths.yaml",
        "bind source not in repo, windows path",
    ),
    (
        "compose/compose-go/loader/full-example.yml",
        "bind source not in repo, cannot apply external, container_name with replicas, file not in repo, network_mode with networks, path outside repo, secret without value, start-first with fixed host port, static address outside its subnet, undefined reference, unsupported additional_contexts, unsupported platforms, unsupported secrets, unsupported ssh",
    ),
    (
        "compose/compose-go/loader/testdata/combined/compose.yaml",
        "build context not in corpus",
    ),
    (
        "compose/compose-go/loader/testdata/combined/dir/extended.yaml",
        "dockerfile not in corpus",
    ),
    (
        "compose/compose-go/loader/testdata/combined/dir/included.yaml",
        "dockerfile not in corpus",
    ),
    (
        "compose/compose-go/loader/testdata/compose-depends-on-cycle.yaml",
        "depends_on cycle",
    ),
    (
        "compose/compose-go/loader/testdata/compose-depends-on-profile-no-cycle.yaml",
        "depends_on cycle",
    ),
    (
        "compose/compose-go/loader/testdata/compose-depends-on-self.yaml",
        "depends_on cycle",
    ),
    (
        "compose/compose-go/loader/testdata/compose-include-cycle.yaml",
        "include cycle",
    ),
    (
        "compose/compose-go/loader/testdata/compose-test-with-version.yaml",
        "build context not in corpus",
    ),
    (
        "compose/compose-go/loader/testdata/empty.yaml",
        "empty file",
    ),
    (
        "compose/compose-go/loader/testdata/extends/base.yaml",
        "dockerfile not in corpus, no image",
    ),
    (
        "compose/compose-go/loader/testdata/extends/nested.yaml",
        "dockerfile not in corpus",
    ),
    (
        "compose/compose-go/loader/testdata/extends/sibling.yaml",
        "dockerfile not in corpus",
    ),
    (
        "compose/compose-go/loader/testdata/include/compose.yaml",
        "dockerfile not in corpus",
    ),
    (
        "compose/compose-go/loader/testdata/include/dir/compose.yaml",
        "bind source not in repo, file not in repo",
    ),
    (
        "compose/compose-go/loader/testdata/include/included.yaml",
        "dockerfile not in corpus",
    ),
    (
        "compose/compose-go/loader/testdata/remote/cycle/compose-cycle.yaml",
        "file not in repo",
    ),
    (
        "compose/compose-go/loader/testdata/remote/cycle/compose.yaml",
        "file not in repo",
    ),
    (
        "compose/compose-go/loader/testdata/remote/nested/compose.yaml",
        "file not in repo",
    ),
    (
        "compose/compose-go/schema/using-variables.yaml",
        "cannot apply external, invalid value, undefined reference, unset variable",
    ),
    (
        "compose/docker-compose-e2e/fixtures/bridge/compose.yaml",
        "dockerfile not in corpus, file not in repo",
    ),
    (
        "compose/docker-compose-e2e/fixtures/config_hash/compose.yaml",
        "file not in repo",
    ),
    (
        "compose/docker-compose-e2e/fixtures/env_file/compose.yaml",
        "path outside repo",
    ),
    (
        "compose/docker-compose-e2e/fixtures/volume-test/compose.yaml",
        "build context not in corpus, file not in repo",
    ),
    (
        "compose/docker-compose-e2e/testdata/TestBuildEscaped/compose.yaml",
        "buildkit only, dockerfile not in corpus",
    ),
    (
        "compose/docker-compose-e2e/testdata/TestComposeModel/compose.yaml",
        "cannot apply models",
    ),
    (
        "compose/docker-compose-e2e/testdata/TestConfigFromEnv/compose.yaml",
        "file not in repo, unset variable",
    ),
    (
        "compose/docker-compose-e2e/testdata/TestDependsOnMultipleProviders/compose.yaml",
        "cannot apply provider",
    ),
    (
        "compose/docker-compose-e2e/testdata/TestPublishDetectSensitiveData/compose.yaml",
        "file not in repo",
    ),
    (
        "compose/docker-compose-e2e/testdata/TestSecretFromEnv/child/compose.yaml",
        "secret without value",
    ),
    (
        "compose/docker-compose-e2e/testdata/TestSecretFromEnv/compose.yaml",
        "secret without value",
    ),
];

/// Loaded / rejected Compose files per top folder.
const COMPOSE_COUNTS: &[(&str, usize, usize)] = &[
    ("compose/awesome-*", 7, 13),
    ("compose/compose-go", 22, 21),
    ("compose/docker-compose-e2e", 29, 11),
];

fn folder_of(path: &str) -> &'static str {
    if path.starts_with("compose/awesome-") {
        "compose/awesome-*"
    } else if path.starts_with("compose/compose-go/") {
        "compose/compose-go"
    } else if path.starts_with("compose/docker-compose-e2e/") {
        "compose/docker-compose-e2e"
    } else if path.starts_with("k8s/flux2-kustomize-helm-example/") {
        "k8s/flux2-kustomize-helm-example"
    } else if path.starts_with("k8s/kube-prometheus/") {
        "k8s/kube-prometheus"
    } else if path.starts_with("k8s/kubernetes-examples/") {
        "k8s/kubernetes-examples"
    } else {
        "other"
    }
}

fn load_compose(repo: &CorpusRepo, file: &str) -> Result<(Project, Vec<Diagnostic>), Diagnostics> {
    let text = String::from_utf8(
        repo.read(file)
            .expect("listed file")
            .expect("readable")
            .to_vec(),
    )
    .expect("utf-8");
    // Compose names a project after its directory when the file has no `name:`.
    let dir = file.rsplit('/').nth(1).unwrap_or("corpus").to_owned();
    let variables = BTreeMap::new();
    let read = |p: &str| repo.read(p);
    let is_dir = |p: &str| repo.files_under(p);
    let is_executable = |p: &str| repo.is_executable(p);
    compose::load(&compose::Input {
        file,
        text: &text,
        default_project_name: &dir,
        variables: &variables,
        read: &read,
        is_dir: &is_dir,
        is_executable: &is_executable,
        links_under: &|_: &str| Vec::new(),
        yaml: Default::default(),
    })
}

/// Services a corpus file gets from the files it includes (SANITY.tsv
/// counts only those written in the file itself).
fn included_services(file: &str) -> usize {
    match file {
        // `subdir/compose-test-extends-imported.yaml`: `imported`.
        "compose/compose-go/loader/testdata/compose-include.yaml" => 1,
        // `include/dir/compose.yaml`: `service` (built from an inline Dockerfile).
        "compose/compose-go/loader/testdata/include/project-directory.yaml" => 1,
        _ => 0,
    }
}

#[test]
fn corpus_compose_files_load_or_fail_with_located_reasons() {
    let repo = CorpusRepo::new();
    let sanity = sanity();
    let files: Vec<String> = repo
        .yaml_files("compose")
        .into_iter()
        .filter(|p| !p.starts_with("compose/schema/"))
        .collect();
    assert!(
        files.len() > 100,
        "corpus looks incomplete: {} compose files",
        files.len()
    );

    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut rejected: BTreeMap<String, String> = BTreeMap::new();
    for file in &files {
        let r = {
            let (repo, file) = (repo.clone(), file.clone());
            guarded(&file.clone(), move || load_compose(&repo, &file))
        };
        let count = counts.entry(folder_of(file)).or_default();
        match r {
            Ok((project, _warnings)) => {
                count.0 += 1;
                let want = sanity
                    .get(file.as_str())
                    .and_then(|(_, info)| {
                        info.split(' ').find_map(|kv| kv.strip_prefix("services="))
                    })
                    .and_then(|n| n.parse::<usize>().ok())
                    // PyYAML cannot read `!reset`; the file defines `init` and `base`.
                    .or((file.ends_with("extends/reset.yaml")).then_some(2))
                    // SANITY counts the services written in the file; an
                    // `include:` adds the included file's.
                    .map(|n| n + included_services(file));
                // SANITY counts every service; profiles disable some.
                assert_eq!(
                    Some(project.services.len() + project.disabled_services.len()),
                    want,
                    "{file}: services vs SANITY.tsv"
                );
                assert!(!project.name.is_empty(), "{file}");
            }
            Err(diags) => {
                count.1 += 1;
                assert!(diags.has_errors(), "{file}");
                for d in diags.iter() {
                    let f = d.file.as_deref().unwrap_or_default();
                    assert!(
                        f.starts_with("compose/"),
                        "{file}: diagnostic without its file: {d}"
                    );
                    let whole_file = d.message.starts_with("empty Compose file")
                        || d.message.starts_with("no `services:`");
                    assert!(
                        d.line.is_some() || whole_file || !d.is_error(),
                        "{file}: error without a line: {d}"
                    );
                }
                let classes: BTreeSet<String> = diags.errors().map(compose_class).collect();
                rejected.insert(
                    file.clone(),
                    classes.into_iter().collect::<Vec<_>>().join(", "),
                );
            }
        }
    }

    let expected: BTreeMap<String, String> = COMPOSE_REJECTED
        .iter()
        .map(|(f, c)| (f.to_string(), c.to_string()))
        .collect();
    let table: String = rejected
        .iter()
        .map(|(f, c)| format!("    ({f:?}, {c:?}),\n"))
        .collect();
    assert_eq!(
        rejected, expected,
        "rejected Compose files changed; now:\n{table}"
    );
    let want: BTreeMap<&str, (usize, usize)> = COMPOSE_COUNTS
        .iter()
        .map(|(f, l, r)| (*f, (*l, *r)))
        .collect();
    assert_eq!(counts, want, "loaded/rejected per folder");
}

/// Kubernetes files rejected, and why: kustomize and Flux tool configs that
/// sit next to manifests but are not objects to apply.
const K8S_REJECTED: &[(&str, &str)] = &[
    (
        "k8s/flux2-kustomize-helm-example/.fluxschema.yml",
        "Config: `metadata.name` is missing",
    ),
    (
        "k8s/flux2-kustomize-helm-example/apps/base/podinfo/kustomization.yaml",
        "kustomization",
    ),
    (
        "k8s/flux2-kustomize-helm-example/apps/production/kustomization.yaml",
        "kustomization",
    ),
    (
        "k8s/flux2-kustomize-helm-example/apps/staging/kustomization.yaml",
        "kustomization",
    ),
    (
        "k8s/flux2-kustomize-helm-example/clusters/production/flux-system/kustomization.yaml",
        "kustomization",
    ),
    (
        "k8s/flux2-kustomize-helm-example/clusters/staging/flux-system/kustomization.yaml",
        "kustomization",
    ),
    (
        "k8s/flux2-kustomize-helm-example/infrastructure/configs/kustomization.yaml",
        "kustomization",
    ),
    (
        "k8s/flux2-kustomize-helm-example/infrastructure/controllers/kustomization.yaml",
        "kustomization",
    ),
];

/// Loaded / rejected manifest files per folder.
const K8S_COUNTS: &[(&str, usize, usize)] = &[
    ("k8s/flux2-kustomize-helm-example", 19, 8),
    ("k8s/kube-prometheus", 29, 0),
    ("k8s/kubernetes-examples", 37, 0),
];

#[test]
fn corpus_kubernetes_manifests_load_or_fail_with_located_reasons() {
    let repo = CorpusRepo::new();
    let sanity = sanity();
    // Helm charts are Go templates and `rendered/` holds the real tools'
    // outputs: neither is a plain manifest (the corpus has no SANITY rows
    // for them); the Helm and Kustomize tests read them.
    let files: Vec<String> = repo
        .yaml_files("k8s")
        .into_iter()
        .filter(|f| !f.starts_with("k8s/helm/") && !f.starts_with("k8s/rendered/"))
        .collect();
    assert!(
        files.len() > 80,
        "corpus looks incomplete: {} manifests",
        files.len()
    );

    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut rejected: BTreeMap<String, String> = BTreeMap::new();
    let mut objects_total = 0;
    for file in &files {
        let text = String::from_utf8(repo.read(file).expect("listed").expect("readable").to_vec())
            .expect("utf-8");
        let r = {
            let file = file.clone();
            guarded(&file.clone(), move || kube::load(&file, &text))
        };
        let count = counts.entry(folder_of(file)).or_default();
        match r {
            Ok(objects) => {
                count.0 += 1;
                objects_total += objects.len();
                let (docs, info) = sanity.get(file.as_str()).cloned().unwrap_or_default();
                // PyYAML's kinds, with typed lists (`RoleBindingList`) expanded.
                let want: BTreeSet<String> = info
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(|k| k.strip_suffix("List").unwrap_or(k).to_owned())
                    .collect();
                let got: BTreeSet<String> = objects.iter().map(|o| o.kind.clone()).collect();
                assert_eq!(got, want, "{file}: kinds vs SANITY.tsv");
                if !info.ends_with("List") {
                    assert_eq!(objects.len(), docs, "{file}: one object per document");
                }
                for o in &objects {
                    assert_eq!(o.origin.file, *file);
                    assert!(o.origin.line > 0, "{file}: {} without a line", o.key());
                    assert_eq!(o.body["kind"], o.kind.as_str());
                }
            }
            Err(diags) => {
                count.1 += 1;
                let e = diags.errors().next().expect("an error");
                assert_eq!(e.file.as_deref(), Some(file.as_str()));
                assert!(e.line.is_some(), "{file}: {e}");
                let class = if e
                    .hint
                    .as_deref()
                    .is_some_and(|h| h.contains("kustomize build"))
                {
                    "kustomization".to_owned()
                } else {
                    format!("{}: {}", e.object.as_deref().unwrap_or("?"), e.message)
                };
                rejected.insert(file.clone(), class);
            }
        }
    }
    let expected: BTreeMap<String, String> = K8S_REJECTED
        .iter()
        .map(|(f, c)| (f.to_string(), c.to_string()))
        .collect();
    assert_eq!(rejected, expected, "rejected manifests changed");
    let want: BTreeMap<&str, (usize, usize)> =
        K8S_COUNTS.iter().map(|(f, l, r)| (*f, (*l, *r))).collect();
    assert_eq!(counts, want, "loaded/rejected per folder");
    assert_eq!(objects_total, 116, "objects in all loaded manifests");
}

#[test]
fn corpus_largest_crd_loads_whole() {
    let repo = CorpusRepo::new();
    let file = "k8s/kube-prometheus/manifests/setup/0prometheusCustomResourceDefinition.yaml";
    let text = String::from_utf8(
        repo.read(file)
            .expect("in corpus")
            .expect("readable")
            .to_vec(),
    )
    .expect("utf-8");
    assert!(text.len() > 800_000);
    let objects = guarded(file, move || kube::load(file, &text)).expect("loads");
    assert_eq!(objects.len(), 1);
    assert_eq!(
        objects[0].key(),
        "CustomResourceDefinition/prometheuses.monitoring.coreos.com"
    );
    let schema = &objects[0].body["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    assert!(
        schema["properties"]["spec"]["properties"]
            .as_object()
            .unwrap()
            .len()
            > 100
    );
}

/// A few corpus files checked for what Compose itself makes of them.
#[test]
fn corpus_compose_semantics_match_compose() {
    let repo = CorpusRepo::new();
    let load = |file: &str| match load_compose(&repo, file) {
        Ok((project, _)) => project,
        Err(d) => panic!("{file}:\n{d}"),
    };

    // `extends` from a subdirectory: env_file relative to the base file,
    // interpolation with the extending project's variables.
    let p = load("compose/compose-go/loader/testdata/compose-test-extends.yaml");
    let importer = &p.services["importer"];
    assert_eq!(importer.image, "nginx");
    assert_eq!(importer.container_name.as_deref(), Some("imported"));
    assert_eq!(importer.environment["SOURCE"].as_deref(), Some("extends"));
    assert!(
        matches!(&importer.volumes[0], driftless::model::compose::Mount::Bind { source, .. } if source == "/opt/data")
    );

    // `.env` next to the file feeds interpolation; later env_files win.
    let p = load("compose/compose-go/cli/testdata/simple/compose-with-variables.yaml");
    assert_eq!(
        p.services["simple"].ports[0].published.as_deref(),
        Some("8000")
    );
    let p = load("compose/compose-go/cli/testdata/env-file/compose-with-env-files.yaml");
    let simple = &p.services["simple"];
    assert_eq!(simple.ports[0].published.as_deref(), Some("8000"));
    assert_eq!(simple.environment["DEFAULT_PORT"].as_deref(), Some("9090"));

    // Project names derived from directories are normalised.
    let p = load("compose/compose-go/cli/testdata/UNNORMALIZED PATH/compose.yaml");
    assert_eq!(p.name, "unnormalizedpath");
    assert_eq!(p.networks["default"].name, "unnormalizedpath_default");

    // Port ranges and `scale`.
    let p = load("compose/docker-compose-e2e/testdata/TestPortRange/compose.yaml");
    let a = &p.services["a"];
    assert_eq!(a.replicas, 5);
    assert_eq!(a.ports[0].published.as_deref(), Some("6005-6015"));
    assert_eq!(a.ports[0].target, 80);

    // `!reset` drops what the base defined.
    let p = load("compose/compose-go/loader/testdata/extends/reset.yaml");
    assert_eq!(p.services["base"].image, "alpine:latest");
    assert_eq!(p.services["base"].command, None);
    assert!(p.services["init"].command.is_some());
}

/// Fixtures written for what the shared corpus lacks (`tests/fixtures/compose/`):
/// a file of 57 services with 150 aliases of 10 anchors loads, and a
/// billion-laughs file is refused naming the anchor, at a line of the file.
#[test]
fn anchor_fixtures_load_or_are_refused_by_the_alias_budget() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose");
    let load = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).expect("fixture");
        let file = format!("compose/{name}");
        let variables = BTreeMap::new();
        let read = |_: &str| None;
        let is_dir = |_: &str| Vec::new();
        let r = compose::load(&compose::Input {
            file: &file,
            text: &text,
            default_project_name: "fixtures",
            variables: &variables,
            read: &read,
            is_dir: &is_dir,
            is_executable: &|_: &str| false,
            links_under: &|_: &str| Vec::new(),
            yaml: Default::default(),
        });
        (r, text.lines().count() as u32)
    };

    let (r, _) = load("anchors-57-services.yaml");
    let (project, _) = r.unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(project.services.len(), 57);
    let gateway = &project.services["gateway"];
    assert_eq!(gateway.restart.as_deref(), Some("unless-stopped"));
    assert_eq!(
        gateway.resources.limits.memory,
        Some(2 << 30),
        "`*large` merged"
    );
    assert_eq!(gateway.environment["TZ"].as_deref(), Some("UTC"));
    assert_eq!(
        gateway.environment["SERVICE_NAME"].as_deref(),
        Some("gateway")
    );
    assert!(gateway.healthcheck.is_some());
    assert_eq!(
        project.services["auth"].resources.limits.memory,
        Some(256 << 20),
        "`*small` merged"
    );

    let (r, lines) = load("billion-laughs.yaml");
    let errors = r.expect_err("an alias bomb");
    let e = errors.errors().next().expect("an error");
    assert!(e.message.contains("anchor `&a4`"), "{e}");
    assert_eq!(e.line, Some(8), "{e}");
    assert!(e.line.is_some_and(|l| l <= lines), "{e}");
    assert!(
        e.hint
            .as_deref()
            .is_some_and(|h| h.contains("limits.yaml_alias_expansion")),
        "{e}"
    );
}

/// The README's supported-keys table lists every key of the Compose
/// specification — each top-level key and each service key of
/// `compose-spec.json` — in its first column, with what driftless does
/// with it in the second: a key added to the spec (or dropped from the
/// table) fails here until the table says what happens to it.
#[test]
fn the_readme_key_table_covers_every_key_of_the_spec() {
    let schema: serde_json::Value = serde_json::from_slice(
        &std::fs::read(support::corpus().join("compose/schema/compose-spec.json"))
            .expect("compose-spec.json in the corpus"),
    )
    .expect("the schema is JSON");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .expect("a properties object")
            .keys()
            .cloned()
            .collect()
    };
    let top = keys(&schema["properties"]);
    let service = keys(&schema["definitions"]["service"]["properties"]);
    assert!(top.len() >= 9 && service.len() >= 92, "{top:?} {service:?}");

    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let start = readme
        .find("### Supported Compose keys")
        .expect("the README has a supported-keys section");
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n### ").map_or(section.len(), |e| e + 4)];
    let mut listed = BTreeSet::new();
    let mut rows = 0;
    for line in section.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        if cells[0].trim() == "keys" || cells[0].starts_with("---") {
            continue;
        }
        rows += 1;
        assert!(
            cells.len() >= 2 && !cells[cells.len() - 1].trim().is_empty(),
            "a row says what happens to its keys: {line}"
        );
        let mut rest = cells[0];
        while let Some(open) = rest.find('`') {
            let Some(close) = rest[open + 1..].find('`') else {
                break;
            };
            listed.insert(rest[open + 1..open + 1 + close].to_owned());
            rest = &rest[open + 1 + close + 1..];
        }
    }
    assert!(rows > 10, "the table was found: {rows} rows");
    let missing: Vec<&String> = top
        .iter()
        .chain(&service)
        .filter(|k| !listed.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys of compose-spec.json the README's table does not list: {missing:?}"
    );
}

/// A build-context fixture per `build:` form (the corpus holds Compose
/// files without their contexts): the short form, the long one with a
/// Dockerfile elsewhere in the context, args and target, an inline
/// Dockerfile, and a git URL — each loads, its context read from the
/// files with `.dockerignore` applied and modes from the file system.
#[test]
fn build_context_fixtures_load_in_every_form() {
    use driftless::model::compose::BuildContext;
    let repo = CorpusRepo::at(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    let (p, warnings) = load_compose(&repo, "compose/build-forms/compose.yaml")
        .unwrap_or_else(|d| panic!("the build fixture loads:\n{d}"));
    assert!(warnings.is_empty(), "{warnings:#?}");
    let context = |service: &str| -> (String, Vec<(String, u32)>) {
        let b = p.services[service].build.as_ref().expect("a build");
        match &b.context {
            BuildContext::Snapshot { dir, files } => (
                dir.clone(),
                files.iter().map(|f| (f.path.clone(), f.mode)).collect(),
            ),
            BuildContext::Remote { url } => (url.clone(), Vec::new()),
        }
    };
    let owned = |v: &[(&str, u32)]| -> Vec<(String, u32)> {
        v.iter().map(|(p, m)| ((*p).to_owned(), *m)).collect()
    };
    assert_eq!(p.services["web"].image, "build-forms-web");
    assert_eq!(
        context("web"),
        (
            "compose/build-forms/web".to_owned(),
            owned(&[
                (".dockerignore", 0o644),
                ("Dockerfile", 0o644),
                ("index.html", 0o644),
                ("start", 0o755),
            ])
        )
    );
    let api = p.services["api"].build.as_ref().unwrap();
    assert_eq!(p.services["api"].image, "registry.example/api:2");
    assert_eq!(api.dockerfile, "docker/api.Dockerfile");
    assert_eq!(api.target.as_deref(), Some("prod"));
    assert_eq!(api.args["VERSION"], "2");
    assert_eq!(
        context("api").1,
        owned(&[("docker/api.Dockerfile", 0o644), ("main.sh", 0o644)])
    );
    let inline = p.services["inline"].build.as_ref().unwrap();
    assert!(inline.dockerfile.starts_with(".dockerfile."), "{inline:?}");
    assert!(
        context("inline")
            .1
            .iter()
            .any(|(f, _)| *f == inline.dockerfile),
        "the inline Dockerfile is sent in the context"
    );
    assert_eq!(
        context("remote").0,
        "https://git.example/shop/web.git#main:app"
    );
}
