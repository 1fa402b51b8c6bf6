//! A seeded fuzz loop that runs with every `cargo test` (the libFuzzer harness in `fuzz/` goes
//! further with nightly): random bytes and mutated valid frames through every decoder. A panic
//! fails the test; the seed and case number are printed so a failure can be replayed.

use amqp_wire::frame::Frame;
use amqp_wire::method::Method;
use amqp_wire::{BasicProperties, FieldTable, FieldValue, Reader};

/// xorshift64*: small, seeded, and good enough to cover the byte space.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn decode_everything(data: &[u8]) {
    for frame_max in [0, 4096, 131072] {
        if let Ok(Some((frame, used))) = Frame::decode(data, frame_max) {
            assert!(used <= data.len());
            let mut out = Vec::new();
            frame.encode(&mut out).expect("a decoded frame encodes");
        }
    }
    let _ = Method::decode(&mut Reader::new(data));
    let _ = FieldTable::decode(&mut Reader::new(data));
    let _ = FieldValue::decode(&mut Reader::new(data));
    let _ = BasicProperties::decode(&mut Reader::new(data));
}

/// Valid frames to mutate: every shape the client reads.
fn seeds() -> Vec<Vec<u8>> {
    let table = FieldTable::new()
        .with(
            "capabilities",
            FieldTable::new().with("publisher_confirms", true),
        )
        .with(
            "arr",
            FieldValue::Array(vec![1.into(), "s".into(), FieldValue::F64(1.5)]),
        )
        .with("n", FieldValue::I64(-1))
        .with("d", FieldValue::Decimal { scale: 1, value: 5 });
    let frames = [
        Frame::Method {
            channel: 0,
            method: Method::ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: table.clone(),
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
            },
        },
        Frame::Method {
            channel: 1,
            method: Method::BasicReturn {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "".into(),
                routing_key: "k".into(),
            },
        },
        Frame::Method {
            channel: 1,
            method: Method::BasicAck {
                delivery_tag: 9,
                multiple: true,
            },
        },
        Frame::Header {
            channel: 1,
            body_size: 3,
            properties: BasicProperties::persistent("a/b").with_headers(table),
        },
        Frame::Body {
            channel: 1,
            payload: b"abc".to_vec(),
        },
        Frame::Heartbeat,
    ];
    frames
        .iter()
        .map(|f| {
            let mut out = Vec::new();
            f.encode(&mut out).unwrap();
            out
        })
        .collect()
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5EED_A3F1_0000_0001);
    for case in 0..100_000 {
        let len = rng.below(64);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let result = std::panic::catch_unwind(|| decode_everything(&data));
        assert!(result.is_ok(), "case {case}: {data:?}");
    }
}

#[test]
fn mutated_frames_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x5EED_A3F1_0000_0002);
    for case in 0..100_000 {
        let mut data = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            match rng.below(4) {
                0 if !data.is_empty() => {
                    let i = rng.below(data.len());
                    data[i] = rng.next() as u8;
                }
                1 if !data.is_empty() => data.truncate(rng.below(data.len())),
                2 => {
                    let i = rng.below(data.len() + 1);
                    data.insert(i, rng.next() as u8);
                }
                _ if data.len() > 7 => {
                    // Flip a bit in the header: type, channel or size.
                    let i = rng.below(7);
                    data[i] ^= 1 << rng.below(8);
                }
                _ => {}
            }
        }
        let result = std::panic::catch_unwind(|| decode_everything(&data));
        assert!(result.is_ok(), "case {case}: {data:?}");
    }
}
