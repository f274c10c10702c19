// SPDX-License-Identifier: MPL-2.0
//! The cross-process transport of `memfdsink` and `memfdsrc` (protocol version 2): blocks
//! (sealed memfds) are registered with each consumer once and mapped there once; buffers name
//! ranges of them. No GObject here: the two elements are thin layers over it.
//!
//! - [`wire`]: the messages and their encoding (validated decoding, versioned).
//! - [`parsed`]: what a peer's strings must not hold before GStreamer's parsers read them.
//! - [`closer`]: closing what a peer sent (descriptors, connections) off every path another
//!   thread waits on.
//! - [`socket`]: the Unix `SOCK_SEQPACKET` sockets and descriptor passing.
//! - [`peer`]: the producer's bookkeeping for one consumer (mapped blocks, held buffers).
//! - [`server`]: the producer side, its consumers and service thread.
//! - [`client`]: the consumer side, its block registry and releases.

pub mod client;
pub mod closer;
pub mod parsed;
pub mod peer;
pub mod server;
pub mod socket;
pub mod wire;

/// The socket calls rustix lacks (in the unsafe half of `MemfdMemory`).
use crate::allocator::memfd::sockopt as sys;
