//! Logs from worker children: a child's `tracing` events, and anything it prints on stdout or
//! stderr, reach the parent's subscriber as events with `manager`, `pool`, `worker` and `pid`
//! fields. Nothing a job prints can corrupt the job protocol.
//!
//! Run: `cargo run --example 13_process_logging --features process`
//! (set `RUST_LOG`-style filtering in your own subscriber; this example prints everything at INFO
//! and above with a minimal one.)

use std::error::Error;
use std::fmt::Write as _;

use leasepool::process::{self, Jobs, ProcessJob};
use leasepool::{Backend, LeaseManager};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Logs, prints, and answers.
#[derive(Serialize, Deserialize)]
struct Import {
    rows: u32,
}

impl ProcessJob for Import {
    const NAME: &'static str = "import.v1";
    type Output = u32;
    fn run(self) -> u32 {
        tracing::info!(rows = self.rows, "import started in the child");
        println!("a vendor library printing to stdout");
        eprintln!("and complaining on stderr");
        if self.rows > 100 {
            tracing::warn!(rows = self.rows, "large import");
        }
        self.rows * 2
    }
}

fn jobs() -> Jobs {
    Jobs::new().register::<Import>()
}

/// Prints each event on one line: level, target, message, fields.
struct Print;

impl<S: Subscriber> Layer<S> for Print {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() > Level::INFO {
            return;
        }
        struct Fields(String, String);
        impl Visit for Fields {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    let _ = write!(self.0, "{value:?}");
                } else {
                    let _ = write!(self.1, " {}={value:?}", field.name());
                }
            }
        }
        let mut fields = Fields(String::new(), String::new());
        event.record(&mut fields);
        let meta = event.metadata();
        println!(
            "{:5} {}: {}{}",
            meta.level(),
            meta.target(),
            fields.0,
            fields.1
        );
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    process::init(jobs());
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Print))?;

    let manager = LeaseManager::builder()
        .backend(Backend::Process)
        .process_jobs(jobs())
        .workers_per_pool(1)
        .name_prefix("logs")
        .build()?;
    manager.start().await?;
    let lease = manager.acquire().await?;
    println!("answer: {}", lease.call(Import { rows: 21 }).await?);
    println!("answer: {}", lease.call(Import { rows: 500 }).await?);
    lease.release().await;
    // The log lines travel on their own thread: stopping ends the child and flushes them.
    manager.stop().await;
    Ok(())
}
