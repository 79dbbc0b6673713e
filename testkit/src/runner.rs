//! The runner of the test binaries with their own `main` (`harness = false`): those binaries are
//! also their managers' worker programs, so `process::init` must run first in `main`, before
//! any test. The tests register themselves with [`crate::test`]; [`Runner`] hands them to
//! libtest-mimic, so that `--list`, filters, `--exact`, `--skip` and `--test-threads` work as
//! with libtest.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::deadline_of;

/// A test future of a harness-less binary (driven on the test's own thread).
pub type LocalTest = Pin<Box<dyn Future<Output = ()>>>;

/// How to make one test's future.
pub type MakeTest = Box<dyn FnOnce() -> LocalTest + Send>;

/// A test as [`crate::test`] registers it: where it is, its name, and its cases (one, with an
/// empty label, for a test without `each`).
pub struct Registered {
    /// `module_path!()` where the test is written.
    pub module: &'static str,
    /// The function's name.
    pub name: &'static str,
    /// The test's cases: a label (`""` or `"::label"`) and how to make each.
    pub cases: fn() -> Vec<(String, MakeTest)>,
}

/// Every test registered in this binary.
#[linkme::distributed_slice]
pub static TESTS: [Registered];

/// Before each test, with its name.
type Before = Box<dyn Fn(&str) + Send + Sync>;
/// After each test, with its name and whether it passed; an `Err` fails a test that passed.
type After = Box<dyn Fn(&str, bool) -> Result<(), String> + Send + Sync>;

/// Runs the binary's registered tests.
pub struct Runner {
    limit: Duration,
    drive: fn(LocalTest),
    before: Before,
    after: After,
}

impl Runner {
    /// Tests whose futures `drive` runs to completion (on the test's thread), each under a
    /// deadline of 120 s.
    pub fn new(drive: fn(LocalTest)) -> Self {
        Runner {
            limit: Duration::from_secs(120),
            drive,
            before: Box::new(|_| {}),
            after: Box::new(|_, _| Ok(())),
        }
    }

    /// How long one test may run before its deadline aborts the binary.
    pub fn limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    /// Runs `before` before each test.
    pub fn before_each(mut self, before: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.before = Box::new(before);
        self
    }

    /// Runs `after` after each test with whether it passed; an `Err` fails the test (checks the
    /// binary keeps beside the test's own asserts).
    pub fn after_each(
        mut self,
        after: impl Fn(&str, bool) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.after = Box::new(after);
        self
    }

    /// The names of the binary's registered tests, in the order they run.
    pub fn names() -> Vec<String> {
        registered().into_iter().map(|(name, _)| name).collect()
    }

    /// Runs the registered tests as the command line says, one at a time unless
    /// `--test-threads` says otherwise (these tests count children, threads and CPU time of the
    /// whole process). Each runs on a thread named after it, under its deadline.
    pub fn run(self) -> Ran {
        let mut args = libtest_mimic::Arguments::from_args();
        if args.test_threads.is_none() {
            args.test_threads = Some(1);
        }
        let Runner {
            limit,
            drive,
            before,
            after,
        } = self;
        let hooks = Arc::new((before, after));
        let trials = registered()
            .into_iter()
            .map(|(name, make)| {
                let hooks = Arc::clone(&hooks);
                libtest_mimic::Trial::test(name.clone(), move || {
                    (hooks.0)(&name);
                    let outcome = std::thread::Builder::new()
                        .name(name.clone())
                        .spawn(move || {
                            let _deadline = deadline_of(limit);
                            drive(make());
                        })
                        .expect("spawn a test thread")
                        .join();
                    let checked = (hooks.1)(&name, outcome.is_ok());
                    match (outcome, checked) {
                        (Ok(()), Ok(())) => Ok(()),
                        (Ok(()), Err(text)) => Err(text.into()),
                        (Err(payload), _) => Err(panic_text(&*payload).into()),
                    }
                })
            })
            .collect();
        Ran(libtest_mimic::run(&args, trials))
    }
}

/// The registered tests by name (as libtest orders them), named by their module path inside
/// the binary: `module::test`, `module::test::label`.
fn registered() -> Vec<(String, MakeTest)> {
    let mut all: Vec<(String, MakeTest)> = TESTS
        .iter()
        .flat_map(|t| {
            let module = t.module.split_once("::").map_or("", |(_, inner)| inner);
            let prefix = if module.is_empty() {
                t.name.to_owned()
            } else {
                format!("{module}::{}", t.name)
            };
            (t.cases)()
                .into_iter()
                .map(move |(label, make)| (format!("{prefix}{label}"), make))
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".to_owned())
}

/// What [`Runner::run`] ran: libtest-mimic's conclusion.
pub struct Ran(libtest_mimic::Conclusion);

impl Ran {
    /// Whether a test failed.
    pub fn has_failed(&self) -> bool {
        self.0.has_failed()
    }

    /// Exits with libtest's code: 101 if a test failed (its summary is printed already).
    pub fn finish(self) {
        self.0.exit_if_failed();
    }
}
