//! The gRPC codec encodes a frame with one buffer of the frame's size: counted with an
//! allocator that tallies what this test's thread allocates, through tonic's own response
//! encoder (`EncodeBody`), against prost's stock codec, which grows its buffer a second time
//! for the field after the pixels.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use framesrv::codec::ReservingEncoder;
use framesrv::proto::v1 as pb;
use prost::Message;
use tonic::codec::{EncodeBody, Encoder, SingleMessageCompressionOverride};
use tonic::Status;

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the tally is a
// thread-local counter that allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + layout.size()));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.with(|a| a.set(a.get() + new_size));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn frame() -> pb::Frame {
    // 720p rgb24, every byte distinguishable from its neighbours.
    let data: Vec<u8> = (0..1280 * 720 * 3).map(|i: u32| (i % 251) as u8).collect();
    pb::Frame {
        index: 18_342,
        width: 1280,
        height: 720,
        data: Bytes::from(data),
        cache_hit: true,
        ..Default::default()
    }
}

/// What encoding `frame` into a gRPC response body allocates on this thread, and the body.
fn encode_with<E>(encoder: E, frame: pb::Frame) -> (usize, Vec<u8>)
where
    E: Encoder<Item = pb::Frame, Error = Status> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let source = futures::stream::iter([Ok::<_, Status>(frame)]);
    let before = ALLOCATED.with(Cell::get);
    let body = runtime.block_on(async {
        let body = EncodeBody::new_server(encoder, source, None, SingleMessageCompressionOverride::default(), None);
        axum::body::to_bytes(axum::body::Body::new(body), usize::MAX).await.unwrap()
    });
    let allocated = ALLOCATED.with(Cell::get) - before;
    (allocated, body.to_vec())
}

#[test]
fn a_frame_is_encoded_into_one_buffer_of_its_size() {
    let sent = frame();
    let size = sent.encoded_len();
    let (allocated, body) = encode_with(ReservingEncoder::default(), sent.clone());

    // A gRPC message: uncompressed flag, big-endian length, the message.
    assert_eq!(body[0], 0);
    assert_eq!(u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize, size);
    assert_eq!(pb::Frame::decode(&body[5..]).unwrap(), sent, "the frame reads back unchanged");
    // The response buffer (the body is that one chunk), and nothing the size of a second one.
    assert!(allocated < size + size / 2, "allocated {allocated} bytes to encode {size}");

    // prost's own codec writes the pixels into a buffer grown to fit them, then grows it again
    // (and copies them) for `cache_hit`: the cost this codec exists to avoid.
    let (stock, stock_body) = encode_with(tonic_prost::ProstEncoder::<pb::Frame>::default(), sent);
    assert_eq!(stock_body, body);
    // (2.8 MB here against 8.3 MB).
    assert!(stock > allocated + size, "prost's codec allocated {stock} bytes, ours {allocated}");
}
