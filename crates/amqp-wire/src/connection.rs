//! The connection: TCP connect, handshake (start, tune, open), framed I/O with deadlines and
//! heartbeats, connection-level events (close, blocked), and close.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::channel::Channel;
use crate::error::{EncodeError, Error};
use crate::frame::{Frame, FRAME_MIN_SIZE};
use crate::method::{Close, Method};
use crate::reply_code::{ACCESS_REFUSED, FRAME_ERROR};
use crate::table::{FieldTable, FieldValue};
use crate::url::AmqpUrl;

const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// Frames accepted before tuning; RabbitMQ's connection.start is well under this.
const HANDSHAKE_FRAME_MAX: u32 = 128 * 1024;
/// Buffered frames are written once they reach this size.
const WRITE_CHUNK: usize = 64 * 1024;
const READ_CHUNK: usize = 32 * 1024;

/// A byte stream the connection runs over. `TcpStream` implements it; in-memory streams can
/// keep the default `set_read_timeout` (they then never time out).
pub trait Transport: Read + Write {
    /// How long the next read may block; `None` is forever.
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Ok(())
    }
}

impl Transport for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

/// Connection settings; URL query parameters override the matching fields.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How long to wait for any reply from the broker (handshake, declare, close, ...), and
    /// the TCP write timeout.
    pub timeout: Duration,
    /// Heartbeat to ask for, in seconds; 0 (the default) turns heartbeats off, which suits
    /// short-lived connections. When on, heartbeats are sent while the client waits or writes.
    pub heartbeat: u16,
    /// Largest frame to accept and send (the broker may lower it).
    pub frame_max: u32,
    /// Shown in the management UI.
    pub connection_name: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            heartbeat: 0,
            frame_max: 128 * 1024,
            connection_name: None,
        }
    }
}

/// What the handshake settled on. `channel_max` and `frame_max` 0 mean "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

/// An open AMQP connection over `S`.
pub struct Connection<S: Transport> {
    stream: S,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    tuning: Tuning,
    pub(crate) timeout: Duration,
    last_write: Instant,
    next_channel: u16,
    pub(crate) broken: bool,
    blocked: Option<String>,
    server_properties: FieldTable,
}

/// `Connection::connect(url, ConnectOptions::default())`.
pub fn connect(url: &str) -> Result<Connection<TcpStream>, Error> {
    Connection::connect(url, ConnectOptions::default())
}

impl Connection<TcpStream> {
    /// Connects over TCP to `amqp://user:pass@host:port/vhost` and runs the handshake.
    pub fn connect(url: &str, mut options: ConnectOptions) -> Result<Self, Error> {
        let url = AmqpUrl::parse(url)?;
        if let Some(h) = url.heartbeat {
            options.heartbeat = h;
        }
        if let Some(t) = url.connection_timeout {
            options.connect_timeout = t;
        }
        if url.connection_name.is_some() {
            options.connection_name.clone_from(&url.connection_name);
        }
        let addrs = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|_| Error::Resolve(format!("{}:{}", url.host, url.port)))?;
        let mut last = Error::Resolve(format!("{}:{}", url.host, url.port));
        for addr in addrs {
            // On wasm32-wasip2, std's connect_timeout reports success for a refused connection
            // and leaves the real error behind for take_error (checked under wasmtime).
            let connected =
                TcpStream::connect_timeout(&addr, options.connect_timeout).and_then(|stream| {
                    match stream.take_error()? {
                        Some(e) => Err(e),
                        None => Ok(stream),
                    }
                });
            match connected {
                Ok(stream) => {
                    // Frames are written whole from one buffer; Nagle only adds latency. Not
                    // every platform has the option (wasi:sockets does not), so it is a hint.
                    let _ = stream.set_nodelay(true);
                    stream.set_write_timeout(Some(options.timeout))?;
                    return Connection::open(stream, &url, &options);
                }
                Err(e) => last = connect_error(e),
            }
        }
        Err(last)
    }
}

