//! Blocking waits for callers outside async code, and telling where blocking is allowed.
//!
//! Blocking inside an async task or `block_on` stalls every task of that executor thread (and
//! can deadlock a current-thread runtime), so the blocking calls refuse there. tokio has no
//! public "am I inside a runtime" check that tells `spawn_blocking` threads and threads that
//! merely `enter()`ed a runtime handle (where blocking is fine) from runtime workers, so we ask
//! what tokio itself tracks per poll: its cooperative-scheduling budget. A tokio task or
//! `block_on` poll runs with a limited budget; `spawn_blocking` closures, plain threads, threads
//! with only an `enter()` guard, and futures wrapped in `tokio::task::unconstrained` run without
//! one. actix's arbiters are tokio current-thread runtimes, so their tasks count as async too.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

/// Whether the calling code runs inside a tokio-driven async poll (a task, or `block_on`),
/// where blocking the thread would stall its executor. See the module docs for how.
pub(crate) fn inside_async_poll() -> bool {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    // Spend budget until tokio refuses (a limited budget: inside an async poll) or clearly is
    // not counting. Each guard, dropped without `made_progress`, restores the budget it saw;
    // dropping them newest first puts back the original budget exactly.
    let mut guards = Vec::new();
    let mut limited = false;
    for _ in 0..=PROBE_LIMIT {
        match tokio::task::coop::poll_proceed(&mut cx) {
            Poll::Ready(guard) => guards.push(guard),
            Poll::Pending => {
                limited = true;
                break;
            }
        }
    }
    while let Some(guard) = guards.pop() {
        drop(guard);
    }
    limited
}

/// More than tokio's per-poll budget (128 in every tokio 1.x).
const PROBE_LIMIT: usize = 512;

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` to completion on this thread, parking it between polls. For threads where
/// [`inside_async_poll`] is false; works with or without a runtime, unlike tokio's
/// `blocking_recv`, which panics under a runtime context.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
