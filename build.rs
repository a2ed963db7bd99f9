//! Compiles Triton's gRPC protocol (`proto/triton/`, vendored) into Rust
//! with tonic and prost, and writes its descriptors to
//! `$OUT_DIR/triton_descriptors.bin` (read by `src/grpc/json.rs`). protox
//! parses the `.proto` files (pure Rust), so no `protoc` needs to be
//! installed. The client is generated too, for the gRPC load generator
//! (`load-tests/src/bin/grpc-load.rs`) and the tests that call the server.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/triton/grpc_service.proto",
        "proto/triton/model_config.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto/triton"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("triton_descriptors.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
