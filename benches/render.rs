//! Render + check throughput: the example repo for every environment, and a
//! generated repo of 1,000 services (10 templated Compose files × 100).
//!
//! Run: `cargo bench --bench render`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use driftless::reconcile::{self, RenderOptions};
use driftless::render::SecretMode;
use driftless::secrets::SecretSource;
use driftless::source::{Auth, Limits, Source};

fn options() -> RenderOptions {
    RenderOptions {
        secrets: SecretSource::default(),
        mode: SecretMode::Placeholder,
        limits: Limits::default(),
    }
}

fn load_all(source: &Source, envs: &[&str]) {
    for env in envs {
        let loaded = reconcile::load(source, env, &options()).unwrap_or_else(|d| panic!("{d}"));
        black_box(loaded.checked.state);
    }
}

fn generated_repo(dir: &Path, services: usize, files: usize) {
    let write = |p: &str, s: String| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, s).unwrap();
    };
    write(
        "driftless.yaml",
        "apiVersion: driftless/v1\ntargets:\n  local:\n    docker: {}\nenvironments:\n  dev:\n    targets: [local]\n".into(),
    );
    write(
        "environments/dev.yaml",
        "tag: \"1.2.3\"\nreplicas: 2\nmemory: 256M\n".into(),
    );
    let per_file = services / files;
    for f in 0..files {
        let stack = format!(
            "name: gen{f}\nservices:\n{{% for i in range({per_file}) %}}  svc{{{{ i }}}}:\n    image: registry.example.com/app/svc{{{{ i }}}}:{{{{ tag }}}}\n    environment:\n      INDEX: \"{{{{ i }}}}\"\n      LOG_LEVEL: info\n    ports:\n      - \"127.0.0.1:{{{{ 20000 + i }}}}:8080\"\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1:8080/health\"]\n      interval: 10s\n      retries: 3\n    deploy:\n      replicas: {{{{ replicas }}}}\n      resources:\n        limits: {{cpus: \"0.5\", memory: {{{{ memory }}}}}}\n    restart: unless-stopped\n{{% endfor %}}"
        );
        write(&format!("compose/gen{f}.yaml.j2"), stack);
    }
}

fn bench(c: &mut Criterion) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout");
    let source = Source::open(
        example.to_str().unwrap(),
        None,
        &std::env::temp_dir(),
        &Auth::None,
    )
    .unwrap();
    c.bench_function("example: render + check dev, staging, prod", |b| {
        b.iter(|| load_all(&source, &["dev", "staging", "prod"]))
    });

    let dir = tempfile::tempdir().unwrap();
    generated_repo(dir.path(), 1000, 10);
    let source = Source::open(
        dir.path().to_str().unwrap(),
        None,
        &std::env::temp_dir(),
        &Auth::None,
    )
    .unwrap();
    load_all(&source, &["dev"]);
    c.bench_function("generated: render + check 1,000 services", |b| {
        b.iter(|| load_all(&source, &["dev"]))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
