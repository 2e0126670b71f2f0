//! Fixtures for the backup tests: an image with Debian's PostgreSQL and
//! Redis, built from the host's own binaries (and the shared libraries
//! `ldd` names) on top of the busybox fixture image, cached by tag; and
//! containers labelled like Compose services, so backup jobs find them.
//!
//! Needs `apt-get install postgresql redis-server` on the host (.ci/run).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use driftless::backend::compose::labels;
use driftless::model::compose::{Project, Service, Volume};
use futures_util::StreamExt;

use crate::docker_support::{BUSYBOX, add_file, build_image};

/// PostgreSQL 15 and Redis 7 from Debian 12; bump the tag when the recipe changes.
pub const DATABASES: &str = "driftless-test/databases:pg15-redis7-2";
/// The image's own command: a PostgreSQL server, initialised on first start,
/// socket in /run/postgresql, superuser `app` trusted.
pub const PG_START: &str = "initdb -D /var/lib/postgresql/data -U app --auth=trust --locale=C -E UTF8 >/var/lib/postgresql/initdb.log 2>&1 || { cat /var/lib/postgresql/initdb.log; exit 1; }; exec postgres -D /var/lib/postgresql/data -k /run/postgresql -c listen_addresses= -c jit=off";
/// The uid the databases run as (the image's `postgres` user).
pub const DB_UID: &str = "999";

const BINARIES: &[&str] = &[
    "/usr/lib/postgresql/15/bin/postgres",
    "/usr/lib/postgresql/15/bin/initdb",
    "/usr/lib/postgresql/15/bin/pg_dump",
    "/usr/lib/postgresql/15/bin/pg_isready",
    "/usr/lib/postgresql/15/bin/psql",
    "/usr/bin/redis-server",
    "/usr/bin/redis-cli",
];

/// Builds [`DATABASES`] unless the engine has it (once per process).
pub async fn database_image(docker: &Docker) {
    static BUILT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            if docker.inspect_image(DATABASES).await.is_err() {
                build(docker).await;
            }
        })
        .await;
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{} is needed to build the database test image (apt-get install postgresql redis-server): {e}",
            path.display()
        )
    })
}

/// Shared libraries of `binary`, as `ldd` resolves them (loader included).
fn libraries(binary: &str) -> Vec<String> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .expect("run ldd");
    assert!(out.status.success(), "ldd {binary} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next().map(str::to_owned),
                None => l.split_whitespace().next().map(str::to_owned),
            }
        })
        .filter(|p| p.starts_with('/'))
        .collect()
}

async fn build(docker: &Docker) {
    let mut files: BTreeSet<String> = BTreeSet::new();
    for b in BINARIES {
        files.insert((*b).to_owned());
        files.extend(libraries(b));
    }
    // Extension libraries initdb loads (ldd of these too).
    for lib in ["plpgsql.so", "dict_snowball.so"] {
        let p = format!("/usr/lib/postgresql/15/lib/{lib}");
        files.extend(libraries(&p));
        files.insert(p);
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, data: &[u8]| add_file(&mut tar, path, mode, data);
    add(
        "Dockerfile",
        0o644,
        format!(
            "FROM {BUSYBOX}\nCOPY rootfs/ /\nCOPY --chown={DB_UID}:{DB_UID} owned/ /\nENV TZ=UTC LANG=C PATH=/usr/lib/postgresql/15/bin:/usr/bin:/bin\nUSER {DB_UID}\nCMD [\"sh\", \"-c\", \"{PG_START}\"]\nHEALTHCHECK --interval=1s --timeout=5s --retries=120 CMD [\"psql\", \"-h\", \"/run/postgresql\", \"-U\", \"app\", \"-d\", \"postgres\", \"-c\", \"select 1\"]\n",

        )
        .as_bytes(),
    );
    for f in &files {
        add(&format!("rootfs{f}"), 0o755, &read(Path::new(f)));
    }
    // Share files: catalogs, timezone sets, snowball stop words.
    let share = Path::new("/usr/share/postgresql/15");
    let mut stack = vec![share.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.ends_with("man") || path.ends_with("contrib") || path.ends_with("extension") {
                continue;
            }
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                add(&format!("rootfs{}", path.display()), 0o644, &read(&path));
            }
        }
    }
    // plpgsql's control file lives in extension/.
    for f in ["plpgsql.control", "plpgsql--1.0.sql"] {
        let p = share.join("extension").join(f);
        add(&format!("rootfs{}", p.display()), 0o644, &read(&p));
    }
    for tz in ["UTC", "Etc/UTC"] {
        let p = Path::new("/usr/share/zoneinfo").join(tz);
        add(&format!("rootfs{}", p.display()), 0o644, &read(&p));
    }
    add(
        "rootfs/etc/passwd",
        0o644,
        format!("root:x:0:0:root:/:/bin/sh\npostgres:x:{DB_UID}:{DB_UID}:postgres:/var/lib/postgresql:/bin/sh\n").as_bytes(),
    );
    add(
        "rootfs/etc/group",
        0o644,
        format!("root:x:0:\npostgres:x:{DB_UID}:\n").as_bytes(),
    );
    for dir in [
        "owned/var/lib/postgresql/.keep",
        "owned/run/postgresql/.keep",
        "owned/data/.keep",
    ] {
        add(dir, 0o644, b"");
    }
    build_image(docker, DATABASES, tar.into_inner().unwrap()).await;
}

