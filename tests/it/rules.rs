//! Prometheus rules: the rule check against Prometheus's own fixtures
//! (`corpus/rules/EXPECTED.tsv`) under 2.x and 3.x semantics, and the
//! rules backend against a real Prometheus.

use driftless::check::rules::{self, Options};

use crate::support::corpus;

/// What a file must do under one Prometheus version.
#[derive(Debug, PartialEq)]
enum Want {
    Accept,
    AcceptWithWarning,
    Reject(String),
}

/// The verdict of one EXPECTED.tsv row under `version`, as issue 8 maps it.
fn want(file: &str, class: &str, note: &str, version: u8) -> Want {
    let utf8_file = matches!(
        file,
        "prometheus-rulefmt/utf-8_lname.good.yaml"
            | "prometheus-rulefmt/utf-8_annotation.good.yaml"
    );
    // Where the note is prose, the substring that carries its meaning.
    let substring = match file {
        "prometheus-rulefmt/bad_field.bad.yaml" => "unknown field `annotation`".to_owned(),
        "promtool/rules-bad.yml" => "undefined variable \"$label\"".to_owned(),
        "promtool/bad-rules-syntax.yml" => "could not parse expression: parse error".to_owned(),
        "promtool/rules_extrafields.yml" => "unknown field `namespace`".to_owned(),
        "promtool/features.yml" => "could not parse expression".to_owned(),
        _ => note.to_owned(),
    };
    match class {
        "valid" if utf8_file && version == 2 => Want::Reject(
            if file.contains("lname") {
                "invalid label name: ins-tance"
            } else {
                "invalid annotation name: ins-tance"
            }
            .to_owned(),
        ),
        "valid" | "valid syntax; runtime error" => Want::Accept,
        "invalid (LegacyValidation only)" if version == 3 => Want::Accept,
        "invalid"
        | "invalid (LegacyValidation only)"
        | "invalid unless --ignore-unknown-fields"
        | "needs feature flags" => Want::Reject(substring),
        "valid but lint warning" | "lint-fatal" => Want::AcceptWithWarning,
        other => panic!("unknown class `{other}` for {file}"),
    }
}

fn verdict(file: &str, text: &str, options: &Options) -> Result<usize, String> {
    match rules::load(file, text, options) {
        Ok((_, warnings)) => Ok(warnings.len()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn corpus_rules_match_expected_under_prometheus_2_and_3() {
    let dir = corpus().join("rules");
    let table = std::fs::read_to_string(dir.join("EXPECTED.tsv")).unwrap();
    let mut rows = 0;
    let mut failures = Vec::new();
    for line in table.lines().skip_while(|l| l.starts_with('#')).skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, class, note) = (cols[0], cols[1], cols.get(2).copied().unwrap_or(""));
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        rows += 1;
        for version in [2u8, 3] {
            let expected = want(file, class, note, version);
            let got = verdict(file, &text, &Options::version(version));
            let ok = match (&expected, &got) {
                (Want::Accept, Ok(_)) => true,
                (Want::AcceptWithWarning, Ok(n)) => *n > 0,
                (Want::Reject(s), Err(e)) => e.contains(s.as_str()),
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{file} (v{version}): want {expected:?}, got {got:?}"
                ));
            }
        }
    }
    assert_eq!(rows, 26, "EXPECTED.tsv rows");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lint_fatal_rejects_the_lint_rows() {
    let dir = corpus().join("rules");
    let fatal = Options {
        lint_fatal: true,
        ..Options::version(2)
    };
    for file in [
        "promtool/prometheus-rules.lint.yml",
        "promtool/rules_duplicates.yml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let e = verdict(file, &text, &fatal).unwrap_err();
        assert!(e.contains("duplicate rule"), "{file}: {e}");
    }
}

#[test]
fn awesome_prometheus_alerts_pass_under_both_versions() {
    let dir = corpus().join("rules");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.starts_with("awesome-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for version in [2u8, 3] {
            if let Err(e) = verdict(&name, &text, &Options::version(version)) {
                panic!("{name} (v{version}): {e}");
            }
        }
        n += 1;
    }
    assert!(n >= 10, "{n} files");
}
