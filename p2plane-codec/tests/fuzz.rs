//! Hostile bytes against every decoder of network input in this crate: a million mutated
//! inputs each (from the stored corpus in `fuzz-corpus/` and generated valid seeds), seeded
//! so that a failure repeats. Each must give a value or a typed error: no panic, no hang,
//! no allocation beyond the limit.

use std::path::Path;

use futures::executor::block_on;
use p2plane_codec::{
    CborCodec, Codec as _, Envelope, FrameBuf, SharedFrame,
    fuzz::{Mutator, load_corpus},
    read_frame, read_shared_frame,
};
use serde::{Deserialize, Serialize};

const INPUTS: usize = 1_000_000;
const LIMIT: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Message {
    seq: u64,
    text: String,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
    tags: Vec<String>,
}

fn corpus(name: &str, generated: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-corpus")
        .join(name);
    let seeds = load_corpus(&dir, generated);
    assert!(
        seeds.len() > 3,
        "the stored corpus in {} is there",
        dir.display()
    );
    seeds
}

fn valid_envelopes(codec: &CborCodec) -> Vec<Vec<u8>> {
    let message = Message {
        seq: 7,
        text: "hello".into(),
        data: vec![1, 2, 3],
        tags: vec!["a".into(), "bc".into()],
    };
    let mut seeds = Vec::new();
    for envelope in [
        Envelope::Ok(message),
        Envelope::Rejected("no".into()),
        Envelope::Busy,
        Envelope::Failed("boom".into()),
    ] {
        let mut bytes = Vec::new();
        codec.encode(&envelope, &mut bytes).unwrap();
        seeds.push(bytes);
    }
    seeds
}

#[test]
fn frames_of_hostile_bytes_decode_or_fail_typed() {
    let codec = CborCodec::new(LIMIT);
    let mut generated: Vec<Vec<u8>> = valid_envelopes(&codec)
        .iter()
        .map(|payload| {
            let mut frame = FrameBuf::encode(&codec, &payload).unwrap();
            frame.set_id(3);
            frame.as_bytes().to_vec()
        })
        .collect();
    generated.push(vec![0x80, 0x80, 0x80, 0x80, 0x01]);
    let seeds = corpus("frames", generated);
    let mut mutator = Mutator::new(1);
    let (mut ok, mut shared_ok) = (0, 0);
    for _ in 0..INPUTS {
        let input = mutator.mutate(&seeds);
        if let Ok(body) = block_on(read_frame(&mut input.as_slice(), LIMIT)) {
            assert!(body.len() <= LIMIT);
            ok += 1;
        }
        match block_on(read_shared_frame(&mut input.as_slice(), LIMIT)) {
            Ok(SharedFrame::Frame { body, .. }) => {
                assert!(body.len() <= LIMIT);
                shared_ok += 1;
            }
            Ok(SharedFrame::TooLarge { len, .. }) => assert!(len > LIMIT as u64),
            Err(_) => {}
        }
    }
    // The mutations reach the decoders' success paths as well as their errors.
    assert!(
        ok > INPUTS / 100 && shared_ok > INPUTS / 100,
        "{ok} {shared_ok}"
    );
}

#[test]
fn envelopes_of_hostile_bytes_decode_or_fail_typed() {
    let codec = CborCodec::new(LIMIT);
    let seeds = corpus("envelopes", valid_envelopes(&codec));
    let mut mutator = Mutator::new(2);
    let mut decoded = 0;
    for _ in 0..INPUTS {
        let input = mutator.mutate(&seeds);
        if codec.decode::<Envelope<Message>>(&input).is_ok() {
            decoded += 1;
        }
        let _ = codec.decode::<Envelope<String>>(&input);
    }
    assert!(decoded > INPUTS / 100, "{decoded}");
}
