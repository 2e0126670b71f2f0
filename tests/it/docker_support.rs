//! Helpers for tests against the real Docker engine: connecting (or
//! failing loudly), fixture images built through the API, unique project
//! names, and a guard that removes what a test created even on panic.
//!
//! No registry is reachable and the engine starts with no images, so the
//! fixture images are built here: `FROM scratch` plus Debian's static
//! busybox (`apt-get install busybox-static`), with the applets the tests
//! use linked in `/bin`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptions,
    RemoveVolumeOptions,
};
use driftless::backend::compose::{ComposeBackend, labels};
use driftless::manifest::DockerTarget;
use futures_util::StreamExt;

/// The busybox fixture image.
pub const BUSYBOX: &str = "driftless-test/busybox:1";
/// Same applets, different content, so a different image id.
pub const BUSYBOX_2: &str = "driftless-test/busybox:2";

/// The applets every fixture image links to busybox (`rm` for the rules
/// backend's deletes inside a container). The list is the images' cache key:
/// an image built with another list is rebuilt.
const APPLETS: &[&str] = &[
    "sh", "httpd", "wget", "sleep", "cat", "echo", "test", "true", "false", "kill", "ls", "rm",
];

/// The label holding the applet list an image was built with.
const APPLETS_LABEL: &str = "driftless-test.applets";

/// Connects to the local engine with the fixture images built. Returns
/// `None` only when a developer opted out with `DRIFTLESS_SKIP_DOCKER=1`;
/// without an engine it panics saying Docker is required, so CI can never
/// skip these tests silently.
pub async fn engine() -> Option<ComposeBackend> {
    if std::env::var("DRIFTLESS_SKIP_DOCKER").is_ok_and(|v| v == "1") {
        eprintln!("DRIFTLESS_SKIP_DOCKER=1: skipping a test that needs the Docker engine");
        return None;
    }
    let backend = match ComposeBackend::connect(&local_target()).await {
        Ok(b) => b,
        Err(e) => panic!(
            "the Docker engine is required for the Compose backend tests and is not usable: {e}\n\
             (start Docker, or set DRIFTLESS_SKIP_DOCKER=1 to skip these tests locally)"
        ),
    };
    fixture_images(backend.docker()).await;
    Some(
        backend
            .with_settle(Duration::from_secs(1))
            .with_dependency_timeout(Duration::from_secs(60)),
    )
}

/// The local engine as a target (`host` unset: `DOCKER_HOST` or the socket).
pub fn local_target() -> DockerTarget {
    DockerTarget::default()
}

/// Builds the fixture images once per process (and not at all when the
/// engine has them): concurrent tests wait on the same cell.
async fn fixture_images(docker: &Docker) {
    static BUILT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let applets = APPLETS.join(",");
            for (tag, variant) in [(BUSYBOX, "1"), (BUSYBOX_2, "2")] {
                let current = docker.inspect_image(tag).await.ok().is_some_and(|image| {
                    image
                        .config
                        .and_then(|c| c.labels)
                        .and_then(|l| l.get(APPLETS_LABEL).cloned())
                        .is_some_and(|l| l == applets)
                });
                if !current {
                    build_busybox(docker, tag, variant).await;
                }
            }
        })
        .await;
}

/// `FROM scratch`, `/bin/busybox` from the host, applet symlinks, an
/// index page for `httpd -h /www`, and a `/variant` file that makes each
/// variant's image id differ.
pub async fn build_busybox(docker: &Docker, tag: &str, variant: &str) {
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|e| {
        panic!("/bin/busybox is needed to build test images (apt-get install busybox-static): {e}")
    });
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, data: &[u8]| add_file(&mut tar, path, mode, data);
    let dockerfile = format!(
        "FROM scratch\nCOPY rootfs/ /\nLABEL {APPLETS_LABEL}=\"{}\"\nCMD [\"sh\"]\n",
        APPLETS.join(",")
    );
    add("Dockerfile", 0o644, dockerfile.as_bytes());
    add("rootfs/bin/busybox", 0o755, &busybox);
    add("rootfs/www/index.html", 0o644, b"driftless test page\n");
    add("rootfs/variant", 0o644, variant.as_bytes());
    add("rootfs/tmp/.keep", 0o644, b"");
    add("rootfs/etc/passwd", 0o644, b"root:x:0:0:root:/:/bin/sh\n");
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        tar.append_link(&mut h, format!("rootfs/bin/{applet}"), "busybox")
            .unwrap();
    }
    build_image(docker, tag, tar.into_inner().unwrap()).await;
}