impl<S: Transport> Connection<S> {
    /// Runs the AMQP handshake over an already connected stream, with the credentials and
    /// vhost of `url` (its host and port are not used).
    pub fn open(stream: S, url: &AmqpUrl, options: &ConnectOptions) -> Result<Self, Error> {
        let mut conn = Connection {
            stream,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            tuning: Tuning {
                channel_max: 0,
                frame_max: HANDSHAKE_FRAME_MAX,
                heartbeat: 0,
            },
            timeout: options.timeout,
            last_write: Instant::now(),
            next_channel: 1,
            broken: false,
            blocked: None,
            server_properties: FieldTable::new(),
        };
        conn.handshake(url, options)?;
        Ok(conn)
    }

    fn handshake(&mut self, url: &AmqpUrl, options: &ConnectOptions) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        self.wbuf.extend_from_slice(PROTOCOL_HEADER);
        self.flush()?;
        // A broker that does not speak 0-9-1 answers with its own protocol header and hangs up.
        while self.rbuf.len() < 8 {
            match self.read_more(deadline, "connection.start") {
                Err(Error::ConnectionLost) if self.rbuf.starts_with(b"AMQP") => break,
                other => other?,
            }
        }
        if self.rbuf.starts_with(b"AMQP") {
            return Err(Error::ProtocolVersion(self.rbuf.clone()));
        }

        let (server_properties, mechanisms) =
            match self.handshake_method(deadline, "connection.start")? {
                Method::ConnectionStart {
                    server_properties,
                    mechanisms,
                    ..
                } => (server_properties, mechanisms),
                other => return Err(unexpected(&other, "connection.start")),
            };
        self.server_properties = server_properties;
        if !mechanisms.split(' ').any(|m| m == "PLAIN") {
            return Err(Error::NoPlainMechanism(mechanisms));
        }
        let response = [b"\0", url.user.as_bytes(), b"\0", url.password.as_bytes()].concat();
        self.send_method(
            0,
            Method::ConnectionStartOk {
                client_properties: client_properties(options.connection_name.as_deref()),
                mechanism: "PLAIN".into(),
                response,
                locale: "en_US".into(),
            },
        )?;

