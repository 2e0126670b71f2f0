//! driftless's one integration-test binary. Fixtures and helpers live in
//! `support` and `docker_support`; each module covers one stage or feature
//! from the user's side.

mod backup_support;
mod docker_support;
mod fake_apiserver;
mod sshd;
mod support;
mod tls_proxy;

mod address_pools;
mod backups;
mod branches;
mod compose_backend;
mod compose_binds;
mod compose_build;
mod compose_keys;
mod compose_project;
mod compose_reference;
mod compose_structure;
mod corpus;
mod daemon;
mod daemon_support;
mod deploy;
mod example;
mod faults;
mod identities;
mod images;
mod kube_backend;
mod kube_e2e;
mod leases;
mod logging;
mod operator;
mod ownership;
mod pipeline;
mod policies;
mod quickstart;
mod reconcile_cli;
mod remote_docker;
mod render;
mod rollout;
mod rollout_batches;
mod rules;
mod secrets;
mod signatures;
mod sops;
mod source;
mod validate;
