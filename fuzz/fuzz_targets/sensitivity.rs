#![no_main]
//! Fuzz target: `sd3lab::fuzzing::sensitivity` (see src/fuzzing.rs for what it exercises).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sd3lab::fuzzing::sensitivity(data));
