//! The byte pipeline of a backup: plain stream → zstd → age → stored
//! object, with a SHA-256 and sizes taken on the way; and the way back
//! (stored object → checksum → decrypt → decompress) for verify and restore.
//!
//! Everything here is blocking `std::io`; the runner drives it on a
//! blocking thread fed by the async Docker streams.

use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::model::Compression;

/// How an object is encoded, as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Encoding {
    /// `zstd` or `none`.
    pub compression: String,
    /// Encrypted to age recipients.
    pub encrypted: bool,
}

/// Counts and hashes what goes through it.
pub struct Hashing<T> {
    inner: T,
    sha: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Hashing {
            inner,
            sha: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner value, the byte count and the lowercase hex SHA-256.
    pub fn finish(self) -> (T, u64, String) {
        (self.inner, self.bytes, hex::encode(self.sha.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

enum Encrypt<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Write for Encrypt<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encrypt::Plain(w) => w.write(buf),
            Encrypt::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encrypt::Plain(w) => w.flush(),
            Encrypt::Age(w) => w.flush(),
        }
    }
}

impl<W: Write> Encrypt<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Encrypt::Plain(w) => Ok(w),
            Encrypt::Age(w) => w.finish(),
        }
    }
}

enum Compress<W: Write> {
    Plain(W),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Write for Compress<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compress::Plain(w) => w.write(buf),
            Compress::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compress::Plain(w) => w.flush(),
            Compress::Zstd(w) => w.flush(),
        }
    }
}

/// Sizes and checksum of an encoded object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes the source produced.
    pub raw_bytes: u64,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// SHA-256 of the stored bytes.
    pub sha256: String,
}

/// A writer that encodes into `W`. Call [`Encoder::finish`]: dropping it
/// leaves a truncated object (which the destination then discards).
pub struct Encoder<W: Write> {
    inner: Hashing<Compress<Encrypt<Hashing<W>>>>,
}

impl<W: Write> Encoder<W> {
    /// Parses the age recipients; an error names the one that is not a key.
    pub fn new(output: W, compression: Compression, recipients: &[String]) -> io::Result<Self> {
        let stored = Hashing::new(output);
        let encrypted = if recipients.is_empty() {
            Encrypt::Plain(stored)
        } else {
            let parsed = parse_recipients(recipients)?;
            let encryptor =
                age::Encryptor::with_recipients(parsed.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| io::Error::other(format!("age: {e}")))?;
            Encrypt::Age(encryptor.wrap_output(stored)?)
        };
        let compressed = match compression {
            Compression::None => Compress::Plain(encrypted),
            Compression::Zstd { level } => Compress::Zstd(zstd::Encoder::new(encrypted, level)?),
        };
        Ok(Encoder {
            inner: Hashing::new(compressed),
        })
    }

    /// Flushes every stage; returns the output and the sizes.
    pub fn finish(self) -> io::Result<(W, Encoded)> {
        let (compressed, raw_bytes, _) = self.inner.finish();
        let encrypted = match compressed {
            Compress::Plain(w) => w,
            Compress::Zstd(w) => w.finish()?,
        };
        let stored = encrypted.finish()?;
        let (mut output, stored_bytes, sha256) = stored.finish();
        output.flush()?;
        Ok((
            output,
            Encoded {
                raw_bytes,
                stored_bytes,
                sha256,
            },
        ))
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Parses `age1…` recipients.
pub fn parse_recipients(recipients: &[String]) -> io::Result<Vec<age::x25519::Recipient>> {
    recipients
        .iter()
        .map(|r| {
            age::x25519::Recipient::from_str(r).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("age recipient `{r}`: {e}"),
                )
            })
        })
        .collect()
}

/// age identities (secret keys), from outside Git: the file named by
/// `DRIFTLESS_BACKUP_IDENTITY_FILE`, else the value of
/// `DRIFTLESS_BACKUP_IDENTITY`. Never logged.
pub struct Identities(Vec<age::x25519::Identity>);

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} keys)", self.0.len())
    }
}

/// The variable naming an identity file.
pub const IDENTITY_FILE_ENV: &str = "DRIFTLESS_BACKUP_IDENTITY_FILE";
/// The variable holding an identity.
pub const IDENTITY_ENV: &str = "DRIFTLESS_BACKUP_IDENTITY";

impl Identities {
    /// Parses age identity text (`AGE-SECRET-KEY-1…` lines, `#` comments).
    pub fn parse(text: &str) -> Result<Identities, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The error would echo the key: say only where it is.
            let key = age::x25519::Identity::from_str(line).map_err(|_| {
                format!("line {} is not an age identity (AGE-SECRET-KEY-1…)", n + 1)
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no age identity found".to_owned());
        }
        Ok(Identities(keys))
    }

    /// From the environment; `Ok(None)` when neither variable is set.
    pub fn from_env() -> Result<Option<Identities>, String> {
        if let Some(path) = std::env::var_os(IDENTITY_FILE_ENV) {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "{IDENTITY_FILE_ENV}: cannot read {}: {e}",
                    std::path::Path::new(&path).display()
                )
            })?;
            return Identities::parse(&text)
                .map(Some)
                .map_err(|e| format!("{IDENTITY_FILE_ENV}: {e}"));
        }
        match std::env::var(IDENTITY_ENV) {
            Ok(v) if !v.trim().is_empty() => Identities::parse(&v)
                .map(Some)
                .map_err(|e| format!("{IDENTITY_ENV}: {e}")),
            _ => Ok(None),
        }
    }
}