        // A refused login is connection.close 403 (we announce authentication_failure_close);
        // brokers without that capability just hang up.
        let tune = match self.handshake_method(deadline, "connection.tune") {
            Err(Error::ConnectionClosed {
                code: ACCESS_REFUSED,
                text,
                ..
            }) => return Err(Error::AuthenticationFailed(text)),
            Err(Error::ConnectionLost) => {
                return Err(Error::AuthenticationFailed(
                    "the broker hung up after connection.start-ok".into(),
                ))
            }
            other => other?,
        };
        let Method::ConnectionTune {
            channel_max,
            frame_max,
            heartbeat,
        } = tune
        else {
            return Err(unexpected(&tune, "connection.tune"));
        };
        self.tuning = Tuning {
            channel_max,
            frame_max: match negotiate(options.frame_max, frame_max) {
                0 => 0,
                n => n.max(FRAME_MIN_SIZE),
            },
            heartbeat: if options.heartbeat == 0 {
                0
            } else {
                negotiate(options.heartbeat, heartbeat)
            },
        };
        self.send_method(
            0,
            Method::ConnectionTuneOk {
                channel_max: self.tuning.channel_max,
                frame_max: self.tuning.frame_max,
                heartbeat: self.tuning.heartbeat,
            },
        )?;
        self.send_method(
            0,
            Method::ConnectionOpen {
                virtual_host: url.vhost.clone(),
            },
        )?;
        match self.handshake_method(deadline, "connection.open-ok")? {
            Method::ConnectionOpenOk => Ok(()),
            other => Err(unexpected(&other, "connection.open-ok")),
        }
    }

    /// The next method on channel 0 during the handshake; a close becomes an error.
    fn handshake_method(&mut self, deadline: Instant, what: &'static str) -> Result<Method, Error> {
        match self.next_frame(deadline, what)? {
            Frame::Method {
                channel: 0,
                method: Method::ConnectionClose(close),
            } => Err(self.closed_by_broker(close)),
            Frame::Method { channel: 0, method } => Ok(method),
            _ => Err(Error::UnexpectedFrame("non-method during the handshake")),
        }
    }

    /// What the broker announced in connection.start (product, version, capabilities, ...).
    pub fn server_properties(&self) -> &FieldTable {
        &self.server_properties
    }

    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// The reason the broker gave in connection.blocked, until it sends connection.unblocked.
    /// While blocked the broker holds publishes back, so confirms wait.
    pub fn blocked(&self) -> Option<&str> {
        self.blocked.as_deref()
    }

    /// Opens a channel. It borrows the connection until it is closed or dropped.
    pub fn open_channel(&mut self) -> Result<Channel<'_, S>, Error> {
        let id = self.next_channel;
        let max = if self.tuning.channel_max == 0 {
            u16::MAX
        } else {
            self.tuning.channel_max
        };
        self.next_channel = if id >= max { 1 } else { id + 1 };
        let mut channel = Channel::new(self, id);
        channel.open()?;
        Ok(channel)
    }

    /// Waits `duration` with no channel open, answering the broker: heartbeats go out when
    /// due, connection.blocked is recorded, a connection.close becomes an error.
    pub fn idle(&mut self, duration: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + duration;
        loop {
            match self.next_channel_frame(0, deadline, "nothing (idle)") {
                Ok(_) => {}
                Err(Error::Timeout(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the connection (and its channels) with the close handshake.
    pub fn close(mut self) -> Result<(), Error> {
        if self.broken {
            return Ok(());
        }
        let close = Close::normal();
        self.send_method(0, Method::ConnectionClose(close))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.next_frame(deadline, "connection.close-ok")? {
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionCloseOk,
                } => return Ok(()),
                // Both sides closing at once: the broker's close answers ours.
                Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(_),
                } => {
                    let _ = self.send_method(0, Method::ConnectionCloseOk);
                    return Ok(());
                }
                _ => {}
            }
        }
    }

    /// Answers a broker's connection.close and turns it into the error to report.
    fn closed_by_broker(&mut self, close: Close) -> Error {
        let _ = self.send_method(0, Method::ConnectionCloseOk);
        self.broken = true;
        Error::ConnectionClosed {
            code: close.reply_code,
            text: close.reply_text,
            class_id: close.class_id,
            method_id: close.method_id,
        }
    }

    /// The next frame for `channel`, handling connection-level frames on the way.
    pub(crate) fn next_channel_frame(
        &mut self,
        channel: u16,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Frame, Error> {
        loop {
            let frame = self.next_frame(deadline, what)?;
            match frame {
                Frame::Method { channel: 0, method } => match method {
                    Method::ConnectionClose(close) => return Err(self.closed_by_broker(close)),
                    Method::ConnectionBlocked { reason } => self.blocked = Some(reason),
                    Method::ConnectionUnblocked => self.blocked = None,
                    other => return Err(unexpected(&other, what)),
                },
                f if f.channel() == channel => return Ok(f),
                // A channel we no longer use: answer a close, drop the rest.
                Frame::Method {
                    channel: other,
                    method: Method::ChannelClose(_),
                } => self.send_method(other, Method::ChannelCloseOk)?,
                Frame::Header { channel: 0, .. } | Frame::Body { channel: 0, .. } => {
                    return Err(Error::UnexpectedFrame("content on channel 0"))
                }
                _ => {}
            }
        }
    }

    /// The next frame of any channel, heartbeats skipped.
    fn next_frame(&mut self, deadline: Instant, what: &'static str) -> Result<Frame, Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        loop {
            match Frame::decode(&self.rbuf, self.tuning.frame_max) {
                Ok(Some((frame, used))) => {
                    self.rbuf.drain(..used);
                    if frame != Frame::Heartbeat {
                        return Ok(frame);
                    }
                }
                Ok(None) => self.read_more(deadline, what)?,
                Err(e) => {
                    let close = Close {
                        reply_code: FRAME_ERROR,
                        reply_text: e.to_string().chars().take(200).collect(),
                        class_id: 0,
                        method_id: 0,
                    };
                    let _ = self.send_method(0, Method::ConnectionClose(close));
                    self.broken = true;
                    return Err(e.into());
                }
            }
        }
    }

    /// One read (or one read timeout) into the buffer, sending a heartbeat when one is due.
    fn read_more(&mut self, deadline: Instant, what: &'static str) -> Result<(), Error> {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Timeout(what));
        }
        let mut wait = deadline - now;
        if self.tuning.heartbeat > 0 {
            let half = Duration::from_secs(u64::from(self.tuning.heartbeat)) / 2;
            if self.last_write.elapsed() >= half {
                self.write_frame(&Frame::Heartbeat)?;
                self.flush()?;
            }
            wait = wait.min(half);
        }
        let result = self
            .stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .and_then(|()| {
                let len = self.rbuf.len();
                self.rbuf.resize(len + READ_CHUNK, 0);
                let read = self.stream.read(&mut self.rbuf[len..]);
                self.rbuf.truncate(len + *read.as_ref().unwrap_or(&0));
                read
            });
        match result {
            Ok(0) => {
                self.broken = true;
                Err(Error::ConnectionLost)
            }
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => {
                self.broken = true;
                Err(io_error(e))
            }
        }
    }

    pub(crate) fn send_method(&mut self, channel: u16, method: Method) -> Result<(), Error> {
        self.write_frame(&Frame::Method { channel, method })?;
        self.flush()
    }

    /// Buffers `frame`, writing the buffer out once it is large.
    pub(crate) fn write_frame(&mut self, frame: &Frame) -> Result<(), Error> {
        if self.broken {
            return Err(Error::Broken);
        }
        let start = self.wbuf.len();
        frame.encode(&mut self.wbuf)?;
        let size = self.wbuf.len() - start;
        let max = self.tuning.frame_max;
        if max != 0 && size > max as usize {
            self.wbuf.truncate(start);
            return Err(EncodeError::FrameTooLarge { size, max }.into());
        }
        if self.wbuf.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<(), Error> {
        let result = self
            .stream
            .write_all(&self.wbuf)
            .and_then(|()| self.stream.flush());
        self.wbuf.clear();
        self.last_write = Instant::now();
        result.map_err(|e| {
            self.broken = true;
            io_error(e)
        })
    }
}

fn connect_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Error::ConnectionRefused(e),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout("the TCP connection"),
        _ => Error::Io(e),
    }
}

