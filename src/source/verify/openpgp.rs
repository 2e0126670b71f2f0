//! OpenPGP signatures (git's default `gpg.format=openpgp`, what `git commit
//! -S` and `git tag -s` make with GnuPG), checked with rpgp (the `pgp`
//! crate) against armored public keys from the daemon's configuration.
//!
//! A key file is what `gpg --armor --export KEY` writes (several keys per
//! file, or several armored blocks, are fine). Each key's self-signatures
//! are verified when the file is read; third-party certifications are
//! ignored (they say nothing about whether the daemon trusts the key). From
//! the newest valid self-signature come the key's expiry; a valid
//! revocation signature revokes it. A subkey signs only when its newest
//! valid binding signature allows signing and carries a valid back
//! signature (as GnuPG requires).
//!
//! A signature is accepted when it verifies with a listed key (found by the
//! issuer fingerprint or key id the signature names), and that key is
//! neither revoked nor expired, and the signature itself is not expired,
//! **both at the signature's creation time and now**. Checking only the
//! creation time would let a key that expired last year keep signing: the
//! creation time is whatever the signer's clock says. Flux checks the
//! current time only; this is that check plus the one git does.

use std::fmt;
use std::path::{Path, PathBuf};

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::{RevocationCode, Signature, SignatureType};
use pgp::types::{KeyDetails, Tag};

use super::{Object, ParseError, Refusal, Signer, show_time};

/// The armored public keys signatures are checked against.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    certs: Vec<Cert>,
}

#[derive(Debug, Clone)]
struct Cert {
    key: SignedPublicKey,
    /// The primary user id (else the first valid one), for messages.
    user: String,
    /// Why the whole key is revoked, if it is.
    revoked: Option<String>,
    /// The primary key first (it may always sign), then signing subkeys.
    signing: Vec<SigningKey>,
}

#[derive(Debug, Clone)]
struct SigningKey {
    /// `None`: the primary key; else the index in `public_subkeys`.
    subkey: Option<usize>,
    fingerprint: String,
    key_id: String,
    /// Unix seconds.
    created: i64,
    expires: Option<i64>,
    revoked: Option<String>,
}

impl Keyring {
    /// Reads every file in `paths` (armored public keys).
    pub fn load(paths: &[PathBuf]) -> Result<Keyring, ParseError> {
        let mut certs = Vec::new();
        for path in paths {
            certs.extend(load_file(path)?);
        }
        Ok(Keyring { certs })
    }

    /// Parses armored public keys in `text` (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Keyring, ParseError> {
        Ok(Keyring {
            certs: parse_certs(text, origin)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// How many keys, for messages.
    pub fn len(&self) -> usize {
        self.certs.len()
    }
}

fn load_file(path: &Path) -> Result<Vec<Cert>, ParseError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ParseError {
        origin: origin.clone(),
        line: 0,
        why: format!("cannot read: {e}"),
    })?;
    parse_certs(&text, &origin)
}

const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

fn parse_certs(text: &str, origin: &str) -> Result<Vec<Cert>, ParseError> {
    let fail = |line: usize, why: String| ParseError {
        origin: origin.to_owned(),
        line,
        why,
    };
    let starts: Vec<usize> = text.match_indices(BEGIN).map(|(i, _)| i).collect();
    if starts.is_empty() {
        return Err(fail(
            0,
            format!("no `{BEGIN}` (export keys with `gpg --armor --export KEY`)"),
        ));
    }
    let mut certs = Vec::new();
    for (n, start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        let line = text[..*start].lines().count() + 1;
        let (keys, _) = SignedPublicKey::from_string_many(&text[*start..end])
            .map_err(|e| fail(line, format!("armored key block does not parse: {e}")))?;
        for key in keys {
            let key = key.map_err(|e| fail(line, format!("public key does not parse: {e}")))?;
            certs.push(cert(key).map_err(|why| fail(line, why))?);
        }
    }
    Ok(certs)
}

fn secs(t: pgp::types::Timestamp) -> i64 {
    i64::from(t.as_secs())
}

