//! The HAL conformance suite over the wire: `RemoteBackend` against a worker on loopback
//! (serving the simulated GPU), once per transport — TCP, a Unix socket, shared-memory rings.
#![allow(unused_crate_dependencies)] // test targets share the package's dev-dependencies

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use tf_fake_gpu::{FakeBackend, testing::isolated_config};
use tf_remote::RemoteBackend;
use tf_remote_protocol::Address;
use tf_remote_protocol::session::Listener;
use tf_remote_worker::{Config, Worker};

const TOKEN: &[u8] = b"conformance-token";

/// One worker for the whole test binary, listening on every transport.
fn worker() -> &'static [Address; 3] {
    static ADDRS: OnceLock<[Address; 3]> = OnceLock::new();
    ADDRS.get_or_init(|| {
        let backend =
            Arc::new(FakeBackend::with_config(isolated_config("remote-conf", 1)).unwrap());
        let w = Arc::new(
            Worker::new(
                backend,
                Config {
                    device: 0,
                    token: TOKEN.to_vec(),
                    vram_quota: None,
                    compute_share: None,
                },
            )
            .unwrap(),
        );
        let dir = std::env::temp_dir().join(format!("tf-remote-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let asked = [
            "tcp://127.0.0.1:0".parse::<Address>().unwrap(),
            Address::Unix(dir.join("w.sock")),
            Address::Shm(format!("conf-{}", std::process::id())),
        ];
        let mut out = Vec::new();
        for a in asked {
            let l = Listener::bind(&a).unwrap();
            out.push(l.local_addr(&a));
            let w = w.clone();
            std::thread::spawn(move || {
                static STOP: AtomicBool = AtomicBool::new(false);
                w.serve(&l, &STOP)
            });
        }
        out.try_into().unwrap()
    })
}

/// The listeners live as long as the test binary; their socket files go when it exits.
#[used]
#[unsafe(link_section = ".fini_array")]
static CLEANUP: extern "C" fn() = {
    extern "C" fn cleanup() {
        let pid = std::process::id();
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("tf-remote-conf-{pid}")));
        if let Ok(p) = Address::shm_socket(&format!("conf-{pid}")) {
            let _ = std::fs::remove_file(p);
        }
    }
    cleanup
};

fn connect(i: usize) -> Box<RemoteBackend> {
    Box::new(RemoteBackend::connect(&worker()[i], TOKEN).expect("connect to the worker"))
}

mod tcp {
    tf_hal::hal_conformance_tests!(super::connect(0));
}

mod unix {
    tf_hal::hal_conformance_tests!(super::connect(1));
}

mod shm {
    tf_hal::hal_conformance_tests!(super::connect(2));
}
