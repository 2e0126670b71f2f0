//! Repo directories bound into containers (`./shared:/shared`), delivered
//! as docker compose shares a host directory: one volume per project and
//! directory, named [`volume_name`], filled from the commit's snapshot
//! and mounted by every service that binds the directory.
//!
//! The volume is filled through the API only (a created, never started
//! helper container of an image the project already runs, and the archive
//! upload), so a remote engine works like the local one. Inside it,
//! [`BIND_LISTING`] records the digest of what was written and each file's
//! digest: the next plan reads it (one archive read per bound directory,
//! through a container that mounts it) to tell an unchanged directory
//! from a changed one, and a fill writes only the files that changed and
//! removes only files driftless wrote that the repo no longer holds —
//! what containers wrote stays.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerSummary, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::live::LiveVolume;
use crate::model::compose::{BIND_LISTING, ContextFile, Mount as ModelMount, Project};

/// Where the volume is mounted in a helper container.
const HELPER_MOUNT: &str = "/driftless-volume";
/// Label on helper containers (value: the volume), so a helper left by a
/// cancelled apply can be told apart and removed.
pub const HELPER_LABEL: &str = "io.driftless.bind-helper";
/// Largest listing read back; a bigger one counts as unreadable.
const LISTING_MAX: usize = 16 << 20;

/// One bound directory of a project.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundDir<'p> {
    /// Repo path of the directory.
    pub source: &'p str,
    pub files: &'p [ContextFile],
    /// The services that mount it, in name order.
    pub services: Vec<&'p str>,
}

/// The engine name of the volume holding repo directory `source` for
/// `project`: `<project>_bind_<path>_<hash>`, the path with every character
/// a volume name cannot hold replaced by `_` (and shortened), the hash of
/// the exact path keeping `a/b` and `a_b` apart.
pub fn volume_name(project: &str, source: &str) -> String {
    let mut path: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if path.is_empty() {
        path.push_str("root");
    }
    let hash = hex::encode(Sha256::digest(source.as_bytes()));
    format!("{project}_bind_{path}_{}", &hash[..8])
}

/// The bound directories of `p`, by volume name.
pub fn of(p: &Project) -> BTreeMap<String, BoundDir<'_>> {
    let mut out: BTreeMap<String, BoundDir<'_>> = BTreeMap::new();
    for (name, s) in &p.services {
        for m in &s.volumes {
            if let ModelMount::RepoDir { source, files, .. } = m {
                let dir = out
                    .entry(volume_name(&p.name, source))
                    .or_insert_with(|| BoundDir {
                        source,
                        files,
                        services: Vec::new(),
                    });
                if !dir.services.contains(&name.as_str()) {
                    dir.services.push(name);
                }
            }
        }
    }
    out
}

/// What a volume holds of the repo: the digest of the whole directory and
/// each file's SHA-256 (hex), by path relative to the directory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Listing {
    pub digest: String,
    pub files: BTreeMap<String, String>,
}

impl Listing {
    pub fn of(files: &[ContextFile]) -> Listing {
        Listing {
            digest: crate::model::compose::context_digest(files),
            files: files
                .iter()
                .map(|f| (f.path.clone(), file_digest(f)))
                .collect(),
        }
    }

    /// One line per file (`path sha256:<12 hex>`), for a plan's diff.
    pub fn text(&self) -> String {
        self.files
            .iter()
            .map(|(path, digest)| format!("{path} sha256:{}\n", &digest[..digest.len().min(12)]))
            .collect()
    }
}

/// A file's digest as a listing holds it: its mode and content.
fn file_digest(f: &ContextFile) -> String {
    let mut h = Sha256::new();
    h.update(f.mode.to_le_bytes());
    h.update(&f.content);
    hex::encode(h.finalize())
}

/// What one fill does.
#[derive(Debug, PartialEq)]
pub struct Fill<'a> {
    /// Files to write: all of them when what the volume holds is not
    /// known, else those new or changed since the listing.
    pub write: Vec<&'a ContextFile>,
    /// Files the listing has and the repo no longer holds.
    pub remove: Vec<String>,
    /// The listing written with them.
    pub listing: Listing,
}

