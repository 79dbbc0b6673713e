//! Every `tracing` event of a test binary, kept for the test to read: one global subscriber,
//! because the host thread, the worker threads and the children's log threads all log on threads
//! of their own. For the binaries that check what is logged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One event as it was logged.
#[derive(Debug, Clone)]
pub struct Captured {
    /// Its level.
    pub level: Level,
    /// Its target (the module that logged it, or the one it named).
    pub target: String,
    /// Its fields as text, the message under `message`.
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

/// The layer that keeps every event in the binary's store (what [`events`] reads).
pub struct Capture(Arc<Mutex<Vec<Captured>>>);

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = FieldsOf::default();
        event.record(&mut fields);
        let captured = Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields: fields.0,
        };
        if PAUSED.load(Ordering::SeqCst) {
            return;
        }
        if let Some(hook) = HOOK.get() {
            hook(&captured);
        }
        self.0.lock().unwrap().push(captured);
    }
}

fn store() -> &'static Arc<Mutex<Vec<Captured>>> {
    static EVENTS: OnceLock<Arc<Mutex<Vec<Captured>>>> = OnceLock::new();
    EVENTS.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

static OWN_SUBSCRIBER: AtomicBool = AtomicBool::new(false);
static PAUSED: AtomicBool = AtomicBool::new(false);

/// While the guard lives, events are not kept (for a test that logs hundreds of MiB on purpose
/// and measures the process's memory).
#[must_use = "capture resumes when the guard drops"]
pub struct Paused(());

impl Drop for Paused {
    fn drop(&mut self) {
        PAUSED.store(false, Ordering::SeqCst);
    }
}

/// Stops keeping events until the returned guard drops.
pub fn paused() -> Paused {
    PAUSED.store(true, Ordering::SeqCst);
    Paused(())
}

/// The capturing layer, for a binary that installs a subscriber of its own with more layers
/// (before its first [`events`]); without it, [`events`] installs one with this layer alone.
pub fn layer() -> Capture {
    OWN_SUBSCRIBER.store(true, Ordering::SeqCst);
    Capture(Arc::clone(store()))
}

/// Every event so far; the first call installs the subscriber unless [`layer`] was taken.
pub fn events() -> &'static Arc<Mutex<Vec<Captured>>> {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if !OWN_SUBSCRIBER.load(Ordering::SeqCst) {
            let subscriber = tracing_subscriber::registry().with(layer());
            tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        }
    });
    store()
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
