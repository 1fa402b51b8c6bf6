//! The RabbitMQ queues, declared identically by everyone who touches them (gateway, workers,
//! and the broker definitions in `k8s/`): RabbitMQ refuses a redeclaration whose arguments
//! differ (PRECONDITION_FAILED), so the arguments live here, once.
//!
//! Each work queue `q` has companions, all on the default exchange:
//! - `q.retry.<n>s`, one per delay of [`RETRY_TIERS_SECS`]: a failed message waits in the tier
//!   of its backoff; the queue's own TTL (`x-message-ttl`) then dead-letters it back to `q`.
//!   Every message of a tier waits equally long, so none waits behind a longer one (a
//!   per-message `expiration` only expires at the head of its queue: a 2 s retry queued behind
//!   a 120 s one would wait 120 s).
//! - `q.retry`: the single retry queue of earlier releases, with per-message expirations. Still
//!   declared, so the messages an upgrade finds there come back to `q`; nothing publishes to it.
//! - `q.dead`: a message that exhausted its attempts, or cannot be parsed, is rejected without
//!   requeue and RabbitMQ dead-letters it here, for an operator to inspect.

/// Uploaded videos waiting for the converter.
pub const VIDEO_QUEUE: &str = "video";
/// Finished (or failed) jobs waiting for the notifier.
pub const MP3_QUEUE: &str = "mp3";

/// Header carrying how many times a message has been attempted before (an integer; absent on
/// the first delivery).
pub const ATTEMPT_HEADER: &str = "x-attempt";

/// The delays of the retry tiers, in seconds. A backoff waits in the shortest tier at least as
/// long as itself (the longest tier past that): `RETRY_BASE_DELAY_MS` is thereby rounded up
/// to these steps.
pub const RETRY_TIERS_SECS: [u32; 11] = [1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

/// One queue and its `x-` arguments. Every queue is durable, classic, not exclusive, not
/// auto-deleted; messages are published persistent (delivery mode 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: &'static str,
    /// `x-dead-letter-exchange` is always the default exchange (`""`) when this is set.
    pub dead_letter_routing_key: Option<&'static str>,
    /// `x-message-ttl`, an integer (a retry tier's delay).
    pub message_ttl_ms: Option<u32>,
}

impl QueueSpec {
    /// The string-valued declaration arguments as (name, value) pairs; see also
    /// [`message_ttl_ms`](Self::message_ttl_ms), an integer.
    pub fn arguments(&self) -> Vec<(&'static str, &'static str)> {
        match self.dead_letter_routing_key {
            Some(key) => vec![
                ("x-dead-letter-exchange", ""),
                ("x-dead-letter-routing-key", key),
            ],
            None => Vec::new(),
        }
    }
}

/// Queues per work queue: the work queue, the earlier single retry queue, the dead-letter
/// queue, then one retry queue per tier.
pub const QUEUES_PER_WORK_QUEUE: usize = 3 + RETRY_TIERS_SECS.len();

