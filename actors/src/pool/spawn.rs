//! Starting a pool's worker threads, and surviving a spawn that fails.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::thread;

use actix::{AsyncContext, Context, SyncArbiter};

use super::{PoolActor, ThreadGroup};
use crate::job::panic_message;
use crate::stats::CounterCells;
use crate::worker::{ExitNotice, Worker, WorkerExited, WorkerReady};

/// A stack no machine can give a thread: the spawn fails with `EAGAIN`, as it does at the
/// process's thread limit. Used to inject spawn failures in tests.
#[cfg(target_pointer_width = "64")]
const UNSPAWNABLE_STACK: usize = 1 << 46;
#[cfg(not(target_pointer_width = "64"))]
const UNSPAWNABLE_STACK: usize = usize::MAX / 2;

impl<S: 'static> PoolActor<S> {
    /// Spawns `n` worker threads as one `SyncArbiter`. actix's `SyncArbiter` panics when a
    /// thread cannot be spawned (`EAGAIN` at the thread limit); that panic is contained here and
    /// becomes a worker failure like any other: counted, logged, replaced with backoff.
    pub(super) fn start_workers(&mut self, n: usize, ctx: &mut Context<Self>) {
        let me = ctx.address();
        let id = self.id;
        let prefix = self.spec.settings().name_prefix.clone();
        let threads = Arc::clone(&self.spec.threads);
        let keeper = Arc::clone(&self.spec.keeper);
        // What the thread-builder closure saw, read back if the spawn panics.
        let attempts: Rc<RefCell<Vec<String>>> = Rc::default();
        let mut index = self.next_index;
        let thread_builder = {
            let attempts = Rc::clone(&attempts);
            let threads = Arc::clone(&threads);
            move || {
                let name = format!("{prefix}-{}-{index}", id.get());
                index += 1;
                threads.will_spawn(id, &name);
                attempts.borrow_mut().push(name.clone());
                let builder = thread::Builder::new().name(name);
                if keeper.take_injected_spawn_failure() {
                    builder.stack_size(UNSPAWNABLE_STACK)
                } else {
                    builder
                }
            }
        };
        let factory = Arc::clone(&self.spec.settings().state_factory);
        let on_exit = self.spec.settings().worker_exit.clone();
        let counters = Arc::clone(self.spec.counters());
        let queue = self.receiver.clone();
        let exits = me.clone().recipient::<WorkerExited>();
        let ready = me.clone().recipient::<WorkerReady>();
        let group = self.next_group;
        let worker_threads = Arc::clone(&threads);
        let manager: Arc<str> = Arc::clone(&self.spec.keeper.name);
        let keeper_for_run = Arc::downgrade(&self.spec.keeper);
        let generation = self.spec.keeper.current_generation().unwrap_or(0);
        let make_worker = move || {
            worker_threads.adopt_current_thread(id);
            if let Some(keeper) = keeper_for_run.upgrade() {
                keeper.enter_run_on_this_thread(generation);
            }
            let exit = ExitNotice {
                pool: exits.clone(),
                group,
                reported: false,
            };
            let worker = Worker::new(
                Arc::clone(&manager),
                exit,
                queue.clone(),
                Arc::clone(&factory),
                id,
                Arc::clone(&counters),
                on_exit.clone(),
            );
            ready.do_send(WorkerReady);
            worker
        };
        let started = catch_unwind(AssertUnwindSafe(|| {
            SyncArbiter::start_with_thread_builder(n, thread_builder, make_worker)
        }));
        self.next_group += 1;
        let attempted = attempts.borrow().len();
        self.next_index += attempted;
        match started {
            Ok(addr) => {
                self.groups.push(ThreadGroup {
                    number: group,
                    _arbiter: Some(addr),
                    live: n,
                });
                self.live += n;
            }
            Err(payload) => {
                // Every attempt before the last one spawned a thread that now serves the queue;
                // the last one failed.
                let error = format!(
                    "cannot spawn a worker thread: {}",
                    panic_message(payload.as_ref())
                );
                let spawned = attempted.saturating_sub(1);
                if let Some(failed) = attempts.borrow().last() {
                    threads.spawn_failed(id, failed);
                }
                if spawned > 0 {
                    self.groups.push(ThreadGroup {
                        number: group,
                        _arbiter: None,
                        live: spawned,
                    });
                    self.live += spawned;
                }
                CounterCells::bump(&self.spec.counters().thread_spawn_failures);
                tracing::warn!(manager = %self.spec.settings().name_prefix, pool = %id, spawned, wanted = n, error = %error, "worker thread spawn failed; retrying with backoff");
                self.worker_failed(error, ctx);
            }
        }
    }
}
