//! Profiles and the project name from `.env`, the values and driftless.yaml.

use super::Repo;
use crate::check::compose::Options;
use crate::model::compose::Project;

const STACK: &str = "services:
  web:
    image: web
    container_name: shop-web
  debug:
    image: debug
    container_name: shop-tools
    profiles: [debug]
  tools:
    image: tools
    container_name: shop-tools
    profiles: [tools]
";

fn enabled(p: &Project) -> Vec<&str> {
    p.services.keys().map(String::as_str).collect()
}

#[test]
fn dotenv_profiles_select_services_and_disabled_ones_are_kept_aside() {
    let repo = Repo::new(&[
        ("compose/stack.yaml", STACK),
        ("compose/.env", "A=1\nCOMPOSE_PROFILES=debug\n"),
    ]);
    let (p, _) = repo.ok("compose/stack.yaml");
    assert_eq!(enabled(&p), ["debug", "web"]);
    assert_eq!(p.disabled_services["tools"], ["tools"]);
    // `debug` and `tools` share a container name: they are never enabled
    // together here, so that is no conflict.
    let (p, _) = Repo::new(&[("compose/stack.yaml", STACK)]).ok("compose/stack.yaml");
    assert_eq!(enabled(&p), ["web"]);
    assert_eq!(p.disabled_services.len(), 2);
    // Both at once: now the names clash.
    let errors = Repo::new(&[
        ("compose/stack.yaml", STACK),
        ("compose/.env", "COMPOSE_PROFILES=debug,tools\n"),
    ])
    .err("compose/stack.yaml");
    assert!(
        errors[0]
            .message
            .contains("container name `shop-tools` is also used"),
        "{errors:#?}"
    );
    // `*` enables every profile; the values override `.env`.
    let repo = Repo::new(&[
        ("compose/stack.yaml", STACK),
        ("compose/.env", "COMPOSE_PROFILES=debug\n"),
    ])
    .var("COMPOSE_PROFILES", "tools");
    let (p, _) = repo.ok("compose/stack.yaml");
    assert_eq!(enabled(&p), ["tools", "web"]);
}

#[test]
fn driftless_yaml_profiles_replace_the_variables() {
    let repo = Repo::new(&[
        ("compose/stack.yaml", STACK),
        ("compose/.env", "COMPOSE_PROFILES=debug\n"),
    ]);
    let profiles = vec!["tools".to_owned()];
    let options = Options {
        profiles: Some(&profiles),
        profiles_origin: ("driftless.yaml", 9),
        ..Options::default()
    };
    let (p, _) = repo.load_opts("compose/stack.yaml", &options).unwrap();
    assert_eq!(enabled(&p), ["tools", "web"]);
    // An environment-wide profile is checked across the environment's
    // projects (check::environment), not per project.
    let profiles = vec!["nope".to_owned()];
    let options = Options {
        profiles: Some(&profiles),
        ..options
    };
    let (p, _) = repo.load_opts("compose/stack.yaml", &options).unwrap();
    assert_eq!(enabled(&p), ["web"]);
}

#[test]
fn an_unknown_dotenv_profile_is_refused_at_its_line() {
    let repo = Repo::new(&[
        ("compose/stack.yaml", STACK),
        ("compose/.env", "# profiles\nCOMPOSE_PROFILES=debug,typo\n"),
    ]);
    let errors = repo.err("compose/stack.yaml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let e = &errors[0];
    assert_eq!(e.file.as_deref(), Some("compose/.env"));
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("profile `typo`"), "{e}");
    assert!(
        e.hint.as_deref().unwrap().contains("`debug`, `tools`"),
        "{e}"
    );
}

