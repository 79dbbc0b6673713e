//! Typed message jobs on per-worker state.

/// Handles message `M` on a worker's state: the message-based job API actix users expect.
///
/// ```
/// use leasepool::{Handle, LeaseManager};
///
/// struct Counter(u64);
/// struct Add(u64);
///
/// impl Handle<Add> for Counter {
///     type Output = u64;
///     fn handle(&mut self, msg: Add) -> u64 {
///         self.0 += msg.0;
///         self.0
///     }
/// }
///
/// # #[actix_rt::main] async fn main() -> Result<(), leasepool::LeaseError> {
/// let manager = LeaseManager::builder()
///     .workers_per_pool(1)
///     .worker_state(|| Counter(0))
///     .build()
///     .expect("valid settings");
/// manager.start().await?;
/// let lease = manager.acquire().await?;
/// assert_eq!(lease.send(Add(2)).await?, 2);
/// assert_eq!(lease.send(Add(3)).await?, 5); // one worker: same state
/// lease.release().await;
/// manager.stop().await;
/// # Ok(()) }
/// ```
pub trait Handle<M>: 'static {
    /// What handling `M` produces; sent back to the caller.
    type Output: Send + 'static;

    /// Runs on the worker thread that owns `self`.
    fn handle(&mut self, msg: M) -> Self::Output;
}
