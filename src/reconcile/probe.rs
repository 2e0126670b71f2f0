//! HTTP and TCP probes declared in an environment's `health.probes`, run
//! by the pipeline after an apply, next to the backends' own verdicts.
//!
//! A probe passes once it answers as declared; it is retried at its
//! interval until the deadline, so a service that takes a while to start
//! is not failed early. What it saw last is the reason when it fails.

use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Health, Verdict};
use crate::diag::error_chain;
use crate::manifest::{Probe, ProbeCheck};
use crate::plan::Resource;

/// The answer of one attempt: `Ok` when it passed, else what was wrong.
pub async fn attempt(
    client: &reqwest::Client,
    check: &ProbeCheck,
    timeout: Duration,
) -> Result<(), String> {
    match check {
        ProbeCheck::Http {
            url,
            status,
            contains,
        } => {
            let response = client
                .get(url)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
            let got = response.status().as_u16();
            if got != *status {
                return Err(format!("GET {url}: status {got}, want {status}"));
            }
            if let Some(needle) = contains {
                let body = response
                    .text()
                    .await
                    .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
                if !body.contains(needle.as_str()) {
                    return Err(format!("GET {url}: body does not contain `{needle}`"));
                }
            }
            Ok(())
        }
        ProbeCheck::Tcp { address } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect {address}: {e}")),
                Err(_) => Err(format!("connect {address}: no answer within {timeout:?}")),
            }
        }
    }
}

/// Runs every probe until it passes or `deadline`; one verdict per probe.
pub async fn run_all(
    client: &reqwest::Client,
    target: &str,
    probes: &[Probe],
    deadline: Instant,
) -> Vec<Verdict> {
    let runs = probes.iter().map(|p| async move {
        let mut last;
        loop {
            let timeout = p
                .interval
                .clamp(Duration::from_secs(1), Duration::from_secs(10));
            last = attempt(client, &p.check, timeout).await;
            if last.is_ok() || Instant::now() + p.interval >= deadline {
                break;
            }
            tokio::time::sleep(p.interval).await;
        }
        Verdict {
            target: target.to_owned(),
            resource: Resource::new("probe", &p.name),
            health: if last.is_ok() {
                Health::Healthy
            } else {
                Health::Degraded
            },
            reason: match last {
                Ok(()) => "passed".to_owned(),
                Err(e) => e,
            },
        }
    });
    futures_util::future::join_all(runs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_and_http_probes_pass_and_fail_with_a_reason() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if req.starts_with("GET /ok") {
                    ("200 OK", "all good")
                } else {
                    ("500 Internal Server Error", "broken")
                };
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    )
                    .await;
            }
        });
        let t = Duration::from_secs(2);
        let http = |path: &str, contains: Option<&str>| ProbeCheck::Http {
            url: format!("http://{addr}{path}"),
            status: 200,
            contains: contains.map(str::to_owned),
        };
        attempt(
            &client,
            &ProbeCheck::Tcp {
                address: addr.to_string(),
            },
            t,
        )
        .await
        .unwrap();
        attempt(&client, &http("/ok", Some("good")), t)
            .await
            .unwrap();
        let e = attempt(&client, &http("/bad", None), t).await.unwrap_err();
        assert!(e.contains("status 500, want 200"), "{e}");
        let e = attempt(&client, &http("/ok", Some("missing")), t)
            .await
            .unwrap_err();
        assert!(e.contains("does not contain `missing`"), "{e}");

        let probes = vec![
            Probe {
                name: "ok".into(),
                check: http("/ok", None),
                interval: Duration::from_millis(50),
            },
            Probe {
                name: "bad".into(),
                check: http("/bad", None),
                interval: Duration::from_millis(50),
            },
        ];
        let v = run_all(
            &client,
            "probes",
            &probes,
            Instant::now() + Duration::from_millis(300),
        )
        .await;
        assert_eq!(v[0].health, Health::Healthy);
        assert_eq!(v[1].health, Health::Degraded);
        assert!(v[1].reason.contains("status 500"), "{}", v[1].reason);
    }
}