/// Reads an object back: checks its checksum while decoding. With
/// `identities` `None`, an encrypted object is only checksummed (its
/// payload cannot be read).
pub struct Decoded {
    /// The stored bytes read.
    pub stored_bytes: u64,
    /// The plain bytes produced (0 when not decrypted).
    pub raw_bytes: u64,
    pub sha256: String,
    /// Whether the payload was decrypted and decompressed.
    pub payload_checked: bool,
}

/// Decodes `input` into `sink`; returns sizes and the SHA-256 of the stored
/// bytes. Any decode error (truncated, corrupt, wrong key) is an error.
pub fn decode(
    input: impl Read,
    encoding: &Encoding,
    identities: Option<&Identities>,
    mut sink: impl Write,
) -> io::Result<Decoded> {
    let mut hashed = Hashing::new(io::BufReader::with_capacity(1 << 16, input));
    let mut raw_bytes = 0;
    let mut payload_checked = false;
    {
        let decrypted: Option<Box<dyn Read + '_>> = if encoding.encrypted {
            match identities {
                Some(ids) => {
                    let dec = age::Decryptor::new(&mut hashed).map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("age: {e}"))
                    })?;
                    let reader = dec
                        .decrypt(ids.0.iter().map(|i| i as &dyn age::Identity))
                        .map_err(|e| {
                            io::Error::new(io::ErrorKind::InvalidData, format!("age: {e}"))
                        })?;
                    Some(Box::new(reader))
                }
                None => None,
            }
        } else {
            Some(Box::new(&mut hashed))
        };
        if let Some(plain) = decrypted {
            let mut decompressed: Box<dyn Read> = match encoding.compression.as_str() {
                "zstd" => Box::new(zstd::Decoder::new(plain)?),
                "none" => plain,
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unknown compression `{other}` in manifest"),
                    ));
                }
            };
            raw_bytes = io::copy(&mut decompressed, &mut sink)?;
            payload_checked = true;
        }
    }
    // Whatever the layers did not read still counts for the checksum.
    io::copy(&mut hashed, &mut io::sink())?;
    let (_, stored_bytes, sha256) = hashed.finish();
    Ok(Decoded {
        stored_bytes,
        raw_bytes,
        sha256,
        payload_checked,
    })
}

impl Encoding {
    pub fn of(compression: Compression, recipients: &[String]) -> Encoding {
        Encoding {
            compression: match compression {
                Compression::None => "none".to_owned(),
                Compression::Zstd { .. } => "zstd".to_owned(),
            },
            encrypted: !recipients.is_empty(),
        }
    }

    /// File name suffix: `.zst`, `.zst.age`, `` …
    pub fn suffix(&self) -> String {
        let mut s = String::new();
        if self.compression == "zstd" {
            s.push_str(".zst");
        }
        if self.encrypted {
            s.push_str(".age");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn round_trip(compression: Compression, encrypted: bool) {
        let key = age::x25519::Identity::generate();
        let recipients = if encrypted {
            vec![key.to_public().to_string()]
        } else {
            vec![]
        };
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut enc = Encoder::new(Vec::new(), compression, &recipients).unwrap();
        enc.write_all(&data).unwrap();
        let (stored, sizes) = enc.finish().unwrap();
        assert_eq!(sizes.raw_bytes, data.len() as u64);
        assert_eq!(sizes.stored_bytes, stored.len() as u64);
        assert_eq!(sizes.sha256, hex::encode(Sha256::digest(&stored)));
        let encoding = Encoding::of(compression, &recipients);
        let ids = Identities::parse(key.to_string().expose_secret()).unwrap();
        let mut out = Vec::new();
        let d = decode(stored.as_slice(), &encoding, Some(&ids), &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(d.sha256, sizes.sha256);
        assert!(d.payload_checked);
    }

    #[test]
    fn zstd_and_age_round_trip() {
        round_trip(Compression::Zstd { level: 3 }, true);
        round_trip(Compression::Zstd { level: 3 }, false);
        round_trip(Compression::None, true);
        round_trip(Compression::None, false);
    }

    #[test]
    fn wrong_key_and_corruption_are_errors() {
        let key = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipients = vec![key.to_public().to_string()];
        let compression = Compression::Zstd { level: 3 };
        let mut enc = Encoder::new(Vec::new(), compression, &recipients).unwrap();
        enc.write_all(&[7u8; 100_000]).unwrap();
        let (stored, _) = enc.finish().unwrap();
        let encoding = Encoding::of(compression, &recipients);
        let wrong = Identities::parse(other.to_string().expose_secret()).unwrap();
        assert!(decode(stored.as_slice(), &encoding, Some(&wrong), io::sink()).is_err());
        // Without an identity, only the checksum is taken.
        let d = decode(stored.as_slice(), &encoding, None, io::sink()).unwrap();
        assert!(!d.payload_checked);
        // A flipped byte in the payload fails authentication.
        let mut bad = stored.clone();
        let n = bad.len();
        bad[n - 20] ^= 1;
        let right = Identities::parse(key.to_string().expose_secret()).unwrap();
        assert!(decode(bad.as_slice(), &encoding, Some(&right), io::sink()).is_err());
    }

    #[test]
    fn bad_identity_text_does_not_echo_it() {
        let e = Identities::parse("# comment\nAGE-SECRET-KEY-1NOTAKEY\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("NOTAKEY"), "{e}");
    }
}
