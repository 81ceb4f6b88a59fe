//! Fault tests (issue 17): concurrent writers refused, SIGKILL at random points followed by a
//! rerun equal to an uninterrupted run byte for byte, a full disk, hostile destinations, and one
//! regression test per class of hostile input. Each submodule covers one subsystem.

#[path = "../common/mod.rs"]
mod common;

mod calibrate;
mod destinations;
mod sensitivity;
