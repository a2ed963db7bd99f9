//! Compiles Triton's gRPC protocol (`proto/triton/`, vendored) into Rust
//! with tonic and prost. protox parses the `.proto` files (pure Rust), so
//! no `protoc` needs to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/triton/grpc_service.proto",
        "proto/triton/model_config.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto/triton"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
