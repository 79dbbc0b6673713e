//! The `WorkGrinder` engine: many small submissions, run in leased batches.
//!
//! Items wait in the grinder's books (`grinder/backlog.rs`; any thread can add to them). The
//! `GrinderActor` on the host
//! System starts a batch when pending items reach `batch_size_threshold` or the oldest has waited
//! `max_wait`: the batch takes every pending item and acquires one lease; once it has the lease
//! it sends each item to that lease's workers, where it answers its own caller directly. A batch
//! token shared by the batch's jobs holds the lease; when the last job ends the token drops,
//! which releases the lease and frees the batch's slot. Up to `max_concurrent_batches` batches
//! (waiting for a lease or running) exist at once.
//!
//! Lifecycle rules, each one a hang that happened before:
//! - The books, not the actor, count batches: a batch's end is recorded by its token wherever
//!   the last job ends, so no completion is lost when the actor is replaced or its host stops.
//! - A batch waiting for a lease keeps its items in the books and can be cancelled: a stop
//!   answers them `Stopped` and the wait leaves the manager's queue.
//! - The actor lives on the manager's host; when that host stops, the actor's `Drop` stops the
//!   grinder (pending items answered `Stopped`), and `start` after a manager restart starts a
//!   new actor on the new host.
//! - One `max_wait` timer per grinder, armed only while a batch could start; enqueuers send at
//!   most one `Kick` at a time, and none while every batch slot is taken.
//! - `start` and `stop` are serialized; every stop returns within `stop_timeout`, after which
//!   items not yet on a lease are answered `Stopped` and running batches finish on their own.

use std::any::{Any, TypeId};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use actix::Recipient;
use tokio::sync::{oneshot, Notify};

use crate::blocking;
use crate::error::LeaseError;
use backlog::{Backlog, Item, Kick, Launch, State, StopGrinder};
pub use backlog::{GrinderConfig, GrinderStats, StopMode};

mod actor;
mod backlog;
mod stop;
use crate::handle::LeaseCore;
use crate::host::Engine;
use crate::job::job_span;
use crate::job::{drop_quietly, IfAbandoned, JobHandle};
use crate::sync::lock;

/// A batch's lease token, as items see it.
type Token<S> = Arc<BatchToken<S>>;

/// The grinder's books.
type Books<S> = Backlog<Token<S>, ActorHandle>;

/// The grinder's actor, as the grinder talks to it (the actor is a layer above, in `actor.rs`).
pub(crate) struct ActorHandle {
    kick: Recipient<Kick>,
    stop: Recipient<StopGrinder>,
}

/// A grinder's shared state; `WorkGrinder` handles, the actor and batch tokens hold it.
pub struct Grinder<S: 'static> {
    engine: Arc<Engine<S>>,
    config: GrinderConfig,
    books: Mutex<Books<S>>,
    /// Serializes `start` and `stop`.
    lifecycle: tokio::sync::Mutex<()>,
    /// Room in the queue (async waiters).
    room: Notify,
    /// Room in the queue (blocking waiters; paired with `books`).
    room_blocking: Condvar,
    /// Pending items or batches changed (for `stop`).
    progress: Notify,
}

/// What `enqueue` does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenFull {
    Refuse,
    Block,
}

