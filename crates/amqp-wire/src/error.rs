//! The crate's error types: [`Error`] for everything a caller sees, [`DecodeError`] for bytes
//! that are not valid AMQP.

use std::io;

/// Why bytes could not be decoded. Decoders return this and never panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated input: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("frame of {size} bytes exceeds the negotiated frame_max of {max}")]
    FrameTooLarge { size: u64, max: u32 },
    #[error("frame does not end with 0xCE (found 0x{0:02X})")]
    BadFrameEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    #[error("unknown field table value type '{tag}' (0x{code:02X})", tag = char::from(*.0), code = .0)]
    UnknownFieldType(u8),
    #[error("field tables nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    #[error("content header for class {0}, only basic (60) is supported")]
    UnsupportedContentClass(u16),
    #[error("content header uses property flag continuation, which basic never needs")]
    PropertyFlagContinuation,
    #[error("heartbeat frame on channel {0} (must be 0) or with a payload")]
    BadHeartbeat(u16),
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("short string of {0} bytes is longer than 255")]
    ShortStringTooLong(usize),
    #[error("value of {0} bytes does not fit in a 32-bit length")]
    TooLong(usize),
    #[error("frame of {size} bytes exceeds the negotiated frame_max of {max}")]
    FrameTooLarge { size: usize, max: u32 },
}

/// Everything that can go wrong talking to the broker. Messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),
    #[error("connection refused")]
    ConnectionRefused(#[source] io::Error),
    #[error("could not resolve {0}")]
    Resolve(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("connection lost: the broker closed the socket without a close handshake")]
    ConnectionLost,
    #[error("server does not speak AMQP 0-9-1 (it answered {0:?})")]
    ProtocolVersion(Vec<u8>),
    #[error("broker offers no PLAIN authentication (mechanisms: {0})")]
    NoPlainMechanism(String),
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    #[error("malformed data from the broker: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("connection closed by the broker: {code} {text}")]
    ConnectionClosed {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    #[error("channel closed by the broker: {code} {text}")]
    ChannelClosed {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    #[error(
        "unexpected method {class_id}.{method_id} from the broker while waiting for {expected}"
    )]
    UnexpectedMethod {
        class_id: u16,
        method_id: u16,
        expected: &'static str,
    },
    #[error("unexpected {0} frame from the broker")]
    UnexpectedFrame(&'static str),
    #[error("broker refused the message")]
    Nacked { delivery_tags: Vec<u64> },
    #[error("broker returned the message as unroutable: {} {} (exchange '{}', routing key '{}')",
        .0.reply_code, .0.reply_text, .0.exchange, .0.routing_key)]
    Returned(Box<Returned>),
    #[error("{0}")]
    Usage(&'static str),
    #[error("connection is no longer usable after an earlier error")]
    Broken,
}

impl Error {
    /// The AMQP reply code when the broker closed the connection or channel (403 ACCESS_REFUSED,
    /// 404 NOT_FOUND, ...) or returned a message (312 NO_ROUTE).
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            Error::ConnectionClosed { code, .. } | Error::ChannelClosed { code, .. } => Some(*code),
            Error::Returned(r) => Some(r.reply_code),
            _ => None,
        }
    }
}

/// A message the broker gave back with `basic.return` (mandatory and unroutable).
#[derive(Debug, Clone, PartialEq)]
pub struct Returned {
    pub reply_code: u16,
    pub reply_text: String,
    pub exchange: String,
    pub routing_key: String,
    pub properties: crate::BasicProperties,
    pub body: Vec<u8>,
}
