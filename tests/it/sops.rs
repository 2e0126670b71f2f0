//! SOPS files written by the real `sops` tool (../shared/corpus/sops):
//! every value and data key decrypts to the SHA-256 EXPECTED.tsv records,
//! cross-checked against Go's `age` CLI and Python's `cryptography`, and
//! every tampered or unopenable file is refused with the file named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use driftless::sops::{self, Identities, SopsError};
use sha2::{Digest, Sha256};

use crate::support;

fn dir() -> PathBuf {
    support::corpus().join("sops")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn ids(rel: &str) -> Identities {
    Identities::parse(&String::from_utf8(read(rel)).unwrap()).unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// EXPECTED.tsv rows: file → (key file, [(path, type, sha256)]).
type Rows = BTreeMap<String, (String, Vec<(String, String, String)>)>;

fn expected() -> Rows {
    let text = String::from_utf8(read("EXPECTED.tsv")).unwrap();
    let mut rows = Rows::new();
    for line in text.lines().filter(|l| !l.starts_with('#')).skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let entry = rows
            .entry(f[0].to_owned())
            .or_insert_with(|| (f[1].to_owned(), Vec::new()));
        entry
            .1
            .push((f[2].to_owned(), f[3].to_owned(), f[4].to_owned()));
    }
    rows
}

/// The bytes driftless decrypts for `file`: the file itself, or for
/// `inside/secret.yaml` the binary-store document base64-encoded in its
/// `data.key`.
fn sops_bytes(file: &str) -> Vec<u8> {
    let bytes = read(file);
    if file != "kustomize-controller/inside/secret.yaml" {
        return bytes;
    }
    let doc: serde_json::Value =
        driftless::yaml::from_str(std::str::from_utf8(&bytes).unwrap()).unwrap();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(doc["data"]["key"].as_str().unwrap())
        .unwrap()
}

#[test]
fn every_corpus_file_decrypts_to_the_expected_values() {
    let rows = expected();
    let mut checked = 0;
    for (file, (key_file, rows)) in &rows {
        if key_file == "-" {
            continue;
        }
        let bytes = sops_bytes(file);
        let identities = ids(key_file);
        if key_file.ends_with("age-pq.txt") {
            // age 0.12 has no mlkem768x25519 identity: a clear refusal.
            let err = sops::decrypt(file, &bytes, Some(&identities)).unwrap_err();
            assert!(
                matches!(err, SopsError::UnsupportedRecipient { .. }),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(file.as_str()), "{msg}");
            assert!(
                msg.contains("mlkem768x25519") && msg.contains("age1pq1"),
                "{msg}"
            );
            continue;
        }
        let decrypted = sops::decrypt(file, &bytes, Some(&identities))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let key = sops::open_data_key(file, &bytes, Some(&identities)).unwrap();
        let leaves: BTreeMap<String, &sops::Leaf> = decrypted
            .leaves
            .iter()
            .map(|l| (l.path.replace('.', ":"), l))
            .collect();
        let mut want_encrypted = BTreeSet::new();
        for (path, kind, want) in rows {
            match kind.as_str() {
                "datakey" => assert_eq!(&sha(&key), want, "{file} {path}"),
                "mac" => assert_eq!(&sha(decrypted.mac.as_bytes()), want, "{file}"),
                // Comments are not values; driftless does not read them.
                "comment" => {}
                _ => {
                    let leaf = leaves
                        .get(path)
                        .unwrap_or_else(|| panic!("{file}: no value at {path}"));
                    assert!(leaf.encrypted, "{file} {path}");
                    assert_eq!(&sha(leaf.text.as_bytes()), want, "{file} {path}");
                    want_encrypted.insert(path.clone());
                    checked += 1;
                }
            }
        }
        let got_encrypted: BTreeSet<String> = decrypted
            .secrets()
            .map(|l| l.path.replace('.', ":"))
            .collect();
        assert_eq!(got_encrypted, want_encrypted, "{file}");
    }
    // README.md: 44 encrypted values and one unencrypted ""; the one
    // value of the post-quantum file is refused above.
    assert_eq!(checked, 44);
}

#[test]
fn files_without_an_age_recipient_are_refused_naming_the_file_and_its_keys() {
    let identities = ids("getsops/age/keys.txt");
    for file in [
        "getsops/functional-tests/res/format.enc.yaml",
        "getsops/functional-tests/res/no_mac.yaml",
    ] {
        let err = sops::decrypt(file, &read(file), Some(&identities)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SopsError::NoAgeRecipient { .. }), "{msg}");
        assert!(msg.contains(file) && msg.contains("pgp "), "{msg}");
    }
}

#[test]
fn a_wrong_or_missing_identity_names_the_recipients() {
    let file = "kustomize-controller/algorithms/age.yaml";
    let recipient = "age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29";
    let other = ids("kustomize-controller/keys/age-global.txt");
    let msg = sops::decrypt(file, &read(file), Some(&other))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(file) && msg.contains(recipient), "{msg}");
    assert!(
        msg.contains("age1henwn645drkd3fa34t27t2w2x0nsgw3w4h62gmg5x5xflyjpy38s5cncph"),
        "names this host's public key: {msg}"
    );
    let msg = sops::decrypt(file, &read(file), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(file) && msg.contains(recipient), "{msg}");
    assert!(msg.contains("DRIFTLESS_AGE_IDENTITY_FILE"), "{msg}");
}

