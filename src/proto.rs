//! The generated gRPC types and the encoded descriptor set served by reflection. Generated
//! code is kept apart from hand-written code; nothing here is edited by hand.
#![allow(missing_docs, clippy::all)]

pub mod v1 {
    tonic::include_proto!("framesrv.v1");
}

/// `proto/` compiled to a FileDescriptorSet, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/framesrv_descriptor.bin"));
