use p2plane_core::{Codec, CodecError};
use serde::{Serialize, de::DeserializeOwned};

/// The default maximum encoded message size: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// CBOR (RFC 8949) through ciborium, with a maximum encoded size.
///
/// Decoding rejects bytes left over after the value and limits nesting depth (ciborium's
/// recursion limit), so a hostile peer cannot overflow the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CborCodec {
    max_message_size: usize,
}

impl CborCodec {
    /// A codec that accepts messages of at most `max_message_size` encoded bytes.
    pub const fn new(max_message_size: usize) -> Self {
        Self { max_message_size }
    }
}

impl Default for CborCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl Codec for CborCodec {
    fn encode<T: Serialize>(&self, value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
        // Measure first: a value over the limit is refused without building it, and the
        // buffer is sized once instead of doubling (large byte strings are one write each,
        // so measuring costs little).
        let mut counter = Counter(0);
        ciborium::into_writer(value, &mut counter)
            .map_err(|e| CodecError::Encode(e.to_string()))?;
        if counter.0 > self.max_message_size {
            return Err(CodecError::TooLarge {
                limit: self.max_message_size,
                len: counter.0 as u64,
            });
        }
        buf.reserve_exact(counter.0);
        ciborium::into_writer(value, &mut *buf).map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        if bytes.len() > self.max_message_size {
            return Err(CodecError::TooLarge {
                limit: self.max_message_size,
                len: bytes.len() as u64,
            });
        }
        let mut rest = bytes;
        // ciborium reads a string that fits the scratch buffer in one piece and a longer one
        // in pieces (of at most 64 KiB here). No string is longer than the message, so the
        // buffer never needs to be: zeroing a fixed 4 KiB for every small message was 16 % of
        // the instructions of a 64-byte request (callgrind). At least 16 bytes, so that a
        // string read in pieces always has room past the up to 3 bytes of a split UTF-8
        // character ciborium keeps.
        let scratch_len = bytes.len().clamp(16, 64 * 1024);
        let mut stack = [0u8; 512];
        let mut heap = Vec::new();
        let scratch: &mut [u8] = if scratch_len <= stack.len() {
            &mut stack[..scratch_len]
        } else {
            heap.resize(scratch_len, 0);
            &mut heap
        };
        let value = ciborium::de::from_reader_with_buffer(&mut rest, scratch)
            .map_err(|e| CodecError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes { extra: rest.len() });
        }
        Ok(value)
    }

    fn max_message_size(&self) -> usize {
        self.max_message_size
    }
}

/// Counts the bytes an encoding would take.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Sample {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    fn sample() -> Sample {
        Sample {
            id: 42,
            name: "n".into(),
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn round_trip() {
        let c = CborCodec::default();
        let mut buf = Vec::new();
        c.encode(&sample(), &mut buf).unwrap();
        assert_eq!(c.decode::<Sample>(&buf).unwrap(), sample());
    }

    /// Strings and byte strings on every side of the scratch buffer's bounds (16, 512 and
    /// 64 KiB; 4 KiB, its old size), with multi-byte characters that a piecewise read may
    /// split, decode intact.
    #[test]
    fn strings_of_every_size_round_trip() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Body {
            text: String,
            #[serde(with = "serde_bytes")]
            bytes: Vec<u8>,
        }
        let c = CborCodec::new(1 << 20);
        for len in [
            0, 1, 3, 15, 16, 17, 500, 511, 512, 513, 4095, 4096, 4097, 70_000,
        ] {
            let body = Body {
                text: "é€😀".chars().cycle().take(len).collect(),
                bytes: (0..len).map(|i| i as u8).collect(),
            };
            let mut buf = Vec::new();
            c.encode(&body, &mut buf).unwrap();
            assert_eq!(c.decode::<Body>(&buf).unwrap(), body, "length {len}");
        }
        // An indefinite-length text (read in pieces whatever its size) of 3-byte characters.
        let mut buf = vec![0x7f];
        for _ in 0..5 {
            buf.extend_from_slice(&[0x63, 0xe2, 0x82, 0xac]);
        }
        buf.push(0xff);
        assert_eq!(c.decode::<String>(&buf).unwrap(), "€€€€€");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let c = CborCodec::default();
        let mut buf = Vec::new();
        c.encode(&sample(), &mut buf).unwrap();
        buf.extend_from_slice(&[0xff, 0x00]);
        assert_eq!(
            c.decode::<Sample>(&buf),
            Err(CodecError::TrailingBytes { extra: 2 })
        );
    }

    #[test]
    fn too_large_on_encode_leaves_buffer_as_it_was() {
        let c = CborCodec::new(8);
        let mut buf = vec![1, 2];
        let err = c
            .encode(&"a string longer than eight bytes", &mut buf)
            .unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { limit: 8, len } if len > 8));
        assert_eq!(buf, vec![1, 2]);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let c = CborCodec::default();
        for garbage in [
            &[0xff_u8][..],
            &[0x1c],
            &[],
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(
                matches!(c.decode::<Sample>(garbage), Err(CodecError::Decode(_))),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let c = CborCodec::default();
        let nested = vec![0x81_u8; 100_000]; // arrays of one element, nested 100k deep
        assert!(c.decode::<ciborium::Value>(&nested).is_err());
    }
}
