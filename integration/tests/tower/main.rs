//! tower and axum integration: the layer's semantics through `ServiceExt::oneshot` (no
//! sockets), the axum extractors and bindings, and one axum server on a loopback port.

mod axum_routes;
mod layer;
mod socket;

use std::time::Duration;

use leasepool::LeaseManager;

/// A started manager of `pools` one-worker pools, named `name`.
pub async fn manager(name: &str, pools: usize) -> LeaseManager {
    let m = LeaseManager::builder()
        .name_prefix(name)
        .max_pools(pools)
        .min_pools(pools)
        .workers_per_pool(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    m
}

/// Waits (bounded) until `m` has `leased` pools leased.
pub async fn leased(m: &LeaseManager, leased: usize) {
    testkit::stats_until(m, &format!("{leased} leased"), |s| s.leased == leased).await;
}

/// Long enough for a step that should not happen to show up.
pub const SETTLE: Duration = Duration::from_millis(150);
