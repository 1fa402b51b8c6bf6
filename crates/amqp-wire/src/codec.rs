//! Checked big-endian primitives: a [`Reader`] over a byte slice that fails instead of panicking,
//! and writer helpers for short and long strings.

use crate::error::{DecodeError, EncodeError};

/// A cursor over a byte slice; every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn short_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u8()?;
        self.bytes(usize::from(n))
    }

    pub fn long_bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()?;
        // On 32-bit targets (wasm32) u32 always fits usize; on 64-bit too.
        self.bytes(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub fn short_str(&mut self) -> Result<String, DecodeError> {
        utf8(self.short_bytes()?)
    }

    pub fn long_str(&mut self) -> Result<String, DecodeError> {
        utf8(self.long_bytes()?)
    }

    /// Fails unless everything was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

fn utf8(b: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
}

pub fn put_short_str(out: &mut Vec<u8>, s: &str) -> Result<(), EncodeError> {
    put_short_bytes(out, s.as_bytes())
}

pub fn put_short_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), EncodeError> {
    let n = u8::try_from(b.len()).map_err(|_| EncodeError::ShortStringTooLong(b.len()))?;
    out.push(n);
    out.extend_from_slice(b);
    Ok(())
}

pub fn put_long_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), EncodeError> {
    let n = u32::try_from(b.len()).map_err(|_| EncodeError::TooLong(b.len()))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// Packs consecutive AMQP `bit` fields into one octet (first field in the lowest bit).
pub fn bits(flags: &[bool]) -> u8 {
    flags
        .iter()
        .enumerate()
        .fold(0, |acc, (i, &f)| acc | (u8::from(f) << i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_checked() {
        let mut r = Reader::new(&[0, 1, 2]);
        assert_eq!(r.u16(), Ok(1));
        assert_eq!(r.u32(), Err(DecodeError::Truncated { needed: 3 }));
        assert_eq!(r.remaining(), 1);
        assert_eq!(
            Reader::new(&[5, b'a']).short_str(),
            Err(DecodeError::Truncated { needed: 4 })
        );
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).long_bytes(),
            Err(DecodeError::Truncated {
                needed: u32::MAX as usize
            })
        );
        assert_eq!(
            Reader::new(&[1, 0xff]).short_str(),
            Err(DecodeError::InvalidUtf8)
        );
    }

    #[test]
    fn strings_round_trip_and_short_strings_are_bounded() {
        let mut out = Vec::new();
        put_short_str(&mut out, "héllo").unwrap();
        put_long_bytes(&mut out, b"world").unwrap();
        let mut r = Reader::new(&out);
        assert_eq!(r.short_str().unwrap(), "héllo");
        assert_eq!(r.long_str().unwrap(), "world");
        r.finish().unwrap();
        assert_eq!(
            put_short_str(&mut out, &"x".repeat(256)),
            Err(EncodeError::ShortStringTooLong(256))
        );
    }

    #[test]
    fn bits_pack_low_first() {
        assert_eq!(bits(&[true, false, true]), 0b101);
        assert_eq!(bits(&[]), 0);
    }
}
