//! The AMQP methods a publisher needs, both directions, so that tests can play the broker.
//! Methods this client never uses decode to [`Method::Other`] and are dealt with by the caller.

use crate::codec::{bits, put_long_bytes, put_short_str, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::table::FieldTable;

#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    ConnectionStart {
        version_major: u8,
        version_minor: u8,
        server_properties: FieldTable,
        mechanisms: String,
        locales: String,
    },
    ConnectionStartOk {
        client_properties: FieldTable,
        mechanism: String,
        response: Vec<u8>,
        locale: String,
    },
    ConnectionTune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionTuneOk {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionOpen {
        virtual_host: String,
    },
    ConnectionOpenOk,
    ConnectionClose(Close),
    ConnectionCloseOk,
    ConnectionBlocked {
        reason: String,
    },
    ConnectionUnblocked,
    ChannelOpen,
    ChannelOpenOk,
    ChannelClose(Close),
    ChannelCloseOk,
    QueueDeclare {
        queue: String,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        no_wait: bool,
        arguments: FieldTable,
    },
    QueueDeclareOk {
        queue: String,
        message_count: u32,
        consumer_count: u32,
    },
    QueueDelete {
        queue: String,
        if_unused: bool,
        if_empty: bool,
        no_wait: bool,
    },
    QueueDeleteOk {
        message_count: u32,
    },
    BasicPublish {
        exchange: String,
        routing_key: String,
        mandatory: bool,
        immediate: bool,
    },
    BasicReturn {
        reply_code: u16,
        reply_text: String,
        exchange: String,
        routing_key: String,
    },
    BasicGet {
        queue: String,
        no_ack: bool,
    },
    BasicGetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
        message_count: u32,
    },
    BasicGetEmpty,
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicNack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
    ConfirmSelect {
        no_wait: bool,
    },
    ConfirmSelectOk,
    /// A method this client does not model; its arguments are kept raw.
    Other {
        class_id: u16,
        method_id: u16,
        arguments: Vec<u8>,
    },
}

/// The arguments of `connection.close` and `channel.close`.
#[derive(Debug, Clone, PartialEq)]
pub struct Close {
    pub reply_code: u16,
    pub reply_text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl Close {
    /// A normal close by the client (reply code 200, no failing method).
    pub fn normal() -> Self {
        Close {
            reply_code: crate::reply_code::REPLY_SUCCESS,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }
    }
}

impl Method {
    /// `(class-id, method-id)`.
    pub fn id(&self) -> (u16, u16) {
        use Method::*;
        match self {
            ConnectionStart { .. } => (10, 10),
            ConnectionStartOk { .. } => (10, 11),
            ConnectionTune { .. } => (10, 30),
            ConnectionTuneOk { .. } => (10, 31),
            ConnectionOpen { .. } => (10, 40),
            ConnectionOpenOk => (10, 41),
            ConnectionClose(_) => (10, 50),
            ConnectionCloseOk => (10, 51),
            ConnectionBlocked { .. } => (10, 60),
            ConnectionUnblocked => (10, 61),
            ChannelOpen => (20, 10),
            ChannelOpenOk => (20, 11),
            ChannelClose(_) => (20, 40),
            ChannelCloseOk => (20, 41),
            QueueDeclare { .. } => (50, 10),
            QueueDeclareOk { .. } => (50, 11),
            QueueDelete { .. } => (50, 40),
            QueueDeleteOk { .. } => (50, 41),
            BasicPublish { .. } => (60, 40),
            BasicReturn { .. } => (60, 50),
            BasicGet { .. } => (60, 70),
            BasicGetOk { .. } => (60, 71),
            BasicGetEmpty => (60, 72),
            BasicAck { .. } => (60, 80),
            BasicNack { .. } => (60, 120),
            ConfirmSelect { .. } => (85, 10),
            ConfirmSelectOk => (85, 11),
            Other {
                class_id,
                method_id,
                ..
            } => (*class_id, *method_id),
        }
    }