/// Creation time plus a key-expiration subpacket (0: never).
fn expiry(created: i64, sig: &Signature) -> Option<i64> {
    sig.key_expiration_time()
        .map(|d| i64::from(d.as_secs()))
        .filter(|d| *d > 0)
        .map(|d| created + d)
}

fn reason(sig: &Signature) -> String {
    let text = sig
        .revocation_reason_string()
        .map(|b| String::from_utf8_lossy(b).trim().to_owned())
        .filter(|s| !s.is_empty());
    let code = sig.revocation_reason_code().map(|c| match c {
        RevocationCode::NoReason => "no reason given".to_owned(),
        RevocationCode::KeySuperseded => "superseded".to_owned(),
        RevocationCode::KeyCompromised => "compromised".to_owned(),
        RevocationCode::KeyRetired => "retired".to_owned(),
        other => format!("{other:?}"),
    });
    match (code, text) {
        (Some(code), Some(text)) => format!("{code}: {text}"),
        (Some(code), None) => code,
        (None, Some(text)) => text,
        (None, None) => "no reason given".to_owned(),
    }
}

fn newest<'a>(sigs: impl Iterator<Item = &'a Signature>) -> Option<&'a Signature> {
    sigs.max_by_key(|s| s.created().map(secs).unwrap_or(i64::MIN))
}

/// Checks a key's self-signatures and reads its signing keys.
fn cert(key: SignedPublicKey) -> Result<Cert, String> {
    let primary = &key.primary_key;
    let fingerprint = format!("{:X}", primary.fingerprint());
    let created = secs(primary.created_at());

    let mut user = None;
    let mut self_sigs: Vec<&Signature> = Vec::new();
    for u in &key.details.users {
        let good: Vec<&Signature> = u
            .signatures
            .iter()
            .filter(|s| s.typ() != Some(SignatureType::CertRevocation))
            .filter(|s| s.verify_certification(primary, Tag::UserId, &u.id).is_ok())
            .collect();
        if good.is_empty() {
            continue;
        }
        let id = String::from_utf8_lossy(u.id.id()).into_owned();
        if user.is_none() || good.iter().any(|s| s.is_primary()) {
            user = Some(id);
        }
        self_sigs.extend(good);
    }
    self_sigs.extend(
        key.details
            .direct_signatures
            .iter()
            .filter(|s| s.verify_key(primary).is_ok()),
    );
    let Some(newest_self) = newest(self_sigs.into_iter()) else {
        return Err(format!(
            "key {fingerprint} has no valid self-signature (a corrupted or stripped export)"
        ));
    };
    let revoked = key
        .details
        .revocation_signatures
        .iter()
        .find(|s| s.verify_key(primary).is_ok())
        .map(reason);

    let mut signing = vec![SigningKey {
        subkey: None,
        fingerprint: fingerprint.clone(),
        key_id: hex::encode_upper(primary.legacy_key_id()),
        created,
        expires: expiry(created, newest_self),
        revoked: None,
    }];
    for (i, sub) in key.public_subkeys.iter().enumerate() {
        let bound: Vec<&Signature> = sub
            .signatures
            .iter()
            .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
            .filter(|s| s.verify_subkey_binding(primary, &sub.key).is_ok())
            .collect();
        let Some(binding) = newest(bound.into_iter()) else {
            continue;
        };
        if !binding.key_flags().sign() {
            continue;
        }
        let backed = binding
            .embedded_signature()
            .is_some_and(|b| b.verify_primary_key_binding(&sub.key, primary).is_ok());
        if !backed {
            continue;
        }
        let sub_created = secs(sub.key.created_at());
        signing.push(SigningKey {
            subkey: Some(i),
            fingerprint: format!("{:X}", sub.key.fingerprint()),
            key_id: hex::encode_upper(sub.key.legacy_key_id()),
            created: sub_created,
            expires: expiry(sub_created, binding),
            revoked: sub
                .signatures
                .iter()
                .filter(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
                .find(|s| s.verify_subkey_binding(primary, &sub.key).is_ok())
                .map(reason),
        });
    }
    Ok(Cert {
        user: user.unwrap_or_else(|| format!("key {fingerprint}")),
        key,
        revoked,
        signing,
    })
}

/// The issuer a signature names, for messages: its fingerprint, else its
/// key id.
fn issuer(sig: &Signature) -> String {
    if let Some(fp) = sig.issuer_fingerprint().first() {
        return format!("{fp:X}");
    }
    match sig.issuer_key_id().first() {
        Some(id) => hex::encode_upper(id),
        None => "an unnamed key".to_owned(),
    }
}

struct Described<'a>(&'a Cert, &'a SigningKey);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1.subkey {
            None => write!(f, "{}", self.1.fingerprint),
            Some(_) => write!(
                f,
                "{} (subkey of {})",
                self.1.fingerprint, self.0.signing[0].fingerprint
            ),
        }
    }
}

