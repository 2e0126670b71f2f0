//! Backups against the real engine and real databases: PostgreSQL and
//! Redis round trips, a paused volume copied byte for byte, corruption
//! caught by verify, retention, failing sources, age encryption.

use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use driftless::backup::codec::Identities;
use driftless::backup::destination::{Destination, LocalDir};
use driftless::backup::runner::RestoreMode;
use driftless::backup::{Context, runner};
use driftless::model::{
    BackupJob, BackupSource, Compression, Consistency, Destination as Dest, Origin, Retention,
    Verify,
};
use driftless::secrets::Masker;
use driftless::store::{BackupOutcome, BackupTrigger, Store};

use crate::backup_support::{self as bs, DATABASES};
use crate::docker_support::{self, BUSYBOX, Cleanup};

async fn docker() -> Option<Docker> {
    let backend = docker_support::engine().await?;
    let docker = backend.docker().clone();
    bs::database_image(&docker).await;
    Some(docker)
}

fn job(name: &str, dir: &std::path::Path, source: BackupSource) -> BackupJob {
    BackupJob {
        name: name.to_owned(),
        schedule: "@daily".to_owned(),
        timezone: "UTC".to_owned(),
        source,
        consistency: Consistency::None,
        compression: Compression::Zstd { level: 3 },
        encryption_recipients: vec![],
        destination: Dest::Local {
            path: dir.display().to_string(),
        },
        retention: Retention {
            keep_last: Some(10),
            max_age: None,
        },
        verify: Verify {
            read_back: true,
            restore_test: None,
        },
        before_apply: false,
        run_missed: false,
        origin: Origin::default(),
    }
}

fn exec(project: &str, service: &str, command: &[&str], restore: Option<&[&str]>) -> BackupSource {
    BackupSource::Exec {
        project: Some(project.to_owned()),
        service: service.to_owned(),
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        restore_command: restore.map(|r| r.iter().map(|s| (*s).to_owned()).collect()),
    }
}

fn context(docker: &Docker, projects: Vec<driftless::model::compose::Project>) -> Context {
    Context {
        docker: docker.clone(),
        env: "dev".to_owned(),
        commit: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
        projects,
        config: vec![],
        identities: None,
        masker: Masker::default(),
    }
}

fn dest(job: &BackupJob) -> Arc<dyn Destination> {
    Arc::from(runner::destination(job, "dev").unwrap())
}

