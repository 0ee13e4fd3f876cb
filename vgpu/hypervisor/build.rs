//! Generates the API's Rust code from proto/hypervisor.proto with protox (a pure-Rust protobuf
//! compiler), so that building needs no `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/hypervisor.proto");
    let fds = protox::compile(["proto/hypervisor.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