/// Verifies the armored `signature` over `payload` (`object` says what was
/// signed, for messages) at `now` (Unix seconds).
pub(super) fn verify(
    object: Object,
    signature: &str,
    payload: &[u8],
    keys: &Keyring,
    now: i64,
) -> Result<Signer, Refusal> {
    let (sig, _) = DetachedSignature::from_string(signature)
        .map_err(|e| Refusal::Malformed(format!("OpenPGP signature: {e}")))?;
    let sig = sig.signature;
    if !matches!(sig.typ(), Some(SignatureType::Binary | SignatureType::Text)) {
        return Err(Refusal::Malformed(format!(
            "OpenPGP signature of type {:?}, not a document signature",
            sig.typ()
        )));
    }
    let fingerprints: Vec<String> = sig
        .issuer_fingerprint()
        .iter()
        .map(|f| format!("{f:X}"))
        .collect();
    let key_ids: Vec<String> = sig.issuer_key_id().iter().map(hex::encode_upper).collect();
    let candidates: Vec<(&Cert, &SigningKey)> = keys
        .certs
        .iter()
        .flat_map(|c| c.signing.iter().map(move |k| (c, k)))
        .filter(|(_, k)| fingerprints.contains(&k.fingerprint) || key_ids.contains(&k.key_id))
        .collect();
    let Some(&(cert, key)) = candidates.first() else {
        return Err(Refusal::UnknownOpenPgpKey {
            object,
            key: issuer(&sig),
        });
    };
    let described = Described(cert, key).to_string();
    let checked = match key.subkey {
        None => sig.verify(&cert.key.primary_key, payload),
        Some(i) => sig.verify(&cert.key.public_subkeys[i], payload),
    };
    checked.map_err(|e| Refusal::BadSignature {
        object,
        key: format!("{described} ({})", cert.user),
        why: e.to_string(),
    })?;
    let outside = |why: String| Refusal::OutsideValidity {
        signer: cert.user.clone(),
        key: described.clone(),
        why,
    };
    if let Some(why) = cert.revoked.as_ref().or(key.revoked.as_ref()) {
        return Err(outside(format!("revoked ({why})")));
    }
    let Some(made) = sig.created().map(secs) else {
        return Err(Refusal::Malformed(
            "OpenPGP signature without a creation time".to_owned(),
        ));
    };
    let sig_expires = sig
        .signature_expiration_time()
        .map(|d| i64::from(d.as_secs()))
        .filter(|d| *d > 0)
        .map(|d| made + d);
    for (at, what) in [(made, "the signature was made"), (now, "now is")] {
        if at < key.created {
            return Err(outside(format!(
                "not yet valid: created {}, {what} {}",
                show_time(key.created),
                show_time(at)
            )));
        }
        if let Some(expires) = key.expires
            && at >= expires
        {
            return Err(outside(format!(
                "expired: expired {}, {what} {}",
                show_time(expires),
                show_time(at)
            )));
        }
    }
    if let Some(expires) = sig_expires
        && now >= expires
    {
        return Err(Refusal::SignatureExpired {
            signer: cert.user.clone(),
            key: described,
            expired: show_time(expires),
        });
    }
    Ok(Signer {
        principals: cert.user.clone(),
        key: described,
    })
}
