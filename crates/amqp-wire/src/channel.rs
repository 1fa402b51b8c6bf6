//! A channel: declare and delete queues, publish with confirms, `basic.get`, close.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::connection::{unexpected, Connection, Transport};
use crate::error::{Error, Returned};
use crate::frame::{content_frames, Frame};
use crate::method::{Close, Method};
use crate::properties::BasicProperties;
use crate::table::FieldTable;

/// Flags of `queue.declare`; all off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueOptions {
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
}

impl QueueOptions {
    /// A durable queue that survives a broker restart (what the job queues are).
    pub fn durable() -> Self {
        Self {
            durable: true,
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclareOk {
    pub queue: String,
    pub message_count: u32,
    pub consumer_count: u32,
}

/// A message fetched with [`Channel::basic_get`].
#[derive(Debug, Clone, PartialEq)]
pub struct GetMessage {
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: String,
    pub routing_key: String,
    /// Messages left in the queue.
    pub message_count: u32,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// An open channel, borrowing its connection.
pub struct Channel<'c, S: Transport> {
    conn: &'c mut Connection<S>,
    id: u16,
    closed: bool,
    /// The delivery tag of the next publish once confirms are on; 0 while they are off.
    next_tag: u64,
    unconfirmed: BTreeSet<u64>,
    nacked: Vec<u64>,
    returned: Vec<Returned>,
}

impl<'c, S: Transport> Channel<'c, S> {
    pub(crate) fn new(conn: &'c mut Connection<S>, id: u16) -> Self {
        Self {
            conn,
            id,
            closed: false,
            next_tag: 0,
            unconfirmed: BTreeSet::new(),
            nacked: Vec::new(),
            returned: Vec::new(),
        }
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub(crate) fn open(&mut self) -> Result<(), Error> {
        self.rpc(Method::ChannelOpen, "channel.open-ok", |m| {
            matches!(m, Method::ChannelOpenOk)
        })?;
        Ok(())
    }

    /// Turns publisher confirms on: from now on every publish gets a delivery tag (1, 2, ...).
    pub fn confirm_select(&mut self) -> Result<(), Error> {
        if self.next_tag == 0 {
            self.rpc(
                Method::ConfirmSelect { no_wait: false },
                "confirm.select-ok",
                |m| matches!(m, Method::ConfirmSelectOk),
            )?;
            self.next_tag = 1;
        }
        Ok(())
    }

    /// `queue.declare`. Declaring an existing queue with other arguments is a channel error
    /// (406 PRECONDITION_FAILED).
    pub fn queue_declare(
        &mut self,
        queue: &str,
        options: QueueOptions,
        arguments: FieldTable,
    ) -> Result<QueueDeclareOk, Error> {
        let method = Method::QueueDeclare {
            queue: queue.to_owned(),
            passive: options.passive,
            durable: options.durable,
            exclusive: options.exclusive,
            auto_delete: options.auto_delete,
            no_wait: false,
            arguments,
        };
        match self.rpc(method, "queue.declare-ok", |m| {
            matches!(m, Method::QueueDeclareOk { .. })
        })? {
            Method::QueueDeclareOk {
                queue,
                message_count,
                consumer_count,
            } => Ok(QueueDeclareOk {
                queue,
                message_count,
                consumer_count,
            }),
            other => Err(unexpected(&other, "queue.declare-ok")),
        }
    }

    /// `queue.delete`; returns how many messages the queue held.
    pub fn queue_delete(&mut self, queue: &str) -> Result<u32, Error> {
        let method = Method::QueueDelete {
            queue: queue.to_owned(),
            if_unused: false,
            if_empty: false,
            no_wait: false,
        };
        match self.rpc(method, "queue.delete-ok", |m| {
            matches!(m, Method::QueueDeleteOk { .. })
        })? {
            Method::QueueDeleteOk { message_count } => Ok(message_count),
            other => Err(unexpected(&other, "queue.delete-ok")),
        }
    }

    /// Sends one message (method, header and body frames no larger than frame_max) and
    /// returns its delivery tag, or 0 when confirms are off. Use the default exchange `""` to
    /// route to the queue named by `routing_key`. With `mandatory`, an unroutable message
    /// comes back as [`Error::Returned`] from [`Channel::wait_for_confirms`].
    pub fn basic_publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<u64, Error> {
        self.ensure_open()?;
        let method = Method::BasicPublish {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            mandatory,
            immediate: false,
        };
        self.conn.write_frame(&Frame::Method {
            channel: self.id,
            method,
        })?;
        let frame_max = self.conn.tuning().frame_max;
        for frame in content_frames(self.id, properties, body, frame_max) {
            self.conn.write_frame(&frame)?;
        }
        self.conn.flush()?;
        if self.next_tag == 0 {
            return Ok(0);
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        self.unconfirmed.insert(tag);
        Ok(tag)
    }

    /// Waits until the broker has confirmed every publish so far. Fails with
    /// [`Error::Returned`] if a mandatory message was unroutable, [`Error::Nacked`] if the
    /// broker refused one, [`Error::ChannelClosed`] if it closed the channel (for instance 404
    /// for a missing exchange), or [`Error::Timeout`]; after a timeout, waiting again is fine.
    pub fn wait_for_confirms(&mut self, timeout: Duration) -> Result<(), Error> {
        if self.next_tag == 0 {
            return Err(Error::Usage("wait_for_confirms needs confirm_select first"));
        }
        let deadline = Instant::now() + timeout;
        while !self.unconfirmed.is_empty() {
            if let Some(other) = self.next_method(deadline, "publisher confirms")? {
                return Err(unexpected(&other, "publisher confirms"));
            }
        }
        if !self.returned.is_empty() {
            let first = self.returned.remove(0);
            self.returned.clear();
            self.nacked.clear();
            return Err(Error::Returned(Box::new(first)));
        }
        if !self.nacked.is_empty() {
            return Err(Error::Nacked {
                delivery_tags: std::mem::take(&mut self.nacked),
            });
        }
        Ok(())
    }

    /// The gateway's call: turns confirms on if needed, publishes a mandatory message and
    /// waits for its confirm (within the connection's timeout).
    pub fn publish_confirmed(
        &mut self,
        exchange: &str,
        routing_key: &str,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Result<(), Error> {
        self.confirm_select()?;
        self.basic_publish(exchange, routing_key, true, properties, body)?;
        let timeout = self.conn.timeout;
        self.wait_for_confirms(timeout)
    }

    /// `basic.get`: one message from `queue`, or `None` if it is empty. With `no_ack` false,
    /// settle it with [`Channel::basic_ack`].
    pub fn basic_get(&mut self, queue: &str, no_ack: bool) -> Result<Option<GetMessage>, Error> {
        let method = Method::BasicGet {
            queue: queue.to_owned(),
            no_ack,
        };
        let reply = self.rpc(method, "basic.get-ok", |m| {
            matches!(m, Method::BasicGetOk { .. } | Method::BasicGetEmpty)
        })?;
        let Method::BasicGetOk {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            message_count,
        } = reply
        else {
            return Ok(None);
        };
        let deadline = Instant::now() + self.conn.timeout;
        let (properties, body) = self.read_content(deadline, "basic.get-ok content")?;
        Ok(Some(GetMessage {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            message_count,
            properties,
            body,
        }))
    }

    /// Acknowledges a message received with [`Channel::basic_get`].
    pub fn basic_ack(&mut self, delivery_tag: u64, multiple: bool) -> Result<(), Error> {
        self.ensure_open()?;
        self.conn.send_method(
            self.id,
            Method::BasicAck {
                delivery_tag,
                multiple,
            },
        )
    }

    /// Closes the channel with the close handshake. A channel the broker already closed is
    /// just dropped.
    pub fn close(mut self) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        let close = Close::normal();
        self.rpc(Method::ChannelClose(close), "channel.close-ok", |m| {
            matches!(m, Method::ChannelCloseOk)
        })?;
        self.closed = true;
        Ok(())
    }

    fn ensure_open(&self) -> Result<(), Error> {
        if self.closed {
            return Err(Error::Usage("the channel is closed"));
        }
        Ok(())
    }

    /// Sends `method` and waits for the reply `is_reply` accepts. A timeout leaves the
    /// connection unusable (the reply could still arrive and be taken for another).
    fn rpc(
        &mut self,
        method: Method,
        expected: &'static str,
        is_reply: fn(&Method) -> bool,
    ) -> Result<Method, Error> {
        self.ensure_open()?;
        self.conn.send_method(self.id, method)?;
        let deadline = Instant::now() + self.conn.timeout;
        loop {
            match self.next_method(deadline, expected) {
                Ok(Some(m)) if is_reply(&m) => return Ok(m),
                Ok(Some(m)) => return Err(unexpected(&m, expected)),
                Ok(None) => {}
                Err(e) => {
                    if matches!(e, Error::Timeout(_)) {
                        self.conn.broken = true;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// The next method on this channel. Confirms and returns are recorded (`Ok(None)`), a
    /// channel.close is answered and becomes [`Error::ChannelClosed`].
    fn next_method(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Option<Method>, Error> {
        let method = match self.conn.next_channel_frame(self.id, deadline, what)? {
            Frame::Method { method, .. } => method,
            _ => return Err(Error::UnexpectedFrame("content without a method")),
        };
        match method {
            Method::ChannelClose(close) => {
                self.closed = true;
                self.conn.send_method(self.id, Method::ChannelCloseOk)?;
                Err(Error::ChannelClosed {
                    code: close.reply_code,
                    text: close.reply_text,
                    class_id: close.class_id,
                    method_id: close.method_id,
                })
            }
            Method::BasicAck {
                delivery_tag,
                multiple,
            } => {
                self.settle(delivery_tag, multiple);
                Ok(None)
            }
            Method::BasicNack {
                delivery_tag,
                multiple,
                ..
            } => {
                let settled = self.settle(delivery_tag, multiple);
                self.nacked.extend(settled);
                Ok(None)
            }
            Method::BasicReturn {
                reply_code,
                reply_text,
                exchange,
                routing_key,
            } => {
                let (properties, body) = self.read_content(deadline, what)?;
                self.returned.push(Returned {
                    reply_code,
                    reply_text,
                    exchange,
                    routing_key,
                    properties,
                    body,
                });
                Ok(None)
            }
            other => Ok(Some(other)),
        }
    }

    /// Removes and returns the confirmed tags: `tag` alone, or every tag up to it.
    fn settle(&mut self, tag: u64, multiple: bool) -> Vec<u64> {
        if multiple {
            let rest = match tag.checked_add(1) {
                Some(next) => self.unconfirmed.split_off(&next),
                None => BTreeSet::new(),
            };
            std::mem::replace(&mut self.unconfirmed, rest)
                .into_iter()
                .collect()
        } else if self.unconfirmed.remove(&tag) {
            vec![tag]
        } else {
            Vec::new()
        }
    }

    /// The header and body frames that follow a content-bearing method.
    fn read_content(
        &mut self,
        deadline: Instant,
        what: &'static str,
    ) -> Result<(BasicProperties, Vec<u8>), Error> {
        let Frame::Header {
            body_size,
            properties,
            ..
        } = self.conn.next_channel_frame(self.id, deadline, what)?
        else {
            return Err(Error::UnexpectedFrame("non-header after a content method"));
        };
        // The size is the broker's word; grow as bytes really arrive.
        let mut body = Vec::with_capacity(body_size.min(1 << 20) as usize);
        while (body.len() as u64) < body_size {
            match self.conn.next_channel_frame(self.id, deadline, what)? {
                Frame::Body { payload, .. } => body.extend_from_slice(&payload),
                _ => return Err(Error::UnexpectedFrame("non-body inside message content")),
            }
        }
        if body.len() as u64 != body_size {
            return Err(Error::UnexpectedFrame("body longer than its header said"));
        }
        Ok((properties, body))
    }
}
