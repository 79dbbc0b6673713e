//! The process jobs of this binary (it is their worker program).

use leasepool::process::{Jobs, ProcessJob};
use serde::{Deserialize, Serialize};

pub fn jobs() -> Jobs {
    Jobs::new()
        .register::<Double>()
        .register::<Panic>()
        .register::<Abort>()
        .register::<Unsendable>()
        .register::<Spin>()
        .register::<Say>()
}

/// Logs a line in the child (forwarded to the parent); answers the child's pid.
#[derive(Serialize, Deserialize)]
pub struct Say(pub String);

impl ProcessJob for Say {
    const NAME: &'static str = "obs.say.v1";
    type Output = u32;
    fn run(self) -> u32 {
        tracing::info!(said = %self.0, "the child says");
        std::process::id()
    }
}

/// Doubles its input.
#[derive(Serialize, Deserialize)]
pub struct Double(pub u64);

impl ProcessJob for Double {
    const NAME: &'static str = "obs.double.v1";
    type Output = u64;
    fn run(self) -> u64 {
        self.0 * 2
    }
}

/// Panics in the child.
#[derive(Serialize, Deserialize)]
pub struct Panic;

impl ProcessJob for Panic {
    const NAME: &'static str = "obs.panic.v1";
    type Output = ();
    fn run(self) {
        panic!("on purpose");
    }
}

/// Kills its child.
#[derive(Serialize, Deserialize)]
pub struct Abort;

impl ProcessJob for Abort {
    const NAME: &'static str = "obs.abort.v1";
    type Output = ();
    fn run(self) {
        std::process::abort();
    }
}

/// An output the child cannot encode.
#[derive(Deserialize, Debug)]
pub struct CannotEncode;

impl Serialize for CannotEncode {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this output refuses to be encoded",
        ))
    }
}

/// Answers an output that cannot be encoded.
#[derive(Serialize, Deserialize)]
pub struct Unsendable;

impl ProcessJob for Unsendable {
    const NAME: &'static str = "obs.unsendable.v1";
    type Output = CannotEncode;
    fn run(self) -> CannotEncode {
        CannotEncode
    }
}

/// Never returns (killed at its lease's hard expiry).
#[derive(Serialize, Deserialize)]
pub struct Spin;

impl ProcessJob for Spin {
    const NAME: &'static str = "obs.spin.v1";
    type Output = ();
    fn run(self) {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
