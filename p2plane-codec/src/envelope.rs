use serde::{Deserialize, Serialize};

/// What a response frame holds.
///
/// Encoded with serde's externally tagged representation: `Ok(body)` is the CBOR map
/// `{"Ok": body}`, `Rejected(reason)` is `{"Rejected": reason}`, `Failed(message)` is
/// `{"Failed": message}` and `Busy` is the text string `"Busy"`.
///
/// To encode a response without cloning its body, use `Envelope<&T>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope<T> {
    /// The handler's answer.
    Ok(T),
    /// A validator refused the request before the handler ran.
    Rejected(String),
    /// The node was at its limit of concurrent requests; the handler did not run.
    Busy,
    /// The handler ran and returned an error.
    Failed(String),
}

/// What a frame of a streaming protocol holds, in either direction (see `docs/wire.md`).
///
/// Encoded like [`Envelope`], with serde's externally tagged representation: `Item(v)` is
/// `{"Item": v}`, `Credit(items, bytes)` is `{"Credit": [items, bytes]}`, `Rejected(reason)`
/// is `{"Rejected": reason}`, `Failed(message)` is `{"Failed": message}`, and `End`, `Busy`
/// and `Shutdown` are those text strings.
///
/// To encode an item without cloning it, use `StreamFrame<&T>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamFrame<T> {
    /// One item (an upload from the caller, an answer item from the handler).
    Item(T),
    /// The sender's items are over; the stream ended cleanly on its side.
    End,
    /// The receiver takes this many more items and payload bytes. The handler's first
    /// frame is always a `Credit`: it says the stream was accepted.
    Credit(u32, u32),
    /// Handler side only: at the limit of streams, the handler did not run.
    Busy,
    /// Handler side only: a validator refused the request or an upload.
    Rejected(String),
    /// Handler side only: the handler failed; the stream ends here.
    Failed(String),
    /// Handler side only: the node serving the stream is shutting down.
    Shutdown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CborCodec;
    use p2plane_core::Codec;

    #[test]
    fn wire_form_is_as_documented() {
        let c = CborCodec::default();
        let mut busy = Vec::new();
        c.encode(&Envelope::<u8>::Busy, &mut busy).unwrap();
        assert_eq!(busy, b"\x64Busy");
        let mut ok = Vec::new();
        c.encode(&Envelope::Ok(&7u8), &mut ok).unwrap();
        assert_eq!(ok, b"\xa1\x62Ok\x07");
        let mut rejected = Vec::new();
        c.encode(&Envelope::<u8>::Rejected("no".into()), &mut rejected)
            .unwrap();
        assert_eq!(rejected, b"\xa1\x68Rejected\x62no");
        assert_eq!(c.decode::<Envelope<u8>>(&ok).unwrap(), Envelope::Ok(7));
    }

    #[test]
    fn stream_frames_are_as_documented() {
        let c = CborCodec::default();
        let bytes = |f: &StreamFrame<&u8>| {
            let mut out = Vec::new();
            c.encode(f, &mut out).unwrap();
            out
        };
        assert_eq!(bytes(&StreamFrame::Item(&7)), b"\xa1\x64Item\x07");
        assert_eq!(bytes(&StreamFrame::End), b"\x63End");
        assert_eq!(
            bytes(&StreamFrame::Credit(2, 300)),
            b"\xa1\x66Credit\x82\x02\x19\x01\x2c"
        );
        assert_eq!(bytes(&StreamFrame::Shutdown), b"\x68Shutdown");
        let credit = bytes(&StreamFrame::Credit(2, 300));
        assert_eq!(
            c.decode::<StreamFrame<u8>>(&credit).unwrap(),
            StreamFrame::Credit(2, 300)
        );
    }
}
