//! The peers' setups: a raw actix `SyncArbiter` in both topologies, plus the message types.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix::prelude::*;

/// The raw sync actor: what a user of bare `SyncArbiter` writes.
pub struct RawWorker;

impl Actor for RawWorker {
    type Context = SyncContext<Self>;
}

/// A job that does nothing.
pub struct Noop;

impl Message for Noop {
    type Result = ();
}

impl Handler<Noop> for RawWorker {
    type Result = ();
    fn handle(&mut self, _: Noop, _: &mut SyncContext<Self>) {}
}

/// A job that blocks its thread.
pub struct Sleep(pub Duration);

impl Message for Sleep {
    type Result = ();
}

impl Handler<Sleep> for RawWorker {
    type Result = ();
    fn handle(&mut self, msg: Sleep, _: &mut SyncContext<Self>) {
        std::thread::sleep(msg.0);
    }
}

/// A `SyncArbiter` whose System runs on its own thread, so callers are on another thread —
/// leasepool's own topology.
pub struct OffThreadArbiter {
    pub addr: Option<Addr<RawWorker>>,
    system: System,
    thread: Option<JoinHandle<()>>,
}

impl OffThreadArbiter {
    pub fn start(workers: usize) -> Self {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let sys = System::new();
            sys.block_on(async {
                let addr = SyncArbiter::start(workers, || RawWorker);
                tx.send((addr, System::current())).expect("send address");
            });
            let _ = sys.run();
        });
        let (addr, system) = rx.recv().expect("arbiter started");
        Self {
            addr: Some(addr),
            system,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> &Addr<RawWorker> {
        self.addr.as_ref().expect("running")
    }
}

impl Drop for OffThreadArbiter {
    fn drop(&mut self) {
        self.addr = None;
        self.system.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
