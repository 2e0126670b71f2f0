//! How a Docker target is reached: a local `unix://` socket, a remote
//! `tcp://` engine over mutual TLS, or `ssh://` (the `ssh` program, as the
//! Docker CLI does).
//!
//! Credentials are files on the daemon's host, never repo content: the
//! manifest may name an absolute directory (`tls_cert_path`) or key file
//! (`ssh_key_file`); otherwise `DOCKER_CERT_PATH` (then `~/.docker`) is used,
//! as the Docker CLI does with `DOCKER_TLS_VERIFY=1`. TLS always verifies
//! the engine's certificate against the directory's `ca.pem` and presents
//! `cert.pem`/`key.pem`; plain `tcp://` (an unauthenticated root shell on
//! the network) and TLS without verification are refused.

use std::path::{Path, PathBuf};

use bollard::Docker;

use crate::manifest::DockerTarget;

/// Request timeout in seconds for every engine connection.
const TIMEOUT_SECS: u64 = 120;

/// An engine call that failed, named (`list containers`), so a hung
/// engine's timeout says what it did not answer.
#[derive(Debug, thiserror::Error)]
#[error("{call}: {}", describe(source))]
pub struct EngineError {
    pub call: &'static str,
    #[source]
    pub source: bollard::errors::Error,
}

/// `call`'s failure as an [`EngineError`].
pub fn failed(call: &'static str) -> impl FnOnce(bollard::errors::Error) -> EngineError {
    move |source| EngineError { call, source }
}

fn describe(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::RequestTimeoutError => format!(
            "the engine did not answer within {TIMEOUT_SECS} s (it may be hung: does `docker info` answer?)"
        ),
        e => e.to_string(),
    }
}

/// A resolved way to reach an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A local socket path.
    Unix(PathBuf),
    /// `host:port` over TLS with the three PEM files of `dir`.
    Tls { addr: String, dir: PathBuf },
    /// `ssh://user@host[:port]`, optionally with a private key file.
    Ssh { url: String, key: Option<PathBuf> },
}

