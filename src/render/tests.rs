use serde_json::json;

use super::*;
use crate::source::Revision;

fn snapshot(files: &[(&str, &str)]) -> Snapshot {
    Snapshot::from_files(
        Revision::WorkTree {
            head: None,
            dirty: true,
        },
        files
            .iter()
            .map(|(p, c)| ((*p).to_owned(), c.as_bytes().to_vec())),
    )
}

fn no_secrets() -> SecretSource {
    SecretSource {
        dir: None,
        from_env: false,
    }
}

fn renderer(files: &[(&str, &str)], context: serde_json::Value) -> Renderer {
    Renderer::with_context(
        snapshot(files),
        "dev",
        context,
        no_secrets(),
        SecretMode::Placeholder,
    )
}

fn text(r: &Renderer, output: &str) -> String {
    r.render(output).unwrap().text().unwrap().to_owned()
}

fn error(r: &Renderer, output: &str) -> Diagnostic {
    r.render(output).unwrap_err()
}

#[test]
fn renderer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Renderer>();
}

#[test]
fn outputs_drop_j2_and_are_sorted() {
    let r = renderer(
        &[("b.yaml.j2", ""), ("a.yml", ""), (".j2", ""), ("d/.j2", "")],
        json!({}),
    );
    assert_eq!(r.outputs(), [".j2", "a.yml", "b.yaml", "d/.j2"]);
    assert!(r.exists("b.yaml"));
    assert!(!r.exists("b.yaml.j2"));
    assert!(r.exists("a.yml"));
    assert!(!r.exists("c"));
}

#[test]
fn j2_renders_with_values_and_environment() {
    let r = renderer(
        &[(
            "app.yaml.j2",
            "image: {{ image }}\nenv: {{ environment }}\n",
        )],
        json!({"image": "nginx:1.27"}),
    );
    let out = r.render("app.yaml").unwrap();
    assert_eq!(out.path, "app.yaml");
    assert_eq!(out.source, "app.yaml.j2");
    assert!(out.templated);
    assert_eq!(out.text().unwrap(), "image: nginx:1.27\nenv: dev\n");
}

#[test]
fn plain_files_are_verbatim() {
    let rule = "expr: up == 0\nsummary: '{{ $labels.instance }} down'\n{% raw %}";
    let r = renderer(&[("rules/a.yml", rule)], json!({}));
    let out = r.render("rules/a.yml").unwrap();
    assert!(!out.templated);
    assert_eq!(&out.content[..], rule.as_bytes());
}

#[test]
fn whitespace_follows_jinja2_defaults() {
    let r = renderer(
        &[("a.j2", "x:\n  {% if on %}\n  - y\n  {% endif %}\nz\n\n")],
        json!({"on": true}),
    );
    // trim_blocks/lstrip_blocks off: the tag lines leave their indentation
    // and newline, as Python Jinja2 does; the last newline is kept.
    assert_eq!(text(&r, "a"), "x:\n  \n  - y\n  \nz\n\n");
}

#[test]
fn no_auto_escape() {
    let r = renderer(&[("a.html.j2", "{{ v }}")], json!({"v": "<a&'\">"}));
    assert_eq!(text(&r, "a.html"), "<a&'\">");
}

#[test]
fn both_template_and_plain_file_is_ambiguous() {
    let r = renderer(&[("a.yaml", ""), ("a.yaml.j2", "")], json!({}));
    let d = error(&r, "a.yaml");
    assert!(d.message.contains("cannot tell"), "{d}");
    assert_eq!(d.env.as_deref(), Some("dev"));
}

#[test]
fn template_path_is_not_an_output() {
    let r = renderer(&[("a.yaml.j2", "")], json!({}));
    let d = error(&r, "a.yaml.j2");
    assert!(d.message.contains("is a template"), "{d}");
    assert!(d.hint.unwrap().contains("`a.yaml`"));
    let d = error(&r, "nope.yaml");
    assert!(d.message.contains("not in the repository"), "{d}");
}

