//! Operating-system helpers.

pub fn pid() -> u32 {
    std::process::id()
}

pub use tf_os::{now_ns, process_start_time};

/// Sleep for `ns` nanoseconds.
pub fn sleep_ns(ns: u64) {
    std::thread::sleep(std::time::Duration::from_nanos(ns));
}
