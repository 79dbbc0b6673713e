//! A recorder for one test: handles registered while building inside [`Recorded::build`] record
//! here, whichever thread records; one snapshot at the end, read by name and labels.

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

pub struct Recorded {
    recorder: DebuggingRecorder,
    snapshotter: Snapshotter,
}

/// One snapshot: `name{label=value,...}` (labels sorted) → value.
pub struct Snapshot(HashMap<String, DebugValue>);

impl Recorded {
    pub fn new() -> Self {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        Self {
            recorder,
            snapshotter,
        }
    }

    /// Runs `build` with this recorder as the thread's recorder: what it registers records
    /// here for good.
    pub fn build<T>(&self, build: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, build)
    }

    /// Takes the snapshot (counters and gauges read once: take it at the end).
    pub fn snapshot(&self) -> Snapshot {
        let mut map = HashMap::new();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            map.insert(format!("{}{{{}}}", key.name(), labels.join(",")), value);
        }
        Snapshot(map)
    }
}

impl Snapshot {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        self.0.get(&format!("{name}{{{}}}", labels.join(",")))
    }

    /// A counter's value (0 if it was never registered).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} {labels:?} is no counter: {other:?}"),
        }
    }

    /// A gauge's value.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.get(name, labels) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("{name} {labels:?} is no gauge: {other:?}"),
        }
    }

    /// A histogram's observations.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.get(name, labels) {
            Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
            None => Vec::new(),
            Some(other) => panic!("{name} {labels:?} is no histogram: {other:?}"),
        }
    }

    /// Every key recorded (for a failing assertion's message).
    pub fn keys(&self) -> Vec<&String> {
        let mut keys: Vec<_> = self.0.keys().collect();
        keys.sort();
        keys
    }
}
