//! The `WorkGrinder` engine: many small submissions, run in leased batches.
//!
//! Items wait in shared books (any thread can add to them). The [`GrinderActor`] on the host
//! System starts a batch when pending items reach `batch_size_threshold` or the oldest has waited
//! `max_wait`: the batch takes every pending item, acquires one lease, and sends each item to that
//! lease's workers, where it answers its own caller directly. A batch token shared by the batch's
//! jobs holds the lease; when the last job ends the token drops, which releases the lease and
//! tells the actor the batch is done. Up to `max_concurrent_batches` batches run at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler};
use tokio::sync::Notify;

use crate::error::LeaseError;
use crate::handle::{JobHandle, LeaseCore};
use crate::host::Engine;
use crate::messages::{BatchDone, Kick, StopGrinder};
use crate::registry::{LeaseParams, WaitMode};

/// How a grinder stops.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Run everything already queued, then stop.
    Drain,
    /// Answer every pending item with `Stopped`; batches already running finish.
    CancelPending,
}

/// Validated grinder settings.
#[derive(Debug, Clone)]
pub struct GrinderConfig {
    /// Pending items that start a batch.
    pub batch_size_threshold: usize,
    /// Longest an item waits before a batch starts anyway.
    pub max_wait: Duration,
    /// Soft lifetime of each batch's lease.
    pub lease_for: Duration,
    /// Batch leases are owned by `{owner_prefix}-batch-{n}`.
    pub owner_prefix: String,
    /// Most items that may wait; `enqueue` fails with `Unavailable` beyond it.
    pub max_pending: usize,
    /// Most batches running at once.
    pub max_concurrent_batches: usize,
}

/// A snapshot of a grinder.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GrinderStats {
    /// Whether it accepts work.
    pub started: bool,
    /// Items waiting for a batch.
    pub pending: usize,
    /// Batches running now.
    pub in_flight_batches: usize,
    /// How long the oldest pending item has waited.
    pub oldest_wait: Option<Duration>,
    /// Batches completed.
    pub batches_run: u64,
    /// Items whose batch completed (with a value or an error).
    pub items_done: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotStarted,
    Running,
    Draining,
    Stopped,
}

/// Where an item goes: onto a batch's lease, or back to its caller as an error.
type Launch<S> = Box<dyn FnOnce(Result<&Arc<BatchToken<S>>, LeaseError>) + Send>;

struct Item<S: 'static> {
    enqueued: Instant,
    launch: Launch<S>,
}

/// A batch ready to run: its number and its items.
type DueBatch<S> = (u64, Vec<Item<S>>);

struct Books<S: 'static> {
    state: State,
    pending: BTreeMap<u64, Item<S>>,
    next_item: u64,
    next_batch: u64,
    running: usize,
    batches_run: u64,
    items_done: u64,
    actor: Option<Addr<GrinderActor<S>>>,
}

