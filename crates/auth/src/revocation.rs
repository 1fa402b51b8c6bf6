//! Revoking tokens without asking the database on every validate.
//!
//! Every user has a token generation (`user.token_generation`) and every token the generation
//! it was issued in (claim `gen`). Logging out or a new password moves the user's generation
//! on; validate refuses tokens of an older one. Validate keeps each user's generation in the
//! key-value store for `token_check_seconds`, so a revocation reaches every instance within
//! that time (at once where logout ran: it caches the new generation).

/// The key-value key of `email`'s cached generation (`email` as in the token's `username`).
pub fn cache_key(email: &str) -> String {
    format!("token-generation:{email}")
}

/// A user's generation as cached: `None` when there is no such user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cached {
    pub generation: Option<i64>,
    /// When it was read from the database, Unix seconds.
    pub read_at: i64,
}

impl Cached {
    pub fn encode(&self) -> Vec<u8> {
        match self.generation {
            Some(generation) => format!("{generation} {}", self.read_at),
            None => format!("none {}", self.read_at),
        }
        .into_bytes()
    }

    /// `None` for anything [`Cached::encode`] did not write.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (generation, read_at) = text.split_once(' ')?;
        let generation = match generation {
            "none" => None,
            n => Some(n.parse().ok()?),
        };
        Some(Self {
            generation,
            read_at: read_at.parse().ok()?,
        })
    }

    /// Whether it may still be used at `now`: read less than `max_age` seconds ago (and not in
    /// the future, which a clock step back would make it).
    pub fn fresh(&self, now: i64, max_age: i64) -> bool {
        self.read_at <= now && now - self.read_at < max_age
    }
}

/// Whether a token of generation `token` still stands against the user's `current` one (none:
/// the user is gone).
pub fn stands(token: i64, current: Option<i64>) -> bool {
    current.is_some_and(|current| token >= current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_junk_is_no_entry() {
        for cached in [
            Cached {
                generation: Some(3),
                read_at: 1_700_000_000,
            },
            Cached {
                generation: None,
                read_at: 5,
            },
        ] {
            assert_eq!(Cached::decode(&cached.encode()), Some(cached));
        }
        for junk in [&b""[..], b"3", b"x 1", b"3 y", b"\xff 1"] {
            assert_eq!(Cached::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn freshness() {
        let cached = Cached {
            generation: Some(1),
            read_at: 100,
        };
        assert!(cached.fresh(100, 10) && cached.fresh(109, 10));
        assert!(!cached.fresh(110, 10));
        assert!(!cached.fresh(99, 10), "read in the future");
        assert!(!cached.fresh(100, 0), "0 means always ask");
    }

    #[test]
    fn older_generations_and_gone_users_fall() {
        assert!(stands(2, Some(2)));
        assert!(!stands(1, Some(2)));
        assert!(!stands(2, None));
    }
}