async fn is_running_unpaused(docker: &Docker, id: &str) -> bool {
    let state = docker
        .inspect_container(id, None)
        .await
        .unwrap()
        .state
        .unwrap();
    state.running == Some(true) && state.paused != Some(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dump_restores_into_a_fresh_database_row_for_row() {
    let Some(docker) = docker().await else { return };
    let (a, b) = (
        docker_support::project_name("pg-a"),
        docker_support::project_name("pg-b"),
    );
    let _cleanup = Cleanup::new(&[&a, &b]);
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open_in_memory().unwrap());

    let source_db = bs::start_postgres(&docker, &a).await;
    let mut setup = bs::psql("app");
    setup.extend([
        "-c",
        "create table items (id int primary key, name text, price numeric(10,2), tags text[]); \
         insert into items select i, 'item ' || i || ' — ünïcode', i * 1.25, array['a', 'b' || i] from generate_series(1, 2000) i;",
    ]);
    bs::exec(&docker, &source_db, &setup).await.unwrap();

    let pg_job = |project: &str| {
        job(
            "postgres",
            dir.path(),
            exec(
                project,
                "postgres",
                &["pg_dump", "-h", "/run/postgresql", "-U", "app", "app"],
                Some(&bs::psql("app")),
            ),
        )
    };
    let ctx = context(&docker, vec![bs::project(&a, &["postgres"], &[])]);
    // Verification includes a restore into a throwaway server and a check
    // that fails on an empty table.
    let restore_test = |check: &str| {
        let mut command = bs::psql("postgres");
        command.push("-q");
        let mut check_cmd = bs::psql("postgres");
        check_cmd.extend(["-c", check]);
        driftless::model::RestoreTest {
            image: DATABASES.to_owned(),
            command: command.into_iter().map(str::to_owned).collect(),
            check: check_cmd.into_iter().map(str::to_owned).collect(),
        }
    };
    let mut tested = pg_job(&a);
    tested.verify.restore_test = Some(restore_test("select 1 / count(*) from items"));
    let report = runner::run(&ctx, &tested, BackupTrigger::Cli, Some(&store)).await;
    assert!(report.succeeded(), "{:?}", report.error);
    let mut failing = pg_job(&a);
    failing.verify.restore_test = Some(restore_test("select 1 / count(*) from no_such_table"));
    let failed = runner::run(&ctx, &failing, BackupTrigger::Cli, Some(&store)).await;
    let error = failed.error.expect("the restore test check fails");
    assert!(
        error.contains("restore test check") && error.contains("no_such_table"),
        "{error}"
    );
    let report = runner::run(&ctx, &pg_job(&a), BackupTrigger::Cli, Some(&store)).await;
    assert!(report.succeeded(), "{:?}", report.error);
    assert!(report.verified);
    assert!(
        report.raw_bytes > report.stored_bytes,
        "zstd shrinks a SQL dump"
    );
    let runs = store.backup_runs("dev", Some("postgres"), 10).unwrap();
    let outcomes: Vec<BackupOutcome> = runs.iter().map(|(_, r)| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            BackupOutcome::Succeeded,
            BackupOutcome::Failed,
            BackupOutcome::Succeeded
        ]
    );
    assert_eq!(runs[0].1.sha256, report.sha256);

    // A fresh server in another project gets the dump through psql's stdin.
    let fresh = bs::start_postgres(&docker, &b).await;
    let ctx_b = context(&docker, vec![bs::project(&b, &["postgres"], &[])]);
    let manifests = dest(&pg_job(&b)).manifests().unwrap();
    let latest = runner::pick(&manifests, None).expect("a verified backup");
    runner::restore(&ctx_b, &pg_job(&b), &latest, RestoreMode::Clean)
        .await
        .unwrap();

    let query = {
        let mut q = bs::psql("app");
        q.extend(["-At", "-c", "select * from items order by id"]);
        q
    };
    let before = bs::exec(&docker, &source_db, &query).await.unwrap();
    let after = bs::exec(&docker, &fresh, &query).await.unwrap();
    assert_eq!(before.lines().count(), 2000);
    let differ = before.lines().zip(after.lines()).position(|(a, b)| a != b);
    assert!(
        before == after,
        "restored rows differ: {} rows before, {} after, first difference at row {differ:?}",
        before.lines().count(),
        after.lines().count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rdb_restores_key_for_key() {
    let Some(docker) = docker().await else { return };
    let (a, b) = (
        docker_support::project_name("redis-a"),
        docker_support::project_name("redis-b"),
    );
    let _cleanup = Cleanup::new(&[&a, &b]);
    let dir = tempfile::tempdir().unwrap();
    let source = bs::start_redis(&docker, &a, &format!("{a}_data")).await;
    let mut mset = vec!["redis-cli", "mset"];
    let pairs: Vec<(String, String)> = (0..500)
        .map(|i| {
            (
                format!("key:{i}"),
                format!("value {i} {}", "x".repeat(i % 50)),
            )
        })
        .collect();
    for (k, v) in &pairs {
        mset.push(k);
        mset.push(v);
    }
    bs::exec(&docker, &source, &mset).await.unwrap();
    bs::exec(
        &docker,
        &source,
        &["redis-cli", "rpush", "list", "a", "b", "c"],
    )
    .await
    .unwrap();

    let redis_job = job(
        "redis",
        dir.path(),
        exec(&a, "redis", &["redis-cli", "--rdb", "-"], None),
    );
    let ctx = context(&docker, vec![bs::project(&a, &["redis"], &[])]);
    let report = runner::run(&ctx, &redis_job, BackupTrigger::Cli, None).await;
    assert!(report.succeeded(), "{:?}", report.error);

    // Restore as Redis expects it: dump.rdb in the data directory of a
    // server that has not started yet.
    let d = dest(&redis_job);
    let manifest = runner::pick(&d.manifests().unwrap(), None).unwrap();
    let rdb = runner::read_plain(d, &manifest, None).await.unwrap();
    assert!(
        rdb.starts_with(b"REDIS"),
        "an RDB file, not {:?}",
        &rdb[..rdb.len().min(16)]
    );
    let volume = format!("{b}_data");
    let fresh = bs::start_service(
        &docker,
        &b,
        "redis",
        DATABASES,
        Some(bs::DB_UID),
        &["sleep", "3600"],
        &[(&volume, "/data")],
    )
    .await;
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(rdb.len() as u64);
    h.set_mode(0o600);
    h.set_uid(999);
    h.set_gid(999);
    tar.append_data(&mut h, "dump.rdb", rdb.as_slice()).unwrap();
    docker
        .upload_to_container(
            &fresh,
            Some(
                bollard::query_parameters::UploadToContainerOptionsBuilder::default()
                    .path("/data")
                    .build(),
            ),
            bollard::body_full(tar.into_inner().unwrap().into()),
        )
        .await
        .unwrap();
    docker
        .remove_container(
            &fresh,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await
        .unwrap();
    let restored = bs::start_redis(&docker, &b, &volume).await;
    for (k, v) in &pairs {
        let got = bs::exec(&docker, &restored, &["redis-cli", "--no-raw", "get", k])
            .await
            .unwrap();
        assert_eq!(got.trim(), format!("\"{v}\""), "key {k}");
    }
    let size = bs::exec(&docker, &restored, &["redis-cli", "dbsize"])
        .await
        .unwrap();
    assert_eq!(size.trim(), "501");
    let list = bs::exec(
        &docker,
        &restored,
        &["redis-cli", "lrange", "list", "0", "-1"],
    )
    .await
    .unwrap();
    assert_eq!(list, "a\nb\nc\n");
}

/// Files of `/data` in `container`, by path, from the archive API.
async fn files(
    docker: &Docker,
    container: &str,
    path: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    use futures_util::StreamExt;
    let mut stream = docker.download_from_container(
        container,
        Some(
            bollard::query_parameters::DownloadFromContainerOptionsBuilder::default()
                .path(path)
                .build(),
        ),
    );
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let mut out = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(bytes.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type() == tar::EntryType::Regular {
            let name = entry.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            out.insert(name, data);
        }
    }
    out
}

async fn put_files(docker: &Docker, container: &str, dir: &str, files: &[(&str, Vec<u8>)]) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    docker
        .upload_to_container(
            container,
            Some(
                bollard::query_parameters::UploadToContainerOptionsBuilder::default()
                    .path(dir)
                    .build(),
            ),
            bollard::body_full(tar.into_inner().unwrap().into()),
        )
        .await
        .unwrap();
}

/// A new project whose busybox `app` service mounts the volume key `data`
/// at /data, with a context that knows it and a backup directory.
struct VolumeApp {
    p: String,
    app: String,
    dir: tempfile::TempDir,
    ctx: Context,
    _cleanup: Cleanup,
}

impl VolumeApp {
    async fn start(docker: &Docker, prefix: &str) -> VolumeApp {
        let p = docker_support::project_name(prefix);
        let cleanup = Cleanup::new(&[&p]);
        let volume = format!("{p}_data");
        let app = bs::start_service(
            docker,
            &p,
            "app",
            BUSYBOX,
            None,
            &["sleep", "3600"],
            &[(&volume, "/data")],
        )
        .await;
        let ctx = context(
            docker,
            vec![bs::project(&p, &["app"], &[("data", &volume)])],
        );
        VolumeApp {
            p,
            app,
            dir: tempfile::tempdir().unwrap(),
            ctx,
            _cleanup: cleanup,
        }
    }

    /// A job backing up the `data` volume, `app` its service.
    fn job(&self, name: &str) -> BackupJob {
        job(
            name,
            self.dir.path(),
            BackupSource::Volume {
                project: Some(self.p.clone()),
                volume: "data".to_owned(),
                service: Some("app".to_owned()),
            },
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_volume_backup_restores_byte_for_byte_and_resumes_the_service() {
    let Some(docker) = docker().await else { return };
    let va = VolumeApp::start(&docker, "vol").await;
    let (app, ctx) = (&va.app, &va.ctx);
    let noise: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    put_files(
        &docker,
        app,
        "/data",
        &[("a.bin", noise.clone()), ("sub/b.txt", b"hello\n".to_vec())],
    )
    .await;
    let original = files(&docker, app, "/data").await;
    assert_eq!(original.len(), 2);

    let mut vol_job = va.job("files");
    vol_job.consistency = Consistency::Pause;
    let report = runner::run(ctx, &vol_job, BackupTrigger::Cli, None).await;
    assert!(report.succeeded(), "{:?}", report.error);
    assert!(
        is_running_unpaused(&docker, app).await,
        "the service runs again after the copy"
    );

    // Damage the volume, restore, compare every byte.
    put_files(
        &docker,
        app,
        "/data",
        &[("a.bin", b"overwritten".to_vec()), ("junk", b"x".to_vec())],
    )
    .await;
    let manifest = runner::pick(&dest(&vol_job).manifests().unwrap(), None).unwrap();
    runner::restore(ctx, &vol_job, &manifest, RestoreMode::Clean)
        .await
        .unwrap();
    assert!(
        is_running_unpaused(&docker, app).await,
        "the service is started again after a restore"
    );
    // A clean restore (the default): the volume holds the backup, and the
    // file created after it is gone.
    let restored = files(&docker, app, "/data").await;
    assert_eq!(restored, original);

    // --merge extracts over the volume: files created since stay.
    put_files(
        &docker,
        app,
        "/data",
        &[
            ("a.bin", b"overwritten".to_vec()),
            (".later", b"y".to_vec()),
        ],
    )
    .await;
    runner::restore(ctx, &vol_job, &manifest, RestoreMode::Merge)
        .await
        .unwrap();
    let merged = files(&docker, app, "/data").await;
    assert_eq!(merged.get("data/a.bin"), original.get("data/a.bin"));
    assert_eq!(
        merged.get("data/.later"),
        Some(&b"y".to_vec()),
        "{:?}",
        merged.keys()
    );
    assert_eq!(merged.len(), original.len() + 1, "{:?}", merged.keys());

    // A clean restore removes dot files too.
    runner::restore(ctx, &vol_job, &manifest, RestoreMode::Clean)
        .await
        .unwrap();
    assert_eq!(files(&docker, app, "/data").await, original);
}

/// Regression: the helper container that reads a volume was refused by the
/// engine ("No command specified") when the service's image has no CMD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_of_a_service_whose_image_has_no_command_is_backed_up_and_merged_back() {
    let Some(docker) = docker().await else { return };
    let p = docker_support::project_name("nocmd");
    let image = format!("driftless-test/nocmd:{p}");
    let _cleanup = Cleanup::new(&[&p]).image(&image);
    let mut tar = tar::Builder::new(Vec::new());
    docker_support::add_file(
        &mut tar,
        "Dockerfile",
        0o644,
        b"FROM scratch\nCOPY busybox /bin/busybox\n",
    );
    docker_support::add_file(
        &mut tar,
        "busybox",
        0o755,
        &std::fs::read("/bin/busybox").unwrap(),
    );
    docker_support::build_image(&docker, &image, tar.into_inner().unwrap()).await;
    let volume = format!("{p}_data");
    let app = bs::start_service(
        &docker,
        &p,
        "app",
        &image,
        None,
        &["/bin/busybox", "sleep", "3600"],
        &[(&volume, "/data")],
    )
    .await;
    put_files(&docker, &app, "/data", &[("f", b"kept".to_vec())]).await;
    let dir = tempfile::tempdir().unwrap();
    let j = job(
        "files",
        dir.path(),
        BackupSource::Volume {
            project: Some(p.clone()),
            volume: "data".to_owned(),
            service: Some("app".to_owned()),
        },
    );
    let ctx = context(
        &docker,
        vec![bs::project(&p, &["app"], &[("data", &volume)])],
    );
    let report = runner::run(&ctx, &j, BackupTrigger::Cli, None).await;
    assert!(report.succeeded(), "{:?}", report.error);
    let m = runner::pick(&dest(&j).manifests().unwrap(), None).unwrap();
    let plain = runner::read_plain(dest(&j), &m, None).await.unwrap();
    let mut archive = tar::Archive::new(plain.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "driftless-volume/f"), "{names:?}");

    // No /bin/sh in the image to empty the volume with: a clean restore
    // fails naming `--merge`, the volume and the service as they were;
    // `--merge` restores over it.
    put_files(
        &docker,
        &app,
        "/data",
        &[("f", b"changed".to_vec()), ("later", b"new".to_vec())],
    )
    .await;
    let e = runner::restore(&ctx, &j, &m, RestoreMode::Clean)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("/bin/sh") && e.contains("--merge"), "{e}");
    assert!(
        is_running_unpaused(&docker, &app).await,
        "resumed after a failed restore"
    );
    assert_eq!(files(&docker, &app, "/data").await.len(), 2);
    runner::restore(&ctx, &j, &m, RestoreMode::Merge)
        .await
        .unwrap();
    let now = files(&docker, &app, "/data").await;
    assert_eq!(now.get("data/f"), Some(&b"kept".to_vec()));
    assert_eq!(now.get("data/later"), Some(&b"new".to_vec()));
}

/// The restore-test volumes this process left behind.
async fn restore_test_volumes(docker: &Docker) -> Vec<String> {
    let prefix = format!("driftless-restore-test-{}-", std::process::id());
    let list = docker
        .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
        .await
        .unwrap();
    list.volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_restore_test_checks_a_throwaway_copy_and_a_failed_check_deletes_nothing() {
    let Some(docker) = docker().await else { return };
    let va = VolumeApp::start(&docker, "vrt").await;
    let (p, ctx) = (&va.p, &va.ctx);
    put_files(
        &docker,
        &va.app,
        "/data",
        &[("sub/b.txt", b"hello\n".to_vec())],
    )
    .await;
    let tested = |check: &[&str]| {
        let mut j = va.job("files");
        j.retention.keep_last = Some(1);
        j.verify.restore_test = Some(driftless::model::RestoreTest {
            image: BUSYBOX.to_owned(),
            command: vec![],
            check: check.iter().map(|s| (*s).to_owned()).collect(),
        });
        j
    };
    let store = std::sync::Arc::new(Store::open_in_memory().unwrap());

    // The check sees the backed-up files in the throwaway volume.
    let good = tested(&[
        "sh",
        "-c",
        "test \"$(cat /driftless-volume/sub/b.txt)\" = hello",
    ]);
    let report = runner::run(ctx, &good, BackupTrigger::Cli, Some(&store)).await;
    assert!(report.succeeded(), "{:?}", report.error);
    assert!(report.verified);
    let first = report.id.clone().unwrap();

    // A failing check fails the run, leaves the new backup unverified, and
    // retention (keep_last: 1) deletes nothing.
    let bad = tested(&["cat", "/driftless-volume/sub/missing.txt"]);
    let failed = runner::run(ctx, &bad, BackupTrigger::Cli, Some(&store)).await;
    let error = failed.error.expect("the check fails");
    assert!(
        error.contains("restore test check") && error.contains("missing.txt"),
        "{error}"
    );
    let stored = dest(&good).manifests().unwrap();
    assert_eq!(stored.len(), 2, "{stored:#?}");
    assert!(
        stored
            .iter()
            .any(|m| m.id == first && m.verified_at.is_some()),
        "{stored:#?}"
    );
    assert!(
        stored
            .iter()
            .any(|m| m.id != first && m.verified_at.is_none()),
        "{stored:#?}"
    );
    let runs = store.backup_runs("dev", Some("files"), 10).unwrap();
    let outcomes: Vec<BackupOutcome> = runs.iter().map(|(_, r)| r.outcome).collect();
    assert_eq!(outcomes, [BackupOutcome::Failed, BackupOutcome::Succeeded]);

    // A path backup lands under its directory's name in the throwaway volume.
    let mut path_job = tested(&[
        "sh",
        "-c",
        "test \"$(cat /driftless-volume/data/sub/b.txt)\" = hello",
    ]);
    path_job.name = "datapath".to_owned();
    path_job.source = BackupSource::Path {
        project: Some(p.clone()),
        service: "app".to_owned(),
        path: "/data".to_owned(),
    };
    let report = runner::run(ctx, &path_job, BackupTrigger::Cli, None).await;
    assert!(report.succeeded(), "{:?}", report.error);
    assert!(report.verified);

    // Throwaway volumes (and so their containers) are gone either way.
    assert_eq!(restore_test_volumes(&docker).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_copy_still_unpauses_and_failing_source_deletes_nothing() {
    let Some(docker) = docker().await else { return };
    let p = docker_support::project_name("fail");
    let _cleanup = Cleanup::new(&[&p]);
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open_in_memory().unwrap());
    let app = bs::start_service(&docker, &p, "app", BUSYBOX, None, &["sleep", "3600"], &[]).await;
    let ctx = context(&docker, vec![bs::project(&p, &["app"], &[])]);

    // A path that does not exist, with the service paused for the copy.
    let mut path_job = job(
        "path",
        dir.path(),
        BackupSource::Path {
            project: Some(p.clone()),
            service: "app".to_owned(),
            path: "/does/not/exist".to_owned(),
        },
    );
    path_job.consistency = Consistency::Pause;
    let report = runner::run(&ctx, &path_job, BackupTrigger::Cli, Some(&store)).await;
    assert!(!report.succeeded());
    assert!(
        is_running_unpaused(&docker, &app).await,
        "paused for a failed copy, resumed anyway"
    );

    // One good backup, then a failing dump with keep_last 1: nothing deleted.
    let mut good = job(
        "dump",
        dir.path(),
        exec(&p, "app", &["echo", "good data"], None),
    );
    good.retention.keep_last = Some(1);
    assert!(
        runner::run(&ctx, &good, BackupTrigger::Cli, Some(&store))
            .await
            .succeeded()
    );
    let mut bad = good.clone();
    bad.source = exec(
        &p,
        "app",
        &[
            "sh",
            "-c",
            "echo partial; echo 'pg_dump: connection refused' >&2; exit 3",
        ],
        None,
    );
    let report = runner::run(&ctx, &bad, BackupTrigger::Schedule, Some(&store)).await;
    let error = report.error.clone().expect("a failed run");
    assert!(
        error.contains("exited with 3") && error.contains("connection refused"),
        "{error}"
    );
    let runs = store.backup_runs("dev", Some("dump"), 10).unwrap();
    assert_eq!(runs[0].1.outcome, BackupOutcome::Failed);
    assert_eq!(runs[0].1.error.as_deref(), Some(error.as_str()));
    // A destination that cannot be written: the writer's error is the run's.
    let mut unwritable = good.clone();
    unwritable.destination = Dest::Local {
        path: "/proc/driftless-unwritable".to_owned(),
    };
    let error = runner::run(&ctx, &unwritable, BackupTrigger::Cli, None)
        .await
        .error
        .unwrap();
    assert!(error.contains("/proc/driftless-unwritable"), "{error}");
    let kept = dest(&good).manifests().unwrap();
    assert_eq!(kept.len(), 1, "the good backup stays");
    assert_eq!(
        std::fs::read_dir(LocalDir::new(dir.path(), "dev", "dump").dir())
            .unwrap()
            .count(),
        2,
        "one object and its manifest, no partial file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_corruption_and_retention_keeps_the_newest() {
    let Some(docker) = docker().await else { return };
    let p = docker_support::project_name("verify");
    let _cleanup = Cleanup::new(&[&p]);
    let dir = tempfile::tempdir().unwrap();
    let app = bs::start_service(&docker, &p, "app", BUSYBOX, None, &["sleep", "3600"], &[]).await;
    let ctx = context(&docker, vec![bs::project(&p, &["app"], &[])]);
    let mut j = job(
        "dump",
        dir.path(),
        exec(&p, "app", &["cat", "/bin/busybox"], None),
    );
    j.retention.keep_last = Some(2);
    let mut ids = Vec::new();
    for _ in 0..4 {
        let r = runner::run(&ctx, &j, BackupTrigger::Cli, None).await;
        assert!(r.succeeded(), "{:?}", r.error);
        ids.push(r.id.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let d = dest(&j);
    let kept: Vec<String> = d.manifests().unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(kept, ids[2..].to_vec(), "keep_last 2 keeps the two newest");

    // Runs of one job started together (a schedule and a deploy's
    // before_apply) take turns: none fails in another's retention.
    let mut burst = j.clone();
    burst.name = "burst".into();
    let together = futures_util::future::join_all(
        (0..3).map(|_| runner::run(&ctx, &burst, BackupTrigger::Cli, None)),
    )
    .await;
    for r in &together {
        assert!(r.succeeded(), "{:?}", r.error);
    }
    let newest: Vec<String> = together.iter().map(|r| r.id.clone().unwrap()).collect();
    let mut newest_two = newest.clone();
    newest_two.sort();
    let kept: Vec<String> = dest(&burst)
        .manifests()
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(kept, newest_two[1..].to_vec());

    // Flip one byte of the newest object: verify fails and unmarks it.
    let mut newest = d.manifests().unwrap().pop().unwrap();
    let path = LocalDir::new(dir.path(), "dev", "dump")
        .dir()
        .join(&newest.object);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let err = runner::verify_stored(d.clone(), &mut newest, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&newest.object), "{err}");
    runner::mark_unverified(d.clone(), &newest).await;
    let picked = runner::pick(&d.manifests().unwrap(), None).unwrap();
    assert_eq!(
        picked.id, ids[2],
        "restore falls back to the newest verified backup"
    );
    let _ = app;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backup_round_trips_with_the_identity_only() {
    use age::secrecy::ExposeSecret;
    let Some(docker) = docker().await else { return };
    let p = docker_support::project_name("age");
    let _cleanup = Cleanup::new(&[&p]);
    let dir = tempfile::tempdir().unwrap();
    bs::start_service(&docker, &p, "app", BUSYBOX, None, &["sleep", "3600"], &[]).await;
    let key = age::x25519::Identity::generate();
    let mut j = job(
        "secret",
        dir.path(),
        exec(&p, "app", &["cat", "/etc/passwd"], None),
    );
    j.encryption_recipients = vec![key.to_public().to_string()];
    let identities = Identities::parse(key.to_string().expose_secret()).unwrap();
    let ctx =
        context(&docker, vec![bs::project(&p, &["app"], &[])]).with_identities(Some(identities));
    let r = runner::run(&ctx, &j, BackupTrigger::Cli, None).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert!(r.location.unwrap().ends_with(".dump.zst.age"));
    let d = dest(&j);
    let m = runner::pick(&d.manifests().unwrap(), None).unwrap();
    let stored = std::fs::read(
        LocalDir::new(dir.path(), "dev", "secret")
            .dir()
            .join(&m.object),
    )
    .unwrap();
    assert!(
        !stored.windows(4).any(|w| w == b"root"),
        "the stored object is ciphertext"
    );
    let plain = runner::read_plain(d.clone(), &m, ctx.identities.clone())
        .await
        .unwrap();
    assert!(String::from_utf8(plain).unwrap().starts_with("root:x:0:0"));
    let err = runner::read_plain(d, &m, None).await.unwrap_err();
    assert!(
        err.to_string().contains("DRIFTLESS_BACKUP_IDENTITY_FILE"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_runs_lists_verifies_and_restores_a_deployed_volume() {
    use crate::support::{RepoBuilder, driftless, git};
    let Some(docker) = docker().await else { return };
    let project = docker_support::project_name("bcli");
    let _cleanup = Cleanup::new(&[&project]);
    let env = format!("e{}", project.trim_start_matches("dlt-"));
    let dest_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let repo = RepoBuilder::new()
        .file(
            "driftless.yaml",
            format!("apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n"),
        )
        .file("environments/values.yaml", "{}\n")
        .file(
            "compose/stack.yaml.j2",
            format!("name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    environment:\n      TOKEN: \"{{{{ secret('token') }}}}\"\n    volumes:\n      - data:/data\nvolumes:\n  data: {{}}\n"),
        )
        .file(
            "backups/jobs.yaml",
            format!(
                "jobs:\n  - name: files\n    schedule: \"0 3 * * 1\"\n    timezone: Europe/Berlin\n    source: {{ volume: {{ volume: data, service: app }} }}\n    consistency: pause\n    destination: {{ local: {dir} }}\n    retention: {{ keep_last: 2 }}\n  - name: config\n    schedule: \"@daily\"\n    source: {{ config: {{}} }}\n    destination: {{ local: {dir} }}\n",
                dir = dest_dir.path().display()
            ),
        );
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "v1"]);
    let state_dir = state.path().to_str().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("token"), "tok-BACKUP-SECRET-4242\n").unwrap();
    let secrets_dir = secrets.path().to_str().unwrap();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--env",
            &env,
            "--state-dir",
            state_dir,
            "--secrets-dir",
            secrets_dir,
        ]);
        driftless(repo.path(), &all)
    };
    let deployed = cli(&["reconcile"]);
    assert_eq!(deployed.code, 0, "{deployed:?}");
    let app = driftless::backup::docker::one_container(&docker, &project, "app")
        .await
        .unwrap();
    bs::exec(&docker, &app, &["sh", "-c", "echo precious > /data/f"])
        .await
        .unwrap();

    let run = cli(&["backup", "run", "files"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("verified"), "{run:?}");
    assert!(is_running_unpaused(&docker, &app).await);
    let list = cli(&["backup", "list", "--output", "json"]);
    assert_eq!(list.code, 0, "{list:?}");
    let doc: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(doc[0]["job"], "files");
    assert_eq!(doc[0]["backups"].as_array().unwrap().len(), 1);
    // Monday 03:00 in Berlin is 02:00 or 01:00 UTC, on a Monday.
    let next: chrono::DateTime<chrono::Utc> = doc[0]["next_run"].as_str().unwrap().parse().unwrap();
    let berlin =
        next.with_timezone(&driftless::check::schedule::timezone("Europe/Berlin").unwrap());
    assert_eq!(chrono::Datelike::weekday(&berlin), chrono::Weekday::Mon);
    assert_eq!(chrono::Timelike::hour(&berlin), 3);

    bs::exec(&docker, &app, &["sh", "-c", "echo broken > /data/f"])
        .await
        .unwrap();
    let refused = cli(&["backup", "restore", "files"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    let restored = cli(&["backup", "restore", "files", "--yes"]);
    assert_eq!(restored.code, 0, "{restored:?}");
    let app = driftless::backup::docker::one_container(&docker, &project, "app")
        .await
        .unwrap();
    assert_eq!(
        bs::exec(&docker, &app, &["cat", "/data/f"]).await.unwrap(),
        "precious\n"
    );
    let verify = cli(&["backup", "verify", "files"]);
    assert_eq!(verify.code, 0, "{verify:?}");

    // The rendered configuration, with the secret value masked.
    let config = cli(&["backup", "run", "config"]);
    assert_eq!(config.code, 0, "{config:?}");
    let out = dest_dir.path().join("config.tar");
    let written = cli(&[
        "backup",
        "restore",
        "config",
        "--output-file",
        out.to_str().unwrap(),
    ]);
    assert_eq!(written.code, 0, "{written:?}");
    let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
    let mut stack = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("compose/stack.yaml") {
            std::io::Read::read_to_string(&mut entry, &mut stack).unwrap();
        }
    }
    assert!(
        stack.contains("TOKEN") && stack.contains(&project),
        "{stack}"
    );
    assert!(!stack.contains("tok-BACKUP-SECRET-4242"), "{stack}");

    let unknown = cli(&["backup", "run", "nope"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("jobs: files, config"),
        "{unknown:?}"
    );
}

/// Waits for the first notification of `kind` the receiver got; its body.
async fn notification(
    receiver: &crate::daemon_support::Receiver,
    kind: &str,
    log: &dyn Fn() -> String,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let kind_field = format!("\"kind\":\"{kind}\"");
        if let Some(b) = receiver.all().into_iter().find(|b| b.contains(&kind_field)) {
            return b;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waiting for a {kind} notification: {:?}\ndaemon log:\n{}",
            receiver.all(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls the daemon's store until `pred` holds for the runs of `job`.
async fn wait_runs(
    state: &std::path::Path,
    env: &str,
    job: &str,
    what: &str,
    pred: impl Fn(&[(i64, driftless::store::BackupRun)]) -> bool,
    log: &dyn Fn() -> String,
) -> Vec<(i64, driftless::store::BackupRun)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(store) = Store::open(state) {
            let runs = store.backup_runs(env, Some(job), 100).unwrap_or_default();
            if pred(&runs) {
                return runs;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waiting for {what}: {runs:#?}\ndaemon log:\n{}",
                log()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_runs_jobs_on_schedule_and_before_an_apply() {
    use crate::daemon_support::{Bare, Daemon, Options};
    let Some(_docker) = docker().await else {
        return;
    };
    let project = docker_support::project_name("bsched");
    let _cleanup = Cleanup::new(&[&project]);
    let env = format!("e{}", project.trim_start_matches("dlt-"));
    let dest_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let receiver = crate::daemon_support::Receiver::start().await;
    // "bad" fails its health check: the deploy is rolled back.
    let stack = |greeting: &str| {
        let health = if greeting == "bad" {
            "    healthcheck: { test: [\"CMD\", \"false\"], interval: 1s, timeout: 1s, retries: 1 }\n"
        } else {
            ""
        };
        format!(
            "name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sleep, \"3600\"]\n    environment:\n      GREETING: {greeting}\n{health}"
        )
    };
    let files = |greeting: &str| {
        vec![
            (
                "driftless.yaml",
                format!(
                    "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\nnotifications:\n  hook: {{ webhook: \"{notify}/notify\" }}\n",
                    notify = receiver.url
                ),
            ),
            ("environments/values.yaml", "{}\n".to_owned()),
            ("compose/stack.yaml", stack(greeting)),
            (
                "backups/jobs.yaml",
                format!(
                    "jobs:\n  - name: tick\n    schedule: \"*/2 * * * * *\"\n    source: {{ exec: {{ service: app, command: [echo, tick] }} }}\n    destination: {{ local: {dir} }}\n    retention: {{ keep_last: 3 }}\n    before_apply: true\n    run_missed: true\n  - name: broken\n    schedule: \"*/5 * * * * *\"\n    source: {{ exec: {{ service: app, command: [sh, -c, \"echo disk full >&2; exit 3\"] }} }}\n    destination: {{ local: {dir} }}\n",
                    dir = dest_dir.path().display()
                ),
            ),
        ]
    };
    let as_refs = |v: &[(&'static str, String)]| v.to_vec();
    let bare = Bare::new(&as_refs(&files("one")));
    let options = Options {
        repo: bare.path(),
        env: env.clone(),
        state_dir: state.path().to_owned(),
        secrets_dir: secrets.path().to_owned(),
        poll: "1s",
        watch: false,
        extra: String::new(),
        vars: vec![],
    };
    let d = Daemon::start(&options);
    // Scheduled runs start once a commit is deployed good.
    let runs = wait_runs(
        state.path(),
        &env,
        "tick",
        "two scheduled runs",
        |r| {
            r.iter()
                .filter(|(_, run)| {
                    run.trigger == BackupTrigger::Schedule
                        && run.outcome == BackupOutcome::Succeeded
                })
                .count()
                >= 2
        },
        &|| d.log_text(),
    )
    .await;
    assert!(
        runs.iter()
            .filter(|(_, r)| r.outcome == BackupOutcome::Succeeded)
            .all(|(_, r)| r.verified == Some(true)),
        "{runs:#?}"
    );

    // A failing scheduled run notifies, naming the job and why.
    let failed = notification(&receiver, "backup_failed", &|| d.log_text()).await;
    assert!(
        failed.contains("backup job broken failed") && failed.contains("disk full"),
        "{failed}"
    );

    // A change runs the before_apply job first, recorded with that deploy.
    let one = crate::daemon_support::git(&bare.path(), &["rev-parse", "HEAD"])
        .trim()
        .to_owned();
    bare.commit(&as_refs(&files("two")), "two");
    let runs = wait_runs(
        state.path(),
        &env,
        "tick",
        "a before_apply run",
        |r| {
            r.iter()
                .any(|(_, run)| run.trigger == BackupTrigger::BeforeApply)
        },
        &|| d.log_text(),
    )
    .await;
    let before = runs
        .iter()
        .find(|(_, r)| r.trigger == BackupTrigger::BeforeApply)
        .unwrap();
    assert_eq!(before.1.outcome, BackupOutcome::Succeeded, "{before:#?}");
    let reconcile_id = before.1.reconcile_id.expect("recorded with its deploy");
    let h = Daemon::history(state.path(), &env);
    let rows = h["reconciles"].as_array().unwrap();
    // `history` names the backup taken before that deploy (JSON and text).
    let before_id = driftless::backup::deploys::backup_id(before.1.started_at);
    let row = rows
        .iter()
        .find(|r| r["id"] == reconcile_id)
        .unwrap_or_else(|| panic!("reconcile {reconcile_id} in history: {h:#}"));
    assert_eq!(row["backups"][0]["job"], "tick", "{row:#}");
    assert_eq!(row["backups"][0]["id"], before_id.as_str(), "{row:#}");
    let state_arg = state.path().to_str().unwrap();
    let (code, text, err) =
        crate::daemon_support::cli(&["history", "--env", &env, "--state-dir", state_arg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(&format!("backup before apply: job tick id {before_id}")),
        "{text}"
    );

    // So does the API's answer for that reconcile.
    let api = d
        .client()
        .get(d.url(&format!("/api/v1/reconciles/{reconcile_id}")))
        .bearer_auth(crate::daemon_support::API_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(
        api["reconcile"]["backups"][0]["id"],
        before_id.as_str(),
        "{api:#}"
    );

    // A deploy that fails its health check is rolled back; the notification
    // names the backup taken before it (while "two" ran).
    bare.commit(&as_refs(&files("bad")), "bad");
    let rolled_back = notification(&receiver, "rolled_back", &|| d.log_text()).await;
    let store = Store::open(state.path()).unwrap();
    let bad_backup = store
        .backup_runs(&env, Some("tick"), 100)
        .unwrap()
        .into_iter()
        .find(|(_, r)| {
            r.trigger == BackupTrigger::BeforeApply && r.reconcile_id != Some(reconcile_id)
        })
        .expect("a before_apply run for the bad deploy");
    drop(store);
    let bad_id = driftless::backup::deploys::backup_id(bad_backup.1.started_at);
    assert!(
        rolled_back.contains(&format!("matching backup: job tick id {bad_id}")),
        "{rolled_back}"
    );
    // Retention keeps at most three backups at the destination.
    let stored = LocalDir::new(dest_dir.path(), &env, "tick")
        .manifests()
        .unwrap();
    assert!(stored.len() <= 3 + 1, "{} stored", stored.len());

    // Down across a scheduled time: the restart reports it and, as the job
    // sets run_missed, runs it once.
    drop(d);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = Daemon::start(&options);
    wait_runs(
        state.path(),
        &env,
        "tick",
        "a missed run",
        |r| {
            r.iter().any(|(_, run)| {
                run.trigger == BackupTrigger::Missed && run.outcome == BackupOutcome::Succeeded
            })
        },
        &|| d.log_text(),
    )
    .await;
    assert!(d.log_text().contains("missed its run"), "{}", d.log_text());
    drop(d);

    // `rollback` to the first commit names the backup taken while it ran
    // (before the deploy of "two"), and how to restore it.
    let (code, out, err) = crate::daemon_support::cli(&[
        "rollback",
        "--env",
        &env,
        "--to",
        &one,
        "--state-dir",
        state_arg,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "matching backup: job tick id {before_id}; restore with `driftless backup restore tick --env {env} --id {before_id}`"
        )),
        "{out}"
    );
}

/// #17 item 1: CLI restores while the daemon drives the environment (a
/// drift check every second). Each restore stops the service; the daemon's
/// passes wait on the environment's operation lock instead of restarting
/// the container mid-restore and judging the commit by it. Every restore
/// succeeds, the last good commit is never marked failed, and drift
/// correction still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_restores_while_the_daemon_runs_never_poison_the_last_good_commit() {
    use crate::daemon_support::{Bare, Daemon, Options, cli};
    let Some(docker) = docker().await else { return };
    let project = docker_support::project_name("brace");
    let _cleanup = Cleanup::new(&[&project]);
    let env = format!("e{}", project.trim_start_matches("dlt-"));
    let dest_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let files = vec![
        (
            "driftless.yaml",
            format!(
                "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {{}}\nenvironments:\n  {env}:\n    values: environments/values.yaml\n    targets: [local]\n    health: {{ deadline: 60s, settle: 1s }}\n    drift_interval: 1s\n"
            ),
        ),
        ("environments/values.yaml", "{}\n".to_owned()),
        (
            "compose/stack.yaml",
            format!(
                // Stopped, it exits 143 as a server killed by SIGTERM does:
                // a verdict the daemon would act on.
                "name: {project}\nservices:\n  app:\n    image: {BUSYBOX}\n    command: [sh, -c, \"trap 'exit 143' TERM; sleep 3600 & wait\"]\n    volumes:\n      - data:/data\nvolumes:\n  data: {{}}\n"
            ),
        ),
        (
            "backups/jobs.yaml",
            format!(
                "jobs:\n  - name: files\n    schedule: \"0 3 * * 1\"\n    source: {{ volume: {{ volume: data, service: app }} }}\n    consistency: stop\n    destination: {{ local: {} }}\n",
                dest_dir.path().display()
            ),
        ),
    ];
    let bare = Bare::new(&files);
    let c1 = crate::daemon_support::git(&bare.path(), &["rev-parse", "main"]);
    let mut d = Daemon::start(&Options {
        repo: bare.path(),
        env: env.clone(),
        state_dir: state.path().to_owned(),
        secrets_dir: secrets.path().to_owned(),
        poll: "1s",
        watch: false,
        extra: String::new(),
        vars: vec![],
    });
    d.ready().await;
    let long = Duration::from_secs(120);
    d.wait(&env, "first deploy", long, |s| {
        s["last_good"]["commit"] == c1
    })
    .await;
    let app = driftless::backup::docker::one_container(&docker, &project, "app")
        .await
        .unwrap();
    // Enough data that a restore takes a few polls' time.
    bs::exec(
        &docker,
        &app,
        &[
            "sh",
            "-c",
            "echo precious > /data/f && head -c 100000000 /dev/urandom > /data/big",
        ],
    )
    .await
    .unwrap();

    let repo = bare.path().to_str().unwrap().to_owned();
    let state_arg = state.path().to_str().unwrap().to_owned();
    let secrets_arg = secrets.path().to_str().unwrap().to_owned();
    let with_env = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--env",
            &env,
            "--repo",
            &repo,
            "--rev",
            "main",
            "--state-dir",
            &state_arg,
            "--secrets-dir",
            &secrets_arg,
        ]);
        cli(&all)
    };
    let (code, _, err) = with_env(&["backup", "run", "files"]);
    assert_eq!(code, 0, "{err}\n{}", d.log_text());
    for round in 0..4 {
        let app = driftless::backup::docker::one_container(&docker, &project, "app")
            .await
            .unwrap();
        bs::exec(&docker, &app, &["sh", "-c", "echo broken > /data/f"])
            .await
            .unwrap();
        let (code, out, err) = with_env(&["backup", "restore", "files", "--yes"]);
        assert_eq!(code, 0, "restore {round}: {out}{err}\n{}", d.log_text());
        let app = driftless::backup::docker::one_container(&docker, &project, "app")
            .await
            .unwrap();
        assert_eq!(
            bs::exec(&docker, &app, &["cat", "/data/f"]).await.unwrap(),
            "precious\n",
            "restore {round}"
        );
    }
    let s = d.status(&env).await.expect("status");
    let failed = s["failed_commits"]
        .as_array()
        .is_some_and(|a| a.iter().any(|f| f["commit"] == c1));
    assert!(!failed, "the last good commit was marked failed: {s}");
    assert_eq!(s["last_good"]["commit"], c1, "{s}");
    assert!(s["control"]["suspended"].is_null(), "{s}");

    // Drift correction still runs: a removed container comes back (found
    // by a poll's fingerprint or the drift timer, whichever is first).
    let app = driftless::backup::docker::one_container(&docker, &project, "app")
        .await
        .unwrap();
    let out = std::process::Command::new("docker")
        .args(["rm", "-f", &app])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let last = s["last_reconcile"]["id"].as_i64().unwrap_or(0);
    d.wait(&env, "drift corrected", long, |s| {
        s["last_reconcile"]["id"].as_i64().unwrap_or(0) > last
            && s["last_reconcile"]["outcome"] == "healthy"
    })
    .await;
    let back = driftless::backup::docker::one_container(&docker, &project, "app")
        .await
        .unwrap();
    assert_eq!(
        bs::exec(&docker, &back, &["cat", "/data/f"]).await.unwrap(),
        "precious\n"
    );
}