#[test]
fn enabled_services_cannot_need_disabled_ones() {
    let text = "services:
  web:
    image: web
    depends_on:
      db: {condition: service_started}
      cache: {condition: service_started, required: false}
  db:
    image: db
    profiles: [data]
  cache:
    image: cache
    profiles: [data]
  sidecar:
    image: s
    network_mode: service:db
";
    let repo = Repo::new(&[("compose/stack.yaml", text)]);
    let errors = repo.err("compose/stack.yaml");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let web = errors
        .iter()
        .find(|e| e.object.as_deref() == Some("services.web.depends_on"))
        .expect("web's dependency refused");
    assert_eq!(web.line, Some(2));
    assert!(
        web.message.contains("depends on `db`, which is disabled"),
        "{web}"
    );
    assert!(web.message.contains("`data`"), "{web}");
    assert!(
        errors
            .iter()
            .any(|e| e.object.as_deref() == Some("services.sidecar.network_mode"))
    );
    // With the profile active, both run; an optional dependency on a
    // disabled service is dropped.
    let (p, _) = Repo::new(&[("compose/stack.yaml", text)])
        .var("COMPOSE_PROFILES", "data")
        .ok("compose/stack.yaml");
    assert_eq!(p.services["web"].depends_on.len(), 2);
    let text = text.replace("      db: {condition: service_started}\n", "");
    let text = text.replace("    network_mode: service:db\n", "");
    let (p, _) = Repo::new(&[("compose/stack.yaml", &text)]).ok("compose/stack.yaml");
    assert!(p.services["web"].depends_on.is_empty());
}

#[test]
fn compose_project_name_from_dotenv_beats_the_name_key() {
    let text = "name: from-file\nservices: {a: {image: x}}\n";
    let repo = Repo::new(&[
        ("compose/stack.yaml", text),
        ("compose/.env", "COMPOSE_PROJECT_NAME=shop\n"),
    ]);
    let (p, _) = repo.ok("compose/stack.yaml");
    assert_eq!(p.name, "shop");
    assert_eq!(p.networks["default"].name, "shop_default");
    // The environment's values beat `.env`.
    let (p, _) = Repo::new(&[
        ("compose/stack.yaml", text),
        ("compose/.env", "COMPOSE_PROJECT_NAME=shop\n"),
    ])
    .var("COMPOSE_PROJECT_NAME", "shop-prod")
    .ok("compose/stack.yaml");
    assert_eq!(p.name, "shop-prod");
    // An empty value falls back to `name:`.
    let (p, _) = Repo::new(&[
        ("compose/stack.yaml", text),
        ("compose/.env", "COMPOSE_PROJECT_NAME=\n"),
    ])
    .ok("compose/stack.yaml");
    assert_eq!(p.name, "from-file");
    // An invalid one is refused where it is set.
    let errors = Repo::new(&[
        ("compose/stack.yaml", text),
        ("compose/.env", "X=1\nCOMPOSE_PROJECT_NAME=My Shop\n"),
    ])
    .err("compose/stack.yaml");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].file.as_deref(), Some("compose/.env"));
    assert_eq!(errors[0].line, Some(2));
    assert!(errors[0].hint.as_deref().unwrap().contains("myshop"));
}

#[test]
fn compose_project_name_interpolates_to_the_project_name() {
    // As compose-go sets it before interpolating: from `name:` (itself
    // interpolated), from the variable, else the default name; no warning.
    let text = "name: shop-${STAGE}\nservices:\n  a: {image: \"${COMPOSE_PROJECT_NAME}:1.0\"}\n";
    let (p, warnings) = Repo::new(&[("compose/stack.yaml", text)])
        .var("STAGE", "prod")
        .ok("compose/stack.yaml");
    assert_eq!(p.services["a"].image, "shop-prod:1.0");
    assert!(warnings.is_empty(), "{warnings:#?}");
    let (p, _) = Repo::new(&[("compose/stack.yaml", text)])
        .var("STAGE", "prod")
        .var("COMPOSE_PROJECT_NAME", "other")
        .ok("compose/stack.yaml");
    assert_eq!(p.services["a"].image, "other:1.0");
    let text = "services:\n  a: {image: \"${COMPOSE_PROJECT_NAME}:1.0\"}\n";
    let (p, _) = Repo::new(&[("compose/stack.yaml", text)]).ok("compose/stack.yaml");
    assert_eq!(p.services["a"].image, "myapp:1.0");
}
