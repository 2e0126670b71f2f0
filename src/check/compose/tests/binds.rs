//! Bind mounts as docker compose reads them: relative directories become
//! one shared volume per directory, and the options and forms of the
//! short and long syntax (`z`/`Z`, propagation, `nocopy`,
//! `create_host_path`, `~`).

use super::{Repo, one, single_error};
use crate::model::compose::{BIND_LISTING, Mount};

fn mounts(text: &str) -> (Vec<Mount>, Vec<crate::diag::Diagnostic>) {
    let (p, warnings) = one(text).ok("compose/stack.yaml");
    (p.services["app"].volumes.clone(), warnings)
}

fn bind(source: &str, target: &str, read_only: bool) -> Mount {
    Mount::Bind {
        recursive: None,
        source: source.into(),
        target: target.into(),
        read_only,
        selinux: None,
        propagation: None,
        create_host_path: true,
    }
}

#[test]
fn short_syntax_options_map_to_the_bind() {
    let (m, warnings) = mounts(
        "services:\n  app:\n    image: x\n    volumes:\n      - /srv/a:/a:ro,z\n      - /srv/b:/b:Z,rshared\n      - /srv/c:/c:rslave,cached\n",
    );
    assert!(warnings.is_empty(), "{warnings:#?}");
    let with = |m: Mount, selinux: Option<&str>, propagation: Option<&str>| match m {
        Mount::Bind {
            source,
            target,
            read_only,
            create_host_path,
            ..
        } => Mount::Bind {
            recursive: None,
            source,
            target,
            read_only,
            selinux: selinux.map(Into::into),
            propagation: propagation.map(Into::into),
            create_host_path,
        },
        other => other,
    };
    assert_eq!(
        m,
        [
            with(bind("/srv/a", "/a", true), Some("z"), None),
            with(bind("/srv/b", "/b", false), Some("Z"), Some("rshared")),
            with(bind("/srv/c", "/c", false), None, Some("rslave")),
        ]
    );
}

#[test]
fn long_syntax_bind_options_and_volume_nocopy() {
    let (m, warnings) = mounts(
        "services:\n  app:\n    image: x\n    volumes:\n      - type: bind\n        source: /srv/a\n        target: /a\n        bind: {propagation: rshared, create_host_path: true, selinux: z}\n      - type: bind\n        source: /srv/b\n        target: /b\n      - type: volume\n        source: data\n        target: /data\n        volume: {nocopy: true}\n      - data2:/data2:nocopy\nvolumes: {data: {}, data2: {}}\n",
    );
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(
        m[0],
        Mount::Bind {
            recursive: None,
            source: "/srv/a".into(),
            target: "/a".into(),
            read_only: false,
            selinux: Some("z".into()),
            propagation: Some("rshared".into()),
            create_host_path: true,
        }
    );
    // The long syntax creates nothing unless asked, as docker compose.
    assert!(matches!(
        &m[1],
        Mount::Bind {
            create_host_path: false,
            ..
        }
    ));
    for v in &m[2..] {
        assert!(matches!(v, Mount::Volume { no_copy: true, .. }), "{v:?}");
    }
}

#[test]
fn wrong_bind_options_name_their_path() {
    let e = single_error(
        &one(
            "services:\n  app:\n    image: x\n    volumes:\n      - type: bind\n        source: /srv\n        target: /a\n        bind: {propagation: sideways}\n",
        ),
        8,
        "services.app.volumes[0].bind.propagation",
    );
    assert!(e.message.contains("rshared"), "{e}");
    single_error(
        &one(
            "services:\n  app:\n    image: x\n    volumes:\n      - type: bind\n        source: /srv\n        target: /a\n        bind: {selinux: q}\n",
        ),
        8,
        "services.app.volumes[0].bind.selinux",
    );
    let e = single_error(
        &one("services:\n  app:\n    image: x\n    volumes: ['/srv:/a:bogus']\n"),
        4,
        "services.app.volumes[0]",
    );
    assert!(e.hint.unwrap().contains("nocopy"));
}

#[test]
fn options_without_effect_are_warnings() {
    let (_, warnings) = mounts(
        "services:\n  app:\n    image: x\n    volumes: ['/srv:/a:nocopy', 'data:/d:z']\nvolumes: {data: {}}\n",
    );
    let messages: Vec<&str> = warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(messages[0].contains("nocopy"));
    assert!(messages[1].contains("bind mounts"));
}

#[test]
fn a_home_directory_source_is_kept_with_a_warning_at_its_line() {
    let (m, warnings) = mounts("services:\n  app:\n    image: x\n    volumes: ['~/data:/data']\n");
    assert_eq!(m, [bind("~/data", "/data", false)]);
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].line, Some(4));
    assert!(warnings[0].message.contains("user running driftless"));
    // `~user` is another user's home: docker compose would misread it.
    single_error(
        &one("services:\n  app:\n    image: x\n    volumes: ['~bob/data:/data']\n"),
        4,
        "services.app.volumes[0]",
    );
}

