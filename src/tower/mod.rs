//! tower integration (feature `tower`): a lease per request for every tower-based server —
//! axum, tonic, hyper — with the same **503 + `Retry-After`** as the actix-web side.
//!
//! *Available with the cargo feature `tower`; the axum extractors with `axum`.*
//!
//! - [`LeaseLayer`] acquires a lease from its manager for each request before the inner service
//!   runs (after reading the body, by default) and answers overload itself; the lease is in
//!   the request's extensions as a [`Leased`].
//! - [`ManagerLayer`] only binds a manager to the requests below it; axum's [`Leased`]
//!   extractor then acquires per route, and [`LeasedAfter`] after extracting the body.
//! - Answers: overload (`Unavailable`, `Timeout`, `NotStarted`, `Stopped`, `NoHealthyPool`) is
//!   a **503** with `Retry-After` — the route's fixed hint, the process-wide one
//!   ([`set_retry_after`]), or one estimated from the pools
//!   ([`LeaseConfig::retry_after_estimated`]); a wiring mistake (no manager bound, a config
//!   naming another manager) a **500** `{"error":"misconfigured"}` with the details logged —
//!   the same [`Answer`]s as actix-web's. [`LeaseLayer::grpc`] answers in gRPC's form instead.
//!
//! The guide page `docs/tower.md` ([`crate::guide`]) has a whole axum service, the release
//! rules and the measured overload figures.

mod answer;
mod body;
mod layer;
mod leased;
mod read;
mod service;
mod settings;

#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "axum")]
pub use self::axum::LeasedAfter;

pub use crate::per_request::{retry_after_secs, set_retry_after, Answer, LeaseConfig, LeasedError};
pub use body::{RequestBody, ResponseBody};
pub use layer::{LeaseLayer, ManagerLayer, DEFAULT_BODY_BUDGET, DEFAULT_BODY_LIMIT};
pub use leased::Leased;
pub use service::{LeaseService, ManagerService, ResponseFuture};
pub use settings::RequestHead;
