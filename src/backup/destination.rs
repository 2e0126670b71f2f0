//! Where backups are stored: the [`Destination`] trait (one implementation,
//! [`LocalDir`]; an S3-compatible store fits behind the same trait) and the
//! JSON [`Manifest`] written beside each object.
//!
//! Objects are written atomically: a temporary name, fsync, rename, fsync
//! of the directory. A manifest is only written for a complete object, so a
//! listing never shows a half-written backup.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::codec::Encoding;

/// What is known about one stored backup: written beside it as `<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Unique, sortable by time: `<job>-<UTC time>`.
    pub id: String,
    pub job: String,
    pub env: String,
    /// Commit of the desired state the job came from (`None`: a work tree).
    pub commit: Option<String>,
    /// What was backed up, e.g. `exec postgres: pg_dump …`, `volume grafana-data`.
    pub source: String,
    /// `dump` (an exec's stdout), `tar` (volume, path or config).
    pub format: String,
    pub encoding: Encoding,
    /// Object name at the destination.
    pub object: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: i64,
    /// Set once a read-back verification passed.
    pub verified_at: Option<i64>,
}

/// A place that stores a job's backups. Blocking: called on a blocking thread.
pub trait Destination: Send + Sync {
    /// Human-readable location (a directory, a bucket URL).
    fn describe(&self) -> String;
    /// Starts writing `object`; nothing is visible until [`Upload::commit`].
    fn create(&self, object: &str) -> io::Result<Box<dyn Upload>>;
    /// Reads a committed object.
    fn open(&self, object: &str) -> io::Result<Box<dyn Read + Send>>;
    /// Writes (or replaces) a manifest atomically.
    fn put_manifest(&self, manifest: &Manifest) -> io::Result<()>;
    /// Every manifest of the job, oldest first.
    fn manifests(&self) -> io::Result<Vec<Manifest>>;
    /// Deletes an object and its manifest (the manifest last goes first, so
    /// a crash leaves an orphan object rather than a manifest without data).
    fn delete(&self, manifest: &Manifest) -> io::Result<()>;
}

/// An object being written. Dropping it without `commit` discards it.
pub trait Upload: Write + Send {
    /// Makes the object durable and visible under its name.
    fn commit(self: Box<Self>) -> io::Result<()>;
}

/// A directory on the daemon's host: `<root>/<env>/<job>/`.
#[derive(Debug, Clone)]
pub struct LocalDir {
    dir: PathBuf,
}

impl LocalDir {
    pub fn new(root: impl AsRef<Path>, env: &str, job: &str) -> LocalDir {
        LocalDir {
            dir: root.as_ref().join(env).join(job),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, object: &str) -> io::Result<PathBuf> {
        // Object names are made by driftless; refuse anything path-like anyway.
        if object.is_empty() || object.contains('/') || object.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("object name `{object}` is not a plain file name"),
            ));
        }
        Ok(self.dir.join(object))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

struct LocalUpload {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    dir: PathBuf,
}

impl Write for LocalUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("open until commit").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("open until commit").flush()
    }
}

impl Upload for LocalUpload {
    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let file = self.file.take().expect("open until commit");
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.dest)?;
        File::open(&self.dir)?.sync_all()
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Destination for LocalDir {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn create(&self, object: &str) -> io::Result<Box<dyn Upload>> {
        let dest = self.path(object)?;
        fs::create_dir_all(&self.dir)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", self.dir.display())))?;
        let tmp = self.dir.join(format!(".{object}.partial"));
        let file = File::create(&tmp)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", tmp.display())))?;
        Ok(Box::new(LocalUpload {
            file: Some(file),
            tmp,
            dest,
            dir: self.dir.clone(),
        }))
    }

    fn open(&self, object: &str) -> io::Result<Box<dyn Read + Send>> {
        let path = self.path(object)?;
        let file = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
        Ok(Box::new(file))
    }

    fn put_manifest(&self, manifest: &Manifest) -> io::Result<()> {
        let name = format!("{}.json", manifest.id);
        let mut up = self.create(&name)?;
        up.write_all(&serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?)?;
        up.commit()
    }

    fn manifests(&self) -> io::Result<Vec<Manifest>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("read {}: {e}", self.dir.display()),
                ));
            }
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let bytes = fs::read(entry.path())?;
            let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("manifest {}: {e}", entry.path().display()),
                )
            })?;
            out.push(manifest);
        }
        out.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        Ok(out)
    }

    fn delete(&self, manifest: &Manifest) -> io::Result<()> {
        // Already gone is deleted: a delete is safe to repeat.
        for path in [format!("{}.json", manifest.id), manifest.object.clone()] {
            match fs::remove_file(self.path(&path)?) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.sync_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = LocalDir::new(dir.path(), "dev", "db");
        let mut up = d.create("a.dump").unwrap();
        up.write_all(b"half").unwrap();
        drop(up);
        assert_eq!(fs::read_dir(d.dir()).unwrap().count(), 0);
        let mut up = d.create("b.dump").unwrap();
        up.write_all(b"whole").unwrap();
        up.commit().unwrap();
        let mut s = String::new();
        d.open("b.dump").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "whole");
        assert!(d.create("../x").is_err());
    }
}
