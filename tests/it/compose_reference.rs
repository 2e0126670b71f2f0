//! Differential test against the reference Compose implementation on this
//! machine, Debian's docker-compose 1.29.2: each Compose file is deployed
//! with `docker-compose -p <ref> up -d` and with `driftless reconcile` into
//! another project, one after the other (static subnets and fixed
//! container names cannot exist twice on one engine), and the two
//! deployments' `docker inspect` output is compared — containers (Config,
//! HostConfig, networks with aliases and addresses, mounts, labels),
//! networks and volumes — after normalising what must differ: names, ids,
//! project name, hostnames, times, the config hash and driftless's own
//! `io.driftless.*` labels.
//!
//! What still differs is pinned in [`KNOWN`], each row with its reason; an
//! unexpected difference, or a pinned one no file shows any more, fails
//! the test with rows ready to paste. Both projects are removed with
//! `docker-compose -p X down -v`, which also shows that the reference
//! finds a driftless project by its `com.docker.compose.*` labels.
//!
//! Keys docker-compose 1.29.2 does not know (Compose v2 additions) cannot
//! be compared; `v2_keys_reach_the_engine` asserts them field by field
//! against the Engine API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::docker_support::{BUSYBOX, Cleanup, add_file, build_image, engine, project_name};
use crate::support::{self, Run, driftless, git};

/// The image corpus files run: the busybox fixture with an entrypoint that
/// ignores its arguments and sleeps, so a service's `command:` for the real image
/// neither fails nor exits, and both tools see running containers.
const SLEEPER: &str = "driftless-test/sleeper:1";

/// One observed difference between the two deployments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Diff {
    case: String,
    /// `container web-1`, `network back`, `volume data`.
    object: String,
    path: String,
    /// Normalised JSON; `None`: absent (or null / empty) on that side.
    reference: Option<String>,
    driftless: Option<String>,
}

/// A pinned difference: the inspect path and both values (`*` matches any
/// characters; a value `*` alone: anything, absent included; `-`: absent)
/// and why it
/// differs. For a list whose order means nothing (aliases, capabilities)
/// the values are the elements only that side has.
struct Known {
    path: &'static str,
    reference: &'static str,
    driftless: &'static str,
    reason: &'static str,
}

const fn known(
    path: &'static str,
    reference: &'static str,
    driftless: &'static str,
    reason: &'static str,
) -> Known {
    Known {
        path,
        reference,
        driftless,
        reason,
    }
}

/// Every remaining difference, with its reason.
const KNOWN: &[Known] = &[
    known(
        "Config.Labels[\"com.docker.compose.image\"]",
        "-",
        "*",
        "Compose v2 labels each container with its image id; 1.29.2 has no such label",
    ),
    known(
        "Config.Labels[\"com.docker.compose.depends_on\"]",
        "-",
        "*",
        "Compose v2 labels each container with its dependencies (the implicit ones of \
         `volumes_from` and `ipc: service:` too), condition and restart flag; 1.29.2 has none",
    ),
    known(
        "Config.Labels[\"com.docker.compose.project.config_files\"]",
        "\"*.y*ml\"",
        "\"compose/stack/*.y*ml\"",
        "the Compose files: 1.29.2 writes the `-f` argument, v2 absolute host paths, \
         driftless the repo path (a commit has no host path)",
    ),
    known(
        "Config.Labels[\"com.docker.compose.project.working_dir\"]",
        "*",
        "\"compose/stack\"",
        "the project directory: a host path for the CLI, the repo directory for driftless",
    ),
    known(
        "HostConfig.Binds",
        "*",
        "-",
        "1.29.2 sends volumes as `Binds` strings, v2 and driftless as `Mounts`: the same \
         mounts (`Mounts[...]` agree but for `Mode`)",
    ),
    known("HostConfig.Mounts", "*", "*", "as `HostConfig.Binds`"),
    known(
        "Mounts[*].Mode",
        "*",
        "\"z\"",
        "the engine reports the `Binds` mode string for a bind-style volume and `z` for one \
         made through `Mounts`; `RW` agrees",
    ),
    known(
        "Mounts[\"/foo\"].*",
        "*",
        "*",
        "a relative bind (`.:/foo` in `remote/compose.yaml`): docker compose bind-mounts the \
         directory on the host; driftless mounts one volume per project and directory, filled \
         from the commit (what runs is what is committed, and remote engines work), so the \
         mount is a volume",
    ),
    known(
        "Labels[\"com.docker.compose.network\"]",
        "*",
        "*",
        "a network with `name:`: 1.29.2 labels it with that name, v2 and driftless with its \
         key in the file (v2's `prepareNetworks`), which is how v2 finds it again",
    ),
    known(
        "Networks[*].Aliases",
        "-",
        "[\"<this container>\"]",
        "Compose v2 adds the container name as a DNS alias on each network; 1.29.2 has the \
         service name and the engine's short id only",
    ),
    known(
        "HostConfig.VolumesFrom",
        "*",
        "[\"<container plain-1>:ro\"]",
        "`volumes_from: [service]`: 1.29.2 passes the id of whichever replica it lists first, \
         v2 and driftless the first replica by number, by name",
    ),
    known(
        "Networks[*].Links",
        "[\"<container db-1>:db_1\"]",
        "[\"<container db-1>:db-1\"]",
        "a link's `<service>-<n>` alias: 1.29.2 writes the v1 form `db_1`, v2 and driftless \
         `db-1` (v2's `getLinks`; the other aliases agree)",
    ),
    known(
        "Attachable",
        "true",
        "false",
        "1.29.2 creates every network attachable; v2 and driftless only with `attachable: true` \
         (the `front` network agrees)",
    ),
];