    /// Appends class-id, method-id and the arguments.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        use Method::*;
        let (class_id, method_id) = self.id();
        out.extend_from_slice(&class_id.to_be_bytes());
        out.extend_from_slice(&method_id.to_be_bytes());
        let u16 = |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&v.to_be_bytes());
        let u32 = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_be_bytes());
        let u64 = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_be_bytes());
        match self {
            ConnectionStart {
                version_major,
                version_minor,
                server_properties,
                mechanisms,
                locales,
            } => {
                out.extend_from_slice(&[*version_major, *version_minor]);
                server_properties.encode(out)?;
                put_long_bytes(out, mechanisms.as_bytes())?;
                put_long_bytes(out, locales.as_bytes())?;
            }
            ConnectionStartOk {
                client_properties,
                mechanism,
                response,
                locale,
            } => {
                client_properties.encode(out)?;
                put_short_str(out, mechanism)?;
                put_long_bytes(out, response)?;
                put_short_str(out, locale)?;
            }
            ConnectionTune {
                channel_max,
                frame_max,
                heartbeat,
            }
            | ConnectionTuneOk {
                channel_max,
                frame_max,
                heartbeat,
            } => {
                u16(out, *channel_max);
                u32(out, *frame_max);
                u16(out, *heartbeat);
            }
            ConnectionOpen { virtual_host } => {
                put_short_str(out, virtual_host)?;
                put_short_str(out, "")?; // capabilities (reserved)
                out.push(0); // insist (reserved)
            }
            ConnectionOpenOk => put_short_str(out, "")?,
            ConnectionClose(c) | ChannelClose(c) => {
                u16(out, c.reply_code);
                put_short_str(out, &c.reply_text)?;
                u16(out, c.class_id);
                u16(out, c.method_id);
            }
            ConnectionBlocked { reason } => put_short_str(out, reason)?,
            ChannelOpen => put_short_str(out, "")?,
            ChannelOpenOk => put_long_bytes(out, b"")?,
            QueueDeclare {
                queue,
                passive,
                durable,
                exclusive,
                auto_delete,
                no_wait,
                arguments,
            } => {
                u16(out, 0);
                put_short_str(out, queue)?;
                out.push(bits(&[
                    *passive,
                    *durable,
                    *exclusive,
                    *auto_delete,
                    *no_wait,
                ]));
                arguments.encode(out)?;
            }
            QueueDeclareOk {
                queue,
                message_count,
                consumer_count,
            } => {
                put_short_str(out, queue)?;
                u32(out, *message_count);
                u32(out, *consumer_count);
            }
            QueueDelete {
                queue,
                if_unused,
                if_empty,
                no_wait,
            } => {
                u16(out, 0);
                put_short_str(out, queue)?;
                out.push(bits(&[*if_unused, *if_empty, *no_wait]));
            }
            QueueDeleteOk { message_count } => u32(out, *message_count),
            BasicPublish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            } => {
                u16(out, 0);
                put_short_str(out, exchange)?;
                put_short_str(out, routing_key)?;
                out.push(bits(&[*mandatory, *immediate]));
            }
            BasicReturn {
                reply_code,
                reply_text,
                exchange,
                routing_key,
            } => {
                u16(out, *reply_code);
                put_short_str(out, reply_text)?;
                put_short_str(out, exchange)?;
                put_short_str(out, routing_key)?;
            }
            BasicGet { queue, no_ack } => {
                u16(out, 0);
                put_short_str(out, queue)?;
                out.push(bits(&[*no_ack]));
            }
            BasicGetOk {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
                message_count,
            } => {
                u64(out, *delivery_tag);
                out.push(bits(&[*redelivered]));
                put_short_str(out, exchange)?;
                put_short_str(out, routing_key)?;
                u32(out, *message_count);
            }
            BasicGetEmpty => put_short_str(out, "")?,
            BasicAck {
                delivery_tag,
                multiple,
            } => {
                u64(out, *delivery_tag);
                out.push(bits(&[*multiple]));
            }
            BasicNack {
                delivery_tag,
                multiple,
                requeue,
            } => {
                u64(out, *delivery_tag);
                out.push(bits(&[*multiple, *requeue]));
            }
            ConfirmSelect { no_wait } => out.push(bits(&[*no_wait])),
            ConnectionCloseOk | ConnectionUnblocked | ChannelCloseOk | ConfirmSelectOk => {}
            Other { arguments, .. } => out.extend_from_slice(arguments),
        }
        Ok(())
    }

    /// Reads class-id, method-id and the arguments; the arguments must be used up exactly.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use Method::*;
        let class_id = r.u16()?;
        let method_id = r.u16()?;
        let bit = |byte: u8, i: u8| byte & (1 << i) != 0;
        let close = |r: &mut Reader<'_>| -> Result<Close, DecodeError> {
            Ok(Close {
                reply_code: r.u16()?,
                reply_text: r.short_str()?,
                class_id: r.u16()?,
                method_id: r.u16()?,
            })
        };
        let method = match (class_id, method_id) {
            (10, 10) => ConnectionStart {
                version_major: r.u8()?,
                version_minor: r.u8()?,
                server_properties: FieldTable::decode(r)?,
                mechanisms: r.long_str()?,
                locales: r.long_str()?,
            },
            (10, 11) => ConnectionStartOk {
                client_properties: FieldTable::decode(r)?,
                mechanism: r.short_str()?,
                response: r.long_bytes()?.to_vec(),
                locale: r.short_str()?,
            },
            (10, 30) | (10, 31) => {
                let (channel_max, frame_max, heartbeat) = (r.u16()?, r.u32()?, r.u16()?);
                if method_id == 30 {
                    ConnectionTune {
                        channel_max,
                        frame_max,
                        heartbeat,
                    }
                } else {
                    ConnectionTuneOk {
                        channel_max,
                        frame_max,
                        heartbeat,
                    }
                }
            }
            (10, 40) => {
                let virtual_host = r.short_str()?;
                r.short_bytes()?;
                r.u8()?;
                ConnectionOpen { virtual_host }
            }
            (10, 41) => {
                r.short_bytes()?;
                ConnectionOpenOk
            }
            (10, 50) => ConnectionClose(close(r)?),
            (10, 51) => ConnectionCloseOk,
            (10, 60) => ConnectionBlocked {
                reason: r.short_str()?,
            },
            (10, 61) => ConnectionUnblocked,
            (20, 10) => {
                r.short_bytes()?;
                ChannelOpen
            }
            (20, 11) => {
                r.long_bytes()?;
                ChannelOpenOk
            }
            (20, 40) => ChannelClose(close(r)?),
            (20, 41) => ChannelCloseOk,
            (50, 10) => {
                r.u16()?;
                let queue = r.short_str()?;
                let b = r.u8()?;
                QueueDeclare {
                    queue,
                    passive: bit(b, 0),
                    durable: bit(b, 1),
                    exclusive: bit(b, 2),
                    auto_delete: bit(b, 3),
                    no_wait: bit(b, 4),
                    arguments: FieldTable::decode(r)?,
                }
            }
            (50, 11) => QueueDeclareOk {
                queue: r.short_str()?,
                message_count: r.u32()?,
                consumer_count: r.u32()?,
            },
            (50, 40) => {
                r.u16()?;
                let queue = r.short_str()?;
                let b = r.u8()?;
                QueueDelete {
                    queue,
                    if_unused: bit(b, 0),
                    if_empty: bit(b, 1),
                    no_wait: bit(b, 2),
                }
            }
            (50, 41) => QueueDeleteOk {
                message_count: r.u32()?,
            },
            (60, 40) => {
                r.u16()?;
                let exchange = r.short_str()?;
                let routing_key = r.short_str()?;
                let b = r.u8()?;
                BasicPublish {
                    exchange,
                    routing_key,
                    mandatory: bit(b, 0),
                    immediate: bit(b, 1),
                }
            }
            (60, 50) => BasicReturn {
                reply_code: r.u16()?,
                reply_text: r.short_str()?,
                exchange: r.short_str()?,
                routing_key: r.short_str()?,
            },
            (60, 70) => {
                r.u16()?;
                let queue = r.short_str()?;
                BasicGet {
                    queue,
                    no_ack: bit(r.u8()?, 0),
                }
            }
            (60, 71) => BasicGetOk {
                delivery_tag: r.u64()?,
                redelivered: bit(r.u8()?, 0),
                exchange: r.short_str()?,
                routing_key: r.short_str()?,
                message_count: r.u32()?,
            },
            (60, 72) => {
                r.short_bytes()?;
                BasicGetEmpty
            }
            (60, 80) => BasicAck {
                delivery_tag: r.u64()?,
                multiple: bit(r.u8()?, 0),
            },
            (60, 120) => {
                let delivery_tag = r.u64()?;
                let b = r.u8()?;
                BasicNack {
                    delivery_tag,
                    multiple: bit(b, 0),
                    requeue: bit(b, 1),
                }
            }
            (85, 10) => ConfirmSelect {
                no_wait: bit(r.u8()?, 0),
            },
            (85, 11) => ConfirmSelectOk,
            _ => Other {
                class_id,
                method_id,
                arguments: r.bytes(r.remaining())?.to_vec(),
            },
        };
        r.finish()?;
        Ok(method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close() -> Close {
        Close {
            reply_code: 404,
            reply_text: "NOT_FOUND - no exchange 'x'".into(),
            class_id: 60,
            method_id: 40,
        }
    }

    /// One of every variant.
    pub fn all_methods() -> Vec<Method> {
        use Method::*;
        let table = FieldTable::new().with("x-dead-letter-exchange", "dlx");
        vec![
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: table.clone(),
                mechanisms: "PLAIN AMQPLAIN".into(),
                locales: "en_US".into(),
            },
            ConnectionStartOk {
                client_properties: table.clone(),
                mechanism: "PLAIN".into(),
                response: b"\0u\0p".to_vec(),
                locale: "en_US".into(),
            },
            ConnectionTune {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat: 60,
            },
            ConnectionTuneOk {
                channel_max: 1,
                frame_max: 4096,
                heartbeat: 0,
            },
            ConnectionOpen {
                virtual_host: "/".into(),
            },
            ConnectionOpenOk,
            ConnectionClose(close()),
            ConnectionCloseOk,
            ConnectionBlocked {
                reason: "low on memory".into(),
            },
            ConnectionUnblocked,
            ChannelOpen,
            ChannelOpenOk,
            ChannelClose(close()),
            ChannelCloseOk,
            QueueDeclare {
                queue: "q".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: true,
                no_wait: false,
                arguments: table,
            },
            QueueDeclareOk {
                queue: "q".into(),
                message_count: 3,
                consumer_count: 1,
            },
            QueueDelete {
                queue: "q".into(),
                if_unused: true,
                if_empty: false,
                no_wait: true,
            },
            QueueDeleteOk { message_count: 9 },
            BasicPublish {
                exchange: "".into(),
                routing_key: "video".into(),
                mandatory: true,
                immediate: false,
            },
            BasicReturn {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "".into(),
                routing_key: "nowhere".into(),
            },
            BasicGet {
                queue: "q".into(),
                no_ack: true,
            },
            BasicGetOk {
                delivery_tag: 1,
                redelivered: true,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 0,
            },
            BasicGetEmpty,
            BasicAck {
                delivery_tag: u64::MAX,
                multiple: true,
            },
            BasicNack {
                delivery_tag: 7,
                multiple: false,
                requeue: true,
            },
            ConfirmSelect { no_wait: false },
            ConfirmSelectOk,
            Other {
                class_id: 90,
                method_id: 10,
                arguments: vec![1, 2, 3],
            },
        ]
    }

    #[test]
    fn every_method_round_trips_and_every_truncation_fails() {
        for m in all_methods() {
            let mut out = Vec::new();
            m.encode(&mut out).unwrap();
            let mut r = Reader::new(&out);
            assert_eq!(Method::decode(&mut r).as_ref(), Ok(&m));
            if matches!(m, Method::Other { .. }) {
                continue; // raw arguments: any length is valid
            }
            for cut in 0..out.len() {
                assert!(
                    Method::decode(&mut Reader::new(&out[..cut])).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn publish_matches_the_spec_bytes() {
        let mut out = Vec::new();
        Method::BasicPublish {
            exchange: "".into(),
            routing_key: "v".into(),
            mandatory: true,
            immediate: false,
        }
        .encode(&mut out)
        .unwrap();
        assert_eq!(out, [0, 60, 0, 40, 0, 0, 0, 1, b'v', 1]);
    }
}
