//! CBOR encoding, length-prefixed framing and the response envelope: the bytes P2PLane puts
//! on the wire. `docs/wire.md` in the repository describes them for other implementations.
//!
//! - [`CborCodec`]: the default [`Codec`], on ciborium, with a maximum message size.
//! - [`read_frame`] / [`FrameBuf`]: one frame is an unsigned-varint length followed by that
//!   many bytes. The length is checked against the limit before anything is allocated. A
//!   payload of up to 64 KiB is then read into one buffer of its announced length, allocated
//!   at once; a larger one is read 64 KiB first, and only once those have arrived is the
//!   rest reserved in one piece. So a peer that announces a frame and stalls holds at most
//!   64 KiB per stream here (its announced length up to 64 KiB), and callers that must bound
//!   more than that (P2PLane's inbound byte budget) charge the announced length before
//!   reading the body ([`read_frame_len`], then [`read_frame_body`]).
//! - [`Envelope`]: what a response frame holds: `Ok(body)`, `Rejected`, `Busy` or `Failed`.
//!
//! ```
//! use p2plane_codec::{CborCodec, Envelope, FrameBuf, read_frame};
//! use p2plane_core::Codec;
//!
//! # futures::executor::block_on(async {
//! let codec = CborCodec::new(1024);
//! let frame = FrameBuf::encode(&codec, &Envelope::Ok("hello"))?;
//!
//! let mut wire: &[u8] = frame.as_bytes();
//! let bytes = read_frame(&mut wire, codec.max_message_size()).await?;
//! let reply: Envelope<String> = codec.decode(&bytes)?;
//! assert_eq!(reply, Envelope::Ok("hello".to_string()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod cbor;
mod envelope;
mod frame;
#[cfg(feature = "fuzz")]
pub mod fuzz;

pub use cbor::{CborCodec, DEFAULT_MAX_MESSAGE_SIZE};
pub use envelope::{Envelope, StreamFrame};
pub use frame::{
    FrameBuf, FrameError, FrameHead, MAX_VARINT_LEN, SharedFrame, SharedHead, buffered_frame,
    read_frame, read_frame_body, read_frame_len, read_shared_frame, read_shared_head,
};
pub use p2plane_core::{Codec, CodecError};