impl Known {
    fn matches(&self, d: &Diff) -> bool {
        let side = |pattern: &str, value: &Option<String>| match (pattern, value) {
            ("*", _) => true,
            ("-", None) => true,
            (p, Some(v)) => glob(p, v),
            _ => false,
        };
        glob(self.path, &d.path)
            && side(self.reference, &d.reference)
            && side(self.driftless, &d.driftless)
    }
}

/// `pattern` with `*` standing for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let last = if parts.is_empty() { None } else { parts.pop() };
    for part in parts {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    last.is_none_or(|l| rest.ends_with(l))
}

/// A Compose file to deploy with both tools: the directory it lives in
/// (copied whole, so its `.env` and `env_file`s come along), its name
/// there.
struct Case {
    name: String,
    files: Vec<(String, Vec<u8>)>,
    file: String,
}

impl Case {
    fn inline(name: &str, yaml: String, extra: &[(&str, &str)]) -> Case {
        let mut files = vec![("compose.yaml".to_owned(), yaml.into_bytes())];
        files.extend(
            extra
                .iter()
                .map(|(p, c)| ((*p).to_owned(), c.as_bytes().to_vec())),
        );
        Case {
            name: name.to_owned(),
            files,
            file: "compose.yaml".to_owned(),
        }
    }

    /// A corpus file, with every file under its directory (its `.env`,
    /// `env_file`s and `extends` targets).
    fn corpus(path: &str) -> Case {
        let full = support::corpus().join(path);
        let dir = full.parent().unwrap();
        let mut files = Vec::new();
        copy_tree(dir, "", &mut files);
        Case {
            name: path.to_owned(),
            files,
            file: full.file_name().unwrap().to_string_lossy().into_owned(),
        }
    }
}

fn copy_tree(dir: &Path, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&entry.path(), &format!("{name}/"), out);
        } else if kind.is_file() {
            out.push((name, std::fs::read(entry.path()).unwrap()));
        }
    }
}

/// What one deployment left on the engine, normalised and flattened:
/// object (`container web-1`) → inspect path → JSON value.
type Deployed = BTreeMap<String, BTreeMap<String, String>>;

