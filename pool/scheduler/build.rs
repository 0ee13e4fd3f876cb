//! Tells the tests whether the real cluster traces are beside the repository
//! (`../shared/traces/alibaba-gpu-2023`): the tests that replay them are reported as ignored,
//! with the reason, where they are absent, instead of passing without running.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tf_traces)");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/traces/alibaba-gpu-2023");
    println!("cargo::rerun-if-changed={}", dir.display());
    if dir.join("openb_node_list_gpu_node.csv").is_file() {
        println!("cargo::rustc-cfg=tf_traces");
    }
}
