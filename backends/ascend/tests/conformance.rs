//! The HAL conformance suite on the Ascend backend, against the simulated libascendcl.so and
//! libdcmi.so (an isolated machine of a 910B3 and a 310P3), in a child process per test so each
//! loads the libraries with its own environment.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

mod common;

fn backend() -> Box<tf_backend_ascend::AscendBackend> {
    Box::new(common::simulated_backend())
}

tf_hal::hal_conformance_tests!(backend());
