//! Fault tests: sensitivity.

#[allow(unused_imports)]
use crate::common;