#[test]
fn services_binding_one_directory_get_its_files_once_per_project() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            "services:\n  app:\n    image: x\n    volumes: ['./shared:/shared', './shared/a.txt:/etc/a.txt']\n  web:\n    image: y\n    volumes: ['./shared:/srv:ro']\n",
        ),
        ("compose/shared/a.txt", "a"),
        ("compose/shared/sub/b.sh", "#!/bin/sh\n"),
        ("compose/shared/sub/c.sh", "#!/bin/sh\n"),
    ])
    .executable("compose/shared/sub/b.sh");
    let (p, _) = repo.ok("compose/stack.yaml");
    let app = &p.services["app"];
    let web = &p.services["web"];
    let paths: Vec<(&str, u32)> = app.volumes[0]
        .repo_files()
        .iter()
        .map(|f| (f.path.as_str(), f.mode))
        .collect();
    // Modes as git records them: `c.sh` is committed 100644.
    assert_eq!(
        paths,
        [("a.txt", 0o644), ("sub/b.sh", 0o755), ("sub/c.sh", 0o644)]
    );
    assert_eq!(app.volumes[0].repo_files(), web.volumes[0].repo_files());
    // A single file is still copied into each container.
    assert_eq!(app.files[0].target, "/etc/a.txt");
}

#[test]
fn a_repo_file_named_like_the_listing_is_refused() {
    let repo = Repo::new(&[
        (
            "compose/stack.yaml",
            "services:\n  app:\n    image: x\n    volumes: ['./shared:/shared']\n",
        ),
        (&format!("compose/shared/{BIND_LISTING}"), "{}"),
    ]);
    let errors = repo.err("compose/stack.yaml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].message.contains(BIND_LISTING));
}

/// docker compose reads `volume.labels` and drops it (its mount model has
/// no labels): accepted, said as a warning at its line, not sent.
#[test]
fn volume_labels_on_a_mount_are_ignored_as_docker_compose_ignores_them() {
    let (m, warnings) = mounts(
        "services:\n  app:\n    image: x\n    volumes:\n      - type: volume\n        target: /cache\n        volume:\n          labels: {team: web}\n",
    );
    assert_eq!(
        m,
        [Mount::Volume {
            source: None,
            target: "/cache".into(),
            read_only: false,
            no_copy: false,
            subpath: None,
        }]
    );
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0]
            .message
            .contains("docker compose ignores `volume.labels`"),
        "{warnings:#?}"
    );
    assert_eq!(warnings[0].line, Some(8), "{warnings:#?}");
}

#[test]
fn volume_subpath_bind_recursive_and_image_mounts_are_read() {
    let (m, warnings) = mounts(
        "services:\n  app:\n    image: x\n    volumes:\n      - type: volume\n        target: /cache\n        volume: {subpath: app}\n      - type: bind\n        source: /srv/a\n        target: /a\n        bind: {recursive: disabled}\n      - type: bind\n        source: /srv/b\n        target: /b\n        bind: {recursive: enabled}\n      - type: image\n        source: registry.example/assets:2\n        target: /assets\n        read_only: true\n        image: {subpath: www/static}\n",
    );
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(
        m[0],
        Mount::Volume {
            source: None,
            target: "/cache".into(),
            read_only: false,
            no_copy: false,
            subpath: Some("app".into()),
        }
    );
    assert!(matches!(&m[1], Mount::Bind { recursive: Some(r), .. } if r == "disabled"));
    // `enabled` is the default: nothing to send.
    assert!(matches!(
        &m[2],
        Mount::Bind {
            recursive: None,
            ..
        }
    ));
    assert_eq!(
        m[3],
        Mount::Image {
            source: "registry.example/assets:2".into(),
            target: "/assets".into(),
            read_only: true,
            subpath: Some("www/static".into()),
        }
    );
    let e = single_error(
        &one(
            "services:\n  app:\n    image: x\n    volumes:\n      - type: bind\n        source: /srv\n        target: /a\n        bind: {recursive: sometimes}\n",
        ),
        8,
        "services.app.volumes[0].bind.recursive",
    );
    assert!(e.message.contains("writable"), "{e}");
    let e = single_error(
        &one(
            "services:\n  app:\n    image: x\n    volumes:\n      - type: image\n        target: /a\n",
        ),
        5,
        "services.app.volumes[0]",
    );
    assert!(e.message.contains("needs `source:`"), "{e}");
    let e = single_error(
        &one(
            "services:\n  app:\n    image: x\n    volumes:\n      - type: image\n        source: app:1\n        target: /a\n        image: {subpath: ../etc}\n",
        ),
        8,
        "services.app.volumes[0].image.subpath",
    );
    assert!(e.message.contains("without `..`"), "{e}");
    let e = single_error(
        &one(
            "services:\n  app:\n    image: x\n    volumes:\n      - type: bind\n        source: /srv\n        target: /a\n        bind: {recursive: disabled, create_host_path: true}\n",
        ),
        5,
        "services.app.volumes[0]",
    );
    assert!(e.message.contains("create_host_path"), "{e}");
}
