//! `basic` content properties (the content header's property list).

use crate::codec::{put_short_str, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::table::FieldTable;

/// Message properties. `delivery_mode` 2 is persistent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BasicProperties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub expiration: Option<String>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
    pub cluster_id: Option<String>,
}

/// `delivery_mode` for messages that survive a broker restart.
pub const PERSISTENT: u8 = 2;

impl BasicProperties {
    /// Persistent messages with the given content type, the usual start for a job message.
    pub fn persistent(content_type: &str) -> Self {
        Self {
            content_type: Some(content_type.to_owned()),
            delivery_mode: Some(PERSISTENT),
            ..Self::default()
        }
    }

    pub fn with_message_id(mut self, id: &str) -> Self {
        self.message_id = Some(id.to_owned());
        self
    }

    pub fn with_headers(mut self, headers: FieldTable) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Appends the 16-bit property flags and the present properties.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut flags: u16 = 0;
        let mut body = Vec::new();
        let mut bit = 15;
        let short = |v: &Option<String>, body: &mut Vec<u8>, flags: &mut u16, bit: u32| match v {
            Some(s) => {
                *flags |= 1 << bit;
                put_short_str(body, s)
            }
            None => Ok(()),
        };
        short(&self.content_type, &mut body, &mut flags, bit)?;
        bit -= 1;
        short(&self.content_encoding, &mut body, &mut flags, bit)?;
        bit -= 1;
        if let Some(h) = &self.headers {
            flags |= 1 << bit;
            h.encode(&mut body)?;
        }
        bit -= 1;
        for v in [self.delivery_mode, self.priority] {
            if let Some(v) = v {
                flags |= 1 << bit;
                body.push(v);
            }
            bit -= 1;
        }
        for v in [
            &self.correlation_id,
            &self.reply_to,
            &self.expiration,
            &self.message_id,
        ] {
            short(v, &mut body, &mut flags, bit)?;
            bit -= 1;
        }
        if let Some(t) = self.timestamp {
            flags |= 1 << bit;
            body.extend_from_slice(&t.to_be_bytes());
        }
        bit -= 1;
        for v in [&self.kind, &self.user_id, &self.app_id, &self.cluster_id] {
            short(v, &mut body, &mut flags, bit)?;
            bit -= 1;
        }
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(())
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let flags = r.u16()?;
        if flags & 1 != 0 {
            return Err(DecodeError::PropertyFlagContinuation);
        }
        let has = |bit: u32| flags & (1 << bit) != 0;
        let short = |bit: u32, r: &mut Reader<'_>| -> Result<Option<String>, DecodeError> {
            if has(bit) {
                r.short_str().map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            content_type: short(15, r)?,
            content_encoding: short(14, r)?,
            headers: if has(13) {
                Some(FieldTable::decode(r)?)
            } else {
                None
            },
            delivery_mode: if has(12) { Some(r.u8()?) } else { None },
            priority: if has(11) { Some(r.u8()?) } else { None },
            correlation_id: short(10, r)?,
            reply_to: short(9, r)?,
            expiration: short(8, r)?,
            message_id: short(7, r)?,
            timestamp: if has(6) { Some(r.u64()?) } else { None },
            kind: short(5, r)?,
            user_id: short(4, r)?,
            app_id: short(3, r)?,
            cluster_id: short(2, r)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_and_none_round_trip() {
        let all = BasicProperties {
            content_type: Some("application/json".into()),
            content_encoding: Some("identity".into()),
            headers: Some(FieldTable::new().with("attempt", 1)),
            delivery_mode: Some(PERSISTENT),
            priority: Some(5),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("60000".into()),
            message_id: Some("job-1".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("t".into()),
            user_id: Some("mp3".into()),
            app_id: Some("gateway".into()),
            cluster_id: Some("x".into()),
        };
        for p in [
            all,
            BasicProperties::default(),
            BasicProperties::persistent("text/plain"),
        ] {
            let mut out = Vec::new();
            p.encode(&mut out).unwrap();
            let mut r = Reader::new(&out);
            assert_eq!(BasicProperties::decode(&mut r).unwrap(), p);
            r.finish().unwrap();
        }
    }

    #[test]
    fn flags_match_the_spec() {
        let mut out = Vec::new();
        BasicProperties::persistent("a").encode(&mut out).unwrap();
        // content-type (bit 15) and delivery-mode (bit 12).
        assert_eq!(out, [0x90, 0x00, 1, b'a', 2]);
        assert_eq!(
            BasicProperties::decode(&mut Reader::new(&[0, 1])),
            Err(DecodeError::PropertyFlagContinuation)
        );
    }
}
