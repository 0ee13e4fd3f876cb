//! The HAL conformance suite on the simulated GPU.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use tf_fake_gpu::{FakeBackend, testing::isolated_config};

tf_hal::hal_conformance_tests!(Box::new(
    FakeBackend::with_config(isolated_config("conf", 2)).expect("open the simulated GPU")
));
