//! Every `tracing` event of a test binary, kept for the test to read: one global subscriber,
//! because the host thread, the worker threads and the children's log threads all log on threads
//! of their own. For the binaries that check what is logged (`#[path] mod capture;`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One event as it was logged.
#[derive(Debug, Clone)]
pub struct Captured {
    pub level: Level,
    pub target: String,
    pub fields: BTreeMap<String, String>,
}

impl Captured {
    /// The event's message ("" when it has none).
    pub fn message(&self) -> &str {
        self.fields.get("message").map(String::as_str).unwrap_or("")
    }
}

#[derive(Default)]
struct FieldsOf(BTreeMap<String, String>);

impl Visit for FieldsOf {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Called with each event before it is kept, on the thread that logged it (a test may make a
/// subscriber call back into the library from there).
pub type Hook = fn(&Captured);

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Sets the [`Hook`] (once per binary; a second call is ignored).
pub fn set_hook(hook: Hook) {
    let _ = HOOK.set(hook);
}

struct Capture(Arc<Mutex<Vec<Captured>>>);

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = FieldsOf::default();
        event.record(&mut fields);
        let captured = Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields: fields.0,
        };
        if let Some(hook) = HOOK.get() {
            hook(&captured);
        }
        self.0.lock().unwrap().push(captured);
    }
}

/// Every event so far; the first call installs the subscriber.
pub fn events() -> &'static Arc<Mutex<Vec<Captured>>> {
    static EVENTS: OnceLock<Arc<Mutex<Vec<Captured>>>> = OnceLock::new();
    EVENTS.get_or_init(|| {
        let events = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(Arc::clone(&events)));
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        events
    })
}

/// The events so far that `pred` picks.
pub fn captured(pred: impl Fn(&Captured) -> bool) -> Vec<Captured> {
    events()
        .lock()
        .unwrap()
        .iter()
        .filter(|e| pred(e))
        .cloned()
        .collect()
}
