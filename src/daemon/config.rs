//! The daemon's configuration: `driftless-daemon.yaml` (raw serde types,
//! unknown keys are errors), overlaid with environment variables and flags
//! ([`Overrides`], filled by clap), validated in one place
//! ([`DaemonConfig::resolve`]) into [`DaemonConfig`].
//!
//! Secrets (the webhook secret, the API token) come from files or
//! environment variables, never from a flag value or the file itself, and
//! [`DaemonConfig::sanitized`] is what gets logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secrets::MASK;
use crate::source::Auth;
use crate::source::verify::Mode;
use crate::store::Retention;

/// The default configuration file name (read from the working directory
/// when `--config` is not given and the file exists).
pub const FILE: &str = "driftless-daemon.yaml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    repo: Option<String>,
    identity: Option<String>,
    environments: Option<Vec<String>>,
    state_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    secrets_dir: Option<PathBuf>,
    listen: Option<String>,
    poll_interval: Option<String>,
    watch: Option<bool>,
    verify_poll: Option<String>,
    shutdown_timeout: Option<String>,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    webhook: RawWebhook,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    git: RawGit,
    #[serde(default)]
    retention: RawRetention,
    leases: Option<RawLeases>,
    /// Per environment: the commits it applies must be signed.
    #[serde(default)]
    verify: std::collections::BTreeMap<String, RawVerify>,
}

/// `verify: { <env>: { signatures: required, allowed_signers: FILE,
/// openpgp_keys: [FILE, …], mode: head | tag | tag_and_head } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    signatures: String,
    allowed_signers: Option<PathBuf>,
    #[serde(default)]
    openpgp_keys: Vec<PathBuf>,
    mode: Option<String>,
}

/// `leases:` — leader election among replicas (see `daemon::lease`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeases {
    namespace: String,
    holder: Option<String>,
    kubeconfig: Option<PathBuf>,
    duration: Option<String>,
    renew_deadline: Option<String>,
    retry_period: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial: Option<String>,
    max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    max_body_bytes: Option<usize>,
    rate_limit: Option<u32>,
    burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    reads: Option<String>,
}

/// Who may read the status page, `/metrics` and the API's GET routes
/// (`api.reads`). Mutating routes always need the bearer token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadAccess {
    /// Callers on the loopback interface read without a token; others need
    /// it (the default: an SSH tunnel or a local reverse proxy sees the
    /// page, the network does not).
    #[default]
    Loopback,
    /// Every read needs the bearer token.
    Token,
    /// Anyone who reaches the listener reads (behind an authenticating proxy).
    Open,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGit {
    token_env: Option<String>,
    ssh_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    history_age: Option<String>,
    history_rows: Option<u32>,
    deliveries_age: Option<String>,
}

/// Settings from flags and environment variables (clap fills both); each
/// wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub repo: Option<String>,
    pub identity: Option<String>,
    pub environments: Vec<String>,
    pub state_dir: Option<PathBuf>,
    pub secrets_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub poll_interval: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    pub api_token_file: Option<PathBuf>,
    /// `--accept-lost-state`: start even though the state directory's store
    /// is gone (a flag only, never the file: it is a one-time decision).
    pub accept_lost_state: bool,
}

/// A secret value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

