//! Project structure: `include:`, override files merged over the main
//! file, and the Compose merge rules between files.

use super::Repo;
use crate::check::compose::Options;
use crate::model::compose::{Mount, Project};

fn with_overrides(repo: &Repo, file: &str, overrides: &[&str]) -> Result<Project, Vec<String>> {
    let overrides: Vec<String> = overrides.iter().map(|s| (*s).to_owned()).collect();
    let options = Options {
        overrides: &overrides,
        ..Options::default()
    };
    repo.load_opts(file, &options)
        .map(|(p, _)| p)
        .map_err(|d| d.into_iter().map(|d| d.to_string()).collect())
}

#[test]
fn an_included_file_brings_its_services_networks_and_volumes() {
    let repo = Repo::new(&[
        (
            "compose/app.yaml",
            "name: shop\ninclude:\n  - ../db/compose.yaml\nservices:\n  web:\n    image: web:1\n    depends_on: [db]\n    networks: [back]\n",
        ),
        (
            "db/compose.yaml",
            "services:\n  db:\n    image: postgres:${PG:-16}\n    env_file: db.env\n    volumes: [data:/var/lib/postgresql/data, ./init.sql:/docker-entrypoint-initdb.d/init.sql]\n    networks: [back]\nnetworks:\n  back: {}\nvolumes:\n  data: {}\n",
        ),
        ("db/db.env", "POSTGRES_PASSWORD=pw\n"),
        ("db/.env", "PG=15\n"),
        ("db/init.sql", "select 1;\n"),
    ]);
    let (p, _) = repo.ok("compose/app.yaml");
    assert_eq!(p.name, "shop");
    assert_eq!(
        p.services.keys().collect::<Vec<_>>(),
        ["db", "web"],
        "{p:#?}"
    );
    let db = &p.services["db"];
    // The included project's `.env` interpolates its file; its relative
    // paths resolve from its own directory.
    assert_eq!(db.image, "postgres:15");
    assert_eq!(db.environment["POSTGRES_PASSWORD"].as_deref(), Some("pw"));
    assert_eq!(db.files[0].source, "db/init.sql");
    assert_eq!(db.origin.file, "db/compose.yaml");
    assert!(
        db.volumes
            .iter()
            .any(|m| matches!(m, Mount::Volume { source: Some(s), .. } if s == "data"))
    );
    // Networks and volumes take the including project's name.
    assert_eq!(p.networks["back"].name, "shop_back");
    assert_eq!(p.volumes["data"].name, "shop_data");
}

#[test]
fn the_including_projects_variables_win_over_the_included_env_file() {
    let repo = Repo::new(&[
        (
            "compose/app.yaml",
            "include:\n  - path: ../db/compose.yaml\n    env_file: ../db/prod.env\n    project_directory: ../db\nservices:\n  web: {image: web}\n",
        ),
        ("db/compose.yaml", "services:\n  db: {image: 'postgres:${PG}', labels: {tier: '${TIER}'}}\n"),
        ("db/prod.env", "PG=14\nTIER=db\n"),
    ])
    .var("TIER", "data");
    let (p, _) = repo.ok("compose/app.yaml");
    assert_eq!(p.services["db"].image, "postgres:14");
    assert_eq!(p.services["db"].labels["tier"], "data");
}