/// A peer that resets or half-closes the socket has dropped the connection.
fn io_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Error::ConnectionLost,
        _ => Error::Io(e),
    }
}

pub(crate) fn unexpected(method: &Method, expected: &'static str) -> Error {
    let (class_id, method_id) = method.id();
    Error::UnexpectedMethod {
        class_id,
        method_id,
        expected,
    }
}

/// The smaller of two limits where 0 means "none".
fn negotiate<T: Ord + Default + Copy>(ours: T, theirs: T) -> T {
    let zero = T::default();
    match (ours == zero, theirs == zero) {
        (true, _) => theirs,
        (_, true) => ours,
        _ => ours.min(theirs),
    }
}

fn client_properties(connection_name: Option<&str>) -> FieldTable {
    let capabilities = FieldTable::new()
        .with("publisher_confirms", true)
        .with("basic.nack", true)
        .with("authentication_failure_close", true)
        .with("connection.blocked", true);
    let mut props = FieldTable::new()
        .with("product", "amqp-wire")
        .with("version", env!("CARGO_PKG_VERSION"))
        .with("platform", "Rust")
        .with("capabilities", FieldValue::Table(capabilities));
    if let Some(name) = connection_name {
        props.insert("connection_name", name);
    }
    props
}

#[cfg(test)]
mod tests {
    use super::negotiate;

    #[test]
    fn zero_means_no_limit() {
        assert_eq!(negotiate(131072u32, 0), 131072);
        assert_eq!(negotiate(0u32, 4096), 4096);
        assert_eq!(negotiate(131072u32, 65536), 65536);
        assert_eq!(negotiate(0u16, 0), 0);
    }
}
