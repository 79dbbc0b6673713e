//! The worker's housekeeping task: sets right what apalis' acknowledgements leave (the
//! intents `task.rs` queued: an attempt to give back, a retry time), and now and then sweeps
//! the store for what dead workers left. It sleeps while there is nothing to do: it wakes for a
//! new intent, while an acknowledgement it waits for has not landed (every 20 ms), and for the
//! sweep (every third of the orphan timeout, as often as apalis heartbeats).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shared::{Shared, Unsettled};
use crate::queue::store::Settled;

/// How soon to look again for an acknowledgement that has not landed.
const AGAIN: Duration = Duration::from_millis(20);
/// How soon to try again after the store failed.
const AFTER_ERROR: Duration = Duration::from_millis(200);

pub(super) async fn housekeeping<S: 'static, T>(shared: Arc<Shared<S, T>>) {
    let settings = &shared.settings;
    let sweep_every = (settings.orphan_timeout / 3).max(Duration::from_secs(1));
    let mut next_sweep = Instant::now();
    loop {
        if Instant::now() >= next_sweep {
            if let Err(e) = shared
                .store
                .sweep(&shared.name, settings.orphan_timeout)
                .await
            {
                tracing::debug!(queue = %shared.name, error = %e, "the queue's sweep failed");
            }
            next_sweep = Instant::now() + sweep_every;
        }
        let again = settle_due(&shared).await;
        let until = again.map_or(next_sweep, |a| a.min(next_sweep));
        tokio::select! {
            () = shared.to_settle.notified() => {}
            () = tokio::time::sleep_until(until.into()) => {}
        }
    }
}

/// Settles every intent that is due; returns when to look again (`None`: nothing waits).
async fn settle_due<S: 'static, T>(shared: &Shared<S, T>) -> Option<Instant> {
    let hold = shared.settings.hold_deferrals;
    // Each intent ends `Done` or `Gone` (the store tells when the task is no longer ours); one
    // that has waited ten orphan timeouts for its acknowledgement is dropped (the store's sweep
    // sets right what it must).
    let limit = shared.settings.orphan_timeout.saturating_mul(10);
    let mut again: Option<Instant> = None;
    let due: Vec<Unsettled> = {
        let mut unsettled = shared.unsettled.lock().unwrap_or_else(|e| e.into_inner());
        unsettled.retain(|u| {
            let keep = u.since.elapsed() < limit;
            if !keep {
                tracing::warn!(task = %u.id, "an acknowledgement never landed here; left to the sweep");
            }
            keep
        });
        for u in unsettled.iter().filter(|u| u.since.elapsed() < hold) {
            let at = u.since + hold;
            again = Some(again.map_or(at, |a| a.min(at)));
        }
        unsettled
            .iter()
            .filter(|u| u.since.elapsed() >= hold)
            .cloned()
            .collect()
    };
    let instance = shared.instance();
    for u in due {
        let look_again = match shared
            .store
            .settle(&shared.name, &instance, &u.id, &u.intent)
            .await
        {
            Ok(Settled::Done | Settled::Gone) => {
                shared
                    .unsettled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|v| !(v.id == u.id && v.intent == u.intent));
                continue;
            }
            Ok(Settled::NotYet) => AGAIN,
            Err(e) => {
                tracing::debug!(task = %u.id, error = %e, "setting a task right failed; trying again");
                AFTER_ERROR
            }
        };
        let at = Instant::now() + look_again;
        again = Some(again.map_or(at, |a| a.min(at)));
    }
    again
}
