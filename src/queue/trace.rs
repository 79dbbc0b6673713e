//! Trace context across the queue: a producer may attach a W3C `traceparent` to a task
//! ([`PushOptions::trace_parent`](super::PushOptions::trace_parent)); the worker that runs it —
//! on any machine — runs it in a `queue_task` span that carries it, and hands that span and the
//! value to a hook ([`QueueWorkerBuilder::on_task_span`](super::QueueWorkerBuilder::on_task_span))
//! where an OpenTelemetry user sets the span's remote parent. leasepool carries the text; it
//! knows nothing of OpenTelemetry.
//!
//! The format is the W3C Trace Context `traceparent` header: `00-<32 hex trace id>-<16 hex
//! parent id>-<2 hex flags>`, lowercase, neither id all zeros. It is stored in the task's
//! metadata under [`TRACE_META`].

/// The metadata key of a task's `traceparent`.
pub const TRACE_META: &str = "leasepool_traceparent";

/// A hook given each task's span and its `traceparent`, if it has one.
pub(crate) type SpanHook = dyn Fn(&tracing::Span, Option<&str>) + Send + Sync;

/// A parsed `traceparent`: `Copy`, so [`PushOptions`](super::PushOptions) stays `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    version: u8,
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

/// What is wrong with a `traceparent` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadTraceParent {
    Fields,
    Version,
    Length,
    TraceId,
    ParentId,
    Flags,
}

impl std::fmt::Display for BadTraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fields => {
                "expected at least four dash-separated fields: version-traceid-parentid-flags"
            }
            Self::Version => "the version is two lowercase hex digits, not ff",
            Self::Length => "a version 00 value is 55 characters long",
            Self::TraceId => "the trace id is 32 lowercase hex digits, not all zeros",
            Self::ParentId => "the parent id is 16 lowercase hex digits, not all zeros",
            Self::Flags => "the flags are two lowercase hex digits",
        })
    }
}

impl TraceParent {
    /// Parses a W3C `traceparent` value; a later version's extra fields are dropped.
    pub(crate) fn parse(value: &str) -> Result<Self, BadTraceParent> {
        let mut parts = value.split('-');
        let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadTraceParent::Fields);
        };
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" {
            return Err(BadTraceParent::Version);
        }
        if version == "00" && value.len() != 55 {
            return Err(BadTraceParent::Length);
        }
        let trace_id = u128::from_str_radix(trace_id, 16)
            .ok()
            .filter(|&id| hex(trace_id, 32) && id != 0)
            .ok_or(BadTraceParent::TraceId)?;
        let parent_id = u64::from_str_radix(parent_id, 16)
            .ok()
            .filter(|&id| hex(parent_id, 16) && id != 0)
            .ok_or(BadTraceParent::ParentId)?;
        let flags = u8::from_str_radix(flags, 16)
            .ok()
            .filter(|_| hex(flags, 2))
            .ok_or(BadTraceParent::Flags)?;
        let version = u8::from_str_radix(version, 16).map_err(|_| BadTraceParent::Version)?;
        Ok(Self {
            version,
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The value as stored: `vv-<32 hex>-<16 hex>-ff`.
    pub(crate) fn render(&self) -> String {
        format!(
            "{:02x}-{:032x}-{:016x}-{:02x}",
            self.version, self.trace_id, self.parent_id, self.flags
        )
    }
}

/// Calls the user's `on_task_span` hook: a panic in it is logged and the task runs on (it is
/// no reason to fail the task, and must not take the worker down).
pub(crate) fn call_hook(
    hook: &SpanHook,
    span: &tracing::Span,
    traceparent: Option<&str>,
    queue: &str,
    task: &str,
) {
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(span, traceparent)));
    if let Err(payload) = called {
        let panic = leasepool_actors::plumbing::panic_message(payload.as_ref());
        // The payload is dropped here; its own destructor is user code too.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
        tracing::error!(
            queue,
            task,
            panic,
            "the on_task_span hook panicked; the task runs without it"
        );
    }
}

/// The span a task runs in: `queue_task` (target `leasepool::queue`, level INFO) with its
/// queue, task id and `traceparent`.
pub(crate) fn task_span(queue: &str, id: &str, traceparent: Option<&str>) -> tracing::Span {
    tracing::info_span!(
        target: "leasepool::queue",
        "queue_task",
        queue,
        task_id = id,
        traceparent = traceparent.unwrap_or(""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_w3c_traceparent_is_accepted_and_anything_else_is_named() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            TraceParent::parse(good).map(|t| t.render()),
            Ok(good.to_owned())
        );
        use BadTraceParent::*;
        for (bad, why) in [
            ("", Fields),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                Fields,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Version,
            ),
            (
                "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Version,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceId,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ParentId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                Length,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
                Flags,
            ),
        ] {
            assert_eq!(TraceParent::parse(bad), Err(why), "{bad:?}");
            assert!(!why.to_string().is_empty());
        }
        // A later version may carry more fields: they are dropped.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        let parsed = TraceParent::parse(later).unwrap();
        assert_eq!(parsed.render(), &later[..55]);
    }
}
