//! Log forwarding. In a child, `tracing` events become marked stderr lines
//! ([`ChildSubscriber`]); in the parent, one thread per child reads its stderr and turns every
//! line — marked events and the child's own prints, stdout included — into `tracing` events of
//! the parent, with fields `manager`, `pool`, `worker` and `pid`.
//!
//! Targets in the parent: `leasepool::process::child` for the child's events (the child's own
//! target is the field `child_target`), `leasepool::process::output` for its plain output lines.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use super::protocol::{JOB_END_MARKER, JOB_MARKER, LOG_MARKER};

/// The child's subscriber: writes each event as one marked stderr line.
pub(crate) struct ChildSubscriber {
    max: LevelFilter,
    next_span: AtomicU64,
}

impl ChildSubscriber {
    /// Whether events are forwarded at `level` (the parent's maximum).
    pub(crate) fn forwards(level: &str) -> bool {
        level.parse().unwrap_or(LevelFilter::INFO) != LevelFilter::OFF
    }

    /// Installs itself as the global subscriber, forwarding events up to `level` (the parent's
    /// own maximum: `"trace"` … `"error"`, `"off"`). Does nothing if one is set already.
    pub(crate) fn install(level: &str) {
        let max = level.parse().unwrap_or(LevelFilter::INFO);
        if max == LevelFilter::OFF {
            return;
        }
        let _ = tracing::subscriber::set_global_default(ChildSubscriber {
            max,
            next_span: AtomicU64::new(1),
        });
    }
}

/// Gathers an event's message and fields, escaped to fit on one line.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{1e}' | '\u{1f}' => out.push(' '),
            c => out.push(c),
        }
    }
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.push(field, &text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value);
    }
}

impl Line {
    fn push(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            escape(value, &mut self.message);
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}=", field.name());
            escape(value, &mut self.fields);
        }
    }
}

impl Subscriber for ChildSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max >= *metadata.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are not forwarded; ids only need to be non-zero.
        Id::from_u64(self.next_span.fetch_add(1, Relaxed).max(1))
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let meta = event.metadata();
        let mut target = String::new();
        escape(meta.target(), &mut target);
        let text = format!(
            "{LOG_MARKER}{}\u{1f}{target}\u{1f}{}\u{1f}{}\n",
            meta.level(),
            line.message,
            line.fields
        );
        // One write per line: lines from several threads of the child do not interleave.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Who a child is, for the fields of the events its lines become.
#[derive(Debug, Clone)]
pub(crate) struct ChildLabels {
    pub(crate) manager: String,
    pub(crate) pool: String,
    pub(crate) worker: String,
    pub(crate) pid: u32,
}

/// Longest line forwarded as one event; a longer one is split.
const MAX_LINE: usize = 16 * 1024;

/// The spans of the jobs sent to one child and not yet started in its log, by number: the
/// worker thread adds each job's as it sends the job (the span current there: the job's own, a
/// child of its submitter's); the log reader takes the one a job-start marker names, records
/// the lines that follow under it, and lets go of it at the job's end marker — so no span (and
/// no request span above it) is kept open past its job. A few at most: a child that never
/// marks its jobs (its stderr taken over by a job) cannot make the list grow.
#[derive(Default)]
pub(crate) struct JobSpans(std::sync::Mutex<std::collections::VecDeque<(u64, tracing::Span)>>);

impl JobSpans {
    const KEEP: usize = 8;

    /// Job `seq` was sent from within `span`.
    pub(crate) fn sent(&self, seq: u64, span: tracing::Span) {
        let mut spans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        spans.push_back((seq, span));
        while spans.len() > Self::KEEP {
            spans.pop_front();
        }
    }

    /// Takes job `seq`'s span (its start was marked), and lets go of every older one (those
    /// jobs are over).
    fn take(&self, seq: u64) -> Option<tracing::Span> {
        let mut spans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((s, _)) = spans.front() {
            if *s > seq {
                return None;
            }
            let (s, span) = spans.pop_front()?;
            if s == seq {
                return Some(span);
            }
        }
        None
    }
}

/// A child's stderr cut into lines: one event per line, a line over [`MAX_LINE`] split; each
/// recorded under the span of the job that ran when the child wrote it (see [`JobSpans`]).
#[derive(Default)]
pub(crate) struct Lines {
    pending: Vec<u8>,
    /// The job whose start was marked and whose end was not, and its span.
    span: Option<(u64, tracing::Span)>,
}

