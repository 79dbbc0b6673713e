//! A `WorkGrinder`'s plain data: its settings, its stats, and its books (`Backlog`: state,
//! pending items, batches not finished) with the transitions the grinder makes under its lock.
//! The grinder itself (`grinder/mod.rs`) holds them and acts.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use actix::Message;
use tokio::sync::oneshot;

use crate::error::LeaseError;

/// How a grinder stops.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Run everything already queued, then stop (within the grinder's `stop_timeout`).
    Drain,
    /// Answer every item not yet on a lease with `Stopped`; batches already running finish.
    CancelPending,
}

/// Validated grinder settings.
#[derive(Debug, Clone)]
pub struct GrinderConfig {
    /// Pending items that start a batch.
    pub batch_size_threshold: usize,
    /// Longest an item waits before a batch starts anyway (`Duration::MAX`: never by age).
    pub max_wait: Duration,
    /// Soft lifetime of each batch's lease.
    pub lease_for: Duration,
    /// Batch leases are owned by `{owner_prefix}-batch-{n}`.
    pub owner_prefix: String,
    /// Most items that may wait; `enqueue` fails with `Unavailable` beyond it.
    pub max_pending: usize,
    /// Most batches (waiting for a lease or running) at once.
    pub max_concurrent_batches: usize,
    /// Longest a `stop` waits (for queued items to run, with `Drain`; for running batches).
    pub stop_timeout: Duration,
}

/// A snapshot of a grinder.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GrinderStats {
    /// Whether it accepts work.
    pub started: bool,
    /// Items waiting for a batch.
    pub pending: usize,
    /// Batches waiting for a lease or running now.
    pub in_flight_batches: usize,
    /// How long the oldest pending item has waited.
    pub oldest_wait: Option<Duration>,
    /// Batches completed.
    pub batches_run: u64,
    /// Items whose batch completed (with a value or an error).
    pub items_done: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    NotStarted,
    Running,
    Draining,
    Stopped,
}

/// Where an item goes: onto its batch (`T`: the batch's lease token), or back to its caller
/// as an error.
pub(crate) type Launch<T> = Box<dyn FnOnce(Result<&T, LeaseError>) + Send>;

/// One submitted item.
pub(crate) struct Item<T> {
    pub(crate) enqueued: Instant,
    pub(crate) launch: Launch<T>,
}

impl<T> Item<T> {
    pub(crate) fn fail(self, error: LeaseError) {
        (self.launch)(Err(error));
    }
}

/// A batch that has not finished.
enum Batch<T> {
    /// Waiting for its lease; its items stay here so that a stop can answer them. Dropping the
    /// sender wakes the waiting task, which then leaves the manager's queue.
    Acquiring {
        items: Vec<Item<T>>,
        _cancel: oneshot::Sender<()>,
    },
    /// On its lease; its items answer their callers themselves.
    Running,
}

/// A grinder's books: its state, the pending items, the batches not finished, and its actor
/// (`A`: the actor's address). Plain data; the grinder keeps it behind its mutex.
pub(crate) struct Backlog<T, A> {
    pub(crate) state: State,
    pub(crate) pending: BTreeMap<u64, Item<T>>,
    pub(crate) next_item: u64,
    next_batch: u64,
    batches: HashMap<u64, Batch<T>>,
    batches_run: u64,
    items_done: u64,
    pub(crate) actor: Option<A>,
    /// Which actor is current (an old one's `Drop` must not stop a newer one).
    pub(crate) incarnation: u64,
    /// A `Kick` is in the actor's mailbox: enqueuers need not send another.
    pub(crate) kick_queued: bool,
}

impl<T, A> Backlog<T, A> {
    pub(crate) fn new() -> Self {
        Self {
            state: State::NotStarted,
            pending: BTreeMap::new(),
            next_item: 0,
            next_batch: 1,
            batches: HashMap::new(),
            batches_run: 0,
            items_done: 0,
            actor: None,
            incarnation: 0,
            kick_queued: false,
        }
    }

