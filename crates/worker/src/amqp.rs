//! RabbitMQ: connecting with backoff, declaring the topology, publishing with confirms.

use std::time::Duration;

use anyhow::{bail, Context as _};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use mp3_model::topology::QueueSpec;
use tokio_util::sync::CancellationToken;

/// First and longest wait between connection attempts.
const CONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(15));

/// Connects to `url`, retrying with exponential backoff until it succeeds or `stop` fires
/// (then `None`). Every failure is logged with the wait before the next attempt.
pub async fn connect_with_retry(
    url: &str,
    connection_name: &str,
    stop: &CancellationToken,
) -> Option<Connection> {
    let (mut delay, max) = CONNECT_BACKOFF;
    loop {
        let properties =
            ConnectionProperties::default().with_connection_name(connection_name.into());
        let attempt = tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            result = Connection::connect(url, properties) => result,
        };
        match attempt {
            Ok(connection) => return Some(connection),
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot connect to RabbitMQ");
            }
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(max);
    }
}

/// The declaration arguments of `spec`, as the AMQP field table every client must send.
pub fn queue_arguments(spec: &QueueSpec) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in spec.arguments() {
        table.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    if let Some(ttl) = spec.message_ttl_ms {
        table.insert("x-message-ttl".into(), AMQPValue::LongUInt(ttl));
    }
    table
}

/// Declares `specs` (durable, not exclusive, not auto-deleted, with their dead-letter
/// arguments). Idempotent: RabbitMQ accepts an identical redeclaration and refuses a different
/// one with PRECONDITION_FAILED, which is reported with the queue's name.
pub async fn declare(channel: &Channel, specs: &[QueueSpec]) -> anyhow::Result<()> {
    for spec in specs {
        channel
            .queue_declare(
                spec.name.into(),
                QueueDeclareOptions::durable(),
                queue_arguments(spec),
            )
            .await
            .with_context(|| format!("declaring queue {:?}", spec.name))?;
    }
    Ok(())
}

/// How long a channel's or connection's close waits for the broker's answer: one that stopped
/// reading (a blocked connection) would hold a reconnection for ever.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a publish may wait for the broker's confirm, unless said otherwise.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);

/// Publishes on the default exchange and waits for the broker's confirm. Cheap to clone: every
/// clone shares one channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    confirm_timeout: Duration,
    /// Its connection's: whether the broker blocks it (a memory or disk alarm).
    status: lapin::ConnectionStatus,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn open(connection: &Connection) -> anyhow::Result<Self> {
        let channel = connection
            .create_channel()
            .await
            .context("opening the publishing channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Self {
            channel,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            status: connection.status().clone(),
        })
    }

    /// The same, waiting at most `limit` for each confirm.
    pub fn with_confirm_timeout(mut self, limit: Duration) -> Self {
        self.confirm_timeout = limit;
        self
    }

    /// Publishes `body` to `queue` with `properties`, and returns once RabbitMQ has confirmed
    /// it (for a durable queue and a persistent message: written to disk). Mandatory: a queue
    /// that does not exist is an error, not a message silently dropped.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        // Bounded, unless the broker says it blocks this connection (a memory or disk alarm:
        // it then reads nothing of it, and a new connection would fare no better, so the wait
        // goes on until the alarm clears). A broker that neither confirms nor says so (hung,
        // or the network) would otherwise hold the caller, a delivery being settled with its
        // slot, for as long as the heartbeats go on.
        let publish = async {
            self.channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    body,
                    properties,
                )
                .await
                .with_context(|| format!("publishing to {queue:?}"))?
                .await
                .with_context(|| format!("waiting for the confirm of a publish to {queue:?}"))
        };
        let mut publish = std::pin::pin!(publish);
        let confirm = loop {
            match tokio::time::timeout(self.confirm_timeout, &mut publish).await {
                Ok(confirm) => break confirm?,
                Err(_) if self.status.blocked() => {
                    tracing::warn!(queue, "RabbitMQ blocks this connection (a memory or disk alarm): still waiting for a confirm");
                }
                Err(_) => bail!(
                    "no confirm of a publish to {queue:?} within {} s",
                    self.confirm_timeout.as_secs_f32()
                ),
            }
        };
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => bail!(
                "RabbitMQ returned a message published to {queue:?}: {} {} (no such queue)",
                returned.reply_code,
                returned.reply_text
            ),
            Confirmation::Nack(_) => {
                bail!("RabbitMQ refused (nacked) a message published to {queue:?}")
            }
            Confirmation::NotRequested => {
                bail!("the publishing channel is not in confirm mode")
            }
        }
    }

    /// Publishes `message` as persistent JSON to `queue`, with confirm.
    pub async fn publish_json<T: serde::Serialize>(
        &self,
        queue: &str,
        message: &T,
        message_id: &str,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_vec(message).context("encoding the message as JSON")?;
        self.publish(
            queue,
            &body,
            json_properties().with_message_id(message_id.into()),
        )
        .await
    }

    /// Messages ready in `queue` (a passive declaration: the queue must exist).
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        let declared = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("reading the depth of queue {queue:?}"))?;
        Ok(declared.message_count())
    }

    pub async fn close(&self) {
        let close = self.channel.close(200, "bye".into());
        match tokio::time::timeout(CLOSE_TIMEOUT, close).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "closing the publishing channel"),
            Err(_) => tracing::debug!("closing the publishing channel: no answer"),
        }
    }
}

/// Persistent (delivery mode 2) JSON.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_long_strings_as_the_gateway_sends_them() {
        let table = queue_arguments(&mp3_model::topology::VIDEO[0]);
        let inner = table.inner();
        assert_eq!(inner.len(), 2);
        assert_eq!(
            inner.get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("".into()))
        );
        assert_eq!(
            inner.get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("video.dead".into()))
        );
        assert!(queue_arguments(&mp3_model::topology::VIDEO[2])
            .inner()
            .is_empty());
        let tier = queue_arguments(&mp3_model::topology::VIDEO[4]);
        assert_eq!(
            tier.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongUInt(2000))
        );
        assert_eq!(
            tier.inner().get("x-dead-letter-routing-key"),
            Some(&AMQPValue::LongString("video".into()))
        );
    }
}
