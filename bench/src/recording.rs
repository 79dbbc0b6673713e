//! Rows M (feature `metrics`): what recording costs. S1, S2 and S6 run with a Prometheus
//! recorder registered by the bench's managers, and without (the handles are no-ops), in
//! alternation within one run; each row is the ratio with ÷ without (times; for a rate,
//! without ÷ with), so 1.0 is free and the target is at most 1.10.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

use crate::report::{Better, Scenario};
use crate::scenarios as sc;
use crate::LEASEPOOL;

static ON: AtomicBool = AtomicBool::new(false);

/// The recorder the bench's managers register with while recording is on.
pub fn active() -> Option<&'static PrometheusRecorder> {
    static RECORDER: OnceLock<PrometheusRecorder> = OnceLock::new();
    ON.load(SeqCst)
        .then(|| RECORDER.get_or_init(|| PrometheusBuilder::new().build_recorder()))
}

/// Medians of `f` without and with the recorder, rounds alternating.
fn both(rounds: usize, mut f: impl FnMut() -> f64) -> (f64, f64) {
    let mut without = Vec::new();
    let mut with = Vec::new();
    f(); // warm-up
    for _ in 0..rounds.max(3) {
        ON.store(false, SeqCst);
        without.push(f());
        ON.store(true, SeqCst);
        with.push(f());
    }
    ON.store(false, SeqCst);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (median(&mut without), median(&mut with))
}

fn row(id: &'static str, title: String, ratio: f64) -> Scenario {
    let mut s = Scenario::new(id, title, "× (with ÷ without)", Better::Lower);
    s.add(LEASEPOOL, ratio);
    s
}

/// The M rows.
pub fn rows(
    rounds: usize,
    s1_ops: usize,
    s2_ops: usize,
    s6: (usize, usize, usize),
) -> Vec<Scenario> {
    let (s6_ops, tasks, per_task) = s6;
    let (off, on) = both(rounds, || sc::s1_leasepool(s1_ops));
    let m1 = row(
        "M1",
        "S1 run(noop): µs with a recorder ÷ without".into(),
        on / off,
    );
    let (off, on) = both(rounds, || sc::s2_leasepool(s2_ops));
    let m2 = row(
        "M2",
        "S2 acquire → run(noop) → release: µs with a recorder ÷ without".into(),
        on / off,
    );
    let mut uncontended = (Vec::new(), Vec::new());
    let (off, on) = both(rounds, || {
        let (u, c) = sc::s6_leasepool(s6_ops, tasks, per_task, 4);
        if ON.load(SeqCst) {
            uncontended.1.push(u);
        } else {
            uncontended.0.push(u);
        }
        // The contended rate as a time per op, so that with ÷ without reads like the others.
        1.0 / c
    });
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (u_off, u_on) = (median(&mut uncontended.0), median(&mut uncontended.1));
    let m3 = row(
        "M3",
        "S6 uncontended acquire + release: µs with a recorder ÷ without".into(),
        u_on / u_off,
    );
    let m4 = row(
        "M4",
        format!("S6 {tasks} tasks on 4 pools: time per op with a recorder ÷ without"),
        on / off,
    );
    vec![m1, m2, m3, m4]
}