/// Adds a regular file to a build context (mtime 0, so contexts are stable).
pub fn add_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    tar.append_data(&mut h, path, data).unwrap();
}

/// Builds `tag` from a tar build context holding a `Dockerfile`.
pub async fn build_image(docker: &Docker, tag: &str, context: Vec<u8>) {
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            panic!("building fixture image {tag}: {e}");
        }
    }
    docker
        .inspect_image(tag)
        .await
        .unwrap_or_else(|e| panic!("fixture image {tag} missing after build: {e}"));
}

/// A project name unique to this test, process and call: `dlt-<test>-<pid>-<n>`.
pub fn project_name(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "dlt-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes every container, network and volume of its projects, and the
/// image tags it was given, when dropped — also when the test panics.
pub struct Cleanup {
    projects: Vec<String>,
    images: Vec<String>,
}

impl Cleanup {
    pub fn new(projects: &[&str]) -> Self {
        Cleanup {
            projects: projects.iter().map(|p| (*p).to_owned()).collect(),
            images: Vec::new(),
        }
    }

    /// Also removes the image tag `reference`.
    pub fn image(mut self, reference: &str) -> Self {
        self.images.push(reference.to_owned());
        self
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let projects = std::mem::take(&mut self.projects);
        let images = std::mem::take(&mut self.images);
        // Drop runs inside the test's runtime, which cannot be blocked on:
        // clean up on a thread with a runtime of its own.
        let done = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(remove_projects(&projects, &images));
        })
        .join();
        if done.is_err() {
            eprintln!("cleanup of test projects failed");
        }
    }
}

async fn remove_projects(projects: &[String], images: &[String]) {
    let Ok(docker) = Docker::connect_with_unix_defaults() else {
        return;
    };
    let Ok(docker) = docker.negotiate_version().await else {
        return;
    };
    for p in projects {
        let filter = HashMap::from([("label", vec![format!("{}={p}", labels::PROJECT)])]);
        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filter)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        for c in containers {
            let _ = docker
                .remove_container(
                    c.id.as_deref().unwrap_or_default(),
                    Some(
                        RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .v(true)
                            .build(),
                    ),
                )
                .await;
        }
        let networks = docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filter)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        for n in networks {
            let _ = docker
                .remove_network(n.name.as_deref().unwrap_or_default())
                .await;
        }
        let volumes = docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::default()
                    .filters(&filter)
                    .build(),
            ))
            .await
            .ok()
            .and_then(|v| v.volumes)
            .unwrap_or_default();
        for v in volumes {
            let _ = docker
                .remove_volume(&v.name, None::<RemoveVolumeOptions>)
                .await;
        }
    }
    for image in images {
        let _ = docker
            .remove_image(image, None::<RemoveImageOptions>, None)
            .await;
    }
}