impl<S: 'static> Grinder<S> {
    /// A grinder over `engine`'s leases (not started).
    pub fn new(engine: Arc<Engine<S>>, config: GrinderConfig) -> Arc<Self> {
        Arc::new(Self {
            engine,
            config,
            books: Mutex::new(Backlog::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            room: Notify::new(),
            room_blocking: Condvar::new(),
            progress: Notify::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &GrinderConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Books<S>> {
        lock(&self.books)
    }

    fn make_item<F, R>(&self, f: F, if_abandoned: IfAbandoned) -> (Item<Token<S>>, JobHandle<R>)
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, handle) = JobHandle::channel();
        let manager = Arc::clone(self.engine.name());
        // Made here, where the item is submitted: its parent is the submitter's span.
        let span = job_span(&manager, None);
        let launch: Launch<Token<S>> = Box::new(move |batch| match batch {
            Ok(token) => {
                let Some(lease) = token.lease.as_ref() else {
                    return reply.fail(LeaseError::NeverRan);
                };
                // The job holds the batch token until it ends: the last one releases the lease.
                let job = {
                    let token = Arc::clone(token);
                    move |_: &mut S| {
                        let _batch = token;
                        f()
                    }
                };
                lease.dispatch_reply(job, reply, if_abandoned, span);
            }
            Err(e) => {
                reply.fail(e);
                // Possibly on the host thread, which must never panic: the item's captures are
                // user values with user destructors.
                drop_quietly(f, &manager);
            }
        });
        let item = Item {
            enqueued: Instant::now(),
            launch,
        };
        (item, handle)
    }

    /// Adds the item in `f` (taking it only if there is room); `Unavailable` — or, for `Block`,
    /// waiting — when `max_pending` items already wait.
    fn add<F, R>(
        &self,
        f: &mut Option<F>,
        when_full: WhenFull,
        if_abandoned: IfAbandoned,
    ) -> Result<(u64, JobHandle<R>), LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        // Refused, `f` stays with the caller (for a later try).
        self.add_item(f, |f| self.make_item(f, if_abandoned), when_full)
    }

    /// Adds the item `make` builds from `payload`, taking the payload only if there is room.
    fn add_item<P, T>(
        &self,
        payload: &mut Option<P>,
        make: impl FnOnce(P) -> (Item<Token<S>>, T),
        when_full: WhenFull,
    ) -> Result<(u64, T), LeaseError> {
        let mut books = self.lock();
        loop {
            match books.state {
                State::Running => {}
                State::NotStarted => return Err(LeaseError::NotStarted),
                State::Draining | State::Stopped => return Err(LeaseError::Stopped),
            }
            if books.pending.len() < self.config.max_pending {
                break;
            }
            match when_full {
                WhenFull::Refuse => return Err(LeaseError::Unavailable),
                WhenFull::Block => {
                    books = self
                        .room_blocking
                        .wait(books)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
        }
        let Some(payload) = payload.take() else {
            return Err(LeaseError::Stopped);
        };
        let (item, out) = make(payload);
        let id = books.next_item;
        books.next_item += 1;
        books.pending.insert(id, item);
        let n = books.pending.len();
        // The first item arms the max_wait timer; reaching the threshold starts a batch. With
        // every slot taken there is nothing to do: the end of a batch looks again.
        if (n == 1 || n >= self.config.batch_size_threshold)
            && books.slot_free(self.config.max_concurrent_batches)
        {
            self.kick(&mut books);
        }
        Ok((id, out))
    }

    /// Adds an item that launches itself: `launch` gets the item's batch once the batch has its
    /// lease (or the error it failed with), and may put the item in one of the batch's groups
    /// ([`Batch::group`]). `Unavailable` when `max_pending` items already wait.
    pub fn enqueue_launch(&self, launch: RawLaunch<S>) -> Result<u64, LeaseError> {
        self.add_item(
            &mut Some(launch),
            |l| (Self::raw_item(l), ()),
            WhenFull::Refuse,
        )
        .map(|(id, ())| id)
    }

    /// Like [`enqueue_launch`](Self::enqueue_launch), waiting (asynchronously) for room.
    pub async fn submit_launch(&self, launch: RawLaunch<S>) -> Result<u64, LeaseError> {
        let mut launch = Some(launch);
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            match self.add_item(&mut launch, |l| (Self::raw_item(l), ()), WhenFull::Refuse) {
                Err(LeaseError::Unavailable) => notified.await,
                other => return other.map(|(id, ())| id),
            }
        }
    }

    fn raw_item(launch: RawLaunch<S>) -> Item<Token<S>> {
        Item {
            enqueued: Instant::now(),
            launch: Box::new(move |batch| match batch {
                Ok(token) => launch(Ok(&Batch(token))),
                Err(e) => launch(Err(e)),
            }),
        }
    }

    /// Asks the actor to look at the books, unless a request is already in its mailbox.
    fn kick(&self, books: &mut Books<S>) {
        if books.kick_queued {
            return;
        }
        if let Some(actor) = books.actor.as_ref().filter(|a| a.kick.connected()) {
            books.kick_queued = true;
            actor.kick.do_send(Kick);
        }
    }

    /// Adds an item now; `Unavailable` when `max_pending` items already wait. The handle may be
    /// dropped: the item still runs.
    pub fn enqueue<F, R>(&self, f: F) -> Result<JobHandle<R>, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.add(&mut Some(f), WhenFull::Refuse, IfAbandoned::Run)
            .map(|(_, handle)| handle)
    }

    /// Adds an item, waiting (asynchronously) for room; returns its id (for [`cancel`]) and
    /// handle. If the handle is dropped before a worker starts the item, the item is skipped.
    ///
    /// [`cancel`]: Self::cancel
    pub async fn submit<F, R>(&self, f: F) -> Result<(u64, JobHandle<R>), LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let mut f = Some(f);
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so room freed between the look and the wait is seen.
            notified.as_mut().enable();
            match self.add(&mut f, WhenFull::Refuse, IfAbandoned::Skip) {
                Err(LeaseError::Unavailable) => notified.await,
                other => return other,
            }
        }
    }

    /// Removes a pending item (its submitter gave up); false if a batch already took it.
    pub fn cancel(&self, id: u64) -> bool {
        let removed = self.lock().pending.remove(&id);
        if removed.is_some() {
            self.freed_room();
        }
        removed.is_some()
    }

    /// Adds an item from a thread where blocking is allowed, waiting for room, and waits for
    /// its result. Refused with `BlockingOnRuntime` inside an async task or `block_on`.
    pub fn submit_blocking<F, R>(&self, f: F) -> Result<R, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if blocking::inside_async_poll() {
            return Err(LeaseError::BlockingOnRuntime("submit_blocking"));
        }
        let (_, handle) = self.add(&mut Some(f), WhenFull::Block, IfAbandoned::Run)?;
        handle.blocking_wait()
    }

    fn freed_room(&self) {
        self.room.notify_waiters();
        self.room_blocking.notify_all();
        self.progress.notify_waiters();
    }

    /// A snapshot.
    pub fn stats(&self) -> GrinderStats {
        self.lock().stats()
    }

    /// Takes the items of every batch due now (see `Backlog::take_due`), making room.
    fn due_batches(&self) -> (Vec<(u64, oneshot::Receiver<()>)>, Option<Instant>) {
        let due = self.lock().take_due(&self.config);
        if !due.0.is_empty() {
            self.freed_room();
        }
        due
    }

    /// The batch got its lease (or failed to): its items, unless a stop took them meanwhile.
    fn batch_launching(&self, n: u64, succeeded: bool) -> Option<Vec<Item<Token<S>>>> {
        self.lock().launching(n, succeeded)
    }

    /// A batch ended (its lease released, or never got): free its slot and look again.
    fn batch_finished(&self, n: u64, items: u64) {
        let mut books = self.lock();
        books.finished(n, items);
        if !books.pending.is_empty() {
            self.kick(&mut books);
        }
        drop(books);
        self.progress.notify_waiters();
    }
}

