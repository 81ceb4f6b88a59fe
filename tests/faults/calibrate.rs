//! Fault tests: calibrate.

#[allow(unused_imports)]
use crate::common;
