//! Backup job files: `jobs:` lists as declared in the repo, validated into
//! [`BackupJob`]s (schedules parse, names unique, one source each).

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::schedule::Schedule;
use crate::diag::{Diagnostic, Diagnostics};
use crate::duration;
use crate::model::{
    BackupJob, BackupSource, Compression, Consistency, Destination, Origin, RestoreTest, Retention,
    Verify,
};
use crate::yaml;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    jobs: Vec<Spanned<RawJob>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    schedule: String,
    timezone: Option<String>,
    source: RawSource,
    consistency: Option<Consistency>,
    compression: Option<RawCompression>,
    encryption: Option<RawEncryption>,
    destination: RawDestination,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    verify: RawVerify,
    #[serde(default)]
    before_apply: bool,
    #[serde(default)]
    run_missed: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    exec: Option<RawExec>,
    volume: Option<RawVolume>,
    path: Option<RawPath>,
    config: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    project: Option<String>,
    service: String,
    command: Vec<String>,
    restore: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    project: Option<String>,
    volume: String,
    service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    project: Option<String>,
    service: String,
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCompression {
    Name(String),
    Zstd { zstd: i32 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryption {
    recipients: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    local: Option<String>,
    s3: Option<RawS3>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    endpoint: String,
    bucket: String,
    #[serde(default)]
    prefix: String,
    region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_last: Option<u32>,
    max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    read_back: Option<bool>,
    restore_test: Option<RawRestoreTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestoreTest {
    image: String,
    /// The restore command (exec sources); unused for volumes and paths.
    #[serde(default)]
    command: Vec<String>,
    check: Vec<String>,
}

/// Loads the backup jobs of one rendered file (`file` is its rendered path).
pub fn load(file: &str, text: &str) -> Result<Vec<BackupJob>, Diagnostics> {
    let raw: RawFile =
        yaml::from_str(text).map_err(|e| Diagnostics::from(e.into_diagnostic(file)))?;
    let mut diags = Diagnostics::new();
    let mut jobs = Vec::new();
    for spanned in raw.jobs {
        let line = spanned.referenced.line() as u32;
        let job = spanned.value;
        let err = |msg: String| {
            Diagnostic::error(msg)
                .file(file)
                .line(line)
                .object(format!("jobs.{}", job.name))
        };
        if !crate::manifest::valid_name(&job.name) {
            diags.push(err(format!(
                "backup job name `{}` must be lowercase letters, digits and `-`",
                job.name
            )));
        }
        if let Err(e) = Schedule::parse(&job.schedule) {
            diags.push(err(format!("schedule: {e}")));
        }
        let timezone = job.timezone.unwrap_or_else(|| "UTC".to_owned());
        if let Err(e) = super::schedule::timezone(&timezone) {
            diags.push(err(e));
        }
        let source = match (
            job.source.exec,
            job.source.volume,
            job.source.path,
            job.source.config,
        ) {
            (Some(e), None, None, None) => {
                if e.command.is_empty() {
                    diags.push(err("source.exec.command is empty".to_owned()));
                }
                BackupSource::Exec {
                    project: e.project,
                    service: e.service,
                    command: e.command,
                    restore_command: e.restore,
                }
            }
            (None, Some(v), None, None) => BackupSource::Volume {
                project: v.project,
                volume: v.volume,
                service: v.service,
            },
            (None, None, Some(p), None) => {
                if !p.path.starts_with('/') {
                    diags.push(err(format!(
                        "source.path.path `{}` must be absolute in the container",
                        p.path
                    )));
                }
                BackupSource::Path {
                    project: p.project,
                    service: p.service,
                    path: p.path,
                }
            }
            (None, None, None, Some(_)) => BackupSource::Config,
            _ => {
                diags.push(err(
                    "source needs exactly one of `exec`, `volume`, `path`, `config`".to_owned(),
                ));
                continue;
            }
        };
        let consistency = job.consistency.unwrap_or(Consistency::None);
        if consistency != Consistency::None
            && !matches!(
                source,
                BackupSource::Volume { .. } | BackupSource::Path { .. }
            )
        {
            diags.push(err(
                "consistency `pause`/`stop` applies to volume and path sources only".to_owned(),
            ));
        }
        let compression = match job.compression {
            None => Compression::Zstd { level: 3 },
            Some(RawCompression::Name(n)) if n == "zstd" => Compression::Zstd { level: 3 },
            Some(RawCompression::Name(n)) if n == "none" => Compression::None,
            Some(RawCompression::Zstd { zstd }) if (1..=22).contains(&zstd) => {
                Compression::Zstd { level: zstd }
            }
            Some(other) => {
                diags.push(err(format!(
                    "compression {other:?} is not valid; use `zstd`, `none` or `{{zstd: 1..22}}`"
                )));
                Compression::None
            }
        };
        let encryption_recipients = job.encryption.map(|e| e.recipients).unwrap_or_default();
        for r in &encryption_recipients {
            if !r.starts_with("age1") {
                diags.push(err(format!("encryption recipient `{r}` is not an age public key (`age1…`); identities never go in Git")));
            }
        }
        let destination = match (job.destination.local, job.destination.s3) {
            (Some(path), None) => Destination::Local { path },
            (None, Some(s)) => Destination::S3 {
                endpoint: s.endpoint,
                bucket: s.bucket,
                prefix: s.prefix,
                region: s.region,
            },
            _ => {
                diags.push(err(
                    "destination needs exactly one of `local`, `s3`".to_owned()
                ));
                continue;
            }
        };
        let max_age = match job.retention.max_age.as_deref().map(duration::parse) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                diags.push(err(format!("retention.max_age: {e}")));
                None
            }
        };
        if let Some(t) = &job.verify.restore_test {
            match source {
                BackupSource::Exec { .. } if t.command.is_empty() => diags.push(err(
                    "verify.restore_test.command (the restore command, fed the dump on stdin) is required for exec sources".to_owned(),
                )),
                BackupSource::Config => diags.push(err(
                    "verify.restore_test applies to exec, volume and path sources, not config".to_owned(),
                )),
                _ => {}
            }
        }
        if job.retention.keep_last == Some(0) {
            diags.push(err(
                "retention.keep_last must be at least 1 (the last verified backup is always kept)"
                    .to_owned(),
            ));
        }
        jobs.push(BackupJob {
            name: job.name,
            schedule: job.schedule,
            timezone,
            source,
            consistency,
            compression,
            encryption_recipients,
            destination,
            retention: Retention {
                keep_last: job.retention.keep_last,
                max_age: max_age.or(if job.retention.keep_last.is_none() {
                    Some(Duration::from_secs(30 * 86_400))
                } else {
                    None
                }),
            },
            verify: Verify {
                read_back: job.verify.read_back.unwrap_or(true),
                restore_test: job.verify.restore_test.map(|r| RestoreTest {
                    image: r.image,
                    command: r.command,
                    check: r.check,
                }),
            },
            before_apply: job.before_apply,
            run_missed: job.run_missed,
            origin: Origin {
                file: file.to_owned(),
                line,
            },
        });
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"jobs:
  - name: postgres
    schedule: "0 3 * * 1"
    source:
      exec: { service: postgres, command: [pg_dump, -U, app, app], restore: [psql, -U, app, app] }
    destination: { local: /var/backups }
    retention: { keep_last: 7, max_age: 30d }
  - name: grafana
    schedule: "@daily"
    timezone: Europe/Berlin
    source: { volume: { volume: grafana-data, service: grafana } }
    consistency: pause
    compression: { zstd: 19 }
    destination: { local: /var/backups }
"#;

    #[test]
    fn loads_jobs_with_defaults() {
        let jobs = load("backups/db.yaml", GOOD).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].timezone, "UTC");
        assert_eq!(jobs[0].compression, Compression::Zstd { level: 3 });
        assert_eq!(
            jobs[0].retention.max_age,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert!(jobs[0].verify.read_back);
        assert_eq!(jobs[1].consistency, Consistency::Pause);
        assert_eq!(jobs[1].origin.line, 8);
    }

    #[test]
    fn invalid_cron_is_an_error_naming_file_line_and_job() {
        let text = GOOD.replace("\"0 3 * * 1\"", "\"0 25 * * *\"");
        let diags = load("backups/db.yaml", &text).unwrap_err();
        let d = diags.errors().next().unwrap().to_string();
        assert!(d.contains("backups/db.yaml:2"), "{d}");
        assert!(d.contains("jobs.postgres"), "{d}");
        assert!(d.contains("schedule"), "{d}");
    }

    #[test]
    fn unknown_time_zone_is_an_error() {
        let text = GOOD.replace("Europe/Berlin", "Europe/Atlantis");
        let d = load("backups/db.yaml", &text).unwrap_err().to_string();
        assert!(
            d.contains("backups/db.yaml:8") && d.contains("Europe/Atlantis"),
            "{d}"
        );
    }

    #[test]
    fn unknown_key_and_two_sources_are_errors() {
        let text = GOOD.replace(
            "    retention: { keep_last: 7, max_age: 30d }\n",
            "    keep: 7\n",
        );
        assert!(
            load("b.yaml", &text)
                .unwrap_err()
                .to_string()
                .contains("keep")
        );
        let text = GOOD.replace("source: { volume:", "source: { config: {}, volume:");
        assert!(
            load("b.yaml", &text)
                .unwrap_err()
                .to_string()
                .contains("exactly one of `exec`")
        );
    }

    #[test]
    fn restore_test_of_a_volume_needs_no_command_but_of_exec_does() {
        let check = "    verify: { restore_test: { image: img, check: [true] } }\n";
        let volume = format!("{GOOD}{check}");
        let jobs = load("b.yaml", &volume).unwrap();
        assert!(jobs[1].verify.restore_test.is_some());
        let exec = GOOD.replacen("    destination:", &format!("{check}    destination:"), 1);
        let d = load("b.yaml", &exec).unwrap_err().to_string();
        assert!(
            d.contains("b.yaml:2") && d.contains("restore_test.command"),
            "{d}"
        );
    }
}
