//! Compiles proto/ with the pure-Rust protox (no protoc needed) and keeps the encoded file
//! descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/framesrv/v1/framesrv.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("framesrv_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        // prost's codec, reserving each message's length first (src/codec.rs says why).
        .codec_path("crate::codec::ReservingCodec")
        .bytes(".framesrv.v1.Frame.data")
        .bytes(".framesrv.v1.Storyboard.image")
        .bytes(".framesrv.v1.ClipChunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