#[test]
fn a_flipped_byte_in_a_value_or_the_mac_or_a_plain_value_fails_naming_the_file() {
    let file = "kustomize-controller/algorithms/age.yaml";
    let identities = ids("kustomize-controller/keys/age.txt");
    let text = String::from_utf8(read(file)).unwrap();
    let decrypt = |changed: String| {
        assert_ne!(changed, text, "the change applied");
        sops::decrypt(file, changed.as_bytes(), Some(&identities)).unwrap_err()
    };
    // One ciphertext byte (not the last base64 character: its padding bits
    // are ignored, so that change decodes to the same bytes).
    let err = decrypt(text.replace("data:mHeXsmQ=", "data:nHeXsmQ="));
    assert!(matches!(err, SopsError::Value { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(file) && msg.contains("stringData.key"),
        "{msg}"
    );
    // The AAD binds the path: a renamed key does not decrypt.
    let err = decrypt(text.replace("  key: ENC", "  kez: ENC"));
    assert!(matches!(err, SopsError::Value { .. }), "{err}");
    // One byte of the stored MAC.
    let err = decrypt(text.replace(
        "mac: ENC[AES256_GCM,data:vmrF",
        "mac: ENC[AES256_GCM,data:wmrF",
    ));
    assert!(matches!(err, SopsError::Mac { .. }), "{err}");
    assert!(err.to_string().contains(file), "{err}");
    // A plain value the MAC covers.
    let err = decrypt(text.replace("name: age", "name: agf"));
    assert!(matches!(err, SopsError::Mac { .. }), "{err}");
    assert!(err.to_string().contains(file), "{err}");
    // No MAC at all.
    let no_mac: String = text
        .lines()
        .filter(|l| !l.starts_with("  mac:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let err = decrypt(no_mac);
    assert!(matches!(err, SopsError::Mac { .. }), "{err}");
    // lastmodified is the MAC's additional data.
    let err = decrypt(text.replace("13:33:42Z", "13:33:43Z"));
    assert!(matches!(err, SopsError::Mac { .. }), "{err}");
    // A plain file is not a SOPS file.
    let plain = "kustomize-controller/inside/secret.yaml";
    let err = sops::decrypt(plain, &read(plain), Some(&identities)).unwrap_err();
    assert!(matches!(err, SopsError::Format { .. }), "{err}");
    assert!(err.to_string().contains(plain), "{err}");
}

/// Go's age CLI opens the data key of every X25519 file to the same 32
/// bytes as driftless (the armored `enc` handed over as sops stores it).
#[test]
fn the_age_cli_opens_the_same_data_keys() {
    let script = r#"
import json, subprocess, sys
path, keyfile = sys.argv[1], sys.argv[2]
text = open(path).read()
encs = []
if path.endswith('.env'):
    for line in text.splitlines():
        if line.startswith('sops_age__list_') and '__map_enc=' in line:
            encs.append(line.split('=', 1)[1].replace('\\n', '\n'))
elif path.endswith('.ini'):
    for line in text.splitlines():
        if line.startswith('age__list_') and '__map_enc' in line:
            encs.append(line.split('=', 1)[1].strip().replace('\\n', '\n'))
else:
    encs = [a['enc'] for a in json.loads(text)['sops']['age']]
for enc in encs:
    key = subprocess.run(['age', '-d', '-i', keyfile], input=enc.encode(), capture_output=True, check=True).stdout
    print(key.hex())
"#;
    let cases = [
        ("getsops/example.json", "getsops/age/keys.txt"),
        ("getsops/example.ini", "getsops/age/keys.txt"),
        ("getsops/example.txt", "getsops/age/keys.txt"),
        (
            "kustomize-controller/component/env.env",
            "kustomize-controller/keys/age.txt",
        ),
        (
            "kustomize-controller/month/year.env",
            "kustomize-controller/keys/age.txt",
        ),
        (
            "kustomize-controller/files/file.txt",
            "kustomize-controller/keys/age.txt",
        ),
    ];
    for (file, key_file) in cases {
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(dir().join(file))
            .arg(dir().join(key_file))
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert!(!theirs.is_empty(), "{file}");
        let ours =
            hex::encode(sops::open_data_key(file, &read(file), Some(&ids(key_file))).unwrap());
        for k in theirs {
            assert_eq!(k, ours, "{file}");
        }
    }
}

/// Python's `cryptography` (OpenSSL AES-GCM), with its own walk of the
/// JSON document, decrypts every value and recomputes the MAC: the same
/// values and MAC as driftless.
#[test]
fn python_cryptography_decrypts_the_values_and_recomputes_the_mac() {
    let script = r#"
import base64, hashlib, json, re, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
doc = json.loads(open(sys.argv[1]).read())
key = bytes.fromhex(sys.argv[2])
meta = doc.pop('sops')
ENC = re.compile(r'^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]')
def dec(v, aad):
    m = ENC.match(v)
    d, iv, tag = (base64.b64decode(m.group(i)) for i in (1, 2, 3))
    return AESGCM(key).decrypt(iv, d + tag, aad.encode()).decode()
h = hashlib.sha512()
out = {}
def walk(node, keys, shown):
    if isinstance(node, dict):
        for k, v in node.items():
            walk(v, keys + [k], (shown + '.' if shown else '') + k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, keys, '%s[%d]' % (shown, i))
    elif node is None:
        pass
    else:
        text = '' if node == '' else dec(node, ':'.join(keys) + ':')
        h.update(text.encode())
        out[shown] = hashlib.sha256(text.encode()).hexdigest()
walk(doc, [], '')
mac = dec(meta['mac'], meta['lastmodified'])
assert mac == h.hexdigest().upper(), 'MAC mismatch'
print(json.dumps({'values': out, 'mac': mac}))
"#;
    let file = "getsops/example.json";
    let identities = ids("getsops/age/keys.txt");
    let key = sops::open_data_key(file, &read(file), Some(&identities)).unwrap();
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir().join(file))
        .arg(hex::encode(key))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = sops::decrypt(file, &read(file), Some(&identities)).unwrap();
    assert_eq!(theirs["mac"], ours.mac.as_str());
    let values = theirs["values"].as_object().unwrap();
    assert_eq!(values.len(), ours.leaves.len());
    for leaf in &ours.leaves {
        assert_eq!(
            values[&leaf.path],
            sha(leaf.text.as_bytes()).as_str(),
            "{}",
            leaf.path
        );
    }
}

/// A SOPS YAML file as `sops encrypt` writes it, made by an independent
/// encryptor (Python `cryptography` AES-GCM and Go's `age` CLI): string
/// leaves of `doc` encrypted unless a key ends in `_unencrypted`, the MAC
/// over every leaf, the data key armored for `recipient`.
pub fn encrypt_yaml(doc: &serde_json::Value, recipient: &str) -> String {
    let script = r#"
import base64, datetime, hashlib, json, os, subprocess, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
doc, recipient = json.loads(sys.argv[1]), sys.argv[2]
key = os.urandom(32)
h = hashlib.sha512()
b = lambda x: base64.b64encode(x).decode()
def enc(text, aad):
    iv = os.urandom(32)
    ct = AESGCM(key).encrypt(iv, text.encode(), aad.encode())
    return 'ENC[AES256_GCM,data:%s,iv:%s,tag:%s,type:str]' % (b(ct[:-16]), b(iv), b(ct[-16:]))
def walk(node, keys):
    if isinstance(node, dict):
        return {k: walk(v, keys + [k]) for k, v in node.items()}
    if isinstance(node, list):
        return [walk(v, keys) for v in node]
    h.update(node.encode())
    if any(k.endswith('_unencrypted') for k in keys):
        return node
    return enc(node, ':'.join(keys) + ':')
body = walk(doc, [])
armored = subprocess.run(['age', '-a', '-r', recipient], input=key, capture_output=True, check=True).stdout.decode()
now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
body['sops'] = {'age': [{'recipient': recipient, 'enc': armored}], 'lastmodified': now,
                'mac': enc(h.hexdigest().upper(), now), 'unencrypted_suffix': '_unencrypted', 'version': '3.9.0'}
def emit(node, indent):
    out = ''
    for k, v in node.items():
        if isinstance(v, dict):
            out += '%s%s:\n%s' % (indent, k, emit(v, indent + '    '))
        elif isinstance(v, list):
            out += '%s%s:\n' % (indent, k)
            for item in v:
                if not isinstance(item, dict):
                    out += '%s    - %s\n' % (indent, json.dumps(item))
                    continue
                lines = emit(item, indent + '      ').splitlines(True)
                out += indent + '    - ' + lines[0].lstrip() + ''.join(lines[1:])
        else:
            out += '%s%s: %s\n' % (indent, k, json.dumps(v))
    return out
sys.stdout.write(emit(body, ''))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &doc.to_string(), recipient])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A new age identity from `age-keygen`, written to `dir/age.key` (where
/// the daemon looks in its secrets directory); returns the public key.
pub fn age_keygen(dir: &std::path::Path) -> String {
    let key = dir.join(sops::IDENTITY_FILE_NAME);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen runs (apt install age)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// What the independent encryptor writes, driftless reads.
#[test]
fn a_file_from_an_independent_encryptor_decrypts() {
    let keys = tempfile::tempdir().unwrap();
    let recipient = age_keygen(keys.path());
    let doc = serde_json::json!({"db": {"password": "pa55/word~x", "hosts": ["db-1.internal", "db-2.internal"], "user_unencrypted": "app"}});
    let text = encrypt_yaml(&doc, &recipient);
    let identities = ids_at(&keys.path().join(sops::IDENTITY_FILE_NAME));
    let d = sops::decrypt("x.sops.yaml", text.as_bytes(), Some(&identities)).unwrap();
    let got: Vec<(&str, &str, bool)> = d
        .leaves
        .iter()
        .map(|l| (l.path.as_str(), l.text.as_str(), l.encrypted))
        .collect();
    assert_eq!(
        got,
        // In document order (the json! map sorts its keys).
        [
            ("db.hosts[0]", "db-1.internal", true),
            ("db.hosts[1]", "db-2.internal", true),
            ("db.password", "pa55/word~x", true),
            ("db.user_unencrypted", "app", false),
        ]
    );
}

fn ids_at(path: &std::path::Path) -> Identities {
    Identities::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// One live SOPS test's Compose project and environment, a secrets
/// directory holding a new age identity, and a state directory.
struct Live {
    project: String,
    env: String,
    recipient: String,
    secrets: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Live {
    fn new(test: &str) -> Live {
        let project = crate::docker_support::project_name(test);
        let env = format!("e{}", project.trim_start_matches("dlt-").replace('_', "-"));
        let secrets = tempfile::tempdir().unwrap();
        let recipient = age_keygen(secrets.path());
        Live {
            project,
            env,
            recipient,
            secrets,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// driftless.yaml with the environment on the local engine.
    fn manifest(&self) -> String {
        let env = &self.env;
        format!(
            "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n"
        )
    }

    fn secrets_arg(&self) -> String {
        self.secrets.path().to_str().unwrap().to_owned()
    }

    /// `reconcile --dry-run` of the environment of `repo`, with the
    /// identity.
    fn dry_run(&self, repo: &str) -> Vec<String> {
        [
            "reconcile",
            "--env",
            &self.env,
            "--dry-run",
            "--state-dir",
            self.state.path().to_str().unwrap(),
            "--secrets-dir",
            &self.secrets_arg(),
            "--repo",
            repo,
            "--rev",
            "main",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Every file of the state directory, by path.
    fn state_files(&self) -> Vec<(String, String)> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(self.state.path()).unwrap().flatten() {
            if entry.path().is_file() {
                let bytes = std::fs::read(entry.path()).unwrap();
                files.push((
                    entry.path().display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
        files
    }
}

/// `text` with one byte of the ciphertext that follows `marker` changed.
fn tampered(text: &str, marker: &str) -> String {
    let at = text.find(marker).unwrap() + marker.len() + 1;
    let mut bytes = text.to_owned().into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A SOPS value in a Compose environment variable reaches the container in
/// clear, and is masked in `render`, in the dry-run diff, in reconcile
/// output, in history and in the state files; a tampered file stops the
/// reconcile naming the file, nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sops_value_in_a_compose_env_var_is_deployed_and_masked_everywhere() {
    use crate::daemon_support::{Bare, cli};
    use crate::docker_support::{BUSYBOX, Cleanup, engine};
    const SECRET: &str = "Sops/Pw~9x+Q=LEAKME";
    let Some(engine) = engine().await else {
        return;
    };
    let docker = engine.docker();
    let live = Live::new("sops-env");
    let (project, env) = (&live.project, &live.env);
    let _cleanup = Cleanup::new(&[project]);
    let sops_file = encrypt_yaml(
        &serde_json::json!({"db": {"password": SECRET, "user_unencrypted": "app"}}),
        &live.recipient,
    );
    let manifest = live.manifest();
    let stack = |extra: &str| {
        format!(
            "{{% set db = sops('secrets/db.sops.yaml').db %}}name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    environment:\n      DB_PASSWORD: \"{{{{ db.password }}}}\"\n      DB_URL: postgres://{{{{ db.user_unencrypted }}}}:{{{{ db.password | urlencode }}}}@db/app\n{extra}"
        )
    };
    let files = |sops_text: &str, extra: &str| {
        vec![
            ("driftless.yaml", manifest.clone()),
            ("environments/values.yaml", "{}\n".to_owned()),
            ("secrets/db.sops.yaml", sops_text.to_owned()),
            ("compose/stack.yaml.j2", stack(extra)),
        ]
    };
    let bare = Bare::new(&files(&sops_file, ""));
    let repo = bare.path().to_str().unwrap().to_owned();
    let secrets_arg = live.secrets_arg();
    let state_arg = live.state.path().to_str().unwrap().to_owned();
    let mut outputs: Vec<(String, String)> = Vec::new();
    let repo_args = ["--repo", &repo, "--rev", "main"];

    // Without an identity, render checks the repo with placeholders.
    let mut render = vec!["render", "--env", &env];
    render.extend(repo_args);
    let (code, out, err) = cli(&render);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("DB_PASSWORD: \"<sops:secrets/db.sops.yaml#db.password>\""),
        "{out}"
    );
    assert!(err.contains("no age identity on this host"), "{err}");
    // With one, render decrypts and shows the values masked, and says
    // which values came from SOPS.
    render.extend(["--secrets-dir", &secrets_arg]);
    let (code, out, err) = cli(&render);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("DB_PASSWORD: \"******\""), "{out}");
    assert!(
        out.contains("DB_URL: postgres://app:******@db/app"),
        "{out}"
    );
    assert!(
        err.contains(
            "note: values from SOPS file secrets/db.sops.yaml (decrypted, shown masked): db.password"
        ),
        "{err}"
    );
    outputs.push(("render".into(), out + &err));

    let dry = live.dry_run(&repo);
    let dry = strs(&dry);
    let (code, out, err) = cli(&dry);
    assert_eq!(code, 0, "{err}");
    outputs.push(("dry-run before the deploy".into(), out + &err));
    let apply: Vec<&str> = dry.iter().copied().filter(|a| *a != "--dry-run").collect();
    let (code, out, err) = cli(&apply);
    assert_eq!(code, 0, "{out}{err}");
    outputs.push(("reconcile".into(), out + &err));

    // The container got the clear value.
    let list = containers(docker, project).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0].id.clone().unwrap();
    let inspect = docker
        .inspect_container(
            &id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let container_env = inspect.config.unwrap().env.unwrap_or_default();
    assert!(
        container_env.contains(&format!("DB_PASSWORD={SECRET}")),
        "{container_env:?}"
    );

    // A change: the dry-run diff shows the new variable, masked.
    bare.commit(
        &files(&sops_file, "      NEW: \"{{ db.password }}-new\"\n"),
        "v2",
    );
    let (code, out, err) = cli(&dry);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("NEW"), "{out}");
    outputs.push(("dry-run of a change".into(), out + &err));

    // A tampered file (one byte of the password's ciphertext): refused
    // naming the file and the value; the container is left as it was.
    bare.commit(
        &files(
            &tampered(&sops_file, "password: \"ENC[AES256_GCM,data:"),
            "",
        ),
        "tampered",
    );
    let (code, out, err) = cli(&apply);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("SOPS file `secrets/db.sops.yaml`") && err.contains("db.password"),
        "{err}"
    );
    outputs.push(("tampered reconcile".into(), out + &err));
    let after = containers(docker, project).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id.as_deref(), Some(id.as_str()), "nothing applied");

    // History, from the state the reconciles recorded, and the state files.
    let (code, out, err) = cli(&[
        "history",
        "--env",
        env,
        "--output",
        "json",
        "--state-dir",
        &state_arg,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("tampered") || out.contains(env.as_str()),
        "{out}"
    );
    outputs.push(("history".into(), out + &err));
    outputs.extend(live.state_files());

    let url = SECRET
        .replace('/', "%2F")
        .replace('~', "%7E")
        .replace('+', "%2B")
        .replace('=', "%3D");
    for (what, text) in &outputs {
        assert!(!text.contains("LEAKME"), "{what}: {text}");
        assert!(!text.contains(&url), "{what}: {text}");
    }
}

/// The containers (running or not) of Compose project `project`.
async fn containers(
    docker: &bollard::Docker,
    project: &str,
) -> Vec<bollard::models::ContainerSummary> {
    let filter = std::collections::HashMap::from([(
        "label",
        vec![format!("com.docker.compose.project={project}")],
    )]);
    docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap()
}

/// A renderer over `files` (a work-tree snapshot) with the secrets
/// directory `dir`, for environment `dev` and an empty context.
fn renderer(
    files: &[(&str, String)],
    dir: Option<&std::path::Path>,
    mode: driftless::render::SecretMode,
) -> driftless::render::Renderer {
    let snapshot = driftless::source::Snapshot::from_files(
        driftless::source::Revision::WorkTree {
            head: None,
            dirty: true,
        },
        files
            .iter()
            .map(|(p, c)| ((*p).to_owned(), c.as_bytes().to_vec())),
    );
    let secrets = driftless::secrets::SecretSource {
        dir: dir.map(std::path::Path::to_owned),
        from_env: false,
    };
    driftless::render::Renderer::with_context(snapshot, "dev", serde_json::json!({}), secrets, mode)
}

/// Text a template derives from a SOPS value (filters, concatenation) is
/// masked as the value is; plain values of the file are not secrets.
#[test]
fn text_derived_from_a_sops_value_is_masked_like_a_secret() {
    use driftless::render::SecretMode;
    let keys = tempfile::tempdir().unwrap();
    let recipient = age_keygen(keys.path());
    let secret = "Derived-Sops-Secret-77";
    let file = encrypt_yaml(
        &serde_json::json!({"api": {"token": secret, "host_unencrypted": "api.internal"}}),
        &recipient,
    );
    let template = "{% set api = sops('secrets/api.sops.yaml').api %}\
        host: {{ api.host_unencrypted }}\n\
        upper: {{ api.token | upper }}\n\
        b64: {{ api.token | b64encode }}\n\
        joined: {{ 'Bearer ' ~ api.token ~ '!' }}\n";
    let r = renderer(
        &[
            ("secrets/api.sops.yaml", file),
            ("out.yaml.j2", template.to_owned()),
        ],
        Some(keys.path()),
        SecretMode::Require,
    );
    let out = r.render("out.yaml").unwrap();
    let text = out.text().unwrap();
    assert!(
        text.contains(&secret.to_uppercase()),
        "the real output: {text}"
    );
    let masked = r.masker().mask(text).into_owned();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    for form in [secret.to_owned(), secret.to_uppercase(), b64] {
        assert!(!masked.contains(&form), "{form} in {masked}");
    }
    assert!(
        masked.starts_with("host: api.internal\nupper: ******\nb64: ******\njoined: Bearer ******"),
        "{masked}"
    );
    assert_eq!(
        r.sops_values(),
        [(
            "secrets/api.sops.yaml".to_owned(),
            vec!["api.token".to_owned()],
            true
        )]
    );
}

/// `reconcile` (Require) without an identity fails naming the file and its
/// recipient; a value too short to mask is refused naming it.
#[test]
fn without_a_key_or_with_a_short_value_the_render_fails_naming_the_file() {
    use driftless::render::SecretMode;
    let keys = tempfile::tempdir().unwrap();
    let recipient = age_keygen(keys.path());
    let file = encrypt_yaml(
        &serde_json::json!({"pin": "123", "token": "long-enough-token"}),
        &recipient,
    );
    let files = [
        ("s.sops.yaml", file),
        ("a.j2", "{{ sops('s.sops.yaml').token }}\n".to_owned()),
    ];
    let err = renderer(&files, None, SecretMode::Require)
        .render("a")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SOPS file `s.sops.yaml`")
            && err.contains(&recipient)
            && err.contains("no age identity"),
        "{err}"
    );
    let err = renderer(&files, Some(keys.path()), SecretMode::Require)
        .render("a")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("SOPS file `s.sops.yaml`")
            && err.contains("`pin`")
            && err.contains("shorter than 4"),
        "{err}"
    );
}

/// `decrypt:` in driftless.yaml merges a SOPS file's top-level keys into
/// the environment's values: templates read `db.password` as a value, it
/// renders masked, and a key the values file has too is an error naming
/// the SOPS file.
#[test]
fn decrypt_merges_a_sops_file_into_the_values_masked() {
    use crate::support::RepoBuilder;
    let keys = tempfile::tempdir().unwrap();
    let recipient = age_keygen(keys.path());
    let secret = "Merged-Values-Secret-42";
    let file = encrypt_yaml(
        &serde_json::json!({"db": {"password": secret, "user_unencrypted": "app"}}),
        &recipient,
    );
    let manifest = "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n    decrypt: [\"environments/dev.*.sops.yaml\"]\n";
    let stack = "name: merged\nservices:\n  app:\n    image: busybox:1\n    environment:\n      DB: \"postgres://{{ db.user_unencrypted }}:{{ db.password }}@db/{{ app_name }}\"\n";
    let repo = RepoBuilder::new()
        .file("driftless.yaml", manifest)
        .file("environments/dev.yaml", "app_name: shop\n")
        .file("environments/dev.db.sops.yaml", &file)
        .file("compose/app.yaml.j2", stack);
    let dir = keys.path().to_str().unwrap();
    let run = repo.driftless(&["render", "--env", "dev", "--secrets-dir", dir]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("DB: \"postgres://app:******@db/shop\""),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(secret) && !run.stderr.contains(secret));
    assert!(
        run.stderr
            .contains("values from SOPS file environments/dev.db.sops.yaml"),
        "{}",
        run.stderr
    );

    let clash = RepoBuilder::new()
        .file("driftless.yaml", manifest)
        .file("environments/dev.yaml", "db: {}\n")
        .file("environments/dev.db.sops.yaml", &file)
        .file("compose/app.yaml.j2", stack);
    let run = clash.driftless(&["render", "--env", "dev", "--secrets-dir", dir]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "SOPS file `environments/dev.db.sops.yaml` defines top-level key `db`: the values file defines it too"
        ),
        "{}",
        run.stderr
    );
}

/// `DRIFTLESS_AGE_IDENTITY_FILE` names the identity file outside the
/// secrets directory; an unreadable one fails the render naming it.
#[test]
fn the_identity_file_variable_is_read_and_a_bad_one_is_named() {
    use crate::support::RepoBuilder;
    let keys = tempfile::tempdir().unwrap();
    let recipient = age_keygen(keys.path());
    let key_file = keys.path().join(sops::IDENTITY_FILE_NAME);
    let file = encrypt_yaml(
        &serde_json::json!({"token": "Identity-Var-Token-9"}),
        &recipient,
    );
    let repo = RepoBuilder::minimal()
        .file("s.sops.yaml", &file)
        .file("compose/app.yaml.j2", "name: idvar\nservices:\n  app:\n    image: busybox:1\n    environment:\n      T: \"{{ sops('s.sops.yaml').token }}\"\n");
    let render = |identity: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
            .args(["render", "--env", "dev", "--repo"])
            .arg(repo.path())
            .env_remove("DRIFTLESS_SECRETS_DIR")
            .env(sops::IDENTITY_FILE_ENV, identity)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = render(&key_file);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("T: \"******\""), "{out}");
    assert!(err.contains("(decrypted, shown masked): token"), "{err}");
    let missing = keys.path().join("nope.key");
    let (code, _, err) = render(&missing);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("DRIFTLESS_AGE_IDENTITY_FILE") && err.contains("nope.key"),
        "{err}"
    );
}

/// Reads a file `sops::emit` wrote with Python's own readers (PyYAML,
/// `json`, `configparser`; dotenv by sops' rules) into its leaves:
/// path (map keys joined by `:`, `[i]` for list items) → (Python type,
/// the text sops hashes for it). `None` when the document has sops
/// metadata left in it.
fn read_back(format: sops::Format, text: &str) -> Option<BTreeMap<String, (String, String)>> {
    let script = r#"
import configparser, json, sys, yaml
fmt, text = sys.argv[1], sys.argv[2]
if fmt == 'Yaml':
    doc = yaml.safe_load(text)
elif fmt == 'Json':
    doc = json.loads(text)
elif fmt == 'Dotenv':
    doc = {}
    for line in text.splitlines():
        k, v = line.split('=', 1)
        doc[k] = v.replace('\\n', '\n')
else:
    p = configparser.ConfigParser(interpolation=None)
    p.optionxform = str
    p.read_string(text)
    doc = {s: dict(p.items(s, raw=True)) for s in p.sections()}
    doc = {s: {k: v for k, v in d.items() if k not in p.defaults() or s == 'DEFAULT'} for s, d in doc.items()}
meta = isinstance(doc, dict) and ('sops' in doc or any(k.startswith('sops_') for k in doc))
out = {}
def walk(node, path):
    if isinstance(node, dict):
        for k, v in node.items():
            walk(v, path + ':' + k if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, '%s[%d]' % (path, i))
    elif isinstance(node, float) and node.is_integer():
        out[path] = ['float', str(int(node))]  # Go's FormatFloat(f, 'f', -1)
    elif node is not None:
        out[path] = [type(node).__name__, str(node)]
walk(doc, '')
print(json.dumps(None if meta else out))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &format!("{format:?}"), text])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every corpus file in a named store (YAML, JSON, dotenv, INI), written
/// back as `sops decrypt` prints it, reads with Python's own readers to
/// the expected plaintext (by SHA-256), with its types, its plain values,
/// and no sops metadata left.
#[test]
fn every_corpus_file_is_written_back_in_its_own_store_with_the_expected_values() {
    let mut checked = BTreeSet::new();
    for (file, (key_file, rows)) in &expected() {
        if key_file == "-" || key_file.ends_with("age-pq.txt") || file.ends_with(".txt") {
            continue;
        }
        if file == "kustomize-controller/inside/secret.yaml" {
            continue; // a binary-store document inside a plain file
        }
        let bytes = read(file);
        let decrypted = sops::decrypt(file, &bytes, Some(&ids(key_file))).unwrap();
        let format = sops::Format::of(file, &bytes);
        let written = sops::emit(&decrypted, format, &mut |_| None);
        let text = String::from_utf8(written).unwrap();
        let leaves = read_back(format, &text)
            .unwrap_or_else(|| panic!("{file}: sops metadata left in\n{text}"));
        for leaf in &decrypted.leaves {
            if leaf.text.is_empty() && format == sops::Format::Ini {
                continue;
            }
            let path = leaf.path.replace('.', ":");
            let (_, got) = leaves
                .get(&path)
                .unwrap_or_else(|| panic!("{file}: no {path} in\n{text}"));
            if !leaf.encrypted {
                assert_eq!(got, &leaf.text, "{file} {path}");
            }
        }
        for (path, kind, want) in rows {
            let python_type = match kind.as_str() {
                "str" | "bytes" | "time" => "str",
                "int" => "int",
                "float" => "float",
                "bool" => "bool",
                _ => continue,
            };
            let (ty, got) = leaves
                .get(path)
                .unwrap_or_else(|| panic!("{file}: no {path} in\n{text}"));
            assert_eq!(&sha(got.as_bytes()), want, "{file} {path}");
            assert_eq!(ty, python_type, "{file} {path}");
            checked.insert(format!("{format:?}"));
        }
    }
    assert_eq!(checked.len(), 4, "every store checked: {checked:?}");
}

/// A SOPS dotenv file as `sops encrypt` writes it, by the independent
/// encryptor of [`encrypt_yaml`] (Python `cryptography`, Go's `age`):
/// values encrypted (AAD `KEY:`) unless the key ends in `_unencrypted`,
/// the metadata as flat `sops_*` keys.
pub fn encrypt_dotenv(pairs: &[(&str, &str)], recipient: &str) -> String {
    let script = r#"
import base64, datetime, hashlib, json, os, subprocess, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
pairs, recipient = json.loads(sys.argv[1]), sys.argv[2]
key = os.urandom(32)
h = hashlib.sha512()
b = lambda x: base64.b64encode(x).decode()
def enc(text, aad):
    iv = os.urandom(32)
    ct = AESGCM(key).encrypt(iv, text.encode(), aad.encode())
    return 'ENC[AES256_GCM,data:%s,iv:%s,tag:%s,type:str]' % (b(ct[:-16]), b(iv), b(ct[-16:]))
out = ''
for k, v in pairs:
    h.update(v.encode())
    out += '%s=%s\n' % (k, v if k.endswith('_unencrypted') else enc(v, k + ':'))
armored = subprocess.run(['age', '-a', '-r', recipient], input=key, capture_output=True, check=True).stdout.decode()
now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
out += 'sops_age__list_0__map_enc=%s\n' % armored.replace('\n', '\\n')
out += 'sops_age__list_0__map_recipient=%s\n' % recipient
out += 'sops_lastmodified=%s\n' % now
out += 'sops_mac=%s\n' % enc(h.hexdigest().upper(), now)
out += 'sops_unencrypted_suffix=_unencrypted\nsops_version=3.9.0\n'
sys.stdout.write(out)
"#;
    let pairs = serde_json::to_string(pairs).unwrap();
    let out = Command::new("python3")
        .args(["-c", script, &pairs, recipient])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// SOPS files a Compose stack uses as files (`env_file`, a `configs`
/// file) reach the engine decrypted, in their own format; `render` shows
/// them with their values masked, as does the dry-run diff; without an
/// identity `render` shows placeholders; a tampered file stops the
/// reconcile naming it, nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sops_files_used_by_compose_are_deployed_decrypted_and_masked() {
    use crate::daemon_support::{Bare, cli};
    use crate::docker_support::{BUSYBOX, Cleanup, engine};
    const ENV_SECRET: &str = "Env/Pw~9x+Q=LEAKME";
    const CONF_SECRET: &str = "Conf/Pw~7y+R=LEAKME";
    let Some(engine) = engine().await else {
        return;
    };
    let live = Live::new("sops-files");
    let (project, env) = (&live.project, &live.env);
    let _cleanup = Cleanup::new(&[project]);
    let env_file = encrypt_dotenv(
        &[
            ("API_TOKEN", ENV_SECRET),
            ("MODE_unencrypted", "production"),
        ],
        &live.recipient,
    );
    let conf_file = encrypt_yaml(
        &serde_json::json!({"db": {"password": CONF_SECRET, "user_unencrypted": "app"}}),
        &live.recipient,
    );
    let manifest = live.manifest();
    let stack = |extra: &str| {
        format!(
            "name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    env_file: [../config/app.sops.env]\n    configs:\n      - source: appconf\n        target: /etc/app.yaml\n{extra}configs:\n  appconf:\n    file: ../config/app.sops.yaml\n"
        )
    };
    let files = |env_text: &str, extra: &str| {
        vec![
            ("driftless.yaml", manifest.clone()),
            ("environments/values.yaml", "{}\n".to_owned()),
            ("config/app.sops.env", env_text.to_owned()),
            ("config/app.sops.yaml", conf_file.clone()),
            ("compose/stack.yaml", stack(extra)),
        ]
    };
    let bare = Bare::new(&files(&env_file, ""));
    let repo = bare.path().to_str().unwrap().to_owned();
    let secrets_arg = live.secrets_arg();
    let mut outputs: Vec<(String, String)> = Vec::new();
    let repo_args = ["--repo", &repo, "--rev", "main"];

    // Without an identity: the files' shape, their values as placeholders.
    let mut render = vec!["render", "--env", &env];
    render.extend(repo_args);
    let (code, out, err) = cli(&render);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("API_TOKEN=<sops:config/app.sops.env#API_TOKEN>"),
        "{out}"
    );
    assert!(
        out.contains("password: \"<sops:config/app.sops.yaml#db.password>\""),
        "{out}"
    );
    // With one: decrypted, in their own format, masked.
    render.extend(["--secrets-dir", &secrets_arg]);
    let (code, out, err) = cli(&render);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("API_TOKEN=******\nMODE_unencrypted=production\n"),
        "{out}"
    );
    assert!(
        out.contains("db:\n    password: ******\n    user_unencrypted: app\n"),
        "{out}"
    );
    assert!(
        !out.contains("ENC[AES256_GCM") && !out.contains("sops_"),
        "{out}"
    );
    assert!(
        err.contains(
            "note: values from SOPS file config/app.sops.env (decrypted, shown masked): API_TOKEN"
        ),
        "{err}"
    );
    outputs.push(("render".into(), out + &err));

    let dry = live.dry_run(&repo);
    let dry = strs(&dry);
    let (code, out, err) = cli(&dry);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("API_TOKEN"),
        "the diff shows the variable: {out}"
    );
    outputs.push(("dry-run before the deploy".into(), out + &err));
    let apply: Vec<&str> = dry.iter().copied().filter(|a| *a != "--dry-run").collect();
    let (code, out, err) = cli(&apply);
    assert_eq!(code, 0, "{out}{err}");
    outputs.push(("reconcile".into(), out + &err));

    // The container got the plaintext: the variable and the config file.
    let docker = engine.docker();
    let list = containers(docker, project).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0].id.clone().unwrap();
    let inspect = docker
        .inspect_container(
            &id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let container_env = inspect.config.unwrap().env.unwrap_or_default();
    assert!(
        container_env.contains(&format!("API_TOKEN={ENV_SECRET}"))
            && container_env.contains(&"MODE_unencrypted=production".to_owned()),
        "{container_env:?}"
    );
    let name = format!("{project}-app-1");
    let conf = crate::compose_backend::read_file(&engine, &name, "/etc/app.yaml").await;
    assert_eq!(
        conf,
        format!("db:\n    password: {CONF_SECRET}\n    user_unencrypted: app\n")
    );

    // A change: the dry-run diff shows it, the values masked.
    bare.commit(&files(&env_file, "    environment: {EXTRA: \"1\"}\n"), "v2");
    let (code, out, err) = cli(&dry);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("EXTRA"), "{out}");
    outputs.push(("dry-run of a change".into(), out + &err));

    // A tampered env file (one byte of the token's ciphertext): refused
    // naming the file, the container left as it was.
    bare.commit(
        &files(&tampered(&env_file, "API_TOKEN=ENC[AES256_GCM,data:"), ""),
        "tampered",
    );
    let (code, out, err) = cli(&apply);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("SOPS file `config/app.sops.env`") && err.contains("API_TOKEN"),
        "{err}"
    );
    outputs.push(("tampered reconcile".into(), out + &err));
    let after = containers(docker, project).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id.as_deref(), Some(id.as_str()), "nothing applied");

    outputs.extend(live.state_files());
    for (what, text) in &outputs {
        assert!(!text.contains("LEAKME"), "{what}: {text}");
    }
}

