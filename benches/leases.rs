//! Leader election cost and speed, with driftless's own electors
//! (`daemon::lease`) against the in-process fake API server
//! (`tests/it/fake_apiserver.rs`), over HTTP on 127.0.0.1:
//!
//! - hand-over: the holder stops renewing (it died); how long until the
//!   other replica holds the environment's Lease, measured from the
//!   holder's last successful renewal. Expected: the lease duration plus at
//!   most one retry period (the taker must see the record unchanged for a
//!   full duration on its own clock). The reconcile the new holder then
//!   runs is the daemon's ordinary pass (see the daemon benchmarks).
//! - request rate: requests per minute each replica sends for one
//!   environment, as holder (renewals) and as follower (reads).
//!
//! Run: `cargo bench --bench leases` (about 90 s: real time, no pause —
//! the electors use the clock they use in production).

#[path = "../tests/it/fake_apiserver.rs"]
#[allow(dead_code)]
mod fake_apiserver;

use std::sync::Arc;
use std::time::Duration;

use driftless::daemon::lease::{Elector, LeaseSettings, Replica, Step};
use driftless::store::Store;
use fake_apiserver::FakeApiServer;
use tokio::time::Instant;

fn settings(holder: &str, duration: u64, renew_ms: u64, retry_ms: u64) -> Arc<LeaseSettings> {
    Arc::new(LeaseSettings {
        namespace: "driftless".into(),
        kubeconfig: None,
        holder: holder.into(),
        duration: Duration::from_secs(duration),
        renew_deadline: Duration::from_millis(renew_ms),
        retry_period: Duration::from_millis(retry_ms),
    })
}

async fn elector(server: &FakeApiServer, env: &str, s: Arc<LeaseSettings>) -> Elector {
    let dir = tempfile::tempdir().unwrap();
    let file = kube::config::Kubeconfig::read_from(server.kubeconfig(dir.path())).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    Elector::new(
        env,
        client,
        s,
        Arc::new(Store::open_in_memory().unwrap()),
        Arc::new(Replica::default()),
    )
}

/// One hand-over: a holds, renews a few times, dies; b steps every retry
/// period until it holds. Returns last renewal of a → b holds.
async fn hand_over(env: &str, duration: u64, renew_ms: u64, retry_ms: u64) -> Duration {
    let server = FakeApiServer::start().await;
    let a = elector(&server, env, settings("a", duration, renew_ms, retry_ms)).await;
    let b = elector(&server, env, settings("b", duration, renew_ms, retry_ms)).await;
    let retry = Duration::from_millis(retry_ms);
    assert_eq!(a.step().await.unwrap(), Step::Acquired);
    let mut last_renewal = Instant::now();
    for _ in 0..3 {
        assert_eq!(b.step().await.unwrap(), Step::Follower);
        tokio::time::sleep(retry).await;
        assert_eq!(a.step().await.unwrap(), Step::Renewed);
        last_renewal = Instant::now();
    }
    // a is dead from here on.
    loop {
        tokio::time::sleep(retry).await;
        if b.step().await.unwrap() == Step::Acquired {
            return last_renewal.elapsed();
        }
    }
}

/// Requests per minute for one environment: (holder, follower).
async fn rates(window: Duration) -> (f64, f64) {
    let server = FakeApiServer::start().await;
    let (duration, renew, retry) = (15, 10_000, 2_000);
    let a = Arc::new(elector(&server, "prod", settings("a", duration, renew, retry)).await);
    let b = Arc::new(elector(&server, "prod", settings("b", duration, renew, retry)).await);
    assert_eq!(a.step().await.unwrap(), Step::Acquired);
    server.clear_log();
    let end = Instant::now() + window;
    let period = Duration::from_millis(retry);
    let run = |e: Arc<Elector>| async move {
        while Instant::now() < end {
            let _ = e.step().await;
            tokio::time::sleep(period).await;
        }
    };
    tokio::join!(run(a), run(b));
    let log = server.requests();
    // The fake server cannot tell the two apart by token here, so count by
    // method: renewals are PUTs (the holder), reads are GETs (the follower).
    let puts = log.iter().filter(|r| r.method == "PUT").count() as f64;
    let gets = log.iter().filter(|r| r.method == "GET").count() as f64;
    let per_minute = 60.0 / window.as_secs_f64();
    (puts * per_minute, gets * per_minute)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list themselves
    }
    for (duration, renew, retry) in [(3, 2_000, 500), (15, 10_000, 2_000)] {
        let mut samples = Vec::new();
        for i in 0..3 {
            samples.push(hand_over(&format!("env{i}"), duration, renew, retry).await);
        }
        samples.sort();
        println!(
            "hand-over, lease {duration}s / renew deadline {}s / retry {}ms: {:?} (min {:.2}s, max {:.2}s)",
            renew / 1000,
            retry,
            samples
                .iter()
                .map(|d| format!("{:.2}s", d.as_secs_f64()))
                .collect::<Vec<_>>(),
            samples[0].as_secs_f64(),
            samples[2].as_secs_f64()
        );
    }
    let (holder, follower) = rates(Duration::from_secs(20)).await;
    println!(
        "requests per minute per environment at the defaults (retry 2s): holder {holder:.0} (renewals), follower {follower:.0} (reads)"
    );
}