impl Lines {
    /// Forwards every whole line in `chunk` (after what came before). Says whether the child
    /// is out of memory as of the last line that tells: `Some(true)` after Rust's report of a
    /// failed allocation (the child is about to abort on its memory limit), `Some(false)`
    /// after a [`JOB_MARKER`] (a new job started: an earlier report is not its death's
    /// cause), `None` if no line tells.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        labels: &ChildLabels,
        spans: &JobSpans,
    ) -> Option<bool> {
        self.pending.extend_from_slice(chunk);
        let mut out_of_memory = None;
        let mut from = 0;
        while let Some(at) = self.pending[from..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[from..from + at];
            if let Some(seq) = marker(line, JOB_MARKER) {
                out_of_memory = Some(false);
                self.span = seq.and_then(|seq| spans.take(seq).map(|span| (seq, span)));
            } else if let Some(seq) = marker(line, JOB_END_MARKER) {
                if self.span.as_ref().map(|(s, _)| *s) == seq {
                    self.span = None;
                }
            } else {
                if is_allocation_failure(line) {
                    out_of_memory = Some(true);
                }
                emit_bytes(line, labels, self.span());
            }
            from += at + 1;
        }
        while self.pending.len() - from >= MAX_LINE {
            emit_bytes(&self.pending[from..from + MAX_LINE], labels, self.span());
            from += MAX_LINE;
        }
        self.pending.drain(..from);
        out_of_memory
    }

    /// Forwards what is left (a last line without its newline).
    pub(crate) fn flush(&mut self, labels: &ChildLabels) {
        if !self.pending.is_empty() {
            emit_bytes(&self.pending, labels, self.span());
            self.pending.clear();
        }
    }
}

impl Lines {
    fn span(&self) -> Option<&tracing::Span> {
        self.span.as_ref().map(|(_, span)| span)
    }
}

/// `Some(job number)` if `line` is the marker `which` (`Some(None)`: one without a number).
fn marker(line: &[u8], which: &str) -> Option<Option<u64>> {
    let rest = line.trim_ascii_end().strip_prefix(which.as_bytes())?;
    Some(std::str::from_utf8(rest).ok().and_then(|s| s.parse().ok()))
}

/// Rust's default allocation-error handler prints "memory allocation of N bytes failed".
fn is_allocation_failure(line: &[u8]) -> bool {
    line.starts_with(b"memory allocation of") && line.trim_ascii_end().ends_with(b"failed")
}

/// Most bytes forwarded once the child has ended (see [`forward`]).
pub(crate) const DRAIN_AFTER_STOP: usize = 1 << 20;

fn emit_bytes(raw: &[u8], labels: &ChildLabels, span: Option<&tracing::Span>) {
    let text = String::from_utf8_lossy(raw);
    let line = text.trim_end_matches('\r');
    match span {
        Some(span) => span.in_scope(|| emit(line, labels)),
        None => emit(line, labels),
    }
}

