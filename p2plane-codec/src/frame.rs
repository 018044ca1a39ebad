use std::io;

use futures::{AsyncRead, AsyncReadExt as _};
use p2plane_core::{Codec, CodecError};
use serde::Serialize;

/// The longest length prefix accepted: 9 bytes, as in the multiformats unsigned-varint spec
/// (63 bits of length).
pub const MAX_VARINT_LEN: usize = 9;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The frame is malformed, truncated or too large.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// One encoded frame, ready to write: the unsigned-varint length of the payload, then the
/// payload, in one contiguous buffer (one write, no copy of the payload).
#[derive(Debug, Clone)]
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
}

impl FrameBuf {
    /// Encodes `value` with `codec` into a frame. Fails with [`CodecError::TooLarge`] when the
    /// encoding exceeds the codec's limit: nothing has been sent then.
    pub fn encode<C: Codec, T: Serialize>(codec: &C, value: &T) -> Result<Self, CodecError> {
        let mut buf = Vec::with_capacity(64);
        buf.resize(MAX_VARINT_LEN, 0);
        codec.encode(value, &mut buf)?;
        let len = (buf.len() - MAX_VARINT_LEN) as u64;
        let mut prefix = [0u8; MAX_VARINT_LEN];
        let n = encode_varint(len, &mut prefix);
        let start = MAX_VARINT_LEN - n;
        buf[start..MAX_VARINT_LEN].copy_from_slice(&prefix[..n]);
        Ok(Self { buf, start })
    }

    /// The frame's bytes: prefix and payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The payload's length, without the prefix.
    pub fn payload_len(&self) -> usize {
        self.buf.len() - MAX_VARINT_LEN
    }
}

fn encode_varint(mut n: u64, out: &mut [u8; MAX_VARINT_LEN]) -> usize {
    let mut i = 0;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// Reads one frame and returns its payload.
///
/// The announced length is checked against `limit` before anything is allocated; the buffer
/// then grows only as bytes arrive, so a peer that announces a large frame and sends little
/// costs little. A stream that ends early gives [`CodecError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    limit: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = read_varint(io).await?;
    if len > limit as u64 {
        return Err(CodecError::TooLarge { limit, len }.into());
    }
    const FIRST_CHUNK: usize = 16 * 1024;
    let mut payload = Vec::with_capacity((len as usize).min(FIRST_CHUNK));
    io.take(len).read_to_end(&mut payload).await?;
    if (payload.len() as u64) < len {
        return Err(CodecError::Truncated {
            expected: len,
            got: payload.len() as u64,
        }
        .into());
    }
    Ok(payload)
}

async fn read_varint<R: AsyncRead + Unpin>(io: &mut R) -> Result<u64, FrameError> {
    let mut value: u64 = 0;
    for i in 0..MAX_VARINT_LEN {
        let mut byte = [0u8; 1];
        if io.read(&mut byte).await? == 0 {
            return Err(CodecError::Truncated {
                expected: 0,
                got: i as u64,
            }
            .into());
        }
        let b = byte[0];
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(CodecError::BadLength("not minimally encoded").into());
            }
            return Ok(value);
        }
    }
    Err(CodecError::BadLength("longer than 9 bytes").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CborCodec;
    use futures::executor::block_on;

    fn read(bytes: &[u8], limit: usize) -> Result<Vec<u8>, FrameError> {
        let mut r = bytes;
        block_on(read_frame(&mut r, limit))
    }

    #[test]
    fn varint_matches_the_spec_examples() {
        for (n, bytes) in [
            (1u64, &[0x01][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (255, &[0xff, 0x01]),
            (300, &[0xac, 0x02]),
            (16384, &[0x80, 0x80, 0x01]),
        ] {
            let mut out = [0; MAX_VARINT_LEN];
            let k = encode_varint(n, &mut out);
            assert_eq!(&out[..k], bytes, "{n}");
            let mut r = bytes;
            assert_eq!(block_on(read_varint(&mut r)).unwrap(), n);
        }
    }

    #[test]
    fn frame_round_trip() {
        let codec = CborCodec::default();
        let value = vec![7u8; 300];
        let frame = FrameBuf::encode(&codec, &value).unwrap();
        assert_eq!(frame.as_bytes().len(), frame.payload_len() + 2);
        let payload = read(frame.as_bytes(), 1000).unwrap();
        assert_eq!(codec.decode::<Vec<u8>>(&payload).unwrap(), value);
    }

    #[test]
    fn huge_prefix_is_refused_before_allocation() {
        // 4 GiB announced, nothing behind it.
        let err = read(&[0x80, 0x80, 0x80, 0x80, 0x10], 1024).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Codec(CodecError::TooLarge {
                limit: 1024,
                len: 4294967296
            })
        ));
    }

    #[test]
    fn truncated_frames_are_reported() {
        let err = read(&[0x05, 1, 2], 1024).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Codec(CodecError::Truncated {
                expected: 5,
                got: 2
            })
        ));
        let err = read(&[0x80], 1024).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Codec(CodecError::Truncated {
                expected: 0,
                got: 1
            })
        ));
        let err = read(&[], 1024).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Codec(CodecError::Truncated { .. })
        ));
    }

    #[test]
    fn malformed_prefixes_are_reported() {
        assert!(matches!(
            read(&[0x80, 0x00], 1024),
            Err(FrameError::Codec(CodecError::BadLength(_)))
        ));
        assert!(matches!(
            read(&[0xff; 10], usize::MAX),
            Err(FrameError::Codec(CodecError::BadLength(_)))
        ));
    }
}
