//! Compiles Triton's model configuration schema (`proto/triton/
//! model_config.proto`, vendored) into descriptors at
//! `$OUT_DIR/model_config.bin`, which `src/triton_config/text.rs` reads
//! `config.pbtxt` files against (protobuf text format, through
//! prost-reflect). protox parses the `.proto` in pure Rust: no `protoc`.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "../proto/triton/model_config.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["../proto/triton"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("model_config.bin"), descriptors.encode_to_vec())?;
    Ok(())
}
