//! The claims in flight, per apalis worker. A claim is one statement: once sent, it commits
//! whether or not the fetch that sent it still waits for it (a worker stopped or replaced drops
//! its fetch). A worker's release (`release_worker`, which puts its tasks back) therefore first
//! shuts the worker's claims and waits for those in flight, so that no task it claimed lands
//! after the release and stays claimed by a worker that is gone.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// How many released workers are remembered (their claims refused): a fetch dropped at its
/// release ends within moments, and every worker has a name of its own, so the oldest can go.
const REMEMBERED: usize = 1024;

/// The book of claims: pure, so that its rules are tested alone.
#[derive(Debug, Default)]
struct Book {
    in_flight: HashMap<String, usize>,
    released: HashSet<String>,
    order: VecDeque<String>,
}

impl Book {
    /// Whether a claim by `worker` may begin (counted in flight if so).
    fn begin(&mut self, worker: &str) -> bool {
        if self.released.contains(worker) {
            return false;
        }
        *self.in_flight.entry(worker.to_owned()).or_default() += 1;
        true
    }

    /// A claim by `worker` ended (committed, failed, or its task dropped).
    fn end(&mut self, worker: &str) {
        if let Some(n) = self.in_flight.get_mut(worker) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(worker);
            }
        }
    }

    /// Refuses `worker`'s claims from now on.
    fn release(&mut self, worker: &str) {
        if self.released.insert(worker.to_owned()) {
            self.order.push_back(worker.to_owned());
        }
        while self.order.len() > REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.released.remove(&oldest);
            }
        }
    }

    fn busy(&self, worker: &str) -> bool {
        self.in_flight.contains_key(worker)
    }
}

/// The claims of one store's workers.
#[derive(Clone, Default)]
pub(crate) struct Claims(Arc<(Mutex<Book>, Notify)>);

/// A claim in flight: ended when dropped.
pub(crate) struct InFlight {
    claims: Claims,
    worker: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.claims.book().end(&self.worker);
        self.claims.0 .1.notify_waiters();
    }
}

impl Claims {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0 .0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A claim by `worker`, in flight until the guard is dropped; `None` once `worker` was
    /// released.
    pub(crate) fn begin(&self, worker: &str) -> Option<InFlight> {
        self.book().begin(worker).then(|| InFlight {
            claims: self.clone(),
            worker: worker.to_owned(),
        })
    }

    /// Refuses `worker`'s claims from now on, and waits until none is in flight.
    pub(crate) async fn release(&self, worker: &str) {
        self.book().release(worker);
        loop {
            let ended = self.0 .1.notified();
            tokio::pin!(ended);
            // Registered before the check: an end between the two is not missed.
            ended.as_mut().enable();
            if !self.book().busy(worker) {
                return;
            }
            ended.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_worker_claims_nothing_more() {
        let mut book = Book::default();
        assert!(book.begin("w1"));
        assert!(book.busy("w1"));
        book.release("w1");
        assert!(!book.begin("w1"), "released: refused");
        assert!(book.busy("w1"), "the claim already in flight still counts");
        book.end("w1");
        assert!(!book.busy("w1"));
        assert!(book.begin("w2"), "other workers go on");
    }

    #[test]
    fn claims_in_flight_are_counted_one_by_one() {
        let mut book = Book::default();
        assert!(book.begin("w"));
        assert!(book.begin("w"));
        book.end("w");
        assert!(book.busy("w"));
        book.end("w");
        assert!(!book.busy("w"));
        book.end("w");
        assert!(!book.busy("w"), "an extra end changes nothing");
        assert!(book.in_flight.is_empty());
    }

    #[test]
    fn only_the_latest_releases_are_remembered() {
        let mut book = Book::default();
        for n in 0..REMEMBERED + 10 {
            book.release(&format!("w{n}"));
        }
        book.release("w20");
        assert_eq!(book.released.len(), REMEMBERED);
        assert_eq!(book.order.len(), REMEMBERED);
        assert!(book.begin("w0"), "forgotten");
        assert!(!book.begin("w10"));
        assert!(!book.begin(&format!("w{}", REMEMBERED + 9)));
    }

    #[tokio::test]
    async fn a_release_waits_for_the_claims_in_flight() {
        let claims = Claims::default();
        let first = claims.begin("w").unwrap();
        let second = claims.begin("w").unwrap();
        let waiting = tokio::spawn({
            let claims = claims.clone();
            async move { claims.release("w").await }
        });
        tokio::task::yield_now().await;
        assert!(claims.begin("w").is_none());
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one claim is still in flight");
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the release ends once no claim is in flight")
            .unwrap();
        claims.release("idle").await;
    }
}