/// A grinder's shared state; `WorkGrinder` handles and the actor hold it.
pub struct Grinder<S: 'static> {
    engine: Arc<Engine<S>>,
    config: GrinderConfig,
    books: Mutex<Books<S>>,
    /// Room in the queue (async waiters).
    room: Notify,
    /// Room in the queue (blocking waiters; paired with `books`).
    room_blocking: Condvar,
    /// Pending items or running batches changed (for `stop`).
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
            books: Mutex::new(Books {
                state: State::NotStarted,
                pending: BTreeMap::new(),
                next_item: 0,
                next_batch: 1,
                running: 0,
                batches_run: 0,
                items_done: 0,
                actor: None,
            }),
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
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the grinder's actor on the manager's host. Idempotent; needs a started manager.
    pub async fn start(self: &Arc<Self>) -> Result<(), LeaseError> {
        if matches!(self.lock().state, State::Running) {
            return Ok(());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let grinder = Arc::clone(self);
        self.engine
            .run_on_host(Box::new(move || {
                let _ = tx.send(GrinderActor { grinder }.start());
            }))
            .await?;
        let actor = rx.await.map_err(|_| LeaseError::NotStarted)?;
        let mut books = self.lock();
        if let Some(old) = books.actor.replace(actor) {
            old.do_send(StopGrinder);
        }
        books.state = State::Running;
        tracing::info!(owner_prefix = %self.config.owner_prefix, "work grinder started");
        Ok(())
    }

    fn make_item<F, R>(f: F, skip_if_abandoned: bool) -> (Item<S>, JobHandle<R>)
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (reply, handle) = JobHandle::channel();
        let launch: Launch<S> = Box::new(move |batch| match batch {
            Ok(token) => {
                let token = Arc::clone(token);
                let Some(lease) = token.lease.as_ref() else {
                    return reply.fail(LeaseError::WorkerLost);
                };
                // The job holds the batch token until it ends: the last one releases the lease.
                let job = {
                    let token = Arc::clone(&token);
                    move |_: &mut S| {
                        let _batch = token;
                        f()
                    }
                };
                lease.dispatch_reply(job, reply, skip_if_abandoned);
            }
            Err(e) => reply.fail(e),
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
        skip_if_abandoned: bool,
    ) -> Result<(u64, JobHandle<R>), LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
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
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
        let Some(f) = f.take() else {
            return Err(LeaseError::Stopped);
        };
        let (item, handle) = Self::make_item(f, skip_if_abandoned);
        let id = books.next_item;
        books.next_item += 1;
        books.pending.insert(id, item);
        let n = books.pending.len();
        if n == 1 || n >= self.config.batch_size_threshold {
            if let Some(actor) = &books.actor {
                actor.do_send(Kick);
            }
        }
        Ok((id, handle))
    }

    /// Adds an item now; `Unavailable` when `max_pending` items already wait. The handle may be
    /// dropped: the item still runs.
    pub fn enqueue<F, R>(&self, f: F) -> Result<JobHandle<R>, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.add(&mut Some(f), WhenFull::Refuse, false)
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
            match self.add(&mut f, WhenFull::Refuse, true) {
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

    /// Adds an item from a plain thread, waiting for room, and waits for its result.
    pub fn submit_blocking<F, R>(&self, f: F) -> Result<R, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(LeaseError::BlockingOnRuntime("submit_blocking"));
        }
        let (_, handle) = self.add(&mut Some(f), WhenFull::Block, false)?;
        handle.blocking_wait()
    }

    fn freed_room(&self) {
        self.room.notify_waiters();
        self.room_blocking.notify_all();
        self.progress.notify_waiters();
    }

    /// Stops the grinder (see [`StopMode`]) and waits until no batch runs.
    pub async fn stop(&self, mode: StopMode) {
        let cancelled = {
            let mut books = self.lock();
            match books.state {
                State::NotStarted | State::Stopped => return,
                State::Running | State::Draining => {}
            }
            match mode {
                StopMode::Drain => {
                    books.state = State::Draining;
                    if let Some(actor) = &books.actor {
                        actor.do_send(Kick);
                    }
                    Vec::new()
                }
                StopMode::CancelPending => {
                    books.state = State::Stopped;
                    take_pending(&mut books)
                }
            }
        };
        self.answer_stopped(cancelled);
        loop {
            let notified = self.progress.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let books = self.lock();
                if books.pending.is_empty() && books.running == 0 {
                    break;
                }
            }
            notified.await;
        }
        let mut books = self.lock();
        books.state = State::Stopped;
        if let Some(actor) = books.actor.take() {
            actor.do_send(StopGrinder);
        }
        tracing::info!(owner_prefix = %self.config.owner_prefix, "work grinder stopped");
    }

    /// Stops without waiting: pending items are answered `Stopped` (last handle dropped).
    pub fn stop_detached(&self) {
        let cancelled = {
            let mut books = self.lock();
            books.state = State::Stopped;
            if let Some(actor) = books.actor.take() {
                actor.do_send(StopGrinder);
            }
            take_pending(&mut books)
        };
        self.answer_stopped(cancelled);
    }

    /// Answers cancelled items `Stopped` (outside the lock) and wakes anyone waiting for room.
    fn answer_stopped(&self, items: Vec<Item<S>>) {
        for item in items {
            (item.launch)(Err(LeaseError::Stopped));
        }
        self.freed_room();
    }

    /// A snapshot.
    pub fn stats(&self) -> GrinderStats {
        let books = self.lock();
        GrinderStats {
            started: books.state == State::Running,
            pending: books.pending.len(),
            in_flight_batches: books.running,
            oldest_wait: books.pending.values().next().map(|i| i.enqueued.elapsed()),
            batches_run: books.batches_run,
            items_done: books.items_done,
        }
    }

    /// Takes the items of every batch that should start now; returns them with their numbers,
    /// and the deadline of the oldest item left waiting, if any.
    fn due_batches(&self) -> (Vec<DueBatch<S>>, Option<Instant>) {
        let mut books = self.lock();
        let mut due = Vec::new();
        while books.running < self.config.max_concurrent_batches && !books.pending.is_empty() {
            let oldest = books.pending.values().next().map(|i| i.enqueued);
            let waited_enough = oldest.is_some_and(|t| t.elapsed() >= self.config.max_wait);
            let full = books.pending.len() >= self.config.batch_size_threshold;
            if !(full || waited_enough || books.state == State::Draining) {
                break;
            }
            let items = take_pending(&mut books);
            let n = books.next_batch;
            books.next_batch += 1;
            books.running += 1;
            due.push((n, items));
        }
        let next_deadline = books
            .pending
            .values()
            .next()
            .map(|i| i.enqueued + self.config.max_wait);
        drop(books);
        if !due.is_empty() {
            self.freed_room();
        }
        (due, next_deadline)
    }

    fn batch_done(&self, items: u64) {
        let mut books = self.lock();
        books.running = books.running.saturating_sub(1);
        books.batches_run += 1;
        books.items_done += items;
        drop(books);
        self.progress.notify_waiters();
    }
}

