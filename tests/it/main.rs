//! driftless's one integration-test binary. Fixtures and helpers live in
//! `support` and `docker_support`; each module covers one stage or feature
//! from the user's side.

mod docker_support;
mod support;

mod compose_backend;
mod corpus;
mod example;
mod pipeline;
mod policies;
mod reconcile_cli;
mod render;
mod rules;
mod source;
mod validate;
