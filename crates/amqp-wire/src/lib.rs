//! A small blocking AMQP 0-9-1 client for publishers, written for Spin components on
//! `wasm32-wasip2`, where `std::net::TcpStream` works (through wasi:sockets) but no async AMQP
//! crate does.
//!
//! - [`connect`] / [`Connection::connect`] open a TCP connection from an `amqp://` URL;
//!   [`Connection::open`] runs the handshake over any [`Transport`] (any `Read + Write`).
//! - [`Channel`]: `queue.declare`, `queue.delete`, `confirm.select`, `basic.publish` with
//!   publisher confirms (ack, nack, return), and `basic.get`.
//! - [`frame`], [`method`], [`table`], [`properties`]: the codec. Decoders never panic.
//!
//! ```no_run
//! use amqp_wire::{BasicProperties, FieldTable, QueueOptions};
//!
//! # fn main() -> Result<(), amqp_wire::Error> {
//! let mut conn = amqp_wire::connect("amqp://mp3:secret@127.0.0.1:5672/%2f")?;
//! let mut channel = conn.open_channel()?;
//! channel.queue_declare("video", QueueOptions::durable(), FieldTable::new())?;
//! let properties = BasicProperties::persistent("application/json").with_message_id("job-1");
//! // Mandatory, with a publisher confirm: Ok means the broker has the message in a queue.
//! channel.publish_confirmed("", "video", &properties, br#"{"video_fid":"..."}"#)?;
//! channel.close()?;
//! conn.close()
//! # }
//! ```
//!
//! One channel is open at a time (it borrows the connection). Call `close` on both: dropping
//! them just drops the socket. Heartbeats are off unless asked for (`?heartbeat=N` or
//! [`ConnectOptions::heartbeat`]); when on, they are sent only while the client is inside a
//! call (waiting, writing, or [`Connection::idle`]).

mod channel;
mod codec;
mod connection;
mod error;
pub mod frame;
pub mod method;
pub mod properties;
pub mod table;
mod url;

pub use channel::{Channel, GetMessage, QueueDeclareOk, QueueOptions};
pub use codec::Reader;
pub use connection::{connect, ConnectOptions, Connection, Transport, Tuning};
pub use error::{DecodeError, EncodeError, Error, Returned};
pub use properties::{BasicProperties, PERSISTENT};
pub use table::{FieldTable, FieldValue};
pub use url::AmqpUrl;

/// AMQP reply codes the broker uses when it closes a channel or connection.
pub mod reply_code {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const NO_ROUTE: u16 = 312;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const NOT_ALLOWED: u16 = 530;
}
