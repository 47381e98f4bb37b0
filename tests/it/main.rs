//! The integration tests: one binary (as zero2prod's `tests/api/`), a module per area, so
//! that CI links once. Each test starts its own server on a random loopback port with a
//! fresh database (`support::spawn_app`); SQLite by default, PostgreSQL when
//! `DUKA_TEST_POSTGRES_URL` is set.

#[path = "../support/fake_at.rs"]
mod fake_at;
#[path = "../support/oidc.rs"]
mod oidc;
#[path = "../support/mod.rs"]
mod support;

mod api;
mod audit;
mod auth;
mod cli;
mod cluster;
mod cluster_sms;
mod cluster_start;
mod dashboard;
mod live;
mod ops;
mod reports;
mod roles;
mod security;
mod sms;
mod writes;
