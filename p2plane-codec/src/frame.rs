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

/// The largest id: 63 bits, the most a 9-byte unsigned varint holds.
const MAX_ID: u64 = u64::MAX >> 1;

/// Room kept before the payload for the length prefix and, in multiplexed frames, the id.
const HEAD: usize = 2 * MAX_VARINT_LEN;

impl FrameBuf {
    /// Encodes `value` with `codec` into a frame. Fails with [`CodecError::TooLarge`] when the
    /// encoding exceeds the codec's limit: nothing has been sent then.
    pub fn encode<C: Codec, T: Serialize>(codec: &C, value: &T) -> Result<Self, CodecError> {
        // Room for the head and a small message: most frames never reallocate.
        let mut buf = Vec::with_capacity(256);
        buf.resize(HEAD, 0);
        codec.encode(value, &mut buf)?;
        let mut frame = Self { buf, start: HEAD };
        frame.write_head(None);
        Ok(frame)
    }

    /// A frame of `payload` as it is (already encoded).
    pub fn encode_raw(payload: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(HEAD + payload.len());
        buf.resize(HEAD, 0);
        buf.extend_from_slice(payload);
        let mut frame = Self { buf, start: HEAD };
        frame.write_head(None);
        frame
    }

    /// Encodes `value` into a frame whose payload starts with `id` as an unsigned varint (the
    /// multiplexed form: many requests share one stream and are matched by id).
    pub fn encode_with_id<C: Codec, T: Serialize>(
        codec: &C,
        id: u64,
        value: &T,
    ) -> Result<Self, CodecError> {
        let mut frame = Self::encode(codec, value)?;
        frame.set_id(id);
        Ok(frame)
    }

    /// Turns the frame into the multiplexed form carrying `id` (or changes its id). An id
    /// is 63 bits, the most a 9-byte unsigned varint holds: the top bit of `id` is dropped.
    pub fn set_id(&mut self, id: u64) {
        self.write_head(Some(id));
    }

    fn write_head(&mut self, id: Option<u64>) {
        let head = self.head(id);
        self.start = HEAD - head.len as usize;
        self.buf[self.start..HEAD].copy_from_slice(head.as_bytes());
    }

    /// The frame's bytes: prefix (and id) and payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The frame's payload, without its length prefix or id.
    pub fn payload(&self) -> &[u8] {
        &self.buf[HEAD..]
    }

    /// The head of this frame's shared form with `id` (length prefix and id): written
    /// before [`FrameBuf::payload`], it gives the bytes `set_id(id)` then `as_bytes()` would,
    /// without changing the frame, so one frame can be sent under many ids without a copy.
    ///
    /// ```
    /// use p2plane_codec::{CborCodec, FrameBuf};
    ///
    /// let frame = FrameBuf::encode(&CborCodec::default(), &"hello")?;
    /// let mut with_id = frame.clone();
    /// with_id.set_id(7);
    /// let mut bytes = frame.head_with_id(7).as_bytes().to_vec();
    /// bytes.extend_from_slice(frame.payload());
    /// assert_eq!(bytes, with_id.as_bytes());
    /// # Ok::<(), p2plane_codec::CodecError>(())
    /// ```
    pub fn head_with_id(&self, id: u64) -> FrameHead {
        self.head(Some(id))
    }

    /// The frame's whole length.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether the frame is empty (it never is: the prefix is at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The length prefix of the payload (with `id`, if any), followed by the id.
    fn head(&self, id: Option<u64>) -> FrameHead {
        let mut id_bytes = [0u8; MAX_VARINT_LEN];
        let id_len = id.map_or(0, |id| encode_varint(id & MAX_ID, &mut id_bytes));
        let mut head = FrameHead {
            bytes: [0; HEAD],
            len: 0,
        };
        let len_len = encode_varint(
            (self.buf.len() - HEAD + id_len) as u64,
            (&mut head.bytes[..MAX_VARINT_LEN])
                .try_into()
                .expect("HEAD holds a varint"),
        );
        head.bytes[len_len..len_len + id_len].copy_from_slice(&id_bytes[..id_len]);
        head.len = (len_len + id_len) as u8;
        head
    }
}

/// A frame's length prefix and id, from [`FrameBuf::head_with_id`].
#[derive(Debug, Clone, Copy)]
pub struct FrameHead {
    bytes: [u8; HEAD],
    len: u8,
}

impl FrameHead {
    /// The head's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
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
/// The announced length is checked against `limit` before anything is allocated. A payload
/// of up to 64 KiB is read into a buffer of its announced length, allocated at once; a
/// larger one gets 64 KiB first and the rest only once those have arrived, so a peer that
/// announces a large frame and sends little holds at most 64 KiB. A stream that ends early
/// gives [`CodecError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    limit: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = read_frame_len(io, limit).await?;
    read_frame_body(io, len).await
}

