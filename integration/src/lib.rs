//! Tests and examples of `leasepool` whose dependencies are heavy — an HTTP client (`awc`),
//! bundled SQLite (`rusqlite`), `proptest`, `metrics-exporter-prometheus` — kept in a workspace member of
//! their own, the way tokio keeps its examples and integration tests apart: every
//! dev-dependency of a package is built for any of its examples, so these would otherwise make
//! the first `cargo run --release --example quickstart` build them all.
//!
//! - tests: `integration/tests/` (`web`, `properties`, `grinder_properties`), sharing
//!   `testkit` (the workspace's test support crate) with the main package's tests;
//! - examples: `examples/actix_web_service.rs` and `examples/16_sqlite_per_worker.rs` (the files
//!   stay in the repository's `examples/`, next to the others).
//!
//! This crate has no code of its own and is never published.
