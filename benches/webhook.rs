//! Webhook latency, outside CI: `cargo bench --bench webhook`.
//!
//! Serves the daemon's real router (file-backed state store in WAL mode,
//! HMAC check, replay guard, push parsing) on 127.0.0.1 and sends signed
//! push deliveries one after another. Prints p50/p99 of
//! - the acknowledgement (request sent → 202 received), and
//! - webhook received → worker started (request sent → the environment's
//!   worker takes the trigger; a stand-in worker records the instant, the
//!   real one starts its pass there).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use driftless::daemon::config::Secret;
use driftless::daemon::worker::{Dirty, WorkerStats};
use driftless::http::{AppState, EnvEntry, RateLimiter, router};
use driftless::store::Store;
use hmac::{KeyInit, Mac};

const N: usize = 2000;
const SECRET: &str = "bench-webhook-secret";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let dirty = Arc::new(Dirty::default());
        let state = Arc::new(AppState {
            envs: BTreeMap::from([(
                "dev".to_owned(),
                EnvEntry {
                    dirty: dirty.clone(),
                    stats: Arc::new(WorkerStats::default()),
                },
            )]),
            branches: Arc::new(RwLock::new(BTreeMap::from([(
                "main".to_owned(),
                vec!["dev".to_owned()],
            )]))),
            store,
            webhook_secret: Some(Secret::new(SECRET)),
            api_token: None,
            limiter: RateLimiter::new(1_000_000, 1_000_000),
            unsigned_limiter: RateLimiter::new(1_000_000, 1_000_000),
            ready: true.into(),
            masker: Default::default(),
            metrics: Default::default(),
            reads: Default::default(),
            repo: None,
            pages: Default::default(),
            cache: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/github", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, router(state, 1024 * 1024))
                .await
                .unwrap();
        });
        // The stand-in worker: reports when it takes each trigger.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                dirty.next().await;
                let _ = tx.send(Instant::now());
            }
        });
        let body =
            br#"{"ref":"refs/heads/main","after":"0123456789012345678901234567890123456789"}"#;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(body);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let client = reqwest::Client::new();
        let (mut acks, mut starts) = (Vec::with_capacity(N), Vec::with_capacity(N));
        for i in 0..N + 100 {
            let sent = Instant::now();
            let r = client
                .post(&url)
                .header("x-github-event", "push")
                .header("x-github-delivery", format!("bench-{i}"))
                .header("content-type", "application/json")
                .header("x-hub-signature-256", &signature)
                .body(&body[..])
                .send()
                .await
                .unwrap();
            let acked = sent.elapsed();
            assert_eq!(r.status(), 202);
            let started = rx.recv().await.unwrap();
            if i >= 100 {
                // The first 100 warm up connections and caches.
                acks.push(acked);
                starts.push(started.duration_since(sent));
            }
        }
        acks.sort();
        starts.sort();
        println!(
            "webhook ack:                      p50 {:?}  p99 {:?}  (n={N})",
            percentile(&acks, 0.5),
            percentile(&acks, 0.99)
        );
        println!(
            "webhook received → worker start:  p50 {:?}  p99 {:?}  (n={N})",
            percentile(&starts, 0.5),
            percentile(&starts, 0.99)
        );
    });
}