#[test]
fn undefined_is_strict_but_defined_and_default_work() {
    let r = renderer(
        &[
            ("a.j2", "ok\n{% if missing %}x{% endif %}\n"),
            (
                "b.j2",
                "{% if missing is defined %}x{% endif %}{{ missing | default('d') }}",
            ),
            ("c.j2", "{{ nested.missing }}"),
        ],
        json!({"nested": {}}),
    );
    let d = error(&r, "a");
    assert_eq!(d.file.as_deref(), Some("a.j2"));
    assert_eq!(d.line, Some(2));
    assert!(d.message.contains("undefined"), "{d}");
    assert!(d.message.contains("`missing`"), "{d}");
    assert_eq!(text(&r, "b"), "d");
    let d = error(&r, "c");
    assert!(d.message.contains("`nested.missing` is undefined"), "{d}");
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let r = renderer(&[("a.j2", "line1\nx: {{ foo bar }}\n")], json!({}));
    let d = error(&r, "a");
    assert_eq!(d.file.as_deref(), Some("a.j2"));
    assert_eq!(d.line, Some(2));
    assert!(d.column.is_some(), "{d}");
    assert!(d.message.contains("syntax error"), "{d}");
}

#[test]
fn unknown_filter_names_the_filter() {
    let r = renderer(&[("a.j2", "\n{{ 'x' | slugify }}")], json!({}));
    let d = error(&r, "a");
    assert_eq!(d.line, Some(2));
    assert!(d.message.contains("unknown filter `slugify`"), "{d}");
}

#[test]
fn includes_are_repo_root_relative_and_normalised() {
    let r = renderer(
        &[
            ("k8s/app.yaml.j2", "{% include 'k8s/parts/./labels.j2' %}"),
            ("k8s/parts/labels.j2", "app: {{ name }}"),
            (
                "k8s/m.yaml.j2",
                "{% import 'lib/m.j2' as m %}{{ m.kv('a', 1) }}",
            ),
            (
                "lib/m.j2",
                "{% macro kv(k, v) %}{{ k }}={{ v }}{% endmacro %}",
            ),
        ],
        json!({"name": "web"}),
    );
    assert_eq!(text(&r, "k8s/app.yaml"), "app: web");
    assert_eq!(text(&r, "k8s/m.yaml"), "a=1");
}

#[test]
fn include_escaping_the_repo_is_an_error() {
    let statements = [
        "{% include 'NAME' %}",
        "{% import 'NAME' as m %}",
        "{% from 'NAME' import m %}",
        "{% extends 'NAME' %}",
    ];
    for bad in ["../x", "/etc/passwd", "a/../../x"] {
        for statement in statements {
            let source = format!("one\n{}\n", statement.replace("NAME", bad));
            let r = renderer(&[("t/a.j2", &source)], json!({}));
            let d = error(&r, "t/a");
            assert!(
                d.message.contains("escapes the repository"),
                "{source}: {d}"
            );
            assert!(d.message.contains(bad), "{source}: {d}");
            assert_eq!(d.file.as_deref(), Some("t/a.j2"), "{source}: {d}");
            assert_eq!(d.line, Some(2), "{source}: {d}");
        }
    }
}

#[test]
fn errors_inside_an_include_point_at_the_included_file() {
    let r = renderer(
        &[
            ("a.j2", "x\n{% include 'parts/b.j2' %}"),
            ("parts/b.j2", "\n\n{{ nope }}"),
            ("c.j2", "{% include 'missing.j2' %}"),
        ],
        json!({}),
    );
    let d = error(&r, "a");
    assert_eq!(d.file.as_deref(), Some("parts/b.j2"), "{d}");
    assert_eq!(d.line, Some(3), "{d}");
    assert!(d.message.contains("included from a.j2:2"), "{d}");
    let d = error(&r, "c");
    assert!(d.message.contains("missing.j2"), "{d}");
    assert!(d.message.contains("in the repository"), "{d}");
    assert_eq!(d.file.as_deref(), Some("c.j2"));
    assert_eq!(d.line, Some(1));
}