/// The fill that brings a volume holding `live` (`None`: not known) to `files`.
pub fn fill_for<'a>(files: &'a [ContextFile], live: Option<&Listing>) -> Fill<'a> {
    let listing = Listing::of(files);
    let write = files
        .iter()
        .filter(|f| live.is_none_or(|l| l.files.get(&f.path) != listing.files.get(&f.path)))
        .collect();
    let remove = live
        .map(|l| {
            l.files
                .keys()
                .filter(|p| !listing.files.contains_key(*p))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Fill {
        write,
        remove,
        listing,
    }
}

/// The tar a fill uploads to the volume's root: the files, then the listing.
/// Parent directories are left to the engine, which creates missing ones.
pub fn fill_tar(fill: &Fill<'_>) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let listing = serde_json::to_vec(&fill.listing).map_err(std::io::Error::other)?;
    let entries = fill
        .write
        .iter()
        .map(|f| (f.path.as_str(), f.mode, &f.content[..]))
        .chain([(BIND_LISTING, 0o644, &listing[..])]);
    for (path, mode, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, content)?;
    }
    builder.into_inner()
}

/// The listing in an archive of [`BIND_LISTING`] (`None`: not one).
fn parse_listing(tar_bytes: &[u8]) -> Option<Listing> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut entry = archive.entries().ok()?.next()?.ok()?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Reads the listing of each bound directory of `projects` whose volume
/// exists, through a container of the environment (`ours`, by id) that
/// mounts it: one archive read each. A volume no container mounts, or whose
/// listing is missing or unreadable, is left out (its content is not known).
pub async fn read_listings(
    docker: &Docker,
    ours: &BTreeSet<String>,
    projects: &[Project],
    containers: &[ContainerSummary],
    volumes: &[LiveVolume],
) -> Result<BTreeMap<String, Listing>, bollard::errors::Error> {
    let mut out = BTreeMap::new();
    for p in projects {
        for volume in of(p).into_keys() {
            if !volumes.iter().any(|v| v.name == volume) {
                continue;
            }
            let mounted = containers.iter().find_map(|c| {
                let ours = c.id.as_ref().is_some_and(|id| ours.contains(id));
                let at = c.mounts.as_ref()?.iter().find_map(|m| {
                    (m.name.as_deref() == Some(volume.as_str()))
                        .then(|| m.destination.clone())
                        .flatten()
                })?;
                Some((c.id.clone()?, at)).filter(|_| ours)
            });
            let Some((id, at)) = mounted else { continue };
            let path = format!("{}/{BIND_LISTING}", at.trim_end_matches('/'));
            if let Some(listing) = read_listing(docker, &id, &path).await? {
                out.insert(volume, listing);
            }
        }
    }
    Ok(out)
}

