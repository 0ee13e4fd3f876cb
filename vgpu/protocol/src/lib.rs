//! # tf-remote-protocol
//!
//! The contract between a remote vGPU's client (`tf-remote`'s `RemoteBackend`, and the client
//! stub `libcuda.so.1` over it) and the worker that owns the device (`tf-remote-worker`).
//!
//! - [`wire`]: frames and messages. A frame is a 12-byte header (magic, message tag, message
//!   length, bulk-data length) followed by the message and then its bulk data (the bytes of a
//!   copy, a module image). Every length is checked against fixed limits before anything is
//!   read or allocated, and a message must decode exactly: a malformed, truncated or oversized
//!   frame is a [`ProtocolError`], never a panic and never an allocation larger than the limits.
//! - The handshake: the client's first frame is [`wire::Msg::Hello`] (protocol version and the
//!   token); the worker answers [`wire::Msg::Welcome`] or refuses with [`wire::Msg::Refused`]
//!   and closes. Nothing else is accepted before a welcome.
//! - [`addr`]: worker addresses, `tcp://HOST:PORT`, `unix:///PATH`, `shm://NAME`.
//! - [`link`]: the transports. A [`link::Link`] sends and receives frames; bulk data goes from
//!   the caller's buffer to the transport and from the transport to its destination with no
//!   intermediate copy (`writev` on sockets, in place in the shared-memory ring).
//! - [`auth`]: token files and their constant-time comparison.
//! - [`session`]: listening, connecting and the handshake, on every transport.
//!
//! Design rules: the decoder trusts nothing it reads (lengths, counts, enum values, UTF-8), the
//! protocol is versioned and a version mismatch is refused with a sentence saying what to do;
//! this crate knows no device and no backend — it carries `tf-hal` values only.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

pub mod addr;
pub mod auth;
pub mod link;
pub mod session;
pub mod wire;

pub use addr::Address;
pub use link::Link;
pub use wire::{Header, Msg, ProtocolError};

/// The protocol version this build speaks. Peers must speak the same one.
pub const VERSION: u16 = 1;
