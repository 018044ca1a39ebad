//! What encoding and decoding cost, for a small struct and a 1 MiB byte string.
//!
//! ```sh
//! cargo bench -p p2plane-codec --bench codec
//! ```

use criterion::{Criterion, criterion_group, criterion_main};
use p2plane_codec::{CborCodec, Codec as _, FrameBuf};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Msg {
    seq: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

fn bench(c: &mut Criterion) {
    let codec = CborCodec::new(8 << 20);
    for (name, size) in [("64B", 64), ("1MiB", 1 << 20)] {
        let msg = Msg {
            seq: 7,
            data: vec![9; size],
        };
        let mut bytes = Vec::new();
        codec.encode(&msg, &mut bytes).unwrap();
        c.bench_function(&format!("encode_frame/{name}"), |b| {
            b.iter(|| FrameBuf::encode(&codec, &msg).unwrap())
        });
        c.bench_function(&format!("decode/{name}"), |b| {
            b.iter(|| codec.decode::<Msg>(&bytes).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