/// The command's output, or a panic with what it printed.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// docker-compose 1.29.2 on `file`, with no `COMPOSE_*` variable of ours
/// leaking in (driftless never reads the process environment either).
fn compose(dir: &Path, file: &str, project: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("docker-compose");
    cmd.current_dir(dir)
        .args(["-p", project, "-f", file])
        .args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("COMPOSE_") || k.starts_with("DRIFTLESS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args))
}

/// The ids of a project's objects of one kind (`container`, `network`,
/// `volume`), by the Compose project label.
fn ids(kind: &str, project: &str) -> Vec<String> {
    let filter = format!("label=com.docker.compose.project={project}");
    let mut args = vec![kind, "ls", "-q", "--filter", &filter];
    if kind != "volume" {
        args.push("--no-trunc");
    }
    if kind == "container" {
        args.push("-a");
    }
    docker(&args)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn inspect(kind: &str, ids: &[String]) -> Vec<Value> {
    if ids.is_empty() {
        return Vec::new();
    }
    let mut args = vec![kind, "inspect"];
    args.extend(ids.iter().map(String::as_str));
    serde_json::from_str(&docker(&args)).expect("docker inspect prints JSON")
}

/// Reads one project's containers, networks and volumes, normalised;
/// `declared` is the Compose file's text.
fn read(project: &str, declared: &str) -> Deployed {
    let containers = inspect("container", &ids("container", project));
    let networks = inspect("network", &ids("network", project));
    // The volume of a bound repo directory stands in for the host
    // directory docker compose binds, which is no object either; the
    // mount itself is compared (`Mounts["/foo"]` in KNOWN).
    let volumes: Vec<Value> = inspect("volume", &ids("volume", project))
        .into_iter()
        .filter(|v| v["Labels"]["io.driftless.bind"].is_null())
        .collect();

    // Names and ids to neutral tokens: longest first, so a full id is
    // replaced before its short form.
    let mut tokens: Vec<(String, String)> = Vec::new();
    let mut keys = Vec::new();
    for c in &containers {
        let labels = &c["Config"]["Labels"];
        let key = format!(
            "{}-{}",
            labels["com.docker.compose.service"].as_str().unwrap_or("?"),
            labels["com.docker.compose.container-number"]
                .as_str()
                .unwrap_or("?")
        );
        let id = c["Id"].as_str().unwrap_or_default().to_owned();
        let name = c["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/');
        tokens.push((id.clone(), format!("<id {key}>")));
        tokens.push((
            id.get(..12).unwrap_or(&id).to_owned(),
            format!("<id {key}>"),
        ));
        tokens.push((name.to_owned(), format!("<container {key}>")));
        keys.push(format!("container {key}"));
    }
    tokens.push((project.to_owned(), "<project>".to_owned()));
    tokens.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let normalise = |v: &Value| -> Value {
        let mut text = v.to_string();
        for (from, to) in &tokens {
            text = text.replace(from.as_str(), to);
        }
        serde_json::from_str(&text).unwrap()
    };

    let mut out = Deployed::new();
    for (c, key) in containers.iter().zip(keys) {
        // A container's own name and id (its hostname, its aliases) read
        // the same on both sides.
        let id = c["Id"].as_str().unwrap_or_default();
        let name = c["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/');
        let mut text = c.to_string();
        for (from, to) in [(id, "<this id>"), (name, "<this container>")] {
            text = text.replace(&format!("\"{from}\""), &format!("\"{to}\""));
        }
        text = text.replace(
            &format!("\"{}\"", id.get(..12).unwrap_or(id)),
            "\"<this id>\"",
        );
        let own: Value = serde_json::from_str(&text).unwrap();
        out.insert(key, flatten_container(&normalise(&own)));
    }
    for n in &networks {
        let n = normalise(n);
        let key = format!("network {}", n["Name"].as_str().unwrap_or("?"));
        out.insert(key, flatten_network(&n, declared));
    }
    for v in &volumes {
        let v = normalise(v);
        let key = format!("volume {}", v["Name"].as_str().unwrap_or("?"));
        out.insert(key, flatten_volume(&v));
    }
    out
}

/// Removes the labels under `labels` (`Config.Labels`) that
/// [`ignored_label`] names.
fn drop_ignored_labels(out: &mut BTreeMap<String, String>, labels: &str) {
    let prefix = format!("{labels}[\"");
    out.retain(|path, _| {
        !path
            .strip_prefix(&prefix)
            .is_some_and(|k| ignored_label(k.trim_end_matches("\"]")))
    });
}

/// Labels that must differ or that only one tool writes by design.
fn ignored_label(key: &str) -> bool {
    key.starts_with("io.driftless.")
        || matches!(
            key,
            "com.docker.compose.project"
                | "com.docker.compose.config-hash"
                | "com.docker.compose.version"
        )
}

/// Arrays whose order carries no meaning.
const SETS: &[&str] = &[
    "Config.Env",
    "HostConfig.CapAdd",
    "HostConfig.CapDrop",
    "HostConfig.Binds",
    "HostConfig.ExtraHosts",
    "HostConfig.Links",
    "HostConfig.SecurityOpt",
    "HostConfig.GroupAdd",
    "HostConfig.VolumesFrom",
    "HostConfig.Ulimits",
    "HostConfig.Devices",
];

fn flatten_container(c: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for section in ["Config", "HostConfig"] {
        flatten(&c[section], section, &mut out);
    }
    for field in ["Path", "Args", "Image", "Name"] {
        flatten(&c[field], field, &mut out);
    }
    drop_ignored_labels(&mut out, "Config.Labels");
    // Mounts by destination; an anonymous volume's generated name is noise.
    let mut mounts: Vec<Value> = c["Mounts"].as_array().cloned().unwrap_or_default();
    for m in &mut mounts {
        if m["Name"].as_str().is_some_and(is_generated) {
            let name = m["Name"].as_str().unwrap().to_owned();
            m["Name"] = Value::from("<anonymous>");
            if let Some(s) = m["Source"].as_str() {
                m["Source"] = Value::from(s.replace(&name, "<anonymous>"));
            }
        }
    }
    for m in &mounts {
        let at = format!(
            "Mounts[\"{}\"]",
            m["Destination"].as_str().unwrap_or_default()
        );
        flatten(m, &at, &mut out);
    }
    if let Some(nets) = c["NetworkSettings"]["Networks"].as_object() {
        for (net, ep) in nets {
            let mut ep = ep.clone();
            let fixed = ep["IPAMConfig"].is_object();
            let obj = ep.as_object_mut().unwrap();
            obj.remove("NetworkID");
            obj.remove("EndpointID");
            // Addresses the engine assigned are whatever was free.
            if !fixed {
                for f in [
                    "IPAddress",
                    "IPPrefixLen",
                    "Gateway",
                    "MacAddress",
                    "GlobalIPv6Address",
                    "GlobalIPv6PrefixLen",
                    "IPv6Gateway",
                ] {
                    obj.remove(f);
                }
            }
            if let Some(aliases) = obj.get_mut("Aliases").and_then(Value::as_array_mut) {
                aliases.sort_by_key(|a| a.to_string());
            }
            flatten(&ep, &format!("Networks[\"{net}\"]"), &mut out);
        }
    }
    out
}

/// `declared`: the Compose file's text. A pool whose subnet it does not
/// name is one the engine picked, whatever was free.
fn flatten_network(n: &Value, declared: &str) -> BTreeMap<String, String> {
    let mut n = n.clone();
    if let Some(pools) = n["IPAM"]["Config"].as_array_mut() {
        pools.retain(|p| p["Subnet"].as_str().is_some_and(|s| declared.contains(s)));
    }
    let mut out = BTreeMap::new();
    for f in [
        "Driver",
        "Scope",
        "EnableIPv6",
        "IPAM",
        "Internal",
        "Attachable",
        "Ingress",
        "Options",
        "Labels",
    ] {
        flatten(&n[f], f, &mut out);
    }
    drop_ignored_labels(&mut out, "Labels");
    out
}

fn flatten_volume(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for f in ["Driver", "Scope", "Options", "Labels"] {
        flatten(&v[f], f, &mut out);
    }
    drop_ignored_labels(&mut out, "Labels");
    out
}

fn is_generated(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Leaves as JSON text; null, `""`, `[]` and `{}` count as absent (the
/// engine reports an unset list as either). Objects recurse; a field name
/// joins with `.`, a map key (a label, a sysctl) as `["key"]`.
fn flatten(v: &Value, path: &str, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Null => {}
        Value::String(s) if s.is_empty() => {}
        Value::Array(a) if a.is_empty() => {}
        Value::Object(o) => {
            for (k, child) in o {
                let is_field = k.starts_with(|c: char| c.is_ascii_uppercase())
                    && k.chars().all(|c| c.is_ascii_alphanumeric());
                let at = if is_field {
                    format!("{path}.{k}")
                } else {
                    format!("{path}[\"{k}\"]")
                };
                flatten(child, &at, out);
            }
        }
        Value::Array(a) if SETS.contains(&path) => {
            let mut items: Vec<String> = a.iter().map(Value::to_string).collect();
            items.sort();
            out.insert(path.to_owned(), format!("[{}]", items.join(",")));
        }
        _ => {
            out.insert(path.to_owned(), v.to_string());
        }
    }
}

fn is_set(path: &str) -> bool {
    SETS.contains(&path)
        || (path.starts_with("Networks[")
            && (path.ends_with("].Aliases") || path.ends_with("].Links")))
}

/// The elements of two JSON arrays found only in the first and only in
/// the second, each `None` when there are none.
fn only_in_each(a: Option<&String>, b: Option<&String>) -> (Option<String>, Option<String>) {
    let items = |v: Option<&String>| -> BTreeSet<String> {
        v.and_then(|t| serde_json::from_str::<Vec<Value>>(t).ok())
            .unwrap_or_default()
            .iter()
            .map(Value::to_string)
            .collect()
    };
    let (a, b) = (items(a), items(b));
    let only = |x: &BTreeSet<String>, y: &BTreeSet<String>| {
        let rest: Vec<&String> = x.difference(y).collect();
        (!rest.is_empty()).then(|| {
            format!(
                "[{}]",
                rest.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
    };
    (only(&a, &b), only(&b, &a))
}

fn compare(case: &str, reference: &Deployed, ours: &Deployed) -> Vec<Diff> {
    let mut diffs = Vec::new();
    let objects: BTreeSet<&String> = reference.keys().chain(ours.keys()).collect();
    let empty = BTreeMap::new();
    for object in objects {
        let (r, d) = (
            reference.get(object).unwrap_or(&empty),
            ours.get(object).unwrap_or(&empty),
        );
        if r.is_empty() || d.is_empty() {
            diffs.push(Diff {
                case: case.to_owned(),
                object: object.clone(),
                path: "(object)".into(),
                reference: (!r.is_empty()).then(|| "present".into()),
                driftless: (!d.is_empty()).then(|| "present".into()),
            });
            continue;
        }
        let paths: BTreeSet<&String> = r.keys().chain(d.keys()).collect();
        for path in paths {
            let (rv, dv) = (r.get(path), d.get(path));
            if rv == dv {
                continue;
            }
            let (reference, driftless) = if is_set(path) {
                only_in_each(rv, dv)
            } else {
                (rv.cloned(), dv.cloned())
            };
            if reference.is_none() && driftless.is_none() {
                // The same elements, one repeated (an alias equal to the
                // container name): the engine keeps one.
                continue;
            }
            diffs.push(Diff {
                case: case.to_owned(),
                object: object.clone(),
                path: path.clone(),
                reference,
                driftless,
            });
        }
    }
    diffs
}

/// A repo deploying `case` as one environment with driftless.
struct Repo {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
    env: String,
    stack_dir: PathBuf,
}

impl Repo {
    fn new(case: &Case, project: &str) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let env = format!("e{}", project.trim_start_matches("dlt-"));
        let stack_dir = dir.path().join("compose/stack");
        std::fs::create_dir_all(&stack_dir).unwrap();
        for (path, content) in &case.files {
            let to = stack_dir.join(path);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::write(to, content).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("environments")).unwrap();
        std::fs::write(
            dir.path().join("environments/values.yaml"),
            format!("COMPOSE_PROJECT_NAME: {project}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("driftless.yaml"),
            format!(
                "apiVersion: driftless/v1\npaths:\n  stacks: [compose/stack/{file}]\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n",
                file = case.file
            ),
        )
        .unwrap();
        git(dir.path(), &["init", "-q"]);
        git(dir.path(), &["add", "-A"]);
        git(dir.path(), &["commit", "-q", "-m", "stack"]);
        Repo {
            dir,
            state: tempfile::tempdir().unwrap(),
            env,
            stack_dir,
        }
    }

    fn reconcile(&self) -> Run {
        driftless(
            self.dir.path(),
            &[
                "reconcile",
                "--env",
                &self.env,
                "--rollback-on-failure=false",
                "--state-dir",
                self.state.path().to_str().unwrap(),
            ],
        )
    }
}

/// Deploys `case` with the reference, then with driftless, and returns
/// what differs. Each project is removed with docker-compose before the
/// next one starts; a driftless project must leave nothing behind.
fn deploy_both(case: &Case) -> Vec<Diff> {
    let reference = project_name("cref");
    let ours = project_name("cdl");
    let _cleanup = Cleanup::new(&[&reference, &ours]);
    let repo = Repo::new(case, &ours);
    let dir = &repo.stack_dir;

    run(&mut compose(dir, &case.file, &reference, &["up", "-d"]));
    let declared = case
        .files
        .iter()
        .find(|(path, _)| *path == case.file)
        .map(|(_, text)| String::from_utf8_lossy(text).into_owned())
        .unwrap_or_default();
    let ref_state = read(&reference, &declared);
    run(&mut compose(
        dir,
        &case.file,
        &reference,
        &["down", "-v", "-t", "0"],
    ));

    let applied = repo.reconcile();
    assert_eq!(
        applied.code, 0,
        "{}: driftless reconcile: {applied:?}",
        case.name
    );
    let our_state = read(&ours, &declared);

    // The reference sees a driftless project: `ps` lists its containers,
    // `down -v` removes all of it.
    let listed: BTreeSet<String> = run(&mut compose(dir, &case.file, &ours, &["ps", "-q"]))
        .lines()
        .map(str::to_owned)
        .collect();
    let running: BTreeSet<String> = ids("container", &ours).into_iter().collect();
    assert!(
        listed == running,
        "{}: docker-compose ps lists {listed:?}, the engine has {running:?}",
        case.name
    );
    run(&mut compose(
        dir,
        &case.file,
        &ours,
        &["down", "-v", "-t", "0"],
    ));
    // A bound repo directory's volume stands in for the host directory
    // docker compose would bind, and `down -v` leaves that directory too:
    // it stays, and goes here.
    let bound = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={ours}"),
        "--filter",
        "label=io.driftless.bind",
    ]);
    let bound: Vec<&str> = bound.lines().filter(|l| !l.is_empty()).collect();
    for kind in ["container", "network", "volume"] {
        let left: Vec<String> = ids(kind, &ours)
            .into_iter()
            .filter(|id| kind != "volume" || !bound.contains(&id.as_str()))
            .collect();
        assert_eq!(
            left,
            Vec::<String>::new(),
            "{}: docker-compose down left a {kind} of the driftless project",
            case.name
        );
    }
    if !bound.is_empty() {
        let mut args = vec!["volume", "rm"];
        args.extend(bound.iter().copied());
        docker(&args);
    }
    compare(&case.name, &ref_state, &our_state)
}

/// The image references a Compose file names, as the reference resolves it.
fn images_of(case: &Case) -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in &case.files {
        let to = dir.path().join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, content).unwrap();
    }
    run(&mut compose(dir.path(), &case.file, "images", &["config"]))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .map(|i| i.trim_matches(['"', '\'']).to_owned())
        .collect()
}

/// Builds [`SLEEPER`] on the busybox fixture image and tags it under
/// `names`; returns the tags to remove.
async fn provide_images(api: &bollard::Docker, names: &BTreeSet<String>) -> Vec<String> {
    let mut tar = tar::Builder::new(Vec::new());
    let dockerfile =
        format!("FROM {BUSYBOX}\nENTRYPOINT [\"/bin/sh\", \"-c\", \"exec sleep 3600\"]\n");
    add_file(&mut tar, "Dockerfile", 0o644, dockerfile.as_bytes());
    build_image(api, SLEEPER, tar.into_inner().unwrap()).await;
    let mut tags = Vec::new();
    for name in names {
        docker(&["tag", SLEEPER, name]);
        tags.push(name.clone());
    }
    tags
}

fn report(diffs: &[Diff]) {
    let unexpected: Vec<&Diff> = diffs
        .iter()
        .filter(|d| !KNOWN.iter().any(|k| k.matches(d)))
        .collect();
    let all = std::env::var("DRIFTLESS_REFERENCE_ONLY").is_err();
    let stale: Vec<&Known> = KNOWN
        .iter()
        .filter(|k| all && !diffs.iter().any(|d| k.matches(d)))
        .collect();
    if unexpected.is_empty() && stale.is_empty() {
        for k in KNOWN {
            let seen = diffs.iter().filter(|d| k.matches(d)).count();
            eprintln!("{} ({seen}×): {}", k.path, k.reason);
        }
        return;
    }
    let mut text = String::new();
    for d in &unexpected {
        text.push_str(&format!(
            "  {} / {}:\n    known({:?}, {:?}, {:?}, \"...\"),\n",
            d.case,
            d.object,
            d.path,
            d.reference.as_deref().unwrap_or("-"),
            d.driftless.as_deref().unwrap_or("-"),
        ));
    }
    for k in &stale {
        text.push_str(&format!(
            "  pinned but not seen: {} ({} / {})\n",
            k.path, k.reference, k.driftless
        ));
    }
    panic!("differences against docker-compose 1.29.2 changed:\n{text}");
}

/// A network, a volume and a container of one name, with no labels,
/// removed on drop.
struct Outside(String);

impl Outside {
    fn create(name: &str) -> Outside {
        docker(&["network", "create", name]);
        docker(&["volume", "create", name]);
        docker(&["run", "-d", "--name", name, BUSYBOX, "sleep", "3600"]);
        Outside(name.to_owned())
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        for kind in ["network", "volume"] {
            let _ = Command::new("docker").args([kind, "rm", &self.0]).output();
        }
    }
}

/// A stack using the keys both tools know, as a user writes them. `ext`
/// names a network and a volume that exist outside the project.
fn keys_stack(net: u32, ext: &str) -> String {
    let pid = std::process::id();
    format!(
        r#"services:
  app:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    entrypoint: ["/bin/sh", "-c", "exec \"$$0\" \"$$@\""]
    environment:
      PLAIN: value
      QUOTED: "a b"
      EMPTY: ""
    env_file: [app.env]
    labels:
      com.example.team: shop
      com.example.empty: ""
    user: "1000:1000"
    working_dir: /tmp
    hostname: app-host
    domainname: example.test
    cap_add: [NET_ADMIN]
    cap_drop: [MKNOD]
    security_opt: ["no-new-privileges:true"]
    read_only: true
    restart: on-failure:3
    init: true
    logging:
      driver: json-file
      options: {{max-size: 1m, max-file: "2"}}
    extra_hosts: ["db.internal:10.1.2.3", "cache.internal:10.1.2.4"]
    tmpfs: ["/run:size=8m", "/scratch"]
    sysctls: {{net.core.somaxconn: 1024}}
    dns: [10.9.9.9]
    dns_search: [example.test]
    dns_opt: [use-vc]
    ulimits:
      nofile: {{soft: 1024, hard: 2048}}
      nproc: 512
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
      timeout: 2s
      retries: 5
      start_period: 1s
    stop_signal: SIGINT
    stop_grace_period: 3s
    mem_limit: 96m
    mem_reservation: 32m
    memswap_limit: 192m
    mem_swappiness: 10
    cpus: 0.5
    cpu_shares: 256
    cpuset: "0"
    pids_limit: 64
    shm_size: 16m
    oom_score_adj: 100
    group_add: ["100"]
    ipc: shareable
    tty: true
    stdin_open: true
    expose: ["7000", "7001/udp"]
    ports: ["127.0.0.1::8080", "9090/udp"]
    volumes:
      - data:/data
      - cache:/cache:ro
      - /anonymous
      - type: tmpfs
        target: /fast
        tmpfs: {{size: 4194304}}
    networks:
      back:
        ipv4_address: 10.232.{net}.10
        aliases: [api, api.internal]
      front:
        aliases: [app-front]
  side:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    container_name: cref-side-{pid}
    ipc: service:app
    volumes_from: ["plain:ro"]
    depends_on:
      app: {{condition: service_healthy}}
    networks: [back]
  plain:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    scale: 2
    cpu_period: 100000
    cpu_quota: 50000
    volumes: [/shared]
  addressed:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    networks:
      v6:
        ipv4_address: 10.233.{net}.10
        ipv6_address: fd00:233:{net}::10
        link_local_ips: [169.254.10.{net}]
        priority: 10
      outside: {{}}
      front:
        priority: 100
    volumes: [outside:/outside]
networks:
  back:
    internal: true
    labels: {{com.example.net: back}}
    driver_opts: {{com.docker.network.driver.mtu: "1400"}}
    ipam:
      config:
        - subnet: 10.232.{net}.0/24
          ip_range: 10.232.{net}.128/25
          gateway: 10.232.{net}.1
          aux_addresses: {{reserved: 10.232.{net}.2}}
  front:
    attachable: true
  v6:
    enable_ipv6: true
    ipam:
      driver: default
      options: {{com.example.ipam: "yes"}}
      config:
        - subnet: 10.233.{net}.0/24
        - subnet: fd00:233:{net}::/64
  outside:
    external: true
    name: {ext}
volumes:
  outside:
    external: true
    name: {ext}
  data:
    labels: {{com.example.vol: data}}
  cache:
    driver: local
    driver_opts: {{type: tmpfs, device: tmpfs, o: "size=1m"}}
"#
    )
}

/// The other spellings and keys: string command and entrypoint, list
/// labels and sysctls, map extra_hosts, long port and volume syntax,
/// links, `pid` and `network_mode` of another service, devices, and the
/// resource keys under `deploy`.
fn more_keys_stack(ext: &str) -> String {
    format!(
        r#"services:
  db:
    image: {BUSYBOX}
    command: sleep 3600
    entrypoint: /bin/sh -c 'exec "$$0" "$$@"'
    environment:
      - LIST=1
      - DOLLAR=a$$b
    labels: ["com.example.list=yes", "com.example.other=2"]
    extra_hosts: {{mapped.internal: 10.3.3.3}}
    sysctls: [net.ipv4.tcp_syncookies=0]
    ulimits: {{nofile: 4096}}
    restart: unless-stopped
    privileged: false
    init: false
    userns_mode: host
    cgroup_parent: driftless-reference
    oom_kill_disable: false
    device_cgroup_rules: ["c 1:3 mr"]
    devices: ["/dev/null:/dev/xnull:rwm"]
    runtime: runc
    shm_size: 1048576
    security_opt: ["label:disable"]
    healthcheck:
      disable: true
    ports:
      - target: 80
        published: 18080
        protocol: tcp
      - "127.0.0.1:18090-18091:90-91"
    expose: ["5000-5001"]
    volumes:
      - type: volume
        source: data
        target: /data
        read_only: true
      - type: tmpfs
        target: /t
    deploy:
      resources:
        limits: {{cpus: "0.5", memory: 64m}}
        reservations: {{memory: 16m}}
  web:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    links: ["db:database", "db"]
    external_links: ["{ext}:legacy"]
    pid: "service:db"
    depends_on: [db]
  sidecar:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    network_mode: "service:db"
volumes:
  data: {{}}
"#
    )
}

/// `DRIFTLESS_REFERENCE_ONLY=<case>` deploys only the cases whose name
/// contains it (and checks no pinned row for staleness): for working on
/// one file.
fn selected(case: &Case) -> bool {
    std::env::var("DRIFTLESS_REFERENCE_ONLY").map_or(true, |only| case.name.contains(&only))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_match_docker_compose_1_29() {
    let Some(engine) = engine().await else {
        return;
    };
    let net = 100 + std::process::id() % 150;
    // The external network and volume, made by hand as users make them.
    let outside = Outside::create(&project_name("cext"));
    let cases = [
        Case::inline(
            "keys",
            keys_stack(net, &outside.0),
            &[("app.env", "FROM_FILE=1\n# a comment\nSPACED=a b\n")],
        ),
        Case::inline("more keys", more_keys_stack(&outside.0), &[]),
    ];
    let mut diffs = Vec::new();
    for case in cases.iter().filter(|c| selected(c)) {
        diffs.extend(deploy_both(case));
    }
    let corpus: Vec<Case> = CORPUS
        .iter()
        .map(|path| Case::corpus(path))
        .filter(selected)
        .collect();
    let names: BTreeSet<String> = corpus.iter().flat_map(images_of).collect();
    let tags = provide_images(engine.docker(), &names).await;
    let _images = tags
        .iter()
        .fold(Cleanup::new(&[]), |c, tag| c.image(tag))
        .image(SLEEPER);
    for case in &corpus {
        diffs.extend(deploy_both(case));
    }
    report(&diffs);
}

/// The corpus files deployed with both tools: those both accept whose
/// services need only an image that runs. Left out, each for its reason:
/// the `build:` files (the corpus lacks their contexts), files whose
/// services must exit or pass a healthcheck only the real image passes
/// (`TestInitContainer`, `TestUpWithDependencyExit`, `cascade`,
/// `sentences`, `TestUpServiceUnhealthy`, `TestUpWaitTimeout`,
/// `TestRecreateWithNoDeps`), `extends/depends_on.yaml` (its `ipc:
/// service:` donor is not `shareable`, which the engine refuses under
/// either tool), and files that use keys 1.29.2 refuses (`name:`,
/// `include:`, long `env_file`, ...).
const CORPUS: &[&str] = &[
    "compose/awesome-gitea-postgres.yaml",
    "compose/awesome-nextcloud-postgres.yaml",
    "compose/awesome-wordpress-mysql.yaml",
    "compose/awesome-portainer.yaml",
    "compose/compose-go/cli/testdata/env-file/compose-with-env-files.yaml",
    "compose/compose-go/cli/testdata/simple/compose-with-variables.yaml",
    "compose/compose-go/loader/testdata/extends/ports.yaml",
    "compose/docker-compose-e2e/fixtures/network-test/compose.yaml",
    "compose/docker-compose-e2e/testdata/TestIPAMConfig/compose.yaml",
    "compose/docker-compose-e2e/testdata/TestNetworkConfigChanged/compose.yaml",
    "compose/docker-compose-e2e/testdata/TestPortRange/compose.yaml",
    "compose/docker-compose-e2e/testdata/TestScaleBasicCases/compose.yaml",
    "compose/docker-compose-e2e/testdata/TestUpRecreateVolumes/compose.yaml",
    "compose/docker-compose-e2e/testdata/TestUpProfile/compose.yaml",
    "compose/compose-go/cli/testdata/env-file/compose-with-env-file.yaml",
    "compose/compose-go/cli/testdata/simple/compose.yaml",
    "compose/compose-go/cli/testdata/simple/compose-with-overrides.yaml",
    "compose/compose-go/loader/testdata/extends/interpolated.yaml",
    "compose/compose-go/loader/testdata/extends/withdir/compose.yaml",
    "compose/compose-go/loader/testdata/remote/compose.yaml",
    "compose/compose-go/loader/testdata/subdir/compose-test-extends-imported.yaml",
    "compose/docker-compose-e2e/fixtures/logs-test/compose.yaml",
    "compose/docker-compose-e2e/fixtures/network-recreate/compose.yaml",
    "compose/docker-compose-e2e/fixtures/publish/oci/compose-interpolated.yaml",
    "compose/docker-compose-e2e/testdata/TestCommitWithReplicas/compose.yaml",
    "compose/docker-compose-e2e/testdata/TestExplicitProfileUsage/compose.yaml",
    "compose/docker-compose-e2e/testdata/TestLocalComposeConfig/compose.yaml",
];

/// Loads a Compose file from text with its side files (paths relative to
/// the file's directory), as `validate` would.
// The reader's signature is `compose::ReadFile`'s; `Diagnostic` is large.
#[allow(clippy::result_large_err)]
pub(crate) fn load(text: &str, files: &[(&str, &str)]) -> driftless::model::compose::Project {
    use std::sync::Arc;
    let variables = BTreeMap::new();
    let read = |path: &str| -> Option<Result<Arc<[u8]>, driftless::diag::Diagnostic>> {
        files
            .iter()
            .find(|(p, _)| format!("compose/{p}") == path)
            .map(|(_, c)| Ok(Arc::from(c.as_bytes())))
    };
    let is_dir = |_: &str| Vec::new();
    match driftless::check::compose::load(&driftless::check::compose::Input {
        file: "compose/stack.yaml",
        text,
        default_project_name: "unused",
        variables: &variables,
        read: &read,
        is_dir: &is_dir,
        is_executable: &|_: &str| false,
        links_under: &|_: &str| Vec::new(),
        yaml: Default::default(),
    }) {
        Ok((project, _)) => project,
        Err(d) => panic!("the stack does not load:\n{d}"),
    }
}

/// Keys docker-compose 1.29.2 refuses or ignores (Compose v2 additions,
/// top-level `configs`) that this engine (API 1.41) applies, checked field
/// by field where docker compose v2 puts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_keys_reach_the_engine() {
    use bollard::query_parameters::InspectContainerOptions;
    let Some(b) = engine().await else { return };
    let name = project_name("v2keys");
    let _cleanup = Cleanup::new(&[&name]);
    let yaml = format!(
        r#"name: {name}
services:
  app:
    image: {BUSYBOX}
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    cgroup: private
    uts: host
    attach: false
    label_file: [app.labels]
    env_file:
      - path: app.env
      - path: missing.env
        required: false
    deploy:
      resources:
        limits: {{pids: 33, cpus: "0.25", memory: 48m}}
        reservations: {{memory: 16m}}
    networks:
      back:
        driver_opts: {{com.example.opt: "1"}}
    configs:
      - source: inline
        target: /etc/inline.conf
      - source: greeting
        target: /etc/greeting
networks:
  back:
    labels: {{com.example.net: "{{label}}"}}
configs:
  inline:
    content: |
      listen 8080
  greeting:
    environment: GREETING
"#
    );
    let stack = |label: &str| yaml.replace("{label}", label);
    let files = [
        ("app.labels", "com.example.from-file=yes\n"),
        ("app.env", "FROM_FILE=1\n"),
        (".env", "GREETING=hello from .env\n"),
    ];
    let desired = |label: &str| crate::compose_backend::desired(vec![load(&stack(label), &files)]);
    crate::compose_backend::reconcile(&b, &name, &desired("one")).await;
    let allow = driftless::manifest::Allow::default();
    let plan = crate::compose_backend::dry_run(&b, &name, &desired("one"), &allow)
        .await
        .unwrap();
    assert!(
        crate::compose_backend::changed(&plan).is_empty(),
        "{plan:#?}"
    );
    // A network label is part of the network: changing it recreates it.
    let plan = crate::compose_backend::dry_run(&b, &name, &desired("two"), &allow)
        .await
        .unwrap();
    assert!(
        crate::compose_backend::changed(&plan).contains(&(
            format!("{name}_back"),
            driftless::plan::Action::Recreate {
                reason: "config changed".into()
            }
        )),
        "{plan:#?}"
    );
    let app = b
        .docker()
        .inspect_container(&format!("{name}-app-1"), None::<InspectContainerOptions>)
        .await
        .unwrap();
    let hc = app.host_config.clone().unwrap();
    assert_eq!(
        hc.cgroupns_mode,
        Some(bollard::models::HostConfigCgroupnsModeEnum::PRIVATE)
    );
    assert_eq!(hc.uts_mode.as_deref(), Some("host"));
    assert_eq!(hc.pids_limit, Some(33));
    assert_eq!(hc.nano_cpus, Some(250_000_000));
    assert_eq!(hc.memory, Some(48 << 20));
    assert_eq!(hc.memory_reservation, Some(16 << 20));
    let config = app.config.clone().unwrap();
    assert_eq!(
        config.labels.unwrap()["com.example.from-file"],
        "yes",
        "label_file"
    );
    assert!(
        config.env.unwrap().contains(&"FROM_FILE=1".to_owned()),
        "env_file long syntax"
    );
    let endpoint = &app.network_settings.unwrap().networks.unwrap()[&format!("{name}_back")];
    assert_eq!(
        endpoint.driver_opts.as_ref().unwrap()["com.example.opt"],
        "1",
        "per-network driver_opts"
    );

    // Top-level `configs` with `content` and `environment`, as files.
    let container = format!("{name}-app-1");
    assert_eq!(
        crate::compose_backend::read_file(&b, &container, "/etc/inline.conf").await,
        "listen 8080\n"
    );
    assert_eq!(
        crate::compose_backend::read_file(&b, &container, "/etc/greeting").await,
        "hello from .env"
    );

    // Keys an older engine's API would silently drop are refused at plan,
    // naming the version they need (this machine's engine speaks 1.41).
    let version = b.docker().client_version();
    let have = (version.major_version, version.minor_version);
    for (key, need, yaml) in [
        (
            "healthcheck.start_interval",
            (1, 44),
            "    healthcheck: {test: [CMD, 'true'], start_interval: 1s}\n",
        ),
        (
            "annotations",
            (1, 43),
            "    annotations: {com.example.a: b}\n",
        ),
        (
            "mac_address",
            (1, 44),
            "    mac_address: 02:42:ac:11:00:99\n",
        ),
        (
            "networks.default.gw_priority",
            (1, 48),
            "    networks:\n      default:\n        gw_priority: 1\n",
        ),
        (
            "networks.default.interface_name",
            (1, 49),
            "    networks:\n      default:\n        interface_name: eth7\n",
        ),
        (
            "volumes[0].volume.subpath",
            (1, 45),
            "    volumes:\n      - type: volume\n        target: /c\n        volume: {subpath: app}\n",
        ),
        (
            "volumes[0].bind.recursive",
            (1, 44),
            "    volumes:\n      - type: bind\n        source: /tmp\n        target: /t\n        read_only: true\n        bind: {recursive: readonly}\n",
        ),
        // An engine before 1.48 refuses the mount type itself.
        (
            "volumes[0].type",
            (1, 48),
            "    volumes:\n      - type: image\n        source: driftless-test/busybox:2\n        target: /img\n        image: {subpath: bin}\n",
        ),
    ] {
        if have >= need {
            continue;
        }
        let newer = load(
            &format!("name: {name}\nservices:\n  app:\n    image: {BUSYBOX}\n{yaml}"),
            &[],
        );
        let refused = crate::compose_backend::dry_run(
            &b,
            &name,
            &crate::compose_backend::desired(vec![newer]),
            &allow,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains(&format!(
                "services.app.{key} needs Docker Engine API {}.{} or later; this engine speaks {}.{}",
                need.0, need.1, have.0, have.1
            )),
            "{key}: {refused}"
        );
    }
}

/// docker-compose 1.29.2 on top of a driftless project: `ps` lists it,
/// `exec` and `logs` reach its container,
/// `up -d` runs (it crashed on the old `driftless-…` version label) and
/// recreates every service, because its config hash is its own (docker
/// compose v2's is too; README, "Docker Compose on a driftless project").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compose_up_over_a_driftless_project() {
    let Some(_engine) = engine().await else {
        return;
    };
    let ours = project_name("cup");
    let _cleanup = Cleanup::new(&[&ours]);
    let stack = format!(
        "services:\n  web:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    init: true\n"
    );
    let case = Case::inline("up", stack, &[]);
    let repo = Repo::new(&case, &ours);
    let dir = &repo.stack_dir;
    let applied = repo.reconcile();
    assert_eq!(applied.code, 0, "{applied:?}");
    let before = ids("container", &ours);

    let ps = run(&mut compose(dir, &case.file, &ours, &["ps"]));
    assert!(ps.contains(&format!("{ours}-web-1")), "{ps}");
    // `exec` and `logs` find the service's container by its labels.
    let out = run(&mut compose(
        dir,
        &case.file,
        &ours,
        &["exec", "-T", "web", "echo", "exec-reached-driftless"],
    ));
    assert_eq!(out.trim(), "exec-reached-driftless");
    run(&mut compose(dir, &case.file, &ours, &["logs", "web"]));
    let up = compose(dir, &case.file, &ours, &["up", "-d"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "docker-compose up -d failed: {said}");
    assert!(said.contains(&format!("Recreating {ours}-web-1")), "{said}");
    let after = ids("container", &ours);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(before, after, "docker-compose recreated the service");

    run(&mut compose(
        dir,
        &case.file,
        &ours,
        &["down", "-v", "-t", "0"],
    ));
    assert_eq!(ids("container", &ours), Vec::<String>::new());
}
