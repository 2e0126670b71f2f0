//! The YAML alias budget: how long a billion-laughs file takes to be
//! refused, and what the budget costs a normal file full of `<<: *defaults`
//! (57 services, 150 aliases of 10 anchors), both from
//! `tests/fixtures/compose/`.
//!
//! Run: `cargo bench --bench yaml`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use driftless::yaml;

const BILLION_LAUGHS: &str = include_str!("../tests/fixtures/compose/billion-laughs.yaml");
const ANCHORS_57: &str = include_str!("../tests/fixtures/compose/anchors-57-services.yaml");

fn bench(c: &mut Criterion) {
    let limits = yaml::Limits::default();
    assert!(yaml::parse_document(BILLION_LAUGHS).is_err());
    c.bench_function("billion laughs: refused (parse_document)", |b| {
        b.iter(|| black_box(yaml::parse_document(black_box(BILLION_LAUGHS)).is_err()))
    });
    c.bench_function("57 services, 150 aliases: alias budget pass", |b| {
        b.iter(|| yaml::check_alias_expansion(black_box(ANCHORS_57), &limits).is_ok())
    });
    c.bench_function("57 services, 150 aliases: parse_document", |b| {
        b.iter(|| black_box(yaml::parse_document(black_box(ANCHORS_57)).is_ok()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