impl Endpoint {
    /// Resolves `host` (already chosen: the target's, `DOCKER_HOST`, or the
    /// default socket) with the target's credential settings. `cert_env` is
    /// the value of `DOCKER_CERT_PATH`, `home` the user's home directory.
    pub fn resolve(
        host: &str,
        target: &DockerTarget,
        cert_env: Option<&str>,
        home: Option<&Path>,
    ) -> Result<Endpoint, String> {
        if let Some(path) = host.strip_prefix("unix://") {
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = host.strip_prefix("tcp://") {
            let addr = addr.trim_end_matches('/');
            if addr.is_empty() || addr.contains('/') {
                return Err(format!("`{host}` is not a tcp://HOST:PORT address"));
            }
            let dir = match (
                &target.tls_cert_path,
                cert_env.filter(|s| !s.is_empty()),
                home,
            ) {
                (Some(dir), _, _) => PathBuf::from(dir),
                (None, Some(env), _) => PathBuf::from(env),
                (None, None, Some(home)) if home.join(".docker/ca.pem").exists() => {
                    home.join(".docker")
                }
                _ => {
                    return Err(format!(
                        "`{host}` needs TLS client credentials: set the target's `tls_cert_path` \
                         or DOCKER_CERT_PATH to a directory holding ca.pem, cert.pem and key.pem \
                         (plain tcp:// is refused: anyone on the network could drive the engine)"
                    ));
                }
            };
            for file in ["ca.pem", "cert.pem", "key.pem"] {
                if !dir.join(file).is_file() {
                    return Err(format!(
                        "TLS credentials for `{host}`: {} is missing (the directory must hold \
                         ca.pem, cert.pem and key.pem, the DOCKER_CERT_PATH layout)",
                        dir.join(file).display()
                    ));
                }
            }
            return Ok(Endpoint::Tls {
                addr: addr.to_owned(),
                dir,
            });
        }
        if let Some(rest) = host.strip_prefix("ssh://") {
            // bollard hands `user@host:port` to the ssh program without the
            // scheme, which then takes `host:port` for a host name.
            let authority = rest.rsplit('@').next().unwrap_or(rest);
            if authority.contains(':') {
                return Err(format!(
                    "`{host}`: a port in an ssh:// Docker host is not supported (the ssh transport would take `{authority}` for a host name); \
                     use ssh://USER@ALIAS with a `Host ALIAS` entry giving HostName and Port in the daemon user's ~/.ssh/config"
                ));
            }
            return Ok(Endpoint::Ssh {
                url: host.to_owned(),
                key: target.ssh_key_file.as_ref().map(PathBuf::from),
            });
        }
        Err(format!(
            "unsupported Docker host `{host}`: use unix://PATH, tcp://HOST:PORT (TLS) or ssh://USER@HOST"
        ))
    }

    /// Opens a client for the endpoint (no request is sent yet).
    pub fn client(&self) -> Result<Docker, String> {
        let version = bollard::API_DEFAULT_VERSION;
        match self {
            Endpoint::Unix(path) => {
                if !path.exists() {
                    return Err(format!(
                        "Docker socket {} does not exist; is the Docker engine running? \
                         (set the target's `host` or DOCKER_HOST to another socket)",
                        path.display()
                    ));
                }
                let path = path.to_string_lossy();
                Docker::connect_with_unix(&path, TIMEOUT_SECS, version)
                    .map_err(|e| format!("cannot use Docker socket {path}: {e}"))
            }
            Endpoint::Tls { addr, dir } => {
                // bollard signs with the process-wide provider; the binary
                // installs ring at start, a library caller may not have.
                let _ = rustls::crypto::ring::default_provider().install_default();
                Docker::connect_with_ssl(
                    addr,
                    &dir.join("key.pem"),
                    &dir.join("cert.pem"),
                    &dir.join("ca.pem"),
                    TIMEOUT_SECS,
                    version,
                )
                .map_err(|e| format!("cannot load the TLS credentials in {}: {e}", dir.display()))
            }
            Endpoint::Ssh { url, key } => Docker::connect_with_ssh(
                url,
                TIMEOUT_SECS,
                version,
                key.as_ref().map(|k| k.to_string_lossy().into_owned()),
            )
            .map_err(|e| format!("cannot set up ssh to {url}: {e}")),
        }
    }

    /// What to say when the engine does not answer the first request.
    pub fn no_answer(&self, error: &bollard::errors::Error) -> String {
        // bollard's own message ends at "client error (Connect)": the
        // cause (a TLS alert, ssh's "Permission denied (publickey)") is in
        // the source chain.
        let error = crate::diag::error_chain(error);
        match self {
            Endpoint::Unix(path) => {
                format!(
                    "Docker engine at {} does not answer: {error}",
                    path.display()
                )
            }
            Endpoint::Tls { addr, dir } => format!(
                "Docker engine at tcp://{addr} refused the TLS connection or does not answer: \
                 {error} (check that {} holds a client certificate the engine trusts and the CA \
                 that signed the engine's certificate)",
                dir.display()
            ),
            Endpoint::Ssh { url, key } => {
                let key = match key {
                    Some(key) => format!("the key {}", key.display()),
                    None => "the daemon user's ssh keys".to_owned(),
                };
                format!(
                    "Docker engine over {url} does not answer: {error} (check that {key} may log \
                     in there, that the host key in the daemon user's known_hosts is the host's, \
                     and that the host runs `docker system dial-stdio`)"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_out_call_names_the_call_and_says_the_engine_may_be_hung() {
        let e = failed("list containers")(bollard::errors::Error::RequestTimeoutError);
        assert_eq!(
            e.to_string(),
            "list containers: the engine did not answer within 120 s (it may be hung: does `docker info` answer?)"
        );
        let other = failed("list images")(bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "boom".into(),
        });
        assert_eq!(
            other.to_string(),
            "list images: Docker responded with status code 500: boom"
        );
    }

    fn target(host: &str, certs: Option<&str>) -> DockerTarget {
        DockerTarget {
            host: Some(host.into()),
            tls_cert_path: certs.map(Into::into),
            ..DockerTarget::default()
        }
    }

    #[test]
    fn plain_tcp_is_refused_with_what_to_do() {
        let err = Endpoint::resolve("tcp://h:2376", &target("tcp://h:2376", None), None, None)
            .unwrap_err();
        assert!(
            err.contains("tls_cert_path") && err.contains("DOCKER_CERT_PATH"),
            "{err}"
        );
    }

    #[test]
    fn tls_directory_comes_from_the_target_then_docker_cert_path() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let d = dir.path().to_str().unwrap();
        let ep = Endpoint::resolve(
            "tcp://h:2376/",
            &target("tcp://h:2376", None),
            Some(d),
            None,
        )
        .unwrap();
        assert_eq!(
            ep,
            Endpoint::Tls {
                addr: "h:2376".into(),
                dir: dir.path().into()
            }
        );
        let err = Endpoint::resolve(
            "tcp://h:1",
            &target("tcp://h:1", Some("/nope")),
            Some(d),
            None,
        )
        .unwrap_err();
        assert!(err.contains("/nope/ca.pem is missing"), "{err}");
    }

    #[test]
    fn an_ssh_port_is_refused_with_the_alias_workaround() {
        let t = target("ssh://deploy@h:2222", None);
        let err = Endpoint::resolve("ssh://deploy@h:2222", &t, None, None).unwrap_err();
        assert!(err.contains("~/.ssh/config"), "{err}");
        let ok = Endpoint::resolve("ssh://deploy@h", &t, None, None).unwrap();
        assert!(matches!(ok, Endpoint::Ssh { .. }));
    }
}
