//! Coverage-guided fuzzing of the reply decoders:
//! `cd crates/mongo-wire/fuzz && cargo +nightly fuzz run op_msg -- -max_total_time=60`
#![no_main]

use libfuzzer_sys::fuzz_target;
use mongo_wire::wire;

fuzz_target!(|data: &[u8]| {
    // As a whole message, and with its length field made consistent so the decoder goes deeper.
    let _ = wire::decode_message(data);
    let _ = wire::read_message(&mut &data[..], 1 << 20);
    if data.len() >= 4 {
        let mut fixed = data.to_vec();
        let len = fixed.len() as i32;
        fixed[..4].copy_from_slice(&len.to_le_bytes());
        let _ = wire::decode_message(&fixed);
    }
});
