//! Test support: the real Kubernetes control plane (etcd, kube-apiserver, kube-scheduler built
//! from their Go modules by `deploy/testenv/build.sh`) on loopback, once per test binary.
//!
//! Design rules:
//! - Never an imitation: the binaries are the upstream ones, built at the pinned release.
//! - One control plane per test binary, each test in its own namespace.
//! - Children are owned: dropping the environment kills them.
//!
//! Work in progress: the harness lands in the next commit.
