//! In the child: the outcomes of a `RunMany` on their way to the parent. They go in
//! `DoneMany` frames of at most [`OUTCOMES_PER_FRAME`] outcomes and `max_message_bytes`; a frame
//! is sent as soon as it is full, or — by a flusher thread, so that an outcome never waits for
//! the next item to finish — once its oldest outcome is [`MAX_AGE`] old. The last frame goes
//! back to the serve loop, which sends it as the answer.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Sends a complete frame to the parent now.
pub(crate) type Emit<'a> = dyn FnMut(&[u8]) -> Result<(), String> + Send + 'a;

use super::super::protocol::{self, FromChild, OUTCOMES_PER_FRAME};

/// Longest an outcome waits in the child before it is sent.
pub(crate) const MAX_AGE: Duration = Duration::from_millis(5);

/// Room for a frame's header beside its outcomes.
const ROOM: usize = super::super::job::FRAME_ROOM;

struct Pending<'e, 'a> {
    emit: &'e mut Emit<'a>,
    header: FromChild,
    max: usize,
    /// Encoded outcomes (batch items) not sent yet, and how many.
    outcomes: Vec<u8>,
    count: usize,
    /// When the oldest of them was added.
    oldest: Option<Instant>,
    /// The buffer frames are built in.
    frame: Vec<u8>,
    /// Frames sent so far.
    sent: usize,
    /// The first error sending a frame (the parent is gone): nothing more is sent.
    failed: Option<String>,
    /// Every item has its outcome: the flusher ends.
    done: bool,
}

impl Pending<'_, '_> {
    /// Sends what is pending as one frame.
    fn flush(&mut self) {
        if self.count == 0 || self.failed.is_some() {
            return;
        }
        match self.seal() {
            Ok(()) => match (self.emit)(&self.frame) {
                Ok(()) => self.sent += 1,
                Err(e) => self.failed = Some(e),
            },
            Err(e) => self.failed = Some(e),
        }
        self.outcomes.clear();
        self.count = 0;
        self.oldest = None;
    }

    /// Builds a `DoneMany` frame of what is pending in `frame`.
    fn seal(&mut self) -> Result<(), String> {
        let outcomes = &self.outcomes;
        let body = |mut b: Vec<u8>, _| {
            b.extend_from_slice(outcomes);
            Ok(b)
        };
        let buf = std::mem::take(&mut self.frame);
        self.frame = protocol::frame_with_body(&self.header, body, buf, self.max)?;
        Ok(())
    }
}

struct Outbox<'e, 'a> {
    pending: Mutex<Pending<'e, 'a>>,
    changed: Condvar,
}

impl<'e, 'a> Outbox<'e, 'a> {
    fn lock(&self) -> MutexGuard<'_, Pending<'e, 'a>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds one encoded outcome, first sending what is pending if it would not fit beside it.
    fn push(&self, outcome: &[u8]) {
        let mut p = self.lock();
        let full = p.outcomes.len() + outcome.len() + ROOM > p.max;
        if p.count > 0 && (full || p.count >= OUTCOMES_PER_FRAME) {
            p.flush();
        }
        p.outcomes.extend_from_slice(outcome);
        p.count += 1;
        p.oldest.get_or_insert_with(Instant::now);
        drop(p);
        self.changed.notify_one();
    }

    /// The flusher: sends what is pending once its oldest outcome is [`MAX_AGE`] old.
    fn flush_aged(&self) {
        let mut p = self.lock();
        loop {
            if p.done {
                return;
            }
            let wait = match p.oldest {
                Some(oldest) if oldest.elapsed() >= MAX_AGE => {
                    p.flush();
                    continue;
                }
                Some(oldest) => MAX_AGE.saturating_sub(oldest.elapsed()),
                None => Duration::from_secs(3600),
            };
            p = self
                .changed
                .wait_timeout(p, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Tells the flusher to end.
struct End<'o, 'e, 'a>(&'o Outbox<'e, 'a>);

impl Drop for End<'_, '_, '_> {
    fn drop(&mut self) {
        self.0.lock().done = true;
        self.0.changed.notify_all();
    }
}

/// Runs `count` items — `next` runs one and returns its encoded outcome — and sends their
/// outcomes through `emit` as they come (see the module docs). Returns the last frame (built in
/// `buf`; empty if every outcome is sent already), or why the outcomes could not be sent.
pub(crate) fn run_and_send(
    header: FromChild,
    max: usize,
    buf: Vec<u8>,
    emit: &mut Emit<'_>,
    count: u32,
    mut next: impl FnMut() -> Vec<u8>,
) -> Result<Vec<u8>, String> {
    let outbox = Outbox {
        pending: Mutex::new(Pending {
            emit,
            header,
            max,
            outcomes: Vec::new(),
            count: 0,
            oldest: None,
            frame: buf,
            sent: 0,
            failed: None,
            done: false,
        }),
        changed: Condvar::new(),
    };
    std::thread::scope(|scope| {
        // The flusher ends when this does, even by a panic (the scope waits for it).
        let _end = End(&outbox);
        let mut flusher = None;
        for n in 0..count {
            let outcome = next();
            outbox.push(&outcome);
            if outbox.lock().failed.is_some() {
                break;
            }
            if flusher.is_none() && n + 1 < count {
                // More items to run: someone must send this outcome if they take long. Without
                // a thread (none could be spawned), it goes with the next full frame or the
                // last.
                flusher = std::thread::Builder::new()
                    .name("leasepool-outbox".to_owned())
                    .spawn_scoped(scope, || outbox.flush_aged())
                    .ok();
            }
        }
    });
    let mut p = outbox.lock();
    if let Some(e) = p.failed.take() {
        return Err(e);
    }
    if p.count == 0 && p.sent > 0 {
        // The flusher sent every outcome: the answer is complete, nothing may follow it.
        return Ok(Vec::new());
    }
    p.seal()?;
    Ok(std::mem::take(&mut p.frame))
}
