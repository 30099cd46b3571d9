//! The gRPC codec every generated service and client uses: prost's, except that a message's
//! encoded length is reserved in the output buffer before it is written.
//!
//! Why: tonic hands the encoder a growing `BytesMut`, and prost writes field by field. A
//! `Frame` is a few small fields, megabytes of pixels (`data`, field 10), then `cache_hit`
//! (field 11). The pixels were copied into a buffer grown to just fit them, so the one byte of
//! `cache_hit` after them made the buffer grow again: a second copy of every frame, into a
//! freshly allocated buffer twice the size. In a profile of a daemon streaming cached 720p frames
//! those two copies were a quarter of its CPU, half of it the regrowth. Reserving the length
//! first leaves the one copy prost cannot avoid (tonic's codec API has no way to pass the
//! frame's `Bytes` to HTTP/2 without copying it). That copy is left only where frames go
//! through tonic: the frame methods over plain gRPC are answered by
//! [`crate::server::grpc_frames`], which sends the pixels uncopied.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;

/// prost's codec with the output reserved up front (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ReservingCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Codec for ReservingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Encodes a message after reserving its encoded length.
#[derive(Debug, Clone, Default)]
pub struct ReservingEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }
}