/// Holds a batch's lease while its jobs run. Each job keeps a reference; when the last one is
/// gone the lease is released (dropped: never blocks) and the batch's slot freed — in the books,
/// so it does not depend on the actor still being there.
pub(crate) struct BatchToken<S: 'static> {
    lease: Option<LeaseCore<S>>,
    batch: u64,
    items: u64,
    grinder: Arc<Grinder<S>>,
    /// Items gathered into groups while the batch launches ([`Batch::group`]), and what sends
    /// each group once every item has launched.
    groups: Mutex<Groups<S>>,
}

type Groups<S> = Vec<(TypeId, Box<dyn Any + Send>, GroupFlush<S>)>;
type GroupFlush<S> = Box<dyn FnOnce(&Batch<'_, S>, Box<dyn Any + Send>) + Send>;

impl<S: 'static> BatchToken<S> {
    /// Sends every group gathered while the batch launched (on the host, after the last item).
    pub(crate) fn flush_groups(self: &Arc<Self>) {
        let groups = std::mem::take(&mut *lock(&self.groups));
        for (_, group, flush) in groups {
            flush(&Batch(self), group);
        }
    }
}

/// What an item added with [`Grinder::enqueue_launch`] does once its batch has a lease (or
/// failed to get one).
pub type RawLaunch<S> = Box<dyn FnOnce(Result<&Batch<'_, S>, LeaseError>) + Send>;

/// A launching batch, as its items see it.
pub struct Batch<'a, S: 'static>(&'a Token<S>);

/// Keeps a batch's lease held (the batch running) while it exists.
pub struct BatchHold(#[allow(dead_code)] Arc<dyn Any + Send + Sync>);

impl<S: 'static> Batch<'_, S> {
    /// The batch's lease.
    pub fn lease(&self) -> Option<&LeaseCore<S>> {
        self.0.lease.as_ref()
    }

    /// A token that keeps the batch running (its lease held) until dropped: give one to every
    /// job sent on the batch's lease.
    pub fn hold(&self) -> BatchHold {
        BatchHold(Arc::clone(self.0) as Arc<dyn Any + Send + Sync>)
    }

    /// Adds to this batch's group of type `T` (made with `T::default()` by the first item
    /// that asks); once every item of the batch has launched, `flush` gets the group.
    pub fn group<T, F>(&self, add: impl FnOnce(&mut T), flush: F)
    where
        T: Default + Send + 'static,
        F: FnOnce(&Batch<'_, S>, T) + Send + 'static,
    {
        let mut groups = lock(&self.0.groups);
        let at = match groups
            .iter()
            .position(|(id, _, _)| *id == TypeId::of::<T>())
        {
            Some(at) => at,
            None => {
                let flush: GroupFlush<S> = Box::new(move |batch, group| {
                    if let Ok(group) = group.downcast::<T>() {
                        flush(batch, *group);
                    }
                });
                groups.push((TypeId::of::<T>(), Box::new(T::default()), flush));
                groups.len() - 1
            }
        };
        if let Some(group) = groups[at].1.downcast_mut::<T>() {
            add(group);
        }
    }
}

impl<S: 'static> Drop for BatchToken<S> {
    fn drop(&mut self) {
        drop(self.lease.take());
        self.grinder.batch_finished(self.batch, self.items);
    }
}
