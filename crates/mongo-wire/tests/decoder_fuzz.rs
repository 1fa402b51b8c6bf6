//! Seeded random fuzzing of every decoder that takes bytes from the network or the user: many
//! thousands of random and mutated inputs, none may panic (a panic fails the test). The
//! coverage-guided version of the same is `fuzz/` (cargo-fuzz, nightly).

use mongo_wire::bson::{doc, Binary, Bson};
use mongo_wire::scram::ScramSha256;
use mongo_wire::wire::{self, DocumentSequence, OpMsg};
use mongo_wire::ConnectionString;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let bin = Bson::Binary(Binary {
        subtype: mongo_wire::bson::spec::BinarySubtype::Generic,
        bytes: vec![1, 2, 3],
    });
    let msgs = [
        OpMsg::new(doc! {"ok": 1.0, "cursor": {"id": 0i64, "firstBatch": [{"a": 1}]}}),
        OpMsg {
            flags: 0,
            body: doc! {"insert": "c", "$db": "d"},
            sequences: vec![DocumentSequence {
                identifier: "documents".into(),
                documents: vec![doc! {"x": bin, "s": "str", "n": [1, 2.5, true]}, doc! {}],
            }],
        },
    ];
    let mut out = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        for checksum in [false, true] {
            out.push(wire::encode_op_msg(i as i32, m, checksum).expect("seed encodes"));
        }
    }
    out
}

fn fix_length(buf: &mut [u8]) {
    if buf.len() >= 4 {
        let len = buf.len() as i32;
        buf[..4].copy_from_slice(&len.to_le_bytes());
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut buf = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] ^= 1 << rng.below(8);
            }
            1 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] = rng.next() as u8;
            }
            2 => buf.truncate(rng.below(buf.len() + 1)),
            3 => {
                let n = rng.below(16);
                let extra = rng.bytes(n);
                let at = rng.below(buf.len() + 1);
                buf.splice(at..at, extra);
            }
            4 if buf.len() >= 4 => {
                // Plant an interesting little-endian integer (lengths, sizes) somewhere.
                let v: i32 = [0, -1, 4, 5, i32::MAX, i32::MIN, 16, 21][rng.below(8)];
                let at = rng.below(buf.len() - 3);
                buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    if rng.below(4) != 0 {
        fix_length(&mut buf);
    }
    buf
}

#[test]
fn op_msg_decoder_never_panics() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut decoded_ok = 0usize;
    for round in 0..200_000 {
        let input = if round % 10 == 0 {
            let n = rng.below(96);
            let mut b = rng.bytes(n);
            if b.len() >= 16 && rng.below(2) == 0 {
                b[12..16]
                    .copy_from_slice(&[wire::OP_MSG, wire::OP_REPLY][rng.below(2)].to_le_bytes());
            }
            fix_length(&mut b);
            b
        } else {
            let pick = rng.below(seeds.len());
            mutate(&mut rng, &seeds[pick])
        };
        if wire::decode_message(&input).is_ok() {
            decoded_ok += 1;
        }
        let _ = wire::read_message(&mut input.as_slice(), 1 << 20);
    }
    // The mutations must not be so wild that nothing ever decodes.
    assert!(decoded_ok > 1000, "only {decoded_ok} inputs decoded");
}

#[test]
fn scram_and_uri_parsers_never_panic() {
    let mut rng = Rng(0x0bad_cafe_f00d_0001);
    let alphabet = b"rsivem=,@:/?&%[]0123456789abcXYZ+= \x00\xff";
    for _ in 0..50_000 {
        let len = rng.below(60);
        let raw: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let mut scram = ScramSha256::with_nonce("user", "pencil", "abc").expect("ascii");
        if scram.client_final(&format!("r=abc{text}")).is_ok() {
            let _ = scram.verify_server_final(&text);
        }
        let _ = scram.client_final(&text);
        let _ = format!("mongodb://{text}").parse::<ConnectionString>();
    }
}
