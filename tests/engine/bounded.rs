//! Every test under `tests/` and `integration/tests` is bounded in time: its first statement starts a
//! `testkit::deadline()` watchdog, so a broken engine fails the run with a message naming the
//! test instead of hanging CI. This test reads the sources and names any test without one.

use std::fs;
use std::path::Path;

const TEST_ATTRIBUTES: [&str; 5] = [
    "#[test]",
    "#[tokio::test",
    "#[actix_rt::test",
    "#[actix_web::test",
    "#[actix::test",
];

/// The tests in `source` whose body does not begin with a deadline guard.
fn unbounded_tests(source: &str) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut missing = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        if !TEST_ATTRIBUTES
            .iter()
            .any(|a| line.trim_start().starts_with(a))
        {
            continue;
        }
        // The signature ends at the first line ending in `{`; the guard is the next line.
        let Some(open) = (at + 1..lines.len()).find(|&i| lines[i].trim_end().ends_with('{')) else {
            missing.push(format!("line {}: no body found", at + 1));
            continue;
        };
        let name = lines[at + 1..=open]
            .iter()
            .find_map(|l| l.split("fn ").nth(1))
            .and_then(|rest| rest.split(['(', '<']).next())
            .unwrap_or("?")
            .to_owned();
        let guarded = lines
            .get(open + 1)
            .is_some_and(|l| l.contains("testkit::deadline"));
        if !guarded {
            missing.push(name);
        }
    }
    missing
}

#[test]
fn every_test_starts_with_a_deadline() {
    let _deadline = testkit::deadline();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let mut missing = Vec::new();
    // Every `.rs` file under the test directories, those of multi-module binaries included.
    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir:?} is readable: {e}"));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    for dir in ["tests", "integration/tests"] {
        sources(&root.join(dir), &mut paths);
    }
    for path in paths {
        let source = fs::read_to_string(&path).expect("a test source is readable");
        checked += 1;
        for name in unbounded_tests(&source) {
            missing.push(format!("{}: {name}", path.display()));
        }
    }
    assert!(
        checked >= 40,
        "found only {checked} test files under {root:?}"
    );
    assert!(
        missing.is_empty(),
        "tests without `let _deadline = testkit::deadline();` as their first line:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_check_catches_a_test_without_a_deadline() {
    let _deadline = testkit::deadline();
    let source = "#[tokio::test]\nasync fn forgets() {\n    work().await;\n}\n\n#[test]\nfn remembers() {\n    let _deadline = testkit::deadline();\n}\n";
    assert_eq!(unbounded_tests(source), vec!["forgets".to_owned()]);
}
