//! framesrv: decoded video frames by index or by time, frame-exactly, over gRPC.
//!
//! # Layout
//! - [`engine`]: the frame-exact decoding engine, usable as a library without the daemon.
//!   Its request path is `store` → `cache` / `pool` → `decoder` → `ffmpeg`, with the
//!   demux-once `index` and the pure seek `plan` beside it.
//! - [`media_roots`]: client names to files inside the configured roots, and nothing else.
//! - [`units`]: newtypes for frame indices, packet numbers, timestamps and byte sizes.
//! - [`server`]: the gRPC daemon (service, health, reflection) over a [`engine::store::FrameStore`];
//!   [`error`] maps every error to its gRPC status in one place; [`config`] is the typed config.
//! - [`cli`]: the `framesrv` command line: `serve`, the client commands and `bench`.
//! - [`proto`]: generated gRPC code; [`codec`]: the gRPC codec it uses (prost's, without a
//!   second copy of every frame).
#![deny(unsafe_code)]

pub mod cli;
pub mod codec;
pub mod config;
pub mod engine;
pub mod error;
pub mod media_roots;
pub mod proto;
pub mod server;
pub mod units;
