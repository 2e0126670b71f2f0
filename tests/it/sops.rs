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
