//! The jobs the tests send to children (every one registered in `crate::jobs()`, since this
//! binary is the children's program too).

mod answers;
mod faults;

pub(crate) use answers::*;
pub(crate) use faults::*;
