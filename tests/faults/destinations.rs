//! Fault tests: destinations.

#[allow(unused_imports)]
use crate::common;