fn emit(line: &str, l: &ChildLabels) {
    let (manager, pool, worker, pid) = (&l.manager, &l.pool, &l.worker, l.pid);
    let Some(event) = line.strip_prefix(LOG_MARKER) else {
        tracing::info!(target: "leasepool::process::output", manager, pool, worker, pid, "{line}");
        return;
    };
    let mut parts = event.splitn(4, '\u{1f}');
    let level = parts.next().unwrap_or("INFO");
    let child_target = parts.next().unwrap_or("");
    let message = parts.next().unwrap_or("");
    let fields = parts.next().unwrap_or("");
    macro_rules! forward_at {
        ($level:expr) => {
            tracing::event!(target: "leasepool::process::child", $level, manager, pool, worker, pid, child_target, fields, "{message}")
        };
    }
    match level.parse::<Level>().unwrap_or(Level::INFO) {
        Level::ERROR => forward_at!(Level::ERROR),
        Level::WARN => forward_at!(Level::WARN),
        Level::INFO => forward_at!(Level::INFO),
        Level::DEBUG => forward_at!(Level::DEBUG),
        Level::TRACE => forward_at!(Level::TRACE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> ChildLabels {
        ChildLabels {
            manager: "m".into(),
            pool: "p".into(),
            worker: "w".into(),
            pid: 1,
        }
    }

    #[test]
    fn an_allocation_failure_is_recognised() {
        assert!(is_allocation_failure(
            b"memory allocation of 1073741824 bytes failed"
        ));
        assert!(is_allocation_failure(
            b"memory allocation of 8 bytes failed\r"
        ));
        assert!(!is_allocation_failure(
            b"memory allocation of 8 bytes succeeded"
        ));
        assert!(!is_allocation_failure(
            b"the memory allocation of 8 bytes failed"
        ));
    }

    #[test]
    fn a_line_that_reports_a_failed_allocation_is_noticed_among_others() {
        let labels = labels();
        let mut lines = Lines::default();
        let spans = JobSpans::default();
        assert_eq!(
            lines.feed(b"memory allocation of 8 bytes ", &labels, &spans),
            None
        );
        // Completed by the next chunk, and followed by std's backtrace hint.
        assert_eq!(
            lines.feed(
                b"failed\nnote: run with `RUST_BACKTRACE=1` environment variable\n",
                &labels,
                &spans
            ),
            Some(true)
        );
        assert_eq!(lines.feed(b"an ordinary line\n", &labels, &spans), None);
        // A job started after it: the report is no longer the news.
        let marker = format!("{JOB_MARKER}\n");
        assert_eq!(lines.feed(marker.as_bytes(), &labels, &spans), Some(false));
        // The last line that tells wins, within one chunk too.
        let both = format!("memory allocation of 8 bytes failed\n{JOB_MARKER}\n");
        assert_eq!(lines.feed(both.as_bytes(), &labels, &spans), Some(false));
        let both = format!("{JOB_MARKER}\nmemory allocation of 8 bytes failed\n");
        assert_eq!(lines.feed(both.as_bytes(), &labels, &spans), Some(true));
    }

    #[test]
    fn a_marker_names_the_job_whose_span_the_next_lines_take_until_its_end() {
        let start = |n: &str| format!("{JOB_MARKER}{n}");
        assert_eq!(marker(start("17").as_bytes(), JOB_MARKER), Some(Some(17)));
        assert_eq!(marker(start("\r").as_bytes(), JOB_MARKER), Some(None));
        assert_eq!(marker(b"an ordinary line", JOB_MARKER), None);
        // The end marker is no start marker, nor the other way round.
        let end = format!("{JOB_END_MARKER}3");
        assert_eq!(marker(end.as_bytes(), JOB_MARKER), None);
        assert_eq!(marker(end.as_bytes(), JOB_END_MARKER), Some(Some(3)));
        assert_eq!(marker(start("3").as_bytes(), JOB_END_MARKER), None);
        let spans = JobSpans::default();
        for seq in 1..=10 {
            spans.sent(seq, tracing::Span::none());
        }
        // At most a few are kept: a child that never marks cannot grow the list.
        assert_eq!(spans.0.lock().unwrap().len(), JobSpans::KEEP);
        let labels = labels();
        let mut lines = Lines::default();
        let feed = |lines: &mut Lines, line: String| {
            lines.feed(format!("{line}\n").as_bytes(), &labels, &spans);
        };
        feed(&mut lines, start("9"));
        assert_eq!(lines.span.as_ref().map(|(s, _)| *s), Some(9));
        // Taking 9 let go of the older ones (their jobs are over); 10 is still there.
        assert_eq!(spans.0.lock().unwrap().len(), 1);
        // Another job's end does not end this one; its own does.
        feed(&mut lines, format!("{JOB_END_MARKER}8"));
        assert!(lines.span.is_some());
        feed(&mut lines, format!("{JOB_END_MARKER}9"));
        assert!(lines.span.is_none(), "no span held between jobs");
        // A job no longer known: no span rather than a wrong one.
        feed(&mut lines, start("1"));
        assert!(lines.span.is_none());
        feed(&mut lines, start("10"));
        assert_eq!(lines.span.as_ref().map(|(s, _)| *s), Some(10));
        assert!(spans.0.lock().unwrap().is_empty());
    }

    #[test]
    fn escaping_keeps_an_event_on_one_line() {
        let mut out = String::new();
        escape("two\nlines\u{1f}and\rmore", &mut out);
        assert_eq!(out, "two\\nlines and\\rmore");
    }
}