/// Only files named `*.sops.<ext>` render decrypted: the same encrypted
/// dotenv under another name, and `.sops.yaml` (sops' creation rules),
/// stay byte for byte; a decrypted file for other recipients, or read
/// without an identity where one is required, fails naming the file.
#[test]
fn files_named_sops_render_decrypted_and_others_verbatim() {
    use driftless::render::SecretMode;
    let env = String::from_utf8(read("kustomize-controller/component/env.env")).unwrap();
    let rules = String::from_utf8(read("kustomize-controller/.sops.yaml")).unwrap();
    let files = [
        ("app.sops.env", env.clone()),
        ("app.env", env.clone()),
        (".sops.yaml", rules.clone()),
    ];
    let keys = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir().join("kustomize-controller/keys/age.txt"),
        keys.path().join(sops::IDENTITY_FILE_NAME),
    )
    .unwrap();
    let r = renderer(&files, Some(keys.path()), SecretMode::Require);
    let out = r.render("app.sops.env").unwrap();
    assert_eq!(&*out.content, b"key=value\n");
    assert_eq!(r.masker().mask("key=value"), "key=******");
    assert_eq!(&*r.render("app.env").unwrap().content, env.as_bytes());
    assert_eq!(&*r.render(".sops.yaml").unwrap().content, rules.as_bytes());

    // Another host's key; no key at all where one is required.
    let other = tempfile::tempdir().unwrap();
    let theirs = age_keygen(other.path());
    for (dir, why) in [
        (Some(other.path()), theirs.as_str()),
        (None, "no age identity"),
    ] {
        let err = renderer(&files, dir, SecretMode::Require)
            .render("app.sops.env")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("app.sops.env")
                && err.contains("age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29")
                && err.contains(why),
            "{err}"
        );
    }
    // Without one in placeholder mode (render, validate): placeholders.
    let out = renderer(&files, None, SecretMode::Placeholder)
        .render("app.sops.env")
        .unwrap();
    assert_eq!(&*out.content, b"key=<sops:app.sops.env#key>\n");
}
