//! A tracing layer that records every span's name and parent and every event's span scope, for
//! the trace-context tests (installed once for the whole binary).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// One recorded event: its message, fields, and the names of its spans, innermost first.
#[derive(Debug, Clone)]
pub struct Seen {
    pub target: String,
    pub message: String,
    pub fields: HashMap<String, String>,
    /// (span name, that span's fields), innermost first.
    pub scope: Vec<(String, HashMap<String, String>)>,
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct Recorder;

fn events() -> &'static Mutex<Vec<Seen>> {
    static EVENTS: OnceLock<Mutex<Vec<Seen>>> = OnceLock::new();
    EVENTS.get_or_init(Mutex::default)
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    /// Recorded as the field `follows_from`: the followed spans' `id` fields, comma-separated.
    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        let followed = ctx
            .span(follows)
            .and_then(|f| {
                f.extensions()
                    .get::<Fields>()
                    .and_then(|f| f.0.get("id").cloned())
            })
            .unwrap_or_default();
        if let Some(span) = ctx.span(span) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<Fields>() {
                let all = fields.0.entry("follows_from".to_owned()).or_default();
                if !all.is_empty() {
                    all.push(',');
                }
                all.push_str(&followed);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let ext = span.extensions();
            let fields = ext.get::<Fields>().map(|f| f.0.clone()).unwrap_or_default();
            closed()
                .lock()
                .unwrap()
                .push((span.name().to_owned(), fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|span| {
                        let ext = span.extensions();
                        let fields = ext.get::<Fields>().map(|f| f.0.clone()).unwrap_or_default();
                        (span.name().to_owned(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let message = fields.0.remove("message").unwrap_or_default();
        events().lock().unwrap().push(Seen {
            target: event.metadata().target().to_owned(),
            message,
            fields: fields.0,
            scope,
        });
    }
}

/// Installs the recording subscriber for the whole binary.
pub fn install() {
    use tracing_subscriber::layer::SubscriberExt;
    let subscriber = tracing_subscriber::registry().with(Recorder);
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
}

/// The events recorded so far that `pred` accepts.
pub fn seen(pred: impl Fn(&Seen) -> bool) -> Vec<Seen> {
    events()
        .lock()
        .unwrap()
        .iter()
        .filter(|e| pred(e))
        .cloned()
        .collect()
}

/// A closed span: its name and fields.
type Closed = (String, HashMap<String, String>);

/// Spans closed so far.
fn closed() -> &'static Mutex<Vec<Closed>> {
    static CLOSED: OnceLock<Mutex<Vec<Closed>>> = OnceLock::new();
    CLOSED.get_or_init(Mutex::default)
}

/// Whether a span named `name` whose field `id` is `id` has closed.
pub fn has_closed(name: &str, id: &str) -> bool {
    closed()
        .lock()
        .unwrap()
        .iter()
        .any(|(n, f)| n == name && f.get("id").map(String::as_str) == Some(id))
}
