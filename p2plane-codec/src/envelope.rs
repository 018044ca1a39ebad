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
}
