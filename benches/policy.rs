//! Policy evaluation (regorus): the built-in policies on the example's prod
//! desired state (15 services, 9 Kubernetes objects), and on a desired
//! state of 1,000 Compose services. Targets: under 50 ms and under 1 s.
//!
//! Each iteration is the whole policy stage minus rendering: parse the
//! built-ins into a fresh engine, build the input JSON, evaluate every
//! policy.
//!
//! Run: `cargo bench --bench policy`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use driftless::check::policy::{self, PolicySet};
use driftless::model::{DesiredState, Resources};
use driftless::reconcile::{self, RenderOptions};
use driftless::render::SecretMode;
use driftless::secrets::SecretSource;
use driftless::source::{Auth, Limits, Source};

fn example_prod() -> DesiredState {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout");
    let source = Source::open(
        example.to_str().unwrap(),
        None,
        &std::env::temp_dir(),
        &Auth::None,
    )
    .unwrap();
    let options = RenderOptions {
        secrets: SecretSource::default(),
        mode: SecretMode::Placeholder,
        limits: Limits::default(),
    };
    reconcile::load(&source, "prod", &options)
        .unwrap_or_else(|d| panic!("{d}"))
        .checked
        .state
}

/// The example's prod state with its Compose project grown to `n`
/// services (copies of api-gateway, half of them missing a healthcheck so
/// policies have something to report).
fn thousand(mut state: DesiredState, n: usize) -> DesiredState {
    for t in &mut state.targets {
        if let Resources::Compose(projects) = &mut t.resources {
            let project = &mut projects[0];
            let template = project.services["api-gateway"].clone();
            project.services.clear();
            for i in 0..n {
                let mut s = template.clone();
                if i % 2 == 0 {
                    s.healthcheck = None;
                }
                project.services.insert(format!("svc{i}"), s);
            }
        }
    }
    state
}

fn evaluate(state: &DesiredState) -> usize {
    let mut set = PolicySet::new(&policy::builtins()).unwrap();
    let input = policy::input(state, &|v: &str| v.contains("<secret:"));
    set.evaluate(&input, |_| true).unwrap().len()
}

fn bench(c: &mut Criterion) {
    let prod = example_prod();
    println!(
        "example prod: {} violations before exceptions",
        evaluate(&prod)
    );
    c.bench_function("policies: example prod", |b| {
        b.iter(|| black_box(evaluate(&prod)))
    });
    let big = thousand(prod, 1000);
    println!("1,000 services: {} violations", evaluate(&big));
    c.bench_function("policies: 1,000 Compose services", |b| {
        b.iter(|| black_box(evaluate(&big)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
