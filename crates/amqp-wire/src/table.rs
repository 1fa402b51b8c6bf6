//! AMQP field tables and field values, with RabbitMQ's set of type tags
//! (the ones it sends in `connection.start` and message headers, and the rest of its table).

use crate::codec::{put_long_bytes, put_short_str, Reader};
use crate::error::{DecodeError, EncodeError};

/// How deep tables and arrays may nest before decoding gives up (stack safety on hostile input).
pub const MAX_DEPTH: usize = 32;

/// An ordered field table (`F`). Keys are short strings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldTable(pub Vec<(String, FieldValue)>);

/// One field value; the comment names its type tag on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s` (RabbitMQ's tag for a signed 16-bit integer)
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: value × 10^-scale
    Decimal { scale: u8, value: u32 },
    /// `S`: bytes, usually UTF-8 text
    LongString(Vec<u8>),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T`: seconds since the epoch
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `V`
    Void,
    /// `x`
    Bytes(Vec<u8>),
}

impl FieldTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `key`, builder style.
    pub fn with(mut self, key: &str, value: impl Into<FieldValue>) -> Self {
        self.insert(key, value);
        self
    }

    pub fn insert(&mut self, key: &str, value: impl Into<FieldValue>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends the table with its 32-bit length prefix.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut body = Vec::new();
        for (key, value) in &self.0 {
            put_short_str(&mut body, key)?;
            value.encode(&mut body)?;
        }
        put_long_bytes(out, &body)
    }

    /// Reads a length-prefixed table.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_at(r, 0)
    }

    fn decode_at(r: &mut Reader<'_>, depth: usize) -> Result<Self, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep(MAX_DEPTH));
        }
        let mut inner = Reader::new(r.long_bytes()?);
        let mut fields = Vec::new();
        while inner.remaining() > 0 {
            let key = inner.short_str()?;
            let value = FieldValue::decode_at(&mut inner, depth + 1)?;
            fields.push((key, value));
        }
        Ok(Self(fields))
    }
}

impl FieldValue {
    /// The text of a long string, if it is one and is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            FieldValue::Bool(v) => out.extend_from_slice(&[b't', u8::from(*v)]),
            FieldValue::I8(v) => out.extend_from_slice(&[b'b', v.to_be_bytes()[0]]),
            FieldValue::U8(v) => out.extend_from_slice(&[b'B', *v]),
            FieldValue::I16(v) => tagged(out, b's', &v.to_be_bytes()),
            FieldValue::U16(v) => tagged(out, b'u', &v.to_be_bytes()),
            FieldValue::I32(v) => tagged(out, b'I', &v.to_be_bytes()),
            FieldValue::U32(v) => tagged(out, b'i', &v.to_be_bytes()),
            FieldValue::I64(v) => tagged(out, b'l', &v.to_be_bytes()),
            FieldValue::F32(v) => tagged(out, b'f', &v.to_be_bytes()),
            FieldValue::F64(v) => tagged(out, b'd', &v.to_be_bytes()),
            FieldValue::Decimal { scale, value } => {
                out.extend_from_slice(&[b'D', *scale]);
                out.extend_from_slice(&value.to_be_bytes());
            }
            FieldValue::LongString(b) => {
                out.push(b'S');
                put_long_bytes(out, b)?;
            }
            FieldValue::Array(items) => {
                let mut body = Vec::new();
                for item in items {
                    item.encode(&mut body)?;
                }
                out.push(b'A');
                put_long_bytes(out, &body)?;
            }
            FieldValue::Timestamp(v) => tagged(out, b'T', &v.to_be_bytes()),
            FieldValue::Table(t) => {
                out.push(b'F');
                t.encode(out)?;
            }
            FieldValue::Void => out.push(b'V'),
            FieldValue::Bytes(b) => {
                out.push(b'x');
                put_long_bytes(out, b)?;
            }
        }
        Ok(())
    }

    /// Reads one type tag and its value.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::decode_at(r, 0)
    }

    fn decode_at(r: &mut Reader<'_>, depth: usize) -> Result<Self, DecodeError> {
        let tag = r.u8()?;
        Ok(match tag {
            b't' => FieldValue::Bool(r.u8()? != 0),
            b'b' => FieldValue::I8(i8::from_be_bytes([r.u8()?])),
            b'B' => FieldValue::U8(r.u8()?),
            b's' => FieldValue::I16(r.u16()? as i16),
            b'u' => FieldValue::U16(r.u16()?),
            b'I' => FieldValue::I32(r.u32()? as i32),
            b'i' => FieldValue::U32(r.u32()?),
            b'l' => FieldValue::I64(r.u64()? as i64),
            b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
            b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
            b'D' => FieldValue::Decimal {
                scale: r.u8()?,
                value: r.u32()?,
            },
            b'S' => FieldValue::LongString(r.long_bytes()?.to_vec()),
            b'A' => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep(MAX_DEPTH));
                }
                let mut inner = Reader::new(r.long_bytes()?);
                let mut items = Vec::new();
                while inner.remaining() > 0 {
                    items.push(FieldValue::decode_at(&mut inner, depth + 1)?);
                }
                FieldValue::Array(items)
            }
            b'T' => FieldValue::Timestamp(r.u64()?),
            b'F' => FieldValue::Table(FieldTable::decode_at(r, depth)?),
            b'V' => FieldValue::Void,
            b'x' => FieldValue::Bytes(r.long_bytes()?.to_vec()),
            other => return Err(DecodeError::UnknownFieldType(other)),
        })
    }
}

fn tagged(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    out.extend_from_slice(bytes);
}

impl From<&str> for FieldValue {
    fn from(s: &str) -> Self {
        FieldValue::LongString(s.as_bytes().to_vec())
    }
}
impl From<String> for FieldValue {
    fn from(s: String) -> Self {
        FieldValue::LongString(s.into_bytes())
    }
}
impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue::Bool(v)
    }
}
impl From<i32> for FieldValue {
    fn from(v: i32) -> Self {
        FieldValue::I32(v)
    }
}
impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::I64(v)
    }
}
impl From<FieldTable> for FieldValue {
    fn from(t: FieldTable) -> Self {
        FieldValue::Table(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_type() -> FieldTable {
        FieldTable::new()
            .with("bool", true)
            .with("i8", FieldValue::I8(-3))
            .with("u8", FieldValue::U8(250))
            .with("i16", FieldValue::I16(-300))
            .with("u16", FieldValue::U16(60000))
            .with("i32", -70000)
            .with("u32", FieldValue::U32(4_000_000_000))
            .with("i64", -5_000_000_000_i64)
            .with("f32", FieldValue::F32(1.5))
            .with("f64", FieldValue::F64(-2.25))
            .with(
                "dec",
                FieldValue::Decimal {
                    scale: 2,
                    value: 12345,
                },
            )
            .with("str", "x-dead-letter-exchange")
            .with(
                "arr",
                FieldValue::Array(vec![1.into(), "two".into(), FieldValue::Void]),
            )
            .with("ts", FieldValue::Timestamp(1_700_000_000))
            .with("nested", FieldTable::new().with("publisher_confirms", true))
            .with("void", FieldValue::Void)
            .with("bytes", FieldValue::Bytes(vec![0, 255]))
    }

    #[test]
    fn every_type_round_trips() {
        let table = every_type();
        let mut out = Vec::new();
        table.encode(&mut out).unwrap();
        let mut r = Reader::new(&out);
        assert_eq!(FieldTable::decode(&mut r).unwrap(), table);
        r.finish().unwrap();
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut out = Vec::new();
        every_type().encode(&mut out).unwrap();
        for cut in 0..out.len() {
            assert!(
                FieldTable::decode(&mut Reader::new(&out[..cut])).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn decodes_bytes_as_rabbitmq_sends_them() {
        // {"product": S "RabbitMQ", "capabilities": F {"basic.nack": t true}, "n": l 7, "i": I -1}
        let mut body = Vec::new();
        body.extend_from_slice(b"\x07productS\x00\x00\x00\x08RabbitMQ");
        body.extend_from_slice(b"\x0ccapabilitiesF\x00\x00\x00\x0d\x0abasic.nackt\x01");
        body.extend_from_slice(b"\x01nl\x00\x00\x00\x00\x00\x00\x00\x07");
        body.extend_from_slice(b"\x01iI\xff\xff\xff\xff");
        let mut wire = (body.len() as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&body);
        let t = FieldTable::decode(&mut Reader::new(&wire)).unwrap();
        assert_eq!(
            t.get("product").and_then(FieldValue::as_str),
            Some("RabbitMQ")
        );
        assert_eq!(
            t.get("capabilities"),
            Some(&FieldValue::Table(
                FieldTable::new().with("basic.nack", true)
            ))
        );
        assert_eq!(t.get("n"), Some(&FieldValue::I64(7)));
        assert_eq!(t.get("i"), Some(&FieldValue::I32(-1)));
    }

    #[test]
    fn unknown_type_is_a_clear_error() {
        let wire = b"\x00\x00\x00\x03\x01kq";
        let err = FieldTable::decode(&mut Reader::new(wire)).unwrap_err();
        assert_eq!(err, DecodeError::UnknownFieldType(b'q'));
        assert_eq!(err.to_string(), "unknown field table value type 'q' (0x71)");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        // 10 000 nested arrays: A <len> A <len> ... built inside out.
        let mut v = vec![b'V'];
        for _ in 0..10_000 {
            let mut outer = vec![b'A'];
            outer.extend_from_slice(&(v.len() as u32).to_be_bytes());
            outer.extend_from_slice(&v);
            v = outer;
        }
        assert_eq!(
            FieldValue::decode(&mut Reader::new(&v)),
            Err(DecodeError::TooDeep(MAX_DEPTH))
        );
    }
}