#[test]
fn include_loops_and_runaway_macros_end_in_an_error() {
    let r = renderer(
        &[
            ("loop.j2", "{% include 'loop.j2' %}"),
            ("ping.j2", "{% include 'pong.j2' %}"),
            ("pong.j2", "{% include 'ping.j2' %}"),
            (
                "macro.j2",
                "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            ),
            (
                "expr.j2",
                &format!("{{{{ {}1{} }}}}", "(".repeat(5000), ")".repeat(5000)),
            ),
        ],
        json!({}),
    );
    for t in ["loop", "ping", "macro", "expr"] {
        let d = error(&r, t);
        assert!(d.is_error(), "{t}: {d}");
    }
    assert!(error(&r, "loop").message.contains("nest too deep"));
}

#[test]
fn runaway_work_and_output_are_bounded() {
    let r = renderer(
        &[
            ("big.j2", "{{ 'x' * 1000000000 }}"),
            (
                "loop.j2",
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            ),
            (
                "wide.j2",
                "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
            ),
        ],
        json!({}),
    );
    for t in ["big", "loop", "wide"] {
        let d = error(&r, t);
        assert_eq!(d.file.as_deref(), Some(&*format!("{t}.j2")), "{t}: {d}");
    }
    assert!(error(&r, "loop").message.contains("too much work"));
}

#[test]
fn extra_filters_are_available() {
    let r = renderer(
        &[(
            "a.j2",
            "{{ 'pw' | b64encode }} {{ 'cHc=' | b64decode }} {{ '' | sha256 | length }} {{ m | to_yaml }} {{ 'a b/c' | urlencode }} {{ m | tojson }}",
        )],
        json!({"m": {"k": "v"}}),
    );
    assert_eq!(text(&r, "a"), "cHc= pw 64 k: v a%20b/c {\"k\": \"v\"}");
}

fn secret_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db_password"), "hunter2-pw\n").unwrap();
    dir
}

#[test]
fn secrets_placeholder_mode_lists_missing_names() {
    let dir = secret_dir();
    let r = Renderer::with_context(
        snapshot(&[(
            "a.j2",
            "{{ secret('db_password') }} {{ secret('api_token') }} {{ secret('api_token') }}",
        )]),
        "dev",
        json!({}),
        SecretSource {
            dir: Some(dir.path().to_owned()),
            from_env: false,
        },
        SecretMode::Placeholder,
    );
    assert_eq!(
        text(&r, "a"),
        "hunter2-pw <secret:api_token> <secret:api_token>"
    );
    assert_eq!(r.missing_secrets(), ["api_token"]);
    assert_eq!(r.secrets_used(), ["api_token", "db_password"]);
    assert_eq!(r.masker().mask("pw=hunter2-pw"), "pw=******");
}

/// A renderer of `a.j2` = `template` for `prod` in [`SecretMode::Require`],
/// with only `db_password` set (the directory lives as long as the result).
fn requiring(template: &str) -> (Renderer, tempfile::TempDir) {
    let dir = secret_dir();
    let r = Renderer::with_context(
        snapshot(&[("a.j2", template)]),
        "prod",
        json!({}),
        SecretSource {
            dir: Some(dir.path().to_owned()),
            from_env: false,
        },
        SecretMode::Require,
    );
    (r, dir)
}

