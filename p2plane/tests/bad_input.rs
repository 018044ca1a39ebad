//! A hostile peer, built on plain libp2p (libp2p-stream), opens raw streams on the node's
//! protocol and writes bytes no P2PLane client would. Each must be refused with an
//! inbound-failure event while the node stays up and keeps serving on the same connection.

mod common;

use std::sync::atomic::Ordering;

use common::{attacker::*, *};
use p2plane::{
    CodecError, Event, InboundError, Message,
    codec::{CborCodec, Envelope, FrameBuf, read_frame},
};
use p2plane_codec::Codec as _;

/// What a case expects the node to report.
type Expect = fn(&InboundError) -> bool;

/// The node's default limit.
const LIMIT: usize = p2plane::codec::DEFAULT_MAX_MESSAGE_SIZE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_oversized_and_trailing_junk_are_refused_and_the_node_keeps_serving() {
    let node = echo_node(config(TCP)).await;
    let mut events = node.events();
    let mut attacker = Attacker::connect(first_addr(&node).await).await;
    let codec = CborCodec::default();

    let valid = FrameBuf::encode(&codec, &echo(7)).unwrap();
    let mut payload_with_junk = Vec::new();
    codec.encode(&echo(7), &mut payload_with_junk).unwrap();
    payload_with_junk.extend_from_slice(b"junk");
    let mut junk_frame = vec![payload_with_junk.len() as u8];
    junk_frame.extend_from_slice(&payload_with_junk);

    let rss_before = resident_kib();
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("garbage", vec![0x03, 0xff, 0xfe, 0xfd], |e| {
            matches!(e, InboundError::Decode(CodecError::Decode(_)))
        }),
        (
            "a truncated frame",
            valid.as_bytes()[..valid.as_bytes().len() - 3].to_vec(),
            |e| matches!(e, InboundError::Frame(CodecError::Truncated { .. })),
        ),
        // 4 GiB announced, then a few bytes.
        (
            "a 4 GiB length prefix",
            vec![0x80, 0x80, 0x80, 0x80, 0x10, 1, 2, 3],
            |e| {
                matches!(
                    e,
                    InboundError::Frame(CodecError::TooLarge {
                        len: 4294967296,
                        ..
                    })
                )
            },
        ),
        // Just under the limit announced, almost nothing sent.
        (
            "a large announced frame with little behind it",
            {
                let mut v = vec![0xff, 0xff, 0xff, 0x01]; // 4 MiB - 1
                v.extend_from_slice(&[0; 16]);
                v
            },
            |e| {
                matches!(
                    e,
                    InboundError::Frame(CodecError::Truncated {
                        expected: 4194303,
                        got: 16
                    })
                )
            },
        ),
        ("valid CBOR followed by junk", junk_frame, |e| {
            matches!(
                e,
                InboundError::Decode(CodecError::TrailingBytes { extra: 4 })
            )
        }),
        ("a malformed length prefix", vec![0xff; 12], |e| {
            matches!(e, InboundError::Frame(CodecError::BadLength(_)))
        }),
        ("nothing at all", vec![], |e| {
            matches!(e, InboundError::Frame(CodecError::Truncated { .. }))
        }),
    ];
    for (what, bytes, expected) in cases {
        let answer = attacker.send_raw(&bytes).await;
        let error = wait_event(&mut events, what, |e| match e {
            Event::InboundFailure {
                peer,
                protocol,
                error,
            } if *peer != node.local_peer_id() => {
                assert_eq!(protocol, Echo::PROTOCOL);
                Some(error.clone())
            }
            _ => None,
        })
        .await;
        assert!(expected(&error), "{what}: unexpected {error:?}");
        // Where the stream still worked, the node said why it refused.
        if !answer.is_empty() {
            let mut wire = &answer[..];
            let reply: Envelope<Echo> = codec
                .decode(&read_frame(&mut wire, LIMIT).await.unwrap())
                .unwrap();
            assert!(matches!(reply, Envelope::Rejected(_)), "{what}: {reply:?}");
        }

        // The next honest request on the same connection succeeds.
        let answer = attacker.send_raw(valid.as_bytes()).await;
        let mut wire = &answer[..];
        let reply: Envelope<Echo> = codec
            .decode(&read_frame(&mut wire, LIMIT).await.unwrap())
            .unwrap();
        assert_eq!(reply, Envelope::Ok(answer_for_node(&node)), "after {what}");
    }
    // Every case and every honest request travelled on the one connection the attacker
    // opened first: the node never closed it.
    assert_eq!(attacker.connections.load(Ordering::SeqCst), 1);
    assert_eq!(attacker.closed.load(Ordering::SeqCst), 0);
    // Memory did not follow the announced 4 GiB (nor the 4 MiB), with a wide margin for
    // the test's own allocations.
    let grown_kib = resident_kib().saturating_sub(rss_before);
    assert!(
        grown_kib < 64 * 1024,
        "resident memory grew by {grown_kib} KiB"
    );
}

fn answer_for_node(node: &p2plane::Node<Echo>) -> Echo {
    answer(&echo(7), node.local_peer_id())
}
