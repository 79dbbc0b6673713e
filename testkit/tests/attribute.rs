//! The `#[testkit::test]` attribute and the runner, end to end: each registered test runs once
//! under its name (one per case with `each`), a failed after-check fails its test.

// The attribute's code names the crate `testkit`, as every package of the workspace calls it.
extern crate leasepool_testkit as testkit;

use std::sync::Mutex;

static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

const CASES: &[(&str, u32)] = &[("one", 1), ("two", 2)];

#[testkit::test]
async fn plain() {
    RAN.lock().unwrap().push("plain".to_owned());
}

#[testkit::test(each = CASES)]
async fn each(case: u32) {
    RAN.lock().unwrap().push(format!("each {case}"));
}

mod inner {
    #[testkit::test]
    async fn nested() {
        super::RAN.lock().unwrap().push("inner::nested".to_owned());
    }
}

fn main() {
    let names = testkit::Runner::names();
    assert_eq!(
        names,
        ["each::one", "each::two", "inner::nested", "plain"],
        "registered names"
    );
    let filtered = std::env::args().skip(1).any(|a| !a.starts_with('-'));
    let ran = testkit::Runner::new(testkit::block_on_tokio)
        .after_each(|name, passed| {
            assert!(passed, "{name} passed");
            Ok(())
        })
        .run();
    assert!(!ran.has_failed());
    if !filtered {
        let mut ran = RAN.lock().unwrap().clone();
        ran.sort();
        assert_eq!(ran, ["each 1", "each 2", "inner::nested", "plain"]);
    }
}