#[test]
fn secrets_require_mode_fails_naming_how_to_set_it() {
    let (r, _dir) = requiring("ok: {{ secret('db_password') }}\n{{ secret('api_token') }}");
    let d = error(&r, "a");
    assert_eq!(d.env.as_deref(), Some("prod"));
    assert_eq!(d.file.as_deref(), Some("a.j2"));
    assert_eq!(d.line, Some(2));
    assert!(d.message.contains("api_token"), "{d}");
    assert!(d.message.contains("DRIFTLESS_SECRET_API_TOKEN"), "{d}");
    assert!(d.message.contains("secrets directory"), "{d}");
    assert_eq!(r.missing_secrets(), ["api_token"]);
    // The value read before the failure is still masked.
    assert_eq!(r.masker().mask("hunter2-pw"), "******");
}

#[test]
fn one_error_names_every_missing_secret_of_a_file_with_its_line() {
    let (r, _dir) = requiring(
        "a: {{ secret('api_token') }}\nb: {{ secret('db_password') }}\nc: {{ secret('smtp') }}\nd: {{ secret('api_token') }}\ne: {{ secret('jwt') }}\n",
    );
    let d = error(&r, "a");
    assert_eq!(d.line, Some(1), "{d}");
    assert!(d.message.contains("secret `api_token` is not set"), "{d}");
    assert!(
        d.message
            .contains("also not set in this file: `smtp` (line 3), `jwt` (line 5)"),
        "{d}"
    );
    assert_eq!(r.missing_secrets(), ["api_token", "jwt", "smtp"]);
    // The secret that is set is still masked.
    assert_eq!(r.masker().mask("hunter2-pw"), "******");
}

#[test]
fn bad_secret_names_fail_in_every_mode() {
    let r = renderer(&[("a.j2", "{{ secret('../etc/passwd') }}")], json!({}));
    let d = error(&r, "a");
    assert!(d.message.contains("invalid"), "{d}");
    assert!(r.secrets_used().is_empty());
}

#[test]
fn values_file_builds_the_context() {
    let snap = snapshot(&[
        ("environments/dev.yaml", "replicas: 2\ncountry: NO\n"),
        ("a.j2", "{{ replicas }} {{ country }} {{ environment }}"),
    ]);
    let r = Renderer::new(
        snap,
        "dev",
        "environments/dev.yaml",
        no_secrets(),
        SecretMode::Placeholder,
    )
    .unwrap();
    assert_eq!(text(&r, "a"), "2 NO dev");
    assert_eq!(r.values(), &json!({"replicas": 2, "country": "NO"}));
}

#[test]
fn values_file_errors_name_the_file() {
    let new = |files: &[(&str, &str)]| {
        Renderer::new(
            snapshot(files),
            "dev",
            "environments/dev.yaml",
            no_secrets(),
            SecretMode::Placeholder,
        )
    };
    let first = |r: Result<Renderer, Diagnostics>| r.unwrap_err().0.remove(0);

    let d = first(new(&[]));
    assert!(d.message.contains("environments/dev.yaml"), "{d}");
    assert_eq!(d.env.as_deref(), Some("dev"));

    let d = first(new(&[("environments/dev.yaml", "a: 1\nenvironment: x\n")]));
    assert!(d.message.contains("`environment`"), "{d}");
    assert_eq!(d.line, Some(2));

    let d = first(new(&[("environments/dev.yaml", "- a\n")]));
    assert!(d.message.contains("mapping"), "{d}");

    let d = first(new(&[("environments/dev.yaml", "a: [1,\n")]));
    assert_eq!(d.file.as_deref(), Some("environments/dev.yaml"));
    assert!(d.line.is_some(), "{d}");

    let r = new(&[("environments/dev.yaml", "# nothing yet\n")]).unwrap();
    assert_eq!(r.values(), &json!({}));
}