/// Removes a container out of band, running or not (a user's `docker rm -f`).
pub async fn force_remove(docker: &Docker, container: &str) {
    docker
        .remove_container(
            container,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await
        .unwrap_or_else(|e| panic!("docker rm -f {container}: {e}"));
}

/// Every container of `project` on the local engine, running or not.
pub async fn containers(
    local: &driftless::backend::compose::ComposeBackend,
    project: &str,
) -> Vec<bollard::models::ContainerSummary> {
    let filters = std::collections::HashMap::from([(
        "label",
        vec![format!("com.docker.compose.project={project}")],
    )]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    local.docker().list_containers(Some(options)).await.unwrap()
}

/// A unix socket that forwards to the engine's and counts connections.
/// bollard keeps no idle connections (one per request), so the count is
/// the number of API calls made through it; each call's request line
/// (`GET /v1.41/volumes?…`) is kept too.
pub struct CountingProxy {
    pub host: String,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl CountingProxy {
    pub fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let upstream = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
            .unwrap_or_else(|| "/var/run/docker.sock".to_owned());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counter, seen) = (count.clone(), lines.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let upstream = upstream.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(mut engine) = tokio::net::UnixStream::connect(&upstream).await else {
                        return;
                    };
                    // The request line arrives first; read up to its end.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.contains(&b'\n') {
                        match client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = head
                        .split(|b| *b == b'\r' || *b == b'\n')
                        .next()
                        .unwrap_or(&[]);
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(line).into_owned());
                    if engine.write_all(&head).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
            }
        });
        CountingProxy {
            host: format!("unix://{}", path.display()),
            count,
            lines,
            task,
            _dir: dir,
        }
    }

    /// A backend connected to the engine through the proxy, with the
    /// count reset after connecting.
    pub async fn backend(&self) -> ComposeBackend {
        let backend = ComposeBackend::connect(&DockerTarget {
            host: Some(self.host.clone()),
            ..local_target()
        })
        .await
        .unwrap();
        self.take();
        backend
    }

    /// Calls since the last `take`.
    pub fn take(&self) -> usize {
        self.lines.lock().unwrap().clear();
        self.count.swap(0, Ordering::SeqCst)
    }

    /// The request lines since the last `take` (or `take_lines`).
    pub fn take_lines(&self) -> Vec<String> {
        self.count.store(0, Ordering::SeqCst);
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Debian's `docker-registry` on 127.0.0.1 with htpasswd auth, in a temp
/// dir, stopped on drop. Needs `apt-get install docker-registry apache2-utils`.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub address: String,
    pub user: String,
    pub password: String,
    child: std::process::Child,
    pub dir: tempfile::TempDir,
}

impl Registry {
    pub async fn start() -> Registry {
        for tool in ["/usr/bin/docker-registry", "/usr/bin/htpasswd"] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is needed for the registry tests (apt-get install docker-registry apache2-utils)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let user = "driftless".to_owned();
        let password = format!("pw-{}", std::process::id());
        // The registry accepts only bcrypt entries.
        let out = std::process::Command::new("/usr/bin/htpasswd")
            .args(["-Bbn", &user, &password])
            .output()
            .expect("htpasswd");
        assert!(out.status.success(), "htpasswd failed");
        std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: {address}\n\
             auth:\n  htpasswd:\n    realm: driftless-test\n    path: {root}/htpasswd\n",
            root = dir.path().display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = std::process::Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Registry {
            address,
            user,
            password,
            child,
            dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&registry.address)
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not listen on {}: {}",
                registry.address,
                std::fs::read_to_string(registry.dir.path().join("registry.log"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        registry
    }

    pub fn credentials(&self) -> bollard::auth::DockerCredentials {
        bollard::auth::DockerCredentials {
            username: Some(self.user.clone()),
            password: Some(self.password.clone()),
            serveraddress: Some(self.address.clone()),
            ..Default::default()
        }
    }

    /// A Docker client config (`config.json`) with this registry's `auths`.
    pub fn docker_config(&self) -> std::path::PathBuf {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        let path = self.dir.path().join("config.json");
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.address),
        )
        .unwrap();
        path
    }

    /// Pushes local image `source` as `<registry>/<repo>:<tag>` and removes
    /// the local tag, so the next use must pull it. Returns the reference.
    pub async fn push(&self, docker: &Docker, source: &str, repo: &str, tag: &str) -> String {
        let remote = format!("{}/{repo}", self.address);
        docker
            .tag_image(
                source,
                Some(
                    bollard::query_parameters::TagImageOptionsBuilder::default()
                        .repo(&remote)
                        .tag(tag)
                        .build(),
                ),
            )
            .await
            .unwrap();
        let mut push = docker.push_image(
            &remote,
            Some(
                bollard::query_parameters::PushImageOptionsBuilder::default()
                    .tag(tag)
                    .build(),
            ),
            Some(self.credentials()),
        );
        while let Some(item) = push.next().await {
            if let Err(e) = item {
                panic!("push {remote}:{tag}: {e}");
            }
        }
        let reference = format!("{remote}:{tag}");
        docker
            .remove_image(&reference, None::<RemoveImageOptions>, None)
            .await
            .unwrap();
        reference
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