/// A running container labelled as service `service` of `project`, with
/// named volumes (`(volume, target)`) mounted.
pub async fn start_service(
    docker: &Docker,
    project: &str,
    service: &str,
    image: &str,
    user: Option<&str>,
    cmd: &[&str],
    volumes: &[(&str, &str)],
) -> String {
    let labels = HashMap::from([
        (labels::PROJECT.to_owned(), project.to_owned()),
        (labels::SERVICE.to_owned(), service.to_owned()),
    ]);
    for (volume, _) in volumes {
        docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some((*volume).to_owned()),
                labels: Some(HashMap::from([(
                    labels::PROJECT.to_owned(),
                    project.to_owned(),
                )])),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
        user: user.map(str::to_owned),
        labels: Some(labels),
        host_config: Some(HostConfig {
            mounts: Some(
                volumes
                    .iter()
                    .map(|(v, t)| Mount {
                        typ: Some(MountType::VOLUME),
                        source: Some((*v).to_owned()),
                        target: Some((*t).to_owned()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!("{project}-{service}-1");
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    docker.start_container(&created.id, None).await.unwrap();
    created.id
}

/// Runs `cmd` in `container`; returns stdout, panics with stderr on failure.
pub async fn exec(docker: &Docker, container: &str, cmd: &[&str]) -> Result<String, String> {
    let created = docker
        .create_exec(
            container,
            bollard::models::ExecConfig {
                cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    // Bytes first: a chunk can end inside a multi-byte character.
    let mut out = Vec::new();
    let mut err = Vec::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&created.id, None)
        .await
        .map_err(|e| e.to_string())?
    {
        while let Some(Ok(item)) = output.next().await {
            match item {
                bollard::container::LogOutput::StdOut { message } => {
                    out.extend_from_slice(&message)
                }
                other => err.extend_from_slice(&other.into_bytes()),
            }
        }
    }
    let (out, err) = (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    );
    let code = docker
        .inspect_exec(&created.id)
        .await
        .map_err(|e| e.to_string())?
        .exit_code;
    if code == Some(0) {
        Ok(out)
    } else {
        Err(format!("{cmd:?} exited {code:?}: {err}"))
    }
}

/// Retries `cmd` until it succeeds (a database starting up), at most 60 s.
pub async fn wait_for(docker: &Docker, container: &str, cmd: &[&str]) {
    let mut last = String::new();
    for _ in 0..300 {
        match exec(docker, container, cmd).await {
            Ok(_) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{cmd:?} never succeeded in {container}: {last}");
}

/// A PostgreSQL 15 service: initdb on first start, socket in /run/postgresql, user `app`.
pub async fn start_postgres(docker: &Docker, project: &str) -> String {
    let id = start_service(
        docker,
        project,
        "postgres",
        DATABASES,
        Some(DB_UID),
        &["sh", "-c", PG_START],
        &[],
    )
    .await;
    let admin = |sql: &'static str| {
        let mut cmd = psql("postgres");
        cmd.extend(["-c", sql]);
        cmd
    };
    wait_for(docker, &id, &admin("select 1")).await;
    exec(docker, &id, &admin("create database app"))
        .await
        .unwrap();
    id
}

/// `psql` as user `app` on database `db`, stopping at the first error.
pub fn psql(db: &'static str) -> Vec<&'static str> {
    vec![
        "psql",
        "-h",
        "/run/postgresql",
        "-U",
        "app",
        "-d",
        db,
        "-v",
        "ON_ERROR_STOP=1",
    ]
}

/// A Redis 7 service with its data in /data.
pub async fn start_redis(docker: &Docker, project: &str, volume: &str) -> String {
    let id = start_service(
        docker,
        project,
        "redis",
        DATABASES,
        Some(DB_UID),
        &[
            "redis-server",
            "--dir",
            "/data",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        &[(volume, "/data")],
    )
    .await;
    wait_for(docker, &id, &["redis-cli", "ping"]).await;
    id
}

/// A project as the backup context sees it: services by name, volumes by key.
pub fn project(name: &str, services: &[&str], volumes: &[(&str, &str)]) -> Project {
    Project {
        disabled_services: Default::default(),
        name: name.to_owned(),
        services: services
            .iter()
            .map(|s| ((*s).to_owned(), Service::default()))
            .collect(),
        networks: Default::default(),
        volumes: volumes
            .iter()
            .map(|(key, engine)| {
                (
                    (*key).to_owned(),
                    Volume {
                        name: (*engine).to_owned(),
                        external: false,
                        driver: None,
                        driver_opts: Default::default(),
                        labels: Default::default(),
                    },
                )
            })
            .collect(),
        origin: Default::default(),
    }
}