#[test]
fn renders_in_parallel_from_one_renderer() {
    let files: Vec<(String, String)> = (0..64)
        .map(|i| {
            (
                format!("f{i}.j2"),
                format!("{{{{ secret('s{}') }}}}", i % 4),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let r = renderer(&refs, json!({}));
    let outputs = r.outputs();
    std::thread::scope(|s| {
        for chunk in outputs.chunks(16) {
            let r = &r;
            s.spawn(move || {
                for o in chunk {
                    r.render(o).unwrap();
                }
            });
        }
    });
    assert_eq!(r.missing_secrets(), ["s0", "s1", "s2", "s3"]);
}

/// A secret holding the characters that encodings treat differently.
const HOSTILE: &str = "Zx/9~q&<'\"Lm2+w";

fn hostile_renderer(files: &[(&str, &str)]) -> (Renderer, tempfile::TempDir) {
    hostile_renderer_with(files, json!({}))
}

fn hostile_renderer_with(
    files: &[(&str, &str)],
    context: serde_json::Value,
) -> (Renderer, tempfile::TempDir) {
    renderer_with_secret(files, context, "db_pw", HOSTILE)
}

/// A renderer for `files` whose secrets directory holds `name` = `value`.
fn renderer_with_secret(
    files: &[(&str, &str)],
    context: serde_json::Value,
    name: &str,
    value: &str,
) -> (Renderer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), value).unwrap();
    let r = Renderer::with_context(
        snapshot(files),
        "dev",
        context,
        SecretSource {
            dir: Some(dir.path().to_owned()),
            from_env: false,
        },
        SecretMode::Require,
    );
    (r, dir)
}

/// Every string-returning construct minijinja (and pycompat, and
/// driftless's filters) offers, applied to a secret: each line's derived
/// text is masked whole, whatever the construct made of the value.
#[test]
fn text_derived_from_a_secret_through_any_construct_is_masked() {
    let constructs = [
        ("raw", "s"),
        ("urlencode", "s | urlencode"),
        ("upper", "s | upper"),
        ("lower", "s | lower"),
        ("title", "s | title"),
        ("capitalize", "s | capitalize"),
        ("replace", "s | replace('/', '_')"),
        ("trim", "(' ' ~ s ~ ' ') | trim"),
        ("reverse", "s | reverse"),
        ("tojson", "s | tojson"),
        ("escape", "s | escape"),
        ("string", "s | string"),
        ("pprint", "s | pprint"),
        ("format", "'%s!' | format(s)"),
        ("indent", "s | indent(2)"),
        ("slice", "s[2:-2]"),
        ("step", "s[::2]"),
        ("concat", "'pre-' ~ s ~ '-post'"),
        ("join", "s | list | join('.')"),
        ("sort", "s | list | sort | join"),
        ("unique", "s | list | unique | join"),
        ("b64encode", "s | b64encode"),
        (
            "b64url",
            "s | b64encode | replace('+', '-') | replace('/', '_')",
        ),
        ("sha256", "s | sha256"),
        ("macro", "wrap(s)"),
        ("py_upper", "s.upper()"),
        ("py_replace", "s.replace('&', 'and')"),
        ("py_strip", "s.strip('Z')"),
        ("py_format", "'{}:{}'.format('u', s)"),
        ("py_split_join", "'-'.join(s.split('/'))"),
        ("dict", "{'k': s} | tojson"),
        ("yaml", "{'k': s} | to_yaml"),
    ];
    let mut template = String::from(
        "{% macro wrap(v) %}<{{ v | upper | urlencode }}>{% endmacro %}{% set s = secret('db_pw') %}",
    );
    for (name, expr) in constructs {
        template.push_str(&format!("{name}: {{{{ {expr} }}}}\n"));
    }
    let (r, _dir) = hostile_renderer(&[("a.j2", &template)]);
    let out = text(&r, "a");
    let masked = r.masker().mask(&out).into_owned();
    // What may stay: the mask and the template's own text around it
    // (quotes of `tojson`, `pre-`/`-post`, the macro's `<>`, ...); none of
    // the secret's letters or digits, in any case, nor of its encodings.
    let allowed = |c: char| "\"'!<>{}:,- prepostuk".contains(c);
    for (line, (name, _)) in masked.lines().zip(constructs) {
        let rest = line
            .strip_prefix(&format!("{name}: "))
            .unwrap_or_else(|| panic!("{name}: {line}"));
        assert!(rest.contains(crate::secrets::MASK), "{name}: {line}\n{out}");
        let left = rest.replace(crate::secrets::MASK, "");
        assert!(left.chars().all(allowed), "{name}: {line}\n{out}");
    }
    assert_eq!(masked.lines().count(), constructs.len(), "{masked}");
}

#[test]
fn a_secret_in_a_macro_of_an_imported_template_is_followed() {
    let (r, _dir) = hostile_renderer(&[
        (
            "lib.j2",
            "{% macro url(user) %}postgres://{{ user }}:{{ secret('db_pw') | urlencode }}@db/app{% endmacro %}",
        ),
        (
            "a.j2",
            "{% import 'lib.j2' as lib %}url: {{ lib.url('app') }}\n",
        ),
    ]);
    let out = text(&r, "a");
    assert!(out.contains("Zx/9%7Eq%26%3C%27%22Lm2%2Bw"), "{out}");
    assert_eq!(
        r.masker().mask(&out),
        format!("url: postgres://app:{}@db/app\n", crate::secrets::MASK)
    );
}

#[test]
fn a_multi_line_secret_is_masked_line_by_line_when_indented() {
    let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAoIB\n-----END KEY-----";
    let (r, _dir) = renderer_with_secret(
        &[(
            "a.j2",
            "key: |\n  {{ secret('tls_key') | indent(2) }}\nnext: 1\n",
        )],
        json!({}),
        "tls_key",
        key,
    );
    let out = text(&r, "a");
    let masked = r.masker().mask(&out).into_owned();
    assert!(
        !masked.contains("MIIEvQ") && !masked.contains("AQEFAA"),
        "{masked}"
    );
    assert!(masked.ends_with("next: 1\n"), "{masked}");
}

#[test]
fn b64decode_of_a_base64_secret_works_and_its_text_is_masked() {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode("admin:Pa55/w0rd");
    let (r, _dir) = renderer_with_secret(
        &[("a.j2", "auth: {{ secret('basic') | b64decode }}\n")],
        json!({}),
        "basic",
        &encoded,
    );
    let out = text(&r, "a");
    assert_eq!(out, "auth: admin:Pa55/w0rd\n");
    assert_eq!(r.masker().mask(&out), "auth: ******\n");
}

#[test]
fn a_secret_that_decides_control_flow_or_is_cut_too_short_fails_the_render() {
    let cases = [
        (
            "{% if secret('db_pw').startswith('Z') %}a: 1\nb: 2\n{% endif %}",
            "decides this file's control flow",
        ),
        ("pin: {{ secret('db_pw')[:2] }}\n", "shorter than 4"),
        (
            "role: {{ roles[secret('db_pw')] }}\n",
            "renders only with some values",
        ),
    ];
    for (template, needle) in cases {
        let roles = json!({ "roles": { HOSTILE: "admin" } });
        let (r, _dir) = hostile_renderer_with(&[("a.j2", template)], roles);
        let d = error(&r, "a");
        assert_eq!(d.file.as_deref(), Some("a.j2"), "{d}");
        assert!(
            d.message.contains("`db_pw`") && d.message.contains(needle),
            "{template}: {d}"
        );
        assert!(d.hint.is_some(), "{d}");
        assert!(!d.to_string().contains("Zx/9"), "{d}");
    }
}

#[test]
fn files_that_read_no_secret_render_once_and_unchanged() {
    let (r, _dir) = hostile_renderer(&[("a.j2", "{% for i in range(3) %}{{ i }}{% endfor %}\n")]);
    assert_eq!(text(&r, "a"), "012\n");
    assert!(r.masker().mask("012").contains("012"));
}
