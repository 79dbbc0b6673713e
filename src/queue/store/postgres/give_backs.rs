//! The give-backs a PostgreSQL store has prepared and not settled yet. PostgreSQL's fetch takes
//! a waiting task whoever holds it, so a deferral's attempt is given back in the transaction
//! that writes apalis' acknowledgement: `prepare` registers it, the acknowledgement's
//! transaction carries it out (`begin` … `end`), `settle` reads how it went. Each `prepare` has
//! a generation of its own, so that a settle of an older give-back never forgets a newer one of
//! the same task (the task claimed and deferred again meanwhile).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::judge::GiveBack;

/// A prepared give-back: its generation and where it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prepared {
    pub(crate) generation: u64,
    pub(crate) stands: GiveBack,
}

#[derive(Default)]
struct Book {
    next: u64,
    by_task: HashMap<(String, String), Prepared>,
}

/// By (worker, task id). Cheap to clone (shared).
#[derive(Clone, Default)]
pub(crate) struct GiveBacks(Arc<Mutex<Book>>);

impl GiveBacks {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(worker: &str, id: &str) -> (String, String) {
        (worker.to_owned(), id.to_owned())
    }

    /// `worker` will give task `id` back once apalis acknowledges its deferral.
    pub(crate) fn prepare(&self, worker: &str, id: &str) {
        let mut book = self.book();
        book.next += 1;
        let generation = book.next;
        book.by_task.insert(
            Self::key(worker, id),
            Prepared {
                generation,
                stands: GiveBack::Waiting,
            },
        );
    }

    pub(crate) fn stands(&self, worker: &str, id: &str) -> Option<Prepared> {
        self.book().by_task.get(&Self::key(worker, id)).copied()
    }

    /// Forgets the give-back of generation `generation`, not a newer one.
    pub(crate) fn forget(&self, worker: &str, id: &str, generation: u64) {
        let mut book = self.book();
        let key = Self::key(worker, id);
        if book
            .by_task
            .get(&key)
            .is_some_and(|p| p.generation == generation)
        {
            book.by_task.remove(&key);
        }
    }

    pub(crate) fn forget_worker(&self, worker: &str) {
        self.book().by_task.retain(|(w, _), _| w != worker);
    }

    /// Of `ids` acknowledged now by `worker`, the ones with a give-back waiting: marked
    /// `Applying`, with their generations.
    pub(crate) fn begin(&self, worker: &str, ids: &[String]) -> Vec<(String, u64)> {
        let mut book = self.book();
        let mut begun = Vec::new();
        for id in ids {
            if let Some(p) = book.by_task.get_mut(&Self::key(worker, id)) {
                if p.stands == GiveBack::Waiting {
                    p.stands = GiveBack::Applying;
                    begun.push((id.clone(), p.generation));
                }
            }
        }
        begun
    }

    /// How the give-backs `begun` for `worker` ended: `Some(freed)` (the task ids whose row
    /// was freed) once committed, `None` if the transaction failed (waiting again: apalis'
    /// worker then fails, and `release_worker` hands its tasks back).
    pub(crate) fn end(&self, worker: &str, begun: &[(String, u64)], freed: Option<&[String]>) {
        let mut book = self.book();
        for (id, generation) in begun {
            let Some(p) = book.by_task.get_mut(&Self::key(worker, id)) else {
                continue;
            };
            if p.generation != *generation {
                continue;
            }
            p.stands = match freed {
                Some(freed) if freed.contains(id) => GiveBack::Applied,
                Some(_) => GiveBack::Missed,
                None => GiveBack::Waiting,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_give_back_goes_waiting_applying_then_applied_or_missed() {
        let g = GiveBacks::default();
        g.prepare("w", "a");
        g.prepare("w", "b");
        assert_eq!(g.stands("w", "a").unwrap().stands, GiveBack::Waiting);
        let begun = g.begin("w", &ids(&["a", "b", "c"]));
        assert_eq!(begun.len(), 2, "c was not prepared");
        assert_eq!(g.stands("w", "a").unwrap().stands, GiveBack::Applying);
        assert!(g.begin("w", &ids(&["a"])).is_empty(), "begun once");
        g.end("w", &begun, Some(&ids(&["a"])));
        assert_eq!(g.stands("w", "a").unwrap().stands, GiveBack::Applied);
        assert_eq!(g.stands("w", "b").unwrap().stands, GiveBack::Missed);
    }

    #[test]
    fn a_failed_transaction_leaves_the_give_back_waiting() {
        let g = GiveBacks::default();
        g.prepare("w", "a");
        let begun = g.begin("w", &ids(&["a"]));
        g.end("w", &begun, None);
        assert_eq!(g.stands("w", "a").unwrap().stands, GiveBack::Waiting);
        assert_eq!(g.begin("w", &ids(&["a"])).len(), 1, "ready to begin again");
    }

    #[test]
    fn an_older_settle_never_forgets_a_newer_give_back() {
        let g = GiveBacks::default();
        g.prepare("w", "a");
        let old = g.stands("w", "a").unwrap().generation;
        g.prepare("w", "a"); // claimed and deferred again
        let new = g.stands("w", "a").unwrap().generation;
        assert_ne!(old, new);
        g.forget("w", "a", old);
        assert_eq!(g.stands("w", "a").unwrap().generation, new, "kept");
        g.forget("w", "a", new);
        assert_eq!(g.stands("w", "a"), None);
    }

    #[test]
    fn an_older_transaction_does_not_settle_a_newer_give_back() {
        let g = GiveBacks::default();
        g.prepare("w", "a");
        let begun = g.begin("w", &ids(&["a"]));
        g.prepare("w", "a");
        g.end("w", &begun, Some(&ids(&["a"])));
        assert_eq!(g.stands("w", "a").unwrap().stands, GiveBack::Waiting);
    }

    #[test]
    fn a_worker_s_give_backs_go_with_it() {
        let g = GiveBacks::default();
        g.prepare("w1", "a");
        g.prepare("w2", "a");
        g.forget_worker("w1");
        assert_eq!(g.stands("w1", "a"), None);
        assert!(g.stands("w2", "a").is_some());
    }
}