    pub(crate) fn slot_free(&self, max: usize) -> bool {
        self.batches.len() < max
    }

    /// Batches waiting for a lease or running.
    pub(crate) fn batches(&self) -> usize {
        self.batches.len()
    }

    /// Whether nothing is pending and no batch exists.
    pub(crate) fn idle(&self) -> bool {
        self.pending.is_empty() && self.batches.is_empty()
    }

    /// Pending items and acquiring batches' items, taken out to be answered.
    pub(crate) fn take_waiting(&mut self) -> Vec<Item<T>> {
        let mut items: Vec<Item<T>> = std::mem::take(&mut self.pending).into_values().collect();
        let acquiring: Vec<u64> = self
            .batches
            .iter()
            .filter(|(_, b)| matches!(b, Batch::Acquiring { .. }))
            .map(|(n, _)| *n)
            .collect();
        for n in acquiring {
            if let Some(Batch::Acquiring {
                items: mut held, ..
            }) = self.batches.remove(&n)
            {
                items.append(&mut held);
            }
        }
        items
    }

    /// Takes the items of every batch that should start now into new acquiring batches; returns
    /// their numbers and cancel receivers, and when the oldest item left waiting is due (if a
    /// batch slot is free to take it and its deadline can be represented).
    pub(crate) fn take_due(
        &mut self,
        config: &GrinderConfig,
    ) -> (Vec<(u64, oneshot::Receiver<()>)>, Option<Instant>) {
        self.kick_queued = false;
        let max = config.max_concurrent_batches;
        let mut due = Vec::new();
        while self.slot_free(max) && !self.pending.is_empty() {
            let oldest = self.pending.values().next().map(|i| i.enqueued);
            let waited_enough = oldest.is_some_and(|t| t.elapsed() >= config.max_wait);
            let full = self.pending.len() >= config.batch_size_threshold;
            if !(full || waited_enough || self.state == State::Draining) {
                break;
            }
            let items: Vec<Item<T>> = std::mem::take(&mut self.pending).into_values().collect();
            let n = self.next_batch;
            self.next_batch += 1;
            let (cancel, cancelled) = oneshot::channel();
            self.batches.insert(
                n,
                Batch::Acquiring {
                    items,
                    _cancel: cancel,
                },
            );
            due.push((n, cancelled));
        }
        let next_deadline = if self.slot_free(max) {
            self.pending
                .values()
                .next()
                .and_then(|i| i.enqueued.checked_add(config.max_wait))
        } else {
            None
        };
        (due, next_deadline)
    }

    /// The batch got its lease (or failed to): its items, unless a stop took them meanwhile.
    pub(crate) fn launching(&mut self, n: u64, succeeded: bool) -> Option<Vec<Item<T>>> {
        match self.batches.remove(&n) {
            Some(Batch::Acquiring { items, .. }) => {
                if succeeded {
                    self.batches.insert(n, Batch::Running);
                }
                Some(items)
            }
            Some(running) => {
                self.batches.insert(n, running);
                None
            }
            None => None,
        }
    }

    /// A batch ended (its lease released, or never got).
    pub(crate) fn finished(&mut self, n: u64, items: u64) {
        self.batches.remove(&n);
        self.batches_run += 1;
        self.items_done += items;
    }

    pub(crate) fn stats(&self) -> GrinderStats {
        GrinderStats {
            started: self.state == State::Running && self.actor.is_some(),
            pending: self.pending.len(),
            in_flight_batches: self.batches.len(),
            oldest_wait: self.pending.values().next().map(|i| i.enqueued.elapsed()),
            batches_run: self.batches_run,
            items_done: self.items_done,
        }
    }
}

/// Look at the grinder's books: start the batches that are due and arm the `max_wait` timer.
/// Sent by enqueuers (first item, or the threshold reached) and by a batch's end, at most one
/// at a time; handled by the grinder actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Kick;

/// Stop the grinder actor. Sent by `Grinder::stop`; handled by the grinder actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopGrinder;