/// Reads a frame's length prefix and checks it against `limit`: the first half of
/// [`read_frame`], for a reader that must reserve memory (a byte budget, say) before the body.
pub async fn read_frame_len<R: AsyncRead + Unpin>(
    io: &mut R,
    limit: usize,
) -> Result<u64, FrameError> {
    let len = read_varint(io).await?;
    if len > limit as u64 {
        return Err(CodecError::TooLarge { limit, len }.into());
    }
    Ok(len)
}

/// Reads the `len` bytes of a frame's payload, after [`read_frame_len`].
pub async fn read_frame_body<R: AsyncRead + Unpin>(
    io: &mut R,
    len: u64,
) -> Result<Vec<u8>, FrameError> {
    let payload = read_exactly(io, len).await?;
    if (payload.len() as u64) < len {
        return Err(CodecError::Truncated {
            expected: len,
            got: payload.len() as u64,
        }
        .into());
    }
    Ok(payload)
}

/// Reads `len` bytes, or fewer if the stream ends first (the caller reports the
/// truncation). A body of up to 64 KiB is read into a buffer of exactly its length: never
/// reallocated, zeroed once (`read_to_end` grows a full buffer to probe for the end). A
/// larger one is read as before, memory following what arrives: the first 64 KiB first; once
/// they are in, the peer is really sending, and the rest is reserved in one piece. (Reading
/// 1 MiB bodies into one zeroed buffer of their length measured slower in interleaved runs.)
async fn read_exactly<R: AsyncRead + Unpin>(io: &mut R, len: u64) -> io::Result<Vec<u8>> {
    const FIRST_CHUNK: usize = 64 * 1024;
    let Some(small) = usize::try_from(len).ok().filter(|&len| len <= FIRST_CHUNK) else {
        let mut payload = Vec::with_capacity(FIRST_CHUNK);
        let mut limited = io.take(len);
        (&mut limited)
            .take(FIRST_CHUNK as u64)
            .read_to_end(&mut payload)
            .await?;
        if payload.len() == FIRST_CHUNK {
            payload.reserve_exact(usize::try_from(len).unwrap_or(usize::MAX) - FIRST_CHUNK);
            limited.read_to_end(&mut payload).await?;
        }
        return Ok(payload);
    };
    let mut buf = vec![0; small];
    let mut filled = 0;
    while filled < small {
        match io.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// One frame read from a shared (multiplexed) stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedFrame {
    /// A frame within the limit: its id and the encoded value.
    Frame {
        /// The request id.
        id: u64,
        /// The encoded value (the payload after the id).
        body: Vec<u8>,
    },
    /// A frame larger than the limit: its id was read and the rest discarded without
    /// buffering it, so the stream stays usable.
    TooLarge {
        /// The request id.
        id: u64,
        /// The frame's announced length.
        len: u64,
    },
}

/// The head of a shared-stream frame: its id and how long its value is. Read by
/// [`read_shared_head`]; the value is then read with [`SharedHead::read_body`] or dropped
/// with [`SharedHead::skip_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedHead {
    /// The request id.
    pub id: u64,
    /// The frame's whole announced length (id included).
    pub len: u64,
    /// The length of the value after the id.
    pub body_len: u64,
}

impl SharedHead {
    /// Reads the value that follows this head.
    pub async fn read_body<R: AsyncRead + Unpin>(&self, io: &mut R) -> Result<Vec<u8>, FrameError> {
        let rest = self.body_len;
        let body = read_exactly(io, rest).await?;
        if (body.len() as u64) < rest {
            return Err(CodecError::Truncated {
                expected: self.len,
                got: self.len - rest + body.len() as u64,
            }
            .into());
        }
        Ok(body)
    }

    /// Reads the value that follows this head into a small scratch buffer and drops it, so
    /// the stream stays usable without the value ever being held.
    pub async fn skip_body<R: AsyncRead + Unpin>(&self, io: &mut R) -> Result<(), FrameError> {
        let rest = self.body_len;
        let skipped = futures::io::copy(&mut io.take(rest), &mut futures::io::sink()).await?;
        if skipped < rest {
            return Err(CodecError::Truncated {
                expected: self.len,
                got: self.len - rest + skipped,
            }
            .into());
        }
        Ok(())
    }
}