#[test]
fn an_include_conflicting_with_a_local_definition_is_refused_at_its_line() {
    let repo = Repo::new(&[
        (
            "compose/app.yaml",
            "include: [db.yaml]\nservices:\n  web: {image: web}\n  db: {image: mysql}\n",
        ),
        ("compose/db.yaml", "services:\n  db: {image: postgres}\n"),
    ]);
    let errors = repo.err("compose/app.yaml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!(e.file.as_deref(), Some("compose/app.yaml"));
    assert_eq!(e.line, Some(4), "{e}");
    assert!(
        e.message.contains(
            "service `db` is defined here and, differently, by the included `compose/db.yaml`"
        ),
        "{e}"
    );
    assert!(e.hint.as_deref().unwrap_or("").contains("override"), "{e}");
    // The same definition twice is no conflict (a file included by two).
    let repo = Repo::new(&[
        (
            "compose/app.yaml",
            "include: [a.yaml, b.yaml]\nservices:\n  web: {image: web}\n",
        ),
        (
            "compose/a.yaml",
            "include: [common.yaml]\nservices:\n  a: {image: a}\n",
        ),
        (
            "compose/b.yaml",
            "include: [common.yaml]\nservices:\n  b: {image: b}\n",
        ),
        (
            "compose/common.yaml",
            "services:\n  redis: {image: redis}\n",
        ),
    ]);
    let (p, _) = repo.ok("compose/app.yaml");
    assert_eq!(p.services.len(), 4);
}

#[test]
fn include_cycles_and_missing_files_are_refused_with_file_and_line() {
    let repo = Repo::new(&[
        (
            "compose/app.yaml",
            "include:\n  - a.yaml\nservices:\n  web: {image: web}\n",
        ),
        (
            "compose/a.yaml",
            "services:\n  a: {image: a}\ninclude:\n  - app.yaml\n",
        ),
    ]);
    let errors = repo.err("compose/app.yaml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].file.as_deref(), Some("compose/a.yaml"));
    assert_eq!(errors[0].line, Some(4));
    assert!(
        errors[0]
            .message
            .contains("`include` cycle: compose/app.yaml -> compose/a.yaml -> compose/app.yaml"),
        "{}",
        errors[0]
    );
    assert!(errors[0].hint.is_some());

    let repo = Repo::new(&[(
        "compose/app.yaml",
        "services:\n  web: {image: web}\ninclude:\n  - path: [missing.yaml]\n",
    )]);
    let errors = repo.err("compose/app.yaml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].line, Some(4));
    assert!(
        errors[0]
            .message
            .contains("`compose/missing.yaml` is not in the repository"),
        "{}",
        errors[0]
    );
    // A path out of the repo, an unknown key and an entry without `path`.
    let repo = Repo::new(&[
        (
            "compose/app.yaml",
            "services:\n  web: {image: web}\ninclude:\n  - ../../x.yaml\n  - {path: a.yaml, watch: true}\n  - {env_file: a.env}\n",
        ),
        ("compose/a.yaml", "services:\n  a: {image: a}\n"),
    ]);
    let errors = repo.err("compose/app.yaml");
    let lines: Vec<_> = errors.iter().map(|e| (e.line, e.object.clone())).collect();
    assert_eq!(
        lines,
        [
            (Some(4), Some("include[0]".to_owned())),
            (Some(5), Some("include[1].watch".to_owned())),
            (Some(6), Some("include[2]".to_owned())),
        ],
        "{errors:#?}"
    );
}

#[test]
fn an_override_file_merges_over_the_main_file_with_compose_rules() {
    let repo = Repo::new(&[
        (
            "compose/compose.yaml",
            "services:\n  web:\n    image: web:1\n    command: [serve, --port, '80']\n    ports: ['8080:80']\n    environment: {A: '1', B: '2'}\n    volumes: [data:/data, ./a.conf:/etc/a.conf]\n  worker: {image: worker}\nvolumes:\n  data: {}\n",
        ),
        (
            "compose/compose.override.yaml",
            "services:\n  web:\n    image: web:2\n    command: [serve]\n    ports: ['9090:90']\n    environment: {B: '3'}\n    volumes: [other:/data]\n  worker: !reset\n  debug: {image: busybox}\nvolumes:\n  other: {}\n",
        ),
        ("compose/a.conf", "x\n"),
    ]);
    let p = with_overrides(
        &repo,
        "compose/compose.yaml",
        &["compose/compose.override.yaml"],
    )
    .unwrap();
    assert_eq!(p.services.keys().collect::<Vec<_>>(), ["debug", "web"]);
    let web = &p.services["web"];
    assert_eq!(web.image, "web:2");
    assert_eq!(web.command.as_deref(), Some(&["serve".to_owned()][..]));
    assert_eq!(web.ports.len(), 2);
    assert_eq!(web.environment["A"].as_deref(), Some("1"));
    assert_eq!(web.environment["B"].as_deref(), Some("3"));
    // Volumes merge by target: `/data` is now `other`.
    assert_eq!(
        web.volumes,
        [Mount::Volume {
            subpath: None,
            source: Some("other".into()),
            target: "/data".into(),
            read_only: false,
            no_copy: false,
        }]
    );
    assert_eq!(web.files[0].target, "/etc/a.conf");
}

#[test]
fn an_override_error_points_at_the_override_file() {
    let repo = Repo::new(&[
        ("compose/app.yaml", "services:\n  web: {image: web}\n"),
        (
            "compose/prod/app.yaml",
            "services:\n  web:\n    restart: sometimes\n    env_file: prod.env\n",
        ),
        ("compose/prod.env", "A=1\n"),
    ]);
    let errors = with_overrides(&repo, "compose/app.yaml", &["compose/prod/app.yaml"]).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("error: compose/prod/app.yaml:3:"),
        "{errors:#?}"
    );
    // Relative paths of an override resolve from the main file's
    // directory, as docker compose resolves every `-f` file.
    let repo = Repo::new(&[
        ("compose/app.yaml", "services:\n  web: {image: web}\n"),
        (
            "compose/prod/app.yaml",
            "services:\n  web:\n    env_file: prod.env\n",
        ),
        ("compose/prod.env", "A=1\n"),
    ]);
    let p = with_overrides(&repo, "compose/app.yaml", &["compose/prod/app.yaml"]).unwrap();
    assert_eq!(p.services["web"].environment["A"].as_deref(), Some("1"));
}

#[test]
fn an_override_may_change_an_included_service() {
    let repo = Repo::new(&[
        (
            "compose/compose.yaml",
            "include: [../db/compose.yaml]\nservices:\n  web: {image: web}\n",
        ),
        (
            "db/compose.yaml",
            "services:\n  db: {image: 'postgres:16', restart: always}\n",
        ),
        (
            "compose/compose.override.yaml",
            "services:\n  db: {image: 'postgres:17'}\n",
        ),
    ]);
    let p = with_overrides(
        &repo,
        "compose/compose.yaml",
        &["compose/compose.override.yaml"],
    )
    .unwrap();
    assert_eq!(p.services["db"].image, "postgres:17");
    assert_eq!(p.services["db"].restart.as_deref(), Some("always"));
}

#[test]
fn default_override_names_follow_docker_compose() {
    use crate::check::compose::default_override;
    let files = [
        "compose/compose.override.yaml",
        "docker-compose.override.yml",
    ];
    let exists = |p: &str| files.contains(&p);
    assert_eq!(
        default_override("compose/compose.yaml", &exists).as_deref(),
        Some("compose/compose.override.yaml")
    );
    assert_eq!(
        default_override("docker-compose.yml", &exists).as_deref(),
        Some("docker-compose.override.yml")
    );
    assert_eq!(default_override("compose/stack.yaml", &exists), None);
}