/// The webhook endpoint's settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Without a secret the webhook is not served.
    pub secret: Option<Secret>,
    /// Largest accepted body (default 1 MiB).
    pub max_body_bytes: usize,
    /// Requests per second (default 50), with a burst (default 100).
    pub rate_limit: u32,
    pub burst: u32,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Local path or URL of the desired-state repo.
    pub repo: String,
    /// This daemon's identity: it drives targets whose `owner` is it (and
    /// unowned ones).
    pub identity: Option<String>,
    /// Environments to drive; `None`: every environment whose targets this
    /// identity owns.
    pub environments: Option<Vec<String>>,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub secrets_dir: Option<PathBuf>,
    /// HTTP listener (`None`: no HTTP server).
    pub listen: Option<SocketAddr>,
    pub poll_interval: Duration,
    /// Watch a local repo's refs for changes (default on).
    pub watch: bool,
    pub verify_poll: Duration,
    pub shutdown_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub webhook: WebhookConfig,
    pub api_token: Option<Secret>,
    /// Who may read the page, `/metrics` and the API's GET routes.
    pub api_reads: ReadAccess,
    pub git_auth: Auth,
    pub retention: Retention,
    /// Leader election per environment among replicas (`None`: this
    /// daemon drives its environments alone, guarded by local locks).
    pub leases: Option<super::lease::LeaseSettings>,
    /// Start from an empty store when a used state directory's store is
    /// gone, instead of refusing to start (`--accept-lost-state`).
    pub accept_lost_state: bool,
    /// Environments whose commits must carry a good signature, with the
    /// allowed_signers file each is checked against. Only here, in the
    /// daemon's configuration: a commit cannot weaken its own check.
    pub verify: std::collections::BTreeMap<String, SignaturePolicy>,
}

/// `verify: { signatures: required, allowed_signers: FILE, openpgp_keys:
/// [FILE], mode: … }` of one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// SSH keys. The key files are read again at every check, so a rotated
    /// key takes effect without a restart.
    pub allowed_signers: Option<PathBuf>,
    /// Armored OpenPGP public keys (`gpg --armor --export`).
    pub openpgp_keys: Vec<PathBuf>,
    /// The commit, a signed tag pointing at it, or both.
    pub mode: crate::source::verify::Mode,
}

/// Every problem found in the configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid daemon configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// The default state directory: `/var/lib/driftless` for root, else
/// `$XDG_STATE_HOME/driftless` or `~/.local/state/driftless`.
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/driftless");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("driftless");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/state/driftless");
    }
    std::env::temp_dir().join("driftless-state")
}