/// The work queue `name` and its companions: work queue, legacy retry queue, dead-letter queue,
/// then the retry tiers (the same delays as [`RETRY_TIERS_SECS`], which a test checks).
macro_rules! work_queue {
    ($name:literal) => {
        work_queue!($name; 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
    };
    ($name:literal; $($secs:literal),+) => {
        [
            QueueSpec {
                name: $name,
                dead_letter_routing_key: Some(concat!($name, ".dead")),
                message_ttl_ms: None,
            },
            QueueSpec {
                name: concat!($name, ".retry"),
                dead_letter_routing_key: Some($name),
                message_ttl_ms: None,
            },
            QueueSpec {
                name: concat!($name, ".dead"),
                dead_letter_routing_key: None,
                message_ttl_ms: None,
            },
            $(
                QueueSpec {
                    name: concat!($name, ".retry.", $secs, "s"),
                    dead_letter_routing_key: Some($name),
                    message_ttl_ms: Some($secs * 1000),
                },
            )+
        ]
    };
}

/// The `video` queue and its companions.
pub const VIDEO: [QueueSpec; QUEUES_PER_WORK_QUEUE] = work_queue!("video");
/// The `mp3` queue and its companions.
pub const MP3: [QueueSpec; QUEUES_PER_WORK_QUEUE] = work_queue!("mp3");

/// Every queue, in a stable order.
pub fn all() -> impl Iterator<Item = QueueSpec> {
    VIDEO.into_iter().chain(MP3)
}

/// The queues a publisher to `video` declares before publishing (the gateway, on each
/// connection): the work queue and the queues it dead-letters to, not the retry tiers, which
/// the workers declare.
pub fn video_publisher() -> impl Iterator<Item = QueueSpec> {
    VIDEO.into_iter().take(3)
}

/// The retry tier of `work` in which a message waits `delay`: the shortest at least as long,
/// or the longest. Its name and the delay it really gives.
pub fn retry_tier(work: &str, delay: std::time::Duration) -> (String, std::time::Duration) {
    let secs = RETRY_TIERS_SECS
        .into_iter()
        .find(|&tier| std::time::Duration::from_secs(tier.into()) >= delay)
        .unwrap_or(RETRY_TIERS_SECS[RETRY_TIERS_SECS.len() - 1]);
    (
        format!("{work}.retry.{secs}s"),
        std::time::Duration::from_secs(secs.into()),
    )
}

/// The dead-letter queue of a work queue.
pub fn dead_queue(work: &str) -> String {
    format!("{work}.dead")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_queues_dead_letter_to_dead_and_retry_queues_back_to_work() {
        for group in [VIDEO, MP3] {
            let [work, retry, dead, tiers @ ..] = group;
            assert_eq!(work.dead_letter_routing_key, Some(dead.name));
            assert_eq!(retry.dead_letter_routing_key, Some(work.name));
            assert_eq!(dead.dead_letter_routing_key, None);
            assert_eq!(retry.name, format!("{}.retry", work.name));
            assert_eq!(dead.name, dead_queue(work.name));
            assert_eq!(tiers.len(), RETRY_TIERS_SECS.len());
            for (tier, secs) in tiers.iter().zip(RETRY_TIERS_SECS) {
                assert_eq!(tier.name, format!("{}.retry.{secs}s", work.name));
                assert_eq!(tier.dead_letter_routing_key, Some(work.name));
                assert_eq!(tier.message_ttl_ms, Some(secs * 1000));
            }
            assert!([work, retry, dead]
                .iter()
                .all(|q| q.message_ttl_ms.is_none()));
        }
        assert_eq!(VIDEO[0].name, VIDEO_QUEUE);
        assert_eq!(MP3[0].name, MP3_QUEUE);
        assert_eq!(all().count(), 2 * QUEUES_PER_WORK_QUEUE);
        let publisher: Vec<_> = video_publisher().map(|q| q.name).collect();
        assert_eq!(publisher, ["video", "video.retry", "video.dead"]);
    }

    #[test]
    fn a_backoff_waits_in_the_shortest_tier_at_least_as_long() {
        use std::time::Duration;
        let tier = |ms| retry_tier("video", Duration::from_millis(ms));
        assert_eq!(tier(0), ("video.retry.1s".into(), Duration::from_secs(1)));
        assert_eq!(tier(1000).0, "video.retry.1s");
        assert_eq!(tier(1001).0, "video.retry.2s");
        assert_eq!(
            tier(4000),
            ("video.retry.5s".into(), Duration::from_secs(5))
        );
        assert_eq!(tier(120_000).0, "video.retry.120s");
        assert_eq!(tier(3_600_000).0, "video.retry.3600s");
        assert_eq!(tier(u64::MAX).0, "video.retry.3600s");
        for q in all() {
            if let Some(ttl) = q.message_ttl_ms {
                let work = q.dead_letter_routing_key.unwrap();
                assert_eq!(
                    retry_tier(work, Duration::from_millis(ttl.into())).0,
                    q.name
                );
            }
        }
    }

    #[test]
    fn arguments_use_the_default_exchange() {
        assert_eq!(
            VIDEO[0].arguments(),
            vec![
                ("x-dead-letter-exchange", ""),
                ("x-dead-letter-routing-key", "video.dead")
            ]
        );
        assert!(VIDEO[2].arguments().is_empty());
    }
}
