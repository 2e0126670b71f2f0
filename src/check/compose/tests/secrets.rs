//! Compose `secrets:`: where the values come from, where they land, and
//! what is refused.

use super::Repo;
use crate::check::compose::Options;
use crate::model::compose::Project;

fn lookup(name: &str) -> Result<String, String> {
    match name {
        "db_password" => Ok("hunter2-db".to_owned()),
        _ => Err(format!("secret `{name}` is not set")),
    }
}

fn load(repo: &Repo) -> Result<Project, Vec<crate::diag::Diagnostic>> {
    let options = Options {
        secret: Some(&lookup),
        ..Options::default()
    };
    repo.load_opts("compose/stack.yaml", &options)
        .map(|(p, _)| p)
        .map_err(|d| {
            d.into_iter()
                .filter(crate::diag::Diagnostic::is_error)
                .collect()
        })
}

const STACK: &str = "services:
  db:
    image: postgres
    secrets:
      - pg
      - source: token
        target: api/token
        uid: '999'
        gid: '999'
        mode: 0400
      - source: cert
        target: /etc/ssl/app.pem
secrets:
  pg:
    x-driftless-secret: db_password
  token:
    environment: API_TOKEN
  cert:
    file: ./app.pem
";

#[test]
fn secrets_come_from_the_secret_source_variables_and_repo_files() {
    let repo = Repo::new(&[
        ("compose/stack.yaml", STACK),
        ("compose/app.pem", "-----BEGIN CERT-----\n"),
    ])
    .var("API_TOKEN", "tok-123456");
    let p = load(&repo).unwrap();
    let s = &p.services["db"].secrets;
    let got: Vec<_> = s
        .iter()
        .map(|f| {
            (
                f.target.as_str(),
                String::from_utf8_lossy(&f.content).into_owned(),
                f.mode,
                f.uid,
                f.gid,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("/run/secrets/pg", "hunter2-db".to_owned(), 0o444, 0, 0),
            (
                "/run/secrets/api/token",
                "tok-123456".to_owned(),
                0o400,
                999,
                999
            ),
            (
                "/etc/ssl/app.pem",
                "-----BEGIN CERT-----\n".to_owned(),
                0o444,
                0,
                0
            ),
        ]
    );
    assert_eq!(s[2].source, "compose/app.pem");
    // Secrets are not config files: nothing of them is in `files`.
    assert!(p.services["db"].files.is_empty());
}

#[test]
fn a_secret_with_no_value_is_refused_where_it_is_defined() {
    let repo = Repo::new(&[(
        "compose/stack.yaml",
        "services:\n  a:\n    image: x\n    secrets: [a, b, c, d]\nsecrets:\n  a:\n    x-driftless-secret: missing\n  b:\n    environment: NOPE\n  c: {}\n  d:\n    external: true\n",
    )]);
    let errors = load(&repo).unwrap_err();
    let got: Vec<_> = errors
        .iter()
        .map(|e| (e.line, e.object.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(7), "secrets.a.x-driftless-secret".to_owned()),
            (Some(9), "secrets.b.environment".to_owned()),
            (Some(10), "secrets.c".to_owned()),
            (Some(12), "secrets.d.external".to_owned()),
        ],
        "{errors:#?}"
    );
    assert!(
        errors[0]
            .message
            .contains("secret `a` has no value: secret `missing` is not set"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("DRIFTLESS_SECRET_")
    );
    assert!(
        errors[1].message.contains("variable `NOPE` is not set"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].message.contains("secret `c` has no value"),
        "{}",
        errors[2]
    );
    assert!(errors[2].hint.is_some());
    // An undefined secret, and a value too short to mask.
    let repo = Repo::new(&[(
        "compose/stack.yaml",
        "services:\n  a:\n    image: x\n    secrets: [nope, short]\nsecrets:\n  short:\n    environment: S\n",
    )])
    .var("S", "ab");
    let errors = load(&repo).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e.message == "secret `nope` is not defined" && e.line == Some(4))
    );
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("shorter than 4 bytes") && e.line == Some(6))
    );
}

#[test]
fn a_secret_file_outside_the_repo_says_where_secrets_come_from() {
    // The common published form: a file next to the Compose file that the
    // project's docs say to create, never committed; and a host path.
    let repo = Repo::new(&[(
        "compose/stack.yaml",
        "services:\n  a:\n    image: x\n    secrets: [db-pass, host]\nsecrets:\n  db-pass:\n    file: ./db_password.txt\n  host:\n    file: /run/secrets/host\n",
    )]);
    let errors = load(&repo).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0].line, Some(7));
    assert!(
        errors[0].message.contains("compose/db_password.txt"),
        "{}",
        errors[0]
    );
    let hint = errors[0].hint.as_deref().unwrap();
    assert!(
        hint.contains("x-driftless-secret: db-pass") && hint.contains("DRIFTLESS_SECRET_DB_PASS"),
        "{hint}"
    );
    assert_eq!(errors[1].line, Some(9));
    assert!(
        errors[1]
            .hint
            .as_deref()
            .unwrap()
            .contains("x-driftless-secret: host")
    );
}
