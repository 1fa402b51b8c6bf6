//! The RabbitMQ queues, declared identically by everyone who touches them (gateway, workers,
//! and the broker definitions in `k8s/`): RabbitMQ refuses a redeclaration whose arguments
//! differ (PRECONDITION_FAILED), so the arguments live here, once.
//!
//! Each work queue `q` has two companions, all on the default exchange:
//! - `q.retry`: a failed message is published here with a per-message `expiration` (the backoff);
//!   when it expires RabbitMQ dead-letters it back to `q`.
//! - `q.dead`: a message that exhausted its attempts, or cannot be parsed, is rejected without
//!   requeue and RabbitMQ dead-letters it here, for an operator to inspect.

/// Uploaded videos waiting for the converter.
pub const VIDEO_QUEUE: &str = "video";
/// Finished (or failed) jobs waiting for the notifier.
pub const MP3_QUEUE: &str = "mp3";

/// Header carrying how many times a message has been attempted before (an integer; absent on
/// the first delivery).
pub const ATTEMPT_HEADER: &str = "x-attempt";

/// One queue and its `x-` arguments. Every queue is durable, classic, not exclusive, not
/// auto-deleted; messages are published persistent (delivery mode 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: &'static str,
    /// `x-dead-letter-exchange` is always the default exchange (`""`) when this is set.
    pub dead_letter_routing_key: Option<&'static str>,
}

impl QueueSpec {
    /// The declaration arguments as (name, string value) pairs.
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

/// The work queue `name` and its retry and dead-letter queues, work queue first.
macro_rules! work_queue {
    ($name:literal) => {
        [
            QueueSpec {
                name: $name,
                dead_letter_routing_key: Some(concat!($name, ".dead")),
            },
            QueueSpec {
                name: concat!($name, ".retry"),
                dead_letter_routing_key: Some($name),
            },
            QueueSpec {
                name: concat!($name, ".dead"),
                dead_letter_routing_key: None,
            },
        ]
    };
}

/// The `video` queue and its companions.
pub const VIDEO: [QueueSpec; 3] = work_queue!("video");
/// The `mp3` queue and its companions.
pub const MP3: [QueueSpec; 3] = work_queue!("mp3");

/// Every queue, in a stable order.
pub fn all() -> impl Iterator<Item = QueueSpec> {
    VIDEO.into_iter().chain(MP3)
}

/// The retry queue of a work queue.
pub fn retry_queue(work: &str) -> String {
    format!("{work}.retry")
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
            let [work, retry, dead] = group;
            assert_eq!(work.dead_letter_routing_key, Some(dead.name));
            assert_eq!(retry.dead_letter_routing_key, Some(work.name));
            assert_eq!(dead.dead_letter_routing_key, None);
            assert_eq!(retry.name, retry_queue(work.name));
            assert_eq!(dead.name, dead_queue(work.name));
        }
        assert_eq!(VIDEO[0].name, VIDEO_QUEUE);
        assert_eq!(MP3[0].name, MP3_QUEUE);
        assert_eq!(all().count(), 6);
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
