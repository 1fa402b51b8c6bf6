//! The one error type of the crate: every message fits on one line.

use bson::oid::ObjectId;

/// Everything that can go wrong talking to MongoDB.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o error talking to MongoDB: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid MongoDB connection string: {0}")]
    InvalidUri(String),
    #[error("malformed wire message: {0}")]
    Protocol(String),
    #[error("BSON encoding failed: {0}")]
    BsonEncode(#[from] bson::ser::Error),
    #[error("BSON decoding failed: {0}")]
    BsonDecode(#[from] bson::de::Error),
    /// The server answered `ok: 0`.
    #[error("command failed with code {code} ({code_name}): {message}")]
    Command {
        code: i32,
        code_name: String,
        message: String,
    },
    /// A write command succeeded as a command but reported `writeErrors` or `writeConcernError`.
    #[error("write failed with code {code}: {message}")]
    Write { code: i32, message: String },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
    /// A GridFS upload went over its `max_bytes`; nothing of it is left in the database.
    #[error("upload exceeds the limit of {max} bytes")]
    TooLarge { max: u64 },
    #[error("GridFS file {0} not found")]
    NotFound(ObjectId),
    #[error("GridFS file {id} is corrupt: {reason}")]
    Corrupt { id: ObjectId, reason: String },
    /// Reading the data to upload failed (the caller's reader, not the database).
    #[error("reading the upload source failed: {0}")]
    Source(std::io::Error),
}

impl Error {
    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        Error::Protocol(msg.into())
    }

    /// The server's error code, for `Command` and `Write` errors.
    pub fn code(&self) -> Option<i32> {
        match self {
            Error::Command { code, .. } | Error::Write { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether a unique index refused the write (MongoDB's code 11000).
    pub fn is_duplicate_key(&self) -> bool {
        self.code() == Some(11000)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