impl DaemonConfig {
    /// Reads the file (`overrides.config`, else `driftless-daemon.yaml` when
    /// present), applies the overrides and the secret environment variables
    /// (`DRIFTLESS_WEBHOOK_SECRET`, `DRIFTLESS_API_TOKEN`), and validates.
    pub fn resolve(o: &Overrides) -> Result<DaemonConfig, ConfigError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self::resolve_with(o, &env)
    }

    /// [`DaemonConfig::resolve`] with the environment given (tests).
    pub fn resolve_with(
        o: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<DaemonConfig, ConfigError> {
        let mut errors = Vec::new();
        let raw = match &o.config {
            Some(path) => read_file(path, &mut errors),
            None if Path::new(FILE).exists() => read_file(Path::new(FILE), &mut errors),
            None => RawConfig::default(),
        };
        // A file that does not parse leaves every field at its default:
        // what else would be said ("no repo") only follows from that.
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        let mut dur = |field: &str, value: Option<&str>, default: Duration| match value {
            None => default,
            Some(v) => match crate::duration::parse(v) {
                Ok(d) if d.is_zero() => {
                    errors.push(format!("{field}: must be more than zero"));
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    errors.push(format!("{field}: {e}"));
                    default
                }
            },
        };
        let poll_interval = dur(
            "poll_interval",
            o.poll_interval.as_deref().or(raw.poll_interval.as_deref()),
            Duration::from_secs(60),
        );
        let verify_poll = dur(
            "verify_poll",
            raw.verify_poll.as_deref(),
            Duration::from_secs(1),
        );
        let shutdown_timeout = dur(
            "shutdown_timeout",
            raw.shutdown_timeout.as_deref(),
            Duration::from_secs(120),
        );
        let retry_initial = dur(
            "retry.initial",
            raw.retry.initial.as_deref(),
            Duration::from_secs(5),
        );
        let retry_max = dur(
            "retry.max",
            raw.retry.max.as_deref(),
            Duration::from_secs(300),
        );
        let history_age = dur(
            "retention.history_age",
            raw.retention.history_age.as_deref(),
            Retention::default().history_age,
        );
        let deliveries_age = dur(
            "retention.deliveries_age",
            raw.retention.deliveries_age.as_deref(),
            Retention::default().deliveries_age,
        );

        let leases = raw.leases.map(|l| super::lease::LeaseSettings {
            holder: l
                .holder
                .or_else(|| env("DRIFTLESS_LEASE_HOLDER"))
                .or_else(|| env("HOSTNAME"))
                .unwrap_or_default(),
            namespace: l.namespace,
            kubeconfig: l.kubeconfig,
            duration: dur(
                "leases.duration",
                l.duration.as_deref(),
                Duration::from_secs(15),
            ),
            renew_deadline: dur(
                "leases.renew_deadline",
                l.renew_deadline.as_deref(),
                Duration::from_secs(10),
            ),
            retry_period: dur(
                "leases.retry_period",
                l.retry_period.as_deref(),
                Duration::from_secs(2),
            ),
        });

        let repo = o.repo.clone().or(raw.repo);
        if repo.is_none() {
            errors.push(
                "no repo: set `repo:` in the config file, --repo, or DRIFTLESS_REPO".to_owned(),
            );
        }
        let listen = match o.listen.clone().or(raw.listen) {
            None => None,
            Some(l) if l.is_empty() || l == "none" => None,
            Some(l) => match l.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(format!(
                        "listen: `{l}` is not an address:port (like 127.0.0.1:8088)"
                    ));
                    None
                }
            },
        };
        let environments = if !o.environments.is_empty() {
            Some(o.environments.clone())
        } else {
            raw.environments
        };
        if let Some(envs) = &environments {
            for e in envs {
                if !crate::manifest::valid_name(e) {
                    errors.push(format!(
                        "environments: `{e}` is not a valid environment name"
                    ));
                }
            }
        }
        let mut secret = |what: &str, file: Option<&PathBuf>, var: &str| -> Option<Secret> {
            if let Some(path) = file {
                return match std::fs::read_to_string(path) {
                    Ok(s) => {
                        let s = s.trim_end_matches(['\n', '\r']).to_owned();
                        if s.len() < crate::secrets::MIN_SECRET_LEN {
                            errors.push(format!(
                                "{what} in {} is shorter than {} characters",
                                path.display(),
                                crate::secrets::MIN_SECRET_LEN
                            ));
                            None
                        } else {
                            Some(Secret(s))
                        }
                    }
                    Err(e) => {
                        errors.push(format!("{what}: cannot read {}: {e}", path.display()));
                        None
                    }
                };
            }
            match env(var) {
                Some(v) if v.len() < crate::secrets::MIN_SECRET_LEN => {
                    errors.push(format!(
                        "{what} in {var} is shorter than {} characters",
                        crate::secrets::MIN_SECRET_LEN
                    ));
                    None
                }
                Some(v) => Some(Secret(v)),
                None => None,
            }
        };
        let webhook_secret = secret(
            "webhook secret",
            o.webhook_secret_file
                .as_ref()
                .or(raw.webhook.secret_file.as_ref()),
            raw.webhook
                .secret_env
                .as_deref()
                .unwrap_or("DRIFTLESS_WEBHOOK_SECRET"),
        );
        let api_token = secret(
            "API token",
            o.api_token_file.as_ref().or(raw.api.token_file.as_ref()),
            raw.api
                .token_env
                .as_deref()
                .unwrap_or("DRIFTLESS_API_TOKEN"),
        );
        let api_reads = match raw.api.reads.as_deref() {
            None | Some("loopback") => ReadAccess::Loopback,
            Some("token") => ReadAccess::Token,
            Some("open") => ReadAccess::Open,
            Some(other) => {
                errors.push(format!(
                    "api.reads: `{other}` is not one of loopback, token, open"
                ));
                ReadAccess::Loopback
            }
        };
        let max_body = raw.webhook.max_body_bytes.unwrap_or(1024 * 1024);
        if max_body == 0 {
            errors.push("webhook.max_body_bytes: must be more than zero".to_owned());
        }
        let rate_limit = raw.webhook.rate_limit.unwrap_or(50);
        if rate_limit == 0 {
            errors.push("webhook.rate_limit: must be more than zero".to_owned());
        }
        let git_auth = match (raw.git.token_env, raw.git.ssh_key) {
            (Some(_), Some(_)) => {
                errors.push("git: set one of `token_env`, `ssh_key`".to_owned());
                Auth::None
            }
            (Some(var), None) => Auth::Token { env_var: var },
            (None, Some(path)) => Auth::SshKey { path },
            (None, None) => Auth::None,
        };
        if let Some(l) = &leases {
            errors.extend(l.check());
        }
        let mut verify = std::collections::BTreeMap::new();
        for (env, v) in raw.verify {
            let at = format!("verify.{env}");
            if !crate::manifest::valid_name(&env) {
                errors.push(format!("{at}: `{env}` is not a valid environment name"));
            }
            let mode = match v.mode.as_deref() {
                None => Mode::Head,
                Some(m) => Mode::parse(m).unwrap_or_else(|| {
                    errors.push(format!("{at}.mode: `{m}` is not one of {}", Mode::NAMES));
                    Mode::Head
                }),
            };
            let keyed = v.allowed_signers.is_some() || !v.openpgp_keys.is_empty();
            match (v.signatures.as_str(), keyed) {
                ("off", _) => {}
                ("required", true) => {
                    if let Some(path) = &v.allowed_signers {
                        match crate::source::verify::AllowedSigners::load(path) {
                            Ok(a) if a.is_empty() => errors.push(format!(
                                "{at}.allowed_signers: {} lists no key",
                                path.display()
                            )),
                            Ok(_) => {}
                            Err(e) => errors.push(format!("{at}.allowed_signers: {e}")),
                        }
                    }
                    for (i, path) in v.openpgp_keys.iter().enumerate() {
                        let keys = std::slice::from_ref(path);
                        if let Err(e) = crate::source::verify::openpgp::Keyring::load(keys) {
                            errors.push(format!("{at}.openpgp_keys[{i}]: {e}"));
                        }
                    }
                    verify.insert(
                        env,
                        SignaturePolicy {
                            allowed_signers: v.allowed_signers,
                            openpgp_keys: v.openpgp_keys,
                            mode,
                        },
                    );
                }
                ("required", false) => errors.push(format!(
                    "{at}: `signatures: required` needs `allowed_signers: FILE` (SSH keys) \
                     or `openpgp_keys: [FILE]` (armored OpenPGP keys), or both"
                )),
                (other, _) => errors.push(format!(
                    "{at}.signatures: `{other}` is not one of required, off"
                )),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        let state_dir = o
            .state_dir
            .clone()
            .or(raw.state_dir)
            .unwrap_or_else(default_state_dir);
        Ok(DaemonConfig {
            repo: repo.expect("checked"),
            identity: o.identity.clone().or(raw.identity),
            environments,
            cache_dir: o
                .cache_dir
                .clone()
                .or(raw.cache_dir)
                .unwrap_or_else(|| state_dir.join("cache")),
            state_dir,
            secrets_dir: o.secrets_dir.clone().or(raw.secrets_dir),
            listen,
            poll_interval,
            watch: raw.watch.unwrap_or(true),
            verify_poll,
            shutdown_timeout,
            retry_initial,
            retry_max: retry_max.max(retry_initial),
            webhook: WebhookConfig {
                secret: webhook_secret,
                max_body_bytes: max_body,
                rate_limit,
                burst: raw
                    .webhook
                    .burst
                    .unwrap_or(rate_limit.saturating_mul(2))
                    .max(1),
            },
            api_token,
            api_reads,
            git_auth,
            retention: Retention {
                history_age,
                history_rows: raw
                    .retention
                    .history_rows
                    .unwrap_or(Retention::default().history_rows),
                deliveries_age,
            },
            leases,
            accept_lost_state: o.accept_lost_state,
            verify,
        })
    }

    /// The configuration as logged at start: secrets shown as set or not.
    pub fn sanitized(&self) -> serde_json::Value {
        let set = |s: &Option<Secret>| if s.is_some() { MASK } else { "(not set)" };
        serde_json::json!({
            "repo": crate::source::git::redact(&self.repo),
            "identity": self.identity,
            "environments": self.environments,
            "state_dir": self.state_dir,
            "cache_dir": self.cache_dir,
            "secrets_dir": self.secrets_dir,
            "listen": self.listen.map(|l| l.to_string()),
            "poll_interval": crate::duration::format(self.poll_interval),
            "watch": self.watch,
            "verify_poll": crate::duration::format(self.verify_poll),
            "shutdown_timeout": crate::duration::format(self.shutdown_timeout),
            "retry": {"initial": crate::duration::format(self.retry_initial), "max": crate::duration::format(self.retry_max)},
            "webhook": {
                "secret": set(&self.webhook.secret),
                "max_body_bytes": self.webhook.max_body_bytes,
                "rate_limit": self.webhook.rate_limit,
                "burst": self.webhook.burst,
            },
            "api_token": set(&self.api_token),
            "api_reads": self.api_reads,
            "git_auth": match &self.git_auth {
                Auth::None => "none".to_owned(),
                Auth::Token { env_var } => format!("token from ${env_var}"),
                Auth::SshKey { path } => format!("ssh key {}", path.display()),
            },
            "retention": self.retention,
            "accept_lost_state": self.accept_lost_state,
            "verify": self.verify.iter().map(|(env, p)| (env.clone(), serde_json::json!({
                "signatures": "required",
                "allowed_signers": p.allowed_signers,
                "openpgp_keys": p.openpgp_keys,
                "mode": p.mode,
            }))).collect::<serde_json::Map<_, _>>(),
            "leases": self.leases.as_ref().map(|l| serde_json::json!({
                "namespace": l.namespace,
                "holder": l.holder,
                "kubeconfig": l.kubeconfig,
                "duration": crate::duration::format(l.duration),
                "renew_deadline": crate::duration::format(l.renew_deadline),
                "retry_period": crate::duration::format(l.retry_period),
            })),
        })
    }
}