/// Reads one frame of a shared stream: a length prefix, then a request id, then the value.
///
/// A frame whose value exceeds `limit` is skipped (read into a small scratch buffer and
/// dropped) and reported as [`SharedFrame::TooLarge`], so one oversized message fails one
/// request, not the stream. A stream that ends before the first byte gives
/// [`CodecError::Truncated`] with `expected: 0, got: 0`: the peer closed cleanly.
pub async fn read_shared_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    limit: usize,
) -> Result<SharedFrame, FrameError> {
    let head = read_shared_head(io).await?;
    if head.body_len > limit as u64 {
        head.skip_body(io).await?;
        return Ok(SharedFrame::TooLarge {
            id: head.id,
            len: head.len,
        });
    }
    let body = head.read_body(io).await?;
    Ok(SharedFrame::Frame { id: head.id, body })
}

/// Reads the length prefix and id of a shared-stream frame: the first half of
/// [`read_shared_frame`], for a reader that checks the length (against a byte budget, say)
/// before it decides to read or skip the value. A stream that ends before the first byte
/// gives [`CodecError::Truncated`] with `expected: 0, got: 0`.
pub async fn read_shared_head<R: AsyncRead + Unpin>(io: &mut R) -> Result<SharedHead, FrameError> {
    let len = read_varint(io).await?;
    // The id lies inside the frame: never read past the frame for it.
    let max_id_len = usize::try_from(len)
        .unwrap_or(MAX_VARINT_LEN)
        .min(MAX_VARINT_LEN);
    let (id, id_len) = read_varint_counted(io, max_id_len)
        .await
        .map_err(|e| match e {
            FrameError::Codec(CodecError::BadLength(_)) if max_id_len < MAX_VARINT_LEN => {
                CodecError::BadLength("frame shorter than its id").into()
            }
            other => other,
        })?;
    Ok(SharedHead {
        id,
        len,
        body_len: len - id_len as u64,
    })
}

/// Reads an unsigned varint of at most `max_len` bytes, returning it and its length.
/// Finds a whole frame at the start of `buf` without reading anything: the range of its
/// payload in `buf` when the length prefix and all of the payload are there, `None` when more
/// bytes are needed. A malformed prefix or a length over `limit` is an error, as in
/// [`read_frame`]. For readers that decode frames straight out of their read buffer.
pub fn buffered_frame(
    buf: &[u8],
    limit: usize,
) -> Result<Option<std::ops::Range<usize>>, CodecError> {
    let mut value: u64 = 0;
    for (i, &b) in buf.iter().take(MAX_VARINT_LEN).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(CodecError::BadLength("not minimally encoded"));
            }
            if value > limit as u64 {
                return Err(CodecError::TooLarge { limit, len: value });
            }
            let start = i + 1;
            let end = start + value as usize;
            return Ok((end <= buf.len()).then_some(start..end));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        return Err(CodecError::BadLength("longer than 9 bytes"));
    }
    Ok(None)
}

async fn read_varint_counted<R: AsyncRead + Unpin>(
    io: &mut R,
    max_len: usize,
) -> Result<(u64, usize), FrameError> {
    let mut value: u64 = 0;
    for i in 0..max_len {
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
            return Ok((value, i + 1));
        }
    }
    Err(CodecError::BadLength("longer than 9 bytes").into())
}