fn take_pending<S: 'static>(books: &mut Books<S>) -> Vec<Item<S>> {
    std::mem::take(&mut books.pending).into_values().collect()
}

/// Holds a batch's lease while its jobs run. Each job keeps a reference; when the last one is
/// gone the lease is released (dropped: a non-blocking message) and the actor told.
pub struct BatchToken<S: 'static> {
    lease: Option<LeaseCore<S>>,
    items: u64,
    actor: Addr<GrinderActor<S>>,
}

impl<S: 'static> Drop for BatchToken<S> {
    fn drop(&mut self) {
        drop(self.lease.take());
        self.actor.do_send(BatchDone { items: self.items });
    }
}

/// Forms batches for one grinder and runs each on a lease. Lives on the manager's host System.
pub struct GrinderActor<S: 'static> {
    grinder: Arc<Grinder<S>>,
}

impl<S: 'static> GrinderActor<S> {
    fn form_batches(&mut self, ctx: &mut Context<Self>) {
        let (due, next_deadline) = self.grinder.due_batches();
        for (n, items) in due {
            self.run_batch(n, items, ctx.address());
        }
        if let Some(deadline) = next_deadline {
            // One timer per check; a batch that starts earlier makes it a harmless no-op.
            ctx.run_later(
                deadline.saturating_duration_since(Instant::now()),
                |act, ctx| act.form_batches(ctx),
            );
        }
    }

    fn run_batch(&self, n: u64, items: Vec<Item<S>>, me: Addr<Self>) {
        let grinder = Arc::clone(&self.grinder);
        let owner = format!("{}-batch-{n}", grinder.config.owner_prefix);
        tracing::debug!(batch = n, size = items.len(), owner = %owner, "batch starting");
        actix_rt::spawn(async move {
            let params = LeaseParams {
                owner: Some(owner),
                lease_for: grinder.config.lease_for,
            };
            let lease = match grinder.engine.begin_acquire(params, WaitMode::Forever) {
                Ok(Ok(lease)) => Ok(lease),
                Ok(Err(mut ticket)) => std::future::poll_fn(|cx| ticket.poll_wait(cx)).await,
                Err(e) => Err(e),
            };
            let (lease, failure) = match lease {
                Ok(lease) => (Some(lease), None),
                Err(e) => (None, Some(e)),
            };
            if let Some(e) = &failure {
                tracing::warn!(batch = n, error = %e, "batch could not get a lease; its items fail");
            }
            let token = Arc::new(BatchToken {
                items: items.len() as u64,
                lease,
                actor: me,
            });
            for item in items {
                match &failure {
                    None => (item.launch)(Ok(&token)),
                    Some(e) => (item.launch)(Err(e.clone())),
                }
            }
        });
    }
}

impl<S: 'static> Actor for GrinderActor<S> {
    type Context = Context<Self>;
}

impl<S: 'static> Handler<Kick> for GrinderActor<S> {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        self.form_batches(ctx);
    }
}

impl<S: 'static> Handler<BatchDone> for GrinderActor<S> {
    type Result = ();

    fn handle(&mut self, msg: BatchDone, ctx: &mut Context<Self>) {
        self.grinder.batch_done(msg.items);
        self.form_batches(ctx);
    }
}

impl<S: 'static> Handler<StopGrinder> for GrinderActor<S> {
    type Result = ();

    fn handle(&mut self, _: StopGrinder, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