fn read_file(path: &Path, errors: &mut Vec<String>) -> RawConfig {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!("cannot read {}: {e}", path.display()));
            return RawConfig::default();
        }
    };
    match crate::yaml::from_str::<RawConfig>(&text) {
        Ok(raw) => raw,
        Err(e) => {
            errors.push(e.into_diagnostic(&path.display().to_string()).to_string());
            RawConfig::default()
        }
    }
}

/// Serialises as the sanitized form (so a `DaemonConfig` can be shown).
impl Serialize for DaemonConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.sanitized().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// Resolves a config file of `repo: /r` and the lines `verify` of a
    /// `verify:` map, written to `file`.
    fn verify_config(file: &Path, verify: &str) -> Result<DaemonConfig, ConfigError> {
        std::fs::write(file, format!("repo: /r\nverify:\n{verify}")).unwrap();
        resolve_file(file)
    }

    fn resolve_file(file: &Path) -> Result<DaemonConfig, ConfigError> {
        DaemonConfig::resolve_with(
            &Overrides {
                config: Some(file.to_owned()),
                ..Overrides::default()
            },
            &no_env,
        )
    }

    /// `examples/daemon/driftless-daemon.yaml` with its key files, as an
    /// operator installs them in /etc/driftless.
    #[test]
    fn the_example_daemon_config_requires_signatures_for_prod() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/daemon");
        let etc = tempfile::tempdir().unwrap();
        for f in ["allowed_signers", "release-team.asc"] {
            std::fs::copy(example.join(f), etc.path().join(f)).unwrap();
        }
        std::fs::write(etc.path().join("api-token"), "example-api-token-value\n").unwrap();
        let text = std::fs::read_to_string(example.join("driftless-daemon.yaml")).unwrap();
        let at = format!("{}/", etc.path().display());
        let file = etc.path().join("driftless-daemon.yaml");
        std::fs::write(&file, text.replace("/etc/driftless/", &at)).unwrap();
        let c = resolve_file(&file).unwrap();
        assert_eq!(c.verify.keys().collect::<Vec<_>>(), ["prod"]);
        let prod = &c.verify["prod"];
        assert_eq!(prod.mode, Mode::Head);
        let keys =
            crate::source::verify::Keys::load(prod.allowed_signers.as_deref(), &prod.openpgp_keys)
                .unwrap();
        assert!(!keys.ssh.is_empty());
        assert_eq!(keys.openpgp.len(), 1);
    }

    #[test]
    fn verify_takes_openpgp_keys_and_a_mode_and_names_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.yaml");
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/daemon");
        let asc = example.join("release-team.asc");
        let not_a_key = example.join("allowed_signers");
        let config = |verify: String| verify_config(&file, &verify);
        let c = config(format!(
            "  prod: {{ signatures: required, openpgp_keys: [{}], mode: tag }}\n",
            asc.display()
        ))
        .unwrap();
        assert_eq!(c.verify["prod"].mode, Mode::Tag);
        assert_eq!(c.verify["prod"].allowed_signers, None);
        assert_eq!(c.sanitized()["verify"]["prod"]["mode"], "tag");
        let ConfigError(errors) = config(format!(
            "  prod: {{ signatures: required, openpgp_keys: [{}, {}], mode: latest }}\n",
            asc.display(),
            not_a_key.display()
        ))
        .unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("verify.prod.mode: `latest` is not one of head, tag"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with(&format!(
                "verify.prod.openpgp_keys[1]: {}",
                not_a_key.display()
            )),
            "{errors:?}"
        );
    }

    #[test]
    fn file_then_overrides_then_validation() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hook");
        std::fs::write(&secret, "hook-secret-value\n").unwrap();
        let file = dir.path().join("d.yaml");
        std::fs::write(
            &file,
            format!(
                "repo: /srv/repo.git\nidentity: ops\npoll_interval: 30s\nlisten: 127.0.0.1:9000\nwebhook:\n  secret_file: {}\n  max_body_bytes: 2048\nretention:\n  history_rows: 50\n",
                secret.display()
            ),
        )
        .unwrap();
        let o = Overrides {
            config: Some(file.clone()),
            poll_interval: Some("5s".into()),
            environments: vec!["dev".into()],
            ..Overrides::default()
        };
        let c = DaemonConfig::resolve_with(&o, &no_env).unwrap();
        assert_eq!(c.repo, "/srv/repo.git");
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert_eq!(c.environments, Some(vec!["dev".to_owned()]));
        assert_eq!(
            c.webhook.secret.as_ref().unwrap().expose(),
            "hook-secret-value"
        );
        assert_eq!(c.webhook.max_body_bytes, 2048);
        assert_eq!(c.retention.history_rows, 50);
        let shown = c.sanitized().to_string();
        assert!(!shown.contains("hook-secret-value"), "{shown}");
        assert!(shown.contains("\"secret\":\"******\""), "{shown}");
        assert!(!format!("{c:?}").contains("hook-secret-value"));
    }

    #[test]
    fn a_file_that_does_not_parse_is_the_only_error_said() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.yaml");
        std::fs::write(
            &file,
            "repo: /srv/repo.git
bogus_key: 1
",
        )
        .unwrap();
        let o = Overrides {
            config: Some(file),
            ..Overrides::default()
        };
        let ConfigError(errors) = DaemonConfig::resolve_with(&o, &no_env).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("unknown field `bogus_key`"),
            "{errors:?}"
        );
        assert!(errors[0].contains("d.yaml:2"), "{errors:?}");
    }

    #[test]
    fn verify_requires_a_readable_allowed_signers_file_per_environment() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed_signers");
        std::fs::write(
            &allowed,
            "ops@example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGz7hV4M8t1qgZ2rdtYQ9z1iJvC2eP6q5+5b3m9pS0dl\n",
        )
        .unwrap();
        let file = dir.path().join("d.yaml");
        let config = |verify: &str| verify_config(&file, verify);
        let c = config(&format!(
            "  prod:\n    signatures: required\n    allowed_signers: {}\n  dev:\n    signatures: off\n",
            allowed.display()
        ))
        .unwrap();
        assert_eq!(c.verify.keys().collect::<Vec<_>>(), ["prod"]);
        assert_eq!(c.verify["prod"].allowed_signers.as_ref(), Some(&allowed));
        assert_eq!(c.sanitized()["verify"]["prod"]["signatures"], "required");
        let ConfigError(errors) = config(
            "  prod:\n    signatures: required\n  dev:\n    signatures: maybe\n  qa:\n    signatures: required\n    allowed_signers: /nonexistent\n",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("verify.prod: `signatures: required` needs")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("verify.dev.signatures: `maybe`")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("/nonexistent: cannot read")),
            "{errors:?}"
        );
    }

    #[test]
    fn leases_default_to_the_pod_name_and_check_their_timing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.yaml");
        std::fs::write(&file, "repo: /r\nleases:\n  namespace: driftless\n").unwrap();
        let o = Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        };
        let env = |k: &str| (k == "HOSTNAME").then(|| "driftless-7d9f-abcde".to_owned());
        let l = DaemonConfig::resolve_with(&o, &env)
            .unwrap()
            .leases
            .unwrap();
        assert_eq!(l.holder, "driftless-7d9f-abcde");
        assert_eq!(
            (l.duration, l.renew_deadline, l.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        std::fs::write(
            &file,
            "repo: /r\nleases:\n  namespace: driftless\n  duration: 5s\n  renew_deadline: 10s\n",
        )
        .unwrap();
        let e = DaemonConfig::resolve_with(&o, &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be shorter than leases.duration"), "{e}");
        assert!(e.contains("leases.holder is empty"), "{e}");
    }

    #[test]
    fn secrets_from_the_environment() {
        let o = Overrides {
            repo: Some("/r".into()),
            ..Overrides::default()
        };
        let env = |k: &str| (k == "DRIFTLESS_API_TOKEN").then(|| "api-token-value".to_owned());
        let c = DaemonConfig::resolve_with(&o, &env).unwrap();
        assert_eq!(c.api_token.unwrap().expose(), "api-token-value");
        assert!(c.webhook.secret.is_none());
        assert_eq!(c.poll_interval, Duration::from_secs(60));
    }

    #[test]
    fn every_problem_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.yaml");
        std::fs::write(
            &file,
            "poll_interval: soon\nlisten: nowhere\nwebhook:\n  rate_limit: 0\napi:\n  reads: everyone\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(file),
            api_token_file: Some(dir.path().join("missing")),
            ..Overrides::default()
        };
        let e = DaemonConfig::resolve_with(&o, &no_env)
            .unwrap_err()
            .to_string();
        for needle in [
            "poll_interval",
            "listen",
            "rate_limit",
            "no repo",
            "API token",
            "api.reads",
        ] {
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let dir2 = tempfile::tempdir().unwrap();
        let bad = dir2.path().join("d.yaml");
        std::fs::write(&bad, "repo: x\nbogus: 1\n").unwrap();
        let e = DaemonConfig::resolve_with(
            &Overrides {
                config: Some(bad),
                ..Overrides::default()
            },
            &no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
