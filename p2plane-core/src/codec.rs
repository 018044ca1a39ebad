use serde::{Serialize, de::DeserializeOwned};

/// Turns values into bytes and back. Implementations enforce a maximum encoded size.
///
/// A codec is cloned into every task that encodes or decodes, so it should be cheap to clone.
/// `p2plane-codec` provides `CborCodec`, the default.
pub trait Codec: Clone + Send + Sync + 'static {
    /// Appends the encoding of `value` to `buf`.
    ///
    /// Fails with [`CodecError::TooLarge`] when the encoding exceeds
    /// [`Codec::max_message_size`].
    fn encode<T: Serialize>(&self, value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError>;

    /// Decodes exactly one value from `bytes`; bytes left over after the value are an error
    /// ([`CodecError::TrailingBytes`]).
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;

    /// The largest encoded message this codec accepts, in bytes.
    fn max_message_size(&self) -> usize;
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The message is larger than the limit. On the receiving side this is detected from the
    /// announced length, before anything is allocated.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
        /// The message's (announced) length in bytes.
        len: u64,
    },
    /// The value could not be encoded.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding of the expected type.
    #[error("decoding failed: {0}")]
    Decode(String),
    /// A complete value was followed by more bytes.
    #[error("{extra} unexpected bytes after the value")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// The frame's length prefix is malformed (not a minimal unsigned varint of at most 9 bytes).
    #[error("malformed length prefix: {0}")]
    BadLength(&'static str),
    /// The stream ended inside a frame.
    #[error("stream ended after {got} of {expected} bytes")]
    Truncated {
        /// Bytes expected (for the length prefix, 0 when unknown).
        expected: u64,
        /// Bytes received.
        got: u64,
    },
}