async fn read_varint<R: AsyncRead + Unpin>(io: &mut R) -> Result<u64, FrameError> {
    read_varint_counted(io, MAX_VARINT_LEN)
        .await
        .map(|(value, _)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CborCodec;
    use futures::executor::block_on;

    #[test]
    fn buffered_frames_are_found_only_when_whole() {
        let frame = FrameBuf::encode_raw(&[7u8; 300]);
        let bytes = frame.as_bytes();
        assert_eq!(buffered_frame(bytes, 1000).unwrap(), Some(2..302));
        assert_eq!(buffered_frame(&bytes[..301], 1000).unwrap(), None);
        assert_eq!(buffered_frame(&bytes[..1], 1000).unwrap(), None);
        assert_eq!(buffered_frame(&[], 1000).unwrap(), None);
        assert!(matches!(
            buffered_frame(bytes, 100),
            Err(CodecError::TooLarge {
                limit: 100,
                len: 300
            })
        ));
        assert!(buffered_frame(&[0x80, 0x00], 1000).is_err());
        assert!(buffered_frame(&[0xff; 10], usize::MAX).is_err());
    }

    #[test]
    fn a_head_with_an_id_and_the_payload_are_the_frame_with_that_id() {
        for payload_len in [0, 1, 126, 127, 128, 16_383, 16_384, 70_000] {
            let frame = FrameBuf::encode_raw(&vec![7u8; payload_len]);
            for id in [0, 1, 127, 128, 300, 1 << 40, u64::MAX] {
                let mut with_id = frame.clone();
                with_id.set_id(id);
                let mut bytes = frame.head_with_id(id).as_bytes().to_vec();
                bytes.extend_from_slice(frame.payload());
                assert_eq!(bytes, with_id.as_bytes(), "payload {payload_len}, id {id}");
            }
        }
    }

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
        assert_eq!(frame.len(), frame.as_bytes().len());
        let payload = read(frame.as_bytes(), 1000).unwrap();
        assert_eq!(codec.decode::<Vec<u8>>(&payload).unwrap(), value);
    }

    #[test]
    fn frames_with_ids_round_trip() {
        let codec = CborCodec::default();
        for id in [0u64, 1, 127, 128, 300, u64::MAX >> 1] {
            let frame = FrameBuf::encode_with_id(&codec, id, &"hello").unwrap();
            let mut wire = frame.as_bytes();
            match block_on(read_shared_frame(&mut wire, 1000)).unwrap() {
                SharedFrame::Frame { id: got, body } => {
                    assert_eq!(got, id);
                    assert_eq!(codec.decode::<String>(&body).unwrap(), "hello");
                }
                other => panic!("{other:?}"),
            }
        }
        // A frame with no id, and one whose id is not minimally encoded, are refused.
        for bad in [&[0x00][..], &[0x02, 0x80, 0x00]] {
            let mut wire = bad;
            assert!(
                block_on(read_shared_frame(&mut wire, 1000)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn oversized_shared_frames_are_skipped_and_the_stream_goes_on() {
        let codec = CborCodec::default();
        let mut wire = FrameBuf::encode_with_id(&codec, 5, &vec![1u8; 3000])
            .unwrap()
            .as_bytes()
            .to_vec();
        wire.extend_from_slice(
            FrameBuf::encode_with_id(&codec, 6, &"next")
                .unwrap()
                .as_bytes(),
        );
        let mut r = &wire[..];
        let first = block_on(read_shared_frame(&mut r, 1000)).unwrap();
        assert!(matches!(first, SharedFrame::TooLarge { id: 5, len } if len > 3000));
        match block_on(read_shared_frame(&mut r, 1000)).unwrap() {
            SharedFrame::Frame { id, body } => {
                assert_eq!(id, 6);
                assert_eq!(codec.decode::<String>(&body).unwrap(), "next");
            }
            other => panic!("{other:?}"),
        }
        let end = block_on(read_shared_frame(&mut r, 1000)).unwrap_err();
        assert!(matches!(
            end,
            FrameError::Codec(CodecError::Truncated {
                expected: 0,
                got: 0
            })
        ));
        // A length smaller than its id is malformed, and is found without reading past the
        // frame (nothing follows here: reading on would be a stall on a real stream).
        for bad in [&[0x01, 0x80][..], &[0x02, 0xff, 0xff], &[0x00]] {
            let mut r = bad;
            let err = block_on(read_shared_frame(&mut r, 1000)).unwrap_err();
            assert!(
                matches!(err, FrameError::Codec(CodecError::BadLength(_))),
                "{bad:?}: {err:?}"
            );
        }
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

    /// Hands out at most 7 bytes per read.
    struct Trickle<'a> {
        bytes: &'a [u8],
    }

    impl futures::AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(7).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn bodies_are_read_whole_or_reported_truncated_on_both_sides_of_the_first_chunk() {
        for len in [0usize, 1, 65_535, 65_536, 65_537, 200_000] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut io = Trickle { bytes: &body };
            let read = block_on(read_frame_body(&mut io, len as u64)).unwrap();
            assert!(read == body, "frame body of {len} bytes");
            let head = SharedHead {
                id: 3,
                len: len as u64 + 1,
                body_len: len as u64,
            };
            let mut io = Trickle { bytes: &body };
            assert!(
                block_on(head.read_body(&mut io)).unwrap() == body,
                "shared body of {len}"
            );
            if len == 0 {
                continue;
            }
            let mut io = Trickle {
                bytes: &body[..len - 1],
            };
            let err = block_on(read_frame_body(&mut io, len as u64)).unwrap_err();
            assert!(
                matches!(err, FrameError::Codec(CodecError::Truncated { expected, got })
                    if expected == len as u64 && got == len as u64 - 1),
                "{len}: {err:?}"
            );
            let mut io = Trickle {
                bytes: &body[..len - 1],
            };
            let err = block_on(head.read_body(&mut io)).unwrap_err();
            assert!(
                matches!(err, FrameError::Codec(CodecError::Truncated { expected, got })
                    if expected == len as u64 + 1 && got == len as u64),
                "{len}: {err:?}"
            );
        }
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
