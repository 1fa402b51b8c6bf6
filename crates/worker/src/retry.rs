//! The retry policy's pure parts: how many attempts a message has had, and how long to wait
//! before the next one.

use std::time::Duration;

use lapin::types::AMQPValue;
use lapin::BasicProperties;
use mp3_model::topology::ATTEMPT_HEADER;

/// The longest a message waits in a retry queue, however many attempts it has had.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// The delay before the next attempt after attempt number `attempt` (1-based) failed:
/// `base * 2^(attempt - 1)`, capped at [`MAX_RETRY_DELAY`].
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor)
        .unwrap_or(MAX_RETRY_DELAY)
        .min(MAX_RETRY_DELAY)
}

/// How many attempts a delivery has had before this one: its [`ATTEMPT_HEADER`], 0 when absent
/// or not a non-negative integer (a message from the gateway carries no header).
pub fn previous_attempts(properties: &BasicProperties) -> u32 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    let Some(value) = headers.inner().get(ATTEMPT_HEADER) else {
        return 0;
    };
    let n: Option<i128> = match value {
        AMQPValue::ShortShortInt(v) => Some((*v).into()),
        AMQPValue::ShortShortUInt(v) => Some((*v).into()),
        AMQPValue::ShortInt(v) => Some((*v).into()),
        AMQPValue::ShortUInt(v) => Some((*v).into()),
        AMQPValue::LongInt(v) => Some((*v).into()),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::LongLongInt(v) => Some((*v).into()),
        _ => None,
    };
    n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    #[test]
    fn backoff_doubles_from_the_base_and_is_capped() {
        let base = Duration::from_millis(1000);
        assert_eq!(backoff(base, 1), Duration::from_secs(1));
        assert_eq!(backoff(base, 2), Duration::from_secs(2));
        assert_eq!(backoff(base, 3), Duration::from_secs(4));
        assert_eq!(backoff(base, 0), Duration::from_secs(1));
        assert_eq!(backoff(base, 13), MAX_RETRY_DELAY);
        assert_eq!(backoff(base, 40), MAX_RETRY_DELAY);
        assert_eq!(backoff(base, u32::MAX), MAX_RETRY_DELAY);
        assert_eq!(backoff(Duration::ZERO, 5), Duration::ZERO);
    }

    fn with_header(value: AMQPValue) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT_HEADER.into(), value);
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn attempts_come_from_the_header_whatever_its_integer_width() {
        assert_eq!(previous_attempts(&BasicProperties::default()), 0);
        assert_eq!(
            previous_attempts(&BasicProperties::default().with_headers(FieldTable::default())),
            0
        );
        assert_eq!(previous_attempts(&with_header(AMQPValue::LongInt(2))), 2);
        assert_eq!(
            previous_attempts(&with_header(AMQPValue::ShortShortUInt(7))),
            7
        );
        assert_eq!(
            previous_attempts(&with_header(AMQPValue::LongLongInt(3))),
            3
        );
        assert_eq!(previous_attempts(&with_header(AMQPValue::LongInt(-1))), 0);
        assert_eq!(
            previous_attempts(&with_header(AMQPValue::LongString("2".into()))),
            0
        );
    }
}
