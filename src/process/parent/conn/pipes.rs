//! The pipes to and from a child, never blocking for long: every wait is a `poll` of at most
//! [`WATCH_EVERY`], between which the job's stop reason and the child's life are checked.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, WaitId, WaitIdOptions};

use super::super::super::protocol::{parse, split, FromChild, Parsed};
use super::super::exchange::Waited;
use super::Child;

/// How often a worker waiting on its child looks for a reason to kill it (hard expiry, an
/// overdue stop, a child that died): the longest a runaway job outlives its lease, beyond the
/// host's own timer.
const WATCH_EVERY: Duration = Duration::from_millis(5);

impl Child {
    /// Whether the child took everything written to its pipe (unread bytes remain in the pipe
    /// after its reader died). If that cannot be told: yes (the job may have started).
    pub(super) fn pipe_drained(&self) -> bool {
        self.to
            .as_ref()
            .is_none_or(|to| rustix::io::ioctl_fionread(to).map_or(true, |unread| unread == 0))
    }

    /// Writes `frame` without ever blocking for long: between partial writes, the job's stop
    /// reason and the child's life are checked. On failure: why, and how much was written.
    pub(super) fn send(&mut self, frame: &[u8]) -> Result<(), (Waited, usize)> {
        let mut sent = 0;
        while sent < frame.len() {
            let Some(to) = self.to.as_mut() else {
                return Err((Waited::Ended, sent));
            };
            match to.write(&frame[sent..]) {
                Ok(0) => return Err((Waited::Ended, sent)),
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.watch().map_err(|w| (w, sent))?;
                    let Some(to) = self.to.as_ref() else {
                        return Err((Waited::Ended, sent));
                    };
                    let mut fds = [PollFd::new(to, PollFlags::OUT)];
                    let _ = rustix::event::poll(&mut fds, Some(&watch_every()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err((Waited::Ended, sent)),
            }
        }
        Ok(())
    }

    /// Checks, between two waits, whether the job must stop or the child died.
    pub(super) fn watch(&mut self) -> Result<(), Waited> {
        if let Some(reason) = (self.spec.stop_reason)() {
            return Err(Waited::Stop(reason));
        }
        if self.has_exited() {
            return Err(Waited::Ended);
        }
        Ok(())
    }

    /// Whether the child has exited — without reaping it (it stays a zombie, keeping its pid).
    pub(super) fn has_exited(&self) -> bool {
        if self.reaped || self.watch.life().reaped.is_some() {
            return true;
        }
        let Some(pid) = Pid::from_raw(self.labels.pid as i32) else {
            return true;
        };
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        matches!(
            rustix::process::waitid(WaitId::Pid(pid), options),
            Ok(Some(_))
        )
    }

    /// Reads until a whole frame is buffered.
    pub(super) fn wait_frame(&mut self, deadline: Option<Instant>) -> Waited {
        loop {
            match parse(&self.buf, self.max_message) {
                Parsed::Frame { start, end } => {
                    return match split::<FromChild>(&self.buf[start..end]) {
                        Ok((header, rest)) => Waited::Frame {
                            header,
                            body: end - rest.len()..end,
                            end,
                        },
                        Err(why) => Waited::Malformed(why),
                    };
                }
                Parsed::TooLong(n) => {
                    return Waited::Malformed(format!(
                        "a frame of {n} bytes, over max_message_bytes ({})",
                        self.max_message
                    ))
                }
                Parsed::Partial => {}
            }
            match self.fill(deadline) {
                Ok(true) => {}
                Ok(false) => return Waited::Ended,
                Err(waited) => return waited,
            }
        }
    }

    /// Waits for bytes from the child and appends them: `Ok(false)` at its end of output.
    /// Gives up as soon as the job (or the starting worker) must stop, or the child died.
    pub(super) fn fill(&mut self, deadline: Option<Instant>) -> Result<bool, Waited> {
        loop {
            match self.read_some() {
                Ok(Some(true)) => return Ok(true),
                Ok(Some(false)) => return Ok(false),
                Ok(None) => {}
                Err(()) => return Ok(false),
            }
            if let Err(waited) = self.watch() {
                // It may have written its answer and exited between the read and the look.
                if matches!(waited, Waited::Ended) && self.read_some() == Ok(Some(true)) {
                    return Ok(true);
                }
                return Err(waited);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Waited::TimedOut);
            }
            let mut fds = [PollFd::new(&self.from, PollFlags::IN)];
            let _ = rustix::event::poll(&mut fds, Some(&watch_every()));
        }
    }

    /// One non-blocking read into the buffer: `Some(true)` bytes came, `Some(false)` end of
    /// output, `None` nothing yet.
    pub(super) fn read_some(&mut self) -> Result<Option<bool>, ()> {
        // Room for the rest of the frame being read (its length is known once 4 bytes are in),
        // or a 64 KiB chunk.
        const CHUNK: usize = 64 * 1024;
        let rest = match parse(&self.buf, self.max_message) {
            Parsed::Partial if self.buf.len() >= 4 => {
                let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                (len as usize + 4).saturating_sub(self.buf.len()).max(1)
            }
            _ => CHUNK,
        };
        // Reserved once for the whole frame; read into the spare capacity (no zero-filling).
        self.buf.reserve(rest);
        loop {
            let have = self.buf.len();
            let result = (&mut self.from)
                .take(rest as u64)
                .read_to_end(&mut self.buf);
            let got = self.buf.len() - have;
            return match result {
                // Fewer bytes than asked and no error: the end of its output came after them.
                Ok(n) if n < rest && got == 0 => Ok(Some(false)),
                Ok(_) => Ok(Some(true)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    Ok((got > 0).then_some(true))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted && got == 0 => continue,
                Err(_) if got > 0 => Ok(Some(true)),
                Err(_) => Err(()),
            };
        }
    }
}

pub(super) fn watch_every() -> Timespec {
    Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(WATCH_EVERY.subsec_nanos()),
    }
}
