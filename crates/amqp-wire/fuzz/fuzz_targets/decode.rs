//! Every decoder on arbitrary bytes: none may panic, and whatever decodes re-encodes to a
//! canonical form that is stable (decode, encode, decode, encode gives the same bytes; bytes
//! rather than values because a NaN float is not equal to itself).
#![no_main]

use amqp_wire::frame::Frame;
use amqp_wire::method::Method;
use amqp_wire::{BasicProperties, FieldTable, FieldValue, Reader};
use libfuzzer_sys::fuzz_target;

fn stable<T>(value: T, encode: impl Fn(&T, &mut Vec<u8>), decode: impl Fn(&[u8]) -> T) {
    let mut once = Vec::new();
    encode(&value, &mut once);
    let mut twice = Vec::new();
    encode(&decode(&once), &mut twice);
    assert_eq!(once, twice);
}

fuzz_target!(|data: &[u8]| {
    for frame_max in [0, 4096, 131072] {
        if let Ok(Some((frame, used))) = Frame::decode(data, frame_max) {
            assert!(used <= data.len());
            stable(
                frame,
                |f, out| f.encode(out).unwrap(),
                |b| Frame::decode(b, 0).unwrap().unwrap().0,
            );
        }
    }
    if let Ok(m) = Method::decode(&mut Reader::new(data)) {
        stable(
            m,
            |m, out| m.encode(out).unwrap(),
            |b| Method::decode(&mut Reader::new(b)).unwrap(),
        );
    }
    if let Ok(t) = FieldTable::decode(&mut Reader::new(data)) {
        stable(
            t,
            |t, out| t.encode(out).unwrap(),
            |b| FieldTable::decode(&mut Reader::new(b)).unwrap(),
        );
    }
    if let Ok(v) = FieldValue::decode(&mut Reader::new(data)) {
        stable(
            v,
            |v, out| v.encode(out).unwrap(),
            |b| FieldValue::decode(&mut Reader::new(b)).unwrap(),
        );
    }
    if let Ok(p) = BasicProperties::decode(&mut Reader::new(data)) {
        stable(
            p,
            |p, out| p.encode(out).unwrap(),
            |b| BasicProperties::decode(&mut Reader::new(b)).unwrap(),
        );
    }
});
