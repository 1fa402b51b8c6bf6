//! Frames: `type u8, channel u16, size u32, payload, 0xCE`.
//!
//! [`Frame::decode`] works on a byte buffer that may hold a partial frame (it then answers
//! `Ok(None)`), so a blocking reader can keep what it has read across a timeout.

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};
use crate::method::Method;
use crate::properties::BasicProperties;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Type, channel and size before the payload, plus the end octet after it.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may announce, and the limit before tuning.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The class of `basic`, the only class with content.
pub const CLASS_BASIC: u16 = 60;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method {
        channel: u16,
        method: Method,
    },
    Header {
        channel: u16,
        body_size: u64,
        properties: BasicProperties,
    },
    Body {
        channel: u16,
        payload: Vec<u8>,
    },
    Heartbeat,
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. } => *channel,
            Frame::Heartbeat => 0,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut payload = Vec::new();
        let (kind, channel) = match self {
            Frame::Method { channel, method } => {
                method.encode(&mut payload)?;
                (FRAME_METHOD, *channel)
            }
            Frame::Header {
                channel,
                body_size,
                properties,
            } => {
                payload.extend_from_slice(&CLASS_BASIC.to_be_bytes());
                payload.extend_from_slice(&0u16.to_be_bytes()); // weight
                payload.extend_from_slice(&body_size.to_be_bytes());
                properties.encode(&mut payload)?;
                (FRAME_HEADER, *channel)
            }
            Frame::Body {
                channel,
                payload: p,
            } => {
                return encode_raw(out, FRAME_BODY, *channel, p);
            }
            Frame::Heartbeat => (FRAME_HEARTBEAT, 0),
        };
        encode_raw(out, kind, channel, &payload)
    }

    /// Decodes the first frame in `buf`: `Ok(None)` if `buf` holds only part of it, otherwise
    /// the frame and how many bytes it took. A declared size over `frame_max` (0: no limit) is
    /// an error before the payload is even read.
    pub fn decode(buf: &[u8], frame_max: u32) -> Result<Option<(Frame, usize)>, DecodeError> {
        let mut r = Reader::new(buf);
        let (Ok(kind), Ok(channel), Ok(size)) = (r.u8(), r.u16(), r.u32()) else {
            return Ok(None);
        };
        let total = u64::from(size) + FRAME_OVERHEAD as u64;
        if frame_max != 0 && total > u64::from(frame_max) {
            return Err(DecodeError::FrameTooLarge {
                size: total,
                max: frame_max,
            });
        }
        let Ok(total) = usize::try_from(total) else {
            return Err(DecodeError::FrameTooLarge {
                size: total,
                max: frame_max,
            });
        };
        if buf.len() < total {
            return Ok(None);
        }
        let payload = &buf[7..total - 1];
        if buf[total - 1] != FRAME_END {
            return Err(DecodeError::BadFrameEnd(buf[total - 1]));
        }
        let frame = Self::decode_payload(kind, channel, payload)?;
        Ok(Some((frame, total)))
    }

    fn decode_payload(kind: u8, channel: u16, payload: &[u8]) -> Result<Frame, DecodeError> {
        let mut r = Reader::new(payload);
        let frame = match kind {
            FRAME_METHOD => Frame::Method {
                channel,
                method: Method::decode(&mut r)?,
            },
            FRAME_HEADER => {
                let class = r.u16()?;
                if class != CLASS_BASIC {
                    return Err(DecodeError::UnsupportedContentClass(class));
                }
                let _weight = r.u16()?;
                Frame::Header {
                    channel,
                    body_size: r.u64()?,
                    properties: BasicProperties::decode(&mut r)?,
                }
            }
            FRAME_BODY => {
                return Ok(Frame::Body {
                    channel,
                    payload: payload.to_vec(),
                })
            }
            FRAME_HEARTBEAT if channel == 0 && payload.is_empty() => Frame::Heartbeat,
            FRAME_HEARTBEAT => return Err(DecodeError::BadHeartbeat(channel)),
            other => return Err(DecodeError::UnknownFrameType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}

fn encode_raw(
    out: &mut Vec<u8>,
    kind: u8,
    channel: u16,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let size = u32::try_from(payload.len()).map_err(|_| EncodeError::TooLong(payload.len()))?;
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
    Ok(())
}

/// Content frames for one message: a header and the body split so that no frame exceeds
/// `frame_max` (0: no limit). An empty body has no body frame.
pub fn content_frames<'a>(
    channel: u16,
    properties: &'a BasicProperties,
    body: &'a [u8],
    frame_max: u32,
) -> impl Iterator<Item = Frame> + 'a {
    let chunk = match frame_max {
        0 => u32::MAX as usize - FRAME_OVERHEAD,
        n => (n as usize).saturating_sub(FRAME_OVERHEAD).max(1),
    };
    let header = Frame::Header {
        channel,
        body_size: body.len() as u64,
        properties: properties.clone(),
    };
    std::iter::once(header).chain(body.chunks(chunk).map(move |c| Frame::Body {
        channel,
        payload: c.to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::FieldTable;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Heartbeat,
            Frame::Method {
                channel: 0,
                method: Method::ConnectionTune {
                    channel_max: 2047,
                    frame_max: 131072,
                    heartbeat: 60,
                },
            },
            Frame::Method {
                channel: 3,
                method: Method::QueueDeclare {
                    queue: "video".into(),
                    passive: false,
                    durable: true,
                    exclusive: false,
                    auto_delete: false,
                    no_wait: false,
                    arguments: FieldTable::new().with("x-queue-type", "quorum"),
                },
            },
            Frame::Header {
                channel: 3,
                body_size: 5,
                properties: BasicProperties::persistent("application/json").with_message_id("m"),
            },
            Frame::Body {
                channel: 3,
                payload: b"hello".to_vec(),
            },
            Frame::Body {
                channel: 65535,
                payload: Vec::new(),
            },
        ]
    }

    #[test]
    fn frames_round_trip() {
        for f in samples() {
            let mut out = Vec::new();
            f.encode(&mut out).unwrap();
            assert_eq!(
                Frame::decode(&out, 131072),
                Ok(Some((f.clone(), out.len())))
            );
            // A second frame behind it is left alone.
            out.extend_from_slice(&out.clone());
            assert_eq!(Frame::decode(&out, 0).unwrap().unwrap().1, out.len() / 2);
        }
    }

    #[test]
    fn truncated_frames_ask_for_more() {
        for f in samples() {
            let mut out = Vec::new();
            f.encode(&mut out).unwrap();
            for cut in 0..out.len() {
                assert_eq!(
                    Frame::decode(&out[..cut], 131072),
                    Ok(None),
                    "{f:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn oversize_frames_fail_before_the_payload_arrives() {
        let header = [FRAME_BODY, 0, 1, 0, 0, 0x10, 0];
        assert_eq!(
            Frame::decode(&header, FRAME_MIN_SIZE),
            Err(DecodeError::FrameTooLarge {
                size: 4104,
                max: 4096
            })
        );
        let huge = [FRAME_BODY, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert!(Frame::decode(&huge, 131072).is_err());
        assert_eq!(Frame::decode(&huge, 0), Ok(None));
    }

    #[test]
    fn bad_end_type_and_heartbeat_are_errors() {
        assert_eq!(
            Frame::decode(&[3, 0, 1, 0, 0, 0, 0, 0], 0),
            Err(DecodeError::BadFrameEnd(0))
        );
        assert_eq!(
            Frame::decode(&[9, 0, 1, 0, 0, 0, 0, 0xCE], 0),
            Err(DecodeError::UnknownFrameType(9))
        );
        assert_eq!(
            Frame::decode(&[8, 0, 1, 0, 0, 0, 0, 0xCE], 0),
            Err(DecodeError::BadHeartbeat(1))
        );
        // A method frame with trailing garbage after its arguments.
        let mut out = Vec::new();
        Frame::Method {
            channel: 1,
            method: Method::ChannelCloseOk,
        }
        .encode(&mut out)
        .unwrap();
        out.insert(11, 0);
        out[6] += 1;
        assert_eq!(Frame::decode(&out, 0), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn bodies_are_split_at_frame_max() {
        let body = vec![7u8; 10_000];
        let props = BasicProperties::default();
        let frames: Vec<_> = content_frames(1, &props, &body, 4096).collect();
        assert_eq!(frames.len(), 1 + 3);
        let mut total = 0;
        for f in &frames[1..] {
            let mut out = Vec::new();
            f.encode(&mut out).unwrap();
            assert!(out.len() <= 4096);
            let Frame::Body { payload, .. } = f else {
                panic!("{f:?}")
            };
            total += payload.len();
        }
        assert_eq!(total, body.len());
        assert_eq!(content_frames(1, &props, &[], 4096).count(), 1);
        assert_eq!(content_frames(1, &props, &body, 0).count(), 2);
    }
}