/// The listing at `path` in `container` (`None`: missing, too large, not
/// a listing, or a container the engine cannot read now).
async fn read_listing(
    docker: &Docker,
    container: &str,
    path: &str,
) -> Result<Option<Listing>, bollard::errors::Error> {
    let mut stream = docker.download_from_container(
        container,
        Some(
            DownloadFromContainerOptionsBuilder::default()
                .path(path)
                .build(),
        ),
    );
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) if bytes.len() + chunk.len() <= LISTING_MAX => {
                bytes.extend_from_slice(&chunk)
            }
            Ok(_) | Err(bollard::errors::Error::DockerResponseServerError { .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(parse_listing(&bytes))
}

/// What apply knows of a volume's content before it fills it.
#[derive(Debug, Clone, Copy)]
pub enum Holds<'a> {
    /// Just created: nothing.
    Nothing,
    /// What the plan read.
    Listing(&'a Listing),
    /// The plan could not read it (no container mounts the volume): the
    /// fill reads it through its own helper.
    Unknown,
}

/// Brings `volume` to `files` with helper containers of `images` (image
/// ids present on the engine, a binding service's first): files the
/// listing has and the repo no longer holds are removed first (a started
/// helper running `rm`, of the first image that has one), then the new
/// and changed files and the listing are uploaded (a created, never
/// started helper of the first image). Helpers are removed on every path.
/// Returns how many files were written and removed.
pub async fn fill(
    docker: &Docker,
    volume: &str,
    images: &[&str],
    files: &[ContextFile],
    holds: Holds<'_>,
) -> Result<(usize, usize), String> {
    let image = images
        .first()
        .ok_or_else(|| format!("no image is present to fill volume {volume} with"))?;
    remove_leftover_helpers(docker, volume).await?;
    let helper = create_helper(docker, volume, image, None).await?;
    let done = fill_through(docker, volume, images, &helper, files, holds).await;
    remove_helper(docker, &helper).await;
    done
}

async fn fill_through(
    docker: &Docker,
    volume: &str,
    images: &[&str],
    helper: &str,
    files: &[ContextFile],
    holds: Holds<'_>,
) -> Result<(usize, usize), String> {
    let read;
    let live = match holds {
        Holds::Nothing => None,
        Holds::Listing(l) => Some(l),
        Holds::Unknown => {
            read = read_listing(docker, helper, &format!("{HELPER_MOUNT}/{BIND_LISTING}"))
                .await
                .map_err(|e| format!("read the listing of volume {volume}: {e}"))?;
            read.as_ref()
        }
    };
    let fill = fill_for(files, live);
    if !fill.remove.is_empty() {
        remove_files(docker, volume, images, &fill.remove).await?;
    }
    let tar = fill_tar(&fill).map_err(|e| format!("archive of the directory: {e}"))?;
    docker
        .upload_to_container(
            helper,
            Some(
                UploadToContainerOptionsBuilder::default()
                    .path(HELPER_MOUNT)
                    .build(),
            ),
            bollard::body_full(tar.into()),
        )
        .await
        .map_err(|e| format!("copy the directory's files into volume {volume}: {e}"))?;
    Ok((fill.write.len(), fill.remove.len()))
}

/// Removes `paths` (relative to the volume's root) with a started helper
/// running `rm -f --` as root, of the first of `images` where that works
/// (a distroless image has no `rm`; another image of the project may).
async fn remove_files(
    docker: &Docker,
    volume: &str,
    images: &[&str],
    paths: &[String],
) -> Result<(), String> {
    let absolute: Vec<String> = paths
        .iter()
        .map(|p| format!("{HELPER_MOUNT}/{p}"))
        .collect();
    let mut failures = Vec::new();
    for image in images {
        let helper = create_helper(docker, volume, image, Some(absolute.clone())).await?;
        let removed = run_to_end(docker, &helper).await;
        remove_helper(docker, &helper).await;
        match removed {
            Ok(()) => return Ok(()),
            Err(e) => failures.push(format!("image {image}: {e}")),
        }
    }
    Err(format!(
        "removing the {} files the repo no longer holds from volume {volume} needs `rm` in an \
         image of the project, and none ran it ({})",
        paths.len(),
        failures.join("; ")
    ))
}

/// Creates a helper with `volume` at [`HELPER_MOUNT`]; with `remove`, one
/// that runs `rm -f -- <paths>` as root when started.
async fn create_helper(
    docker: &Docker,
    volume: &str,
    image: &str,
    remove: Option<Vec<String>>,
) -> Result<String, String> {
    let (entrypoint, cmd) = match remove {
        Some(paths) => (
            Some(vec!["rm".to_owned(), "-f".to_owned(), "--".to_owned()]),
            paths,
        ),
        // Never started, but the engine wants a command for an image
        // without one.
        None => (None, vec!["driftless-bind-helper".to_owned()]),
    };
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint,
        cmd: Some(cmd),
        user: Some("0:0".to_owned()),
        network_disabled: Some(true),
        labels: Some(HashMap::from([(
            HELPER_LABEL.to_owned(),
            volume.to_owned(),
        )])),
        host_config: Some(HostConfig {
            mounts: Some(vec![Mount {
                typ: Some(MountType::VOLUME),
                source: Some(volume.to_owned()),
                target: Some(HELPER_MOUNT.to_owned()),
                ..Mount::default()
            }]),
            network_mode: Some("none".to_owned()),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await
        .map(|c| c.id)
        .map_err(|e| format!("create a helper container for volume {volume}: {e}"))
}

/// Starts a helper and waits for it to exit with code 0.
pub(crate) async fn run_to_end(docker: &Docker, id: &str) -> Result<(), String> {
    docker
        .start_container(id, None::<StartContainerOptions>)
        .await
        .map_err(|e| e.to_string())?;
    let mut wait = docker.wait_container(id, None);
    while let Some(answer) = wait.next().await {
        match answer {
            Ok(_) => {}
            Err(bollard::errors::Error::DockerContainerWaitError { code, error }) => {
                return Err(format!("exited with code {code} {error}")
                    .trim_end()
                    .to_owned());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Removes helpers of `volume` an interrupted fill left (a cancelled
/// apply cannot remove them): one list call, made only when filling.
async fn remove_leftover_helpers(docker: &Docker, volume: &str) -> Result<(), String> {
    let filters = HashMap::from([("label", vec![format!("{HELPER_LABEL}={volume}")])]);
    let left = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| format!("list helper containers of volume {volume}: {e}"))?;
    for id in left.into_iter().filter_map(|c| c.id) {
        remove_helper(docker, &id).await;
    }
    Ok(())
}

async fn remove_helper(docker: &Docker, id: &str) {
    if let Err(e) = docker
        .remove_container(
            id,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
    {
        tracing::warn!(container = %id, error = %e, "removing a bind helper container");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compose::Service;
    use std::sync::Arc;

    fn file(path: &str, content: &str) -> ContextFile {
        ContextFile {
            path: path.into(),
            mode: 0o644,
            content: Arc::from(content.as_bytes()),
        }
    }

    #[test]
    fn volume_names_keep_paths_apart_and_stay_valid() {
        let a = volume_name("shop", "compose/shared");
        assert!(a.starts_with("shop_bind_compose_shared_"), "{a}");
        assert_ne!(a, volume_name("shop", "compose_shared"));
        assert_eq!(a, volume_name("shop", "compose/shared"));
        assert!(volume_name("shop", "").starts_with("shop_bind_root_"));
        let long = volume_name("shop", &"x/é".repeat(50));
        assert!(long.len() < 80, "{long}");
        assert!(
            long.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        );
    }

    #[test]
    fn services_binding_one_directory_share_its_volume() {
        let files: Arc<[ContextFile]> = vec![file("a.txt", "a")].into();
        let bind = |target: &str| ModelMount::RepoDir {
            source: "shared".into(),
            target: target.into(),
            read_only: false,
            files: files.clone(),
        };
        let p = Project {
            name: "shop".into(),
            services: [
                (
                    "web".to_owned(),
                    Service {
                        volumes: vec![bind("/srv")],
                        ..Service::default()
                    },
                ),
                (
                    "worker".to_owned(),
                    Service {
                        volumes: vec![bind("/data")],
                        ..Service::default()
                    },
                ),
            ]
            .into(),
            ..Project::default()
        };
        let dirs = of(&p);
        assert_eq!(dirs.len(), 1);
        let (name, dir) = dirs.iter().next().unwrap();
        assert_eq!(name, &volume_name("shop", "shared"));
        assert_eq!(dir.services, ["web", "worker"]);
        assert_eq!(dir.files.len(), 1);
    }

    #[test]
    fn a_fill_writes_what_changed_and_removes_only_what_it_wrote() {
        let old = [
            file("keep.txt", "same"),
            file("edit.txt", "v1"),
            file("gone.txt", "x"),
        ];
        let new = [
            file("keep.txt", "same"),
            file("edit.txt", "v2"),
            file("new.txt", "n"),
        ];
        let live = Listing::of(&old);
        let f = fill_for(&new, Some(&live));
        let written: Vec<&str> = f.write.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(written, ["edit.txt", "new.txt"]);
        // A file a container wrote is in no listing, so it is never removed.
        assert_eq!(f.remove, ["gone.txt"]);
        assert_eq!(f.listing, Listing::of(&new));
        // Content not known: everything is written, nothing removed.
        let f = fill_for(&new, None);
        assert_eq!(f.write.len(), 3);
        assert!(f.remove.is_empty());
        // Unchanged: only the listing goes.
        let f = fill_for(&new, Some(&Listing::of(&new)));
        assert!(f.write.is_empty() && f.remove.is_empty());
    }

    #[test]
    fn the_listing_travels_in_the_fill_and_reads_back() {
        let files = [file("a/b.txt", "b")];
        let f = fill_for(&files, None);
        let bytes = fill_tar(&f).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(paths, ["a/b.txt", BIND_LISTING]);
        // What the engine returns for the listing alone: a tar of one file.
        let mut one = tar::Builder::new(Vec::new());
        let json = serde_json::to_vec(&f.listing).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(json.len() as u64);
        header.set_mode(0o644);
        one.append_data(&mut header, BIND_LISTING, &json[..])
            .unwrap();
        assert_eq!(parse_listing(&one.into_inner().unwrap()), Some(f.listing));
        assert_eq!(parse_listing(b"not a tar"), None);
    }
}
