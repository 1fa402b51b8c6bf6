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

/// A user's generation as cached: `None` when there is no such user. The entry carries how
/// long it may be trusted, so a reader needs no setting of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cached {
    pub generation: Option<i64>,
    /// When it was read from the database, Unix seconds.
    pub read_at: i64,
    /// For how many seconds from `read_at` it may be used (`token_check_seconds`).
    pub max_age: i64,
}

impl Cached {
    pub fn encode(&self) -> Vec<u8> {
        let generation = match self.generation {
            Some(generation) => generation.to_string(),
            None => "none".into(),
        };
        format!("{generation} {} {}", self.read_at, self.max_age).into_bytes()
    }

    /// `None` for anything [`Cached::encode`] did not write.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split(' ');
        let generation = match fields.next()? {
            "none" => None,
            n => Some(n.parse().ok()?),
        };
        let read_at = fields.next()?.parse().ok()?;
        let max_age = fields.next()?.parse().ok()?;
        fields.next().is_none().then_some(Self {
            generation,
            read_at,
            max_age,
        })
    }

    /// Whether it may still be used at `now`: read less than `max_age` seconds ago (and not in
    /// the future, which a clock step back would make it).
    pub fn fresh(&self, now: i64) -> bool {
        self.read_at <= now && now - self.read_at < self.max_age
    }
}

/// Where a component keeps users' cached generations (Spin's key-value store; best effort).
pub trait GenerationCache {
    /// The cached entry of `email`, if any (any store failure is no entry).
    fn cached_generation(&self, email: &str) -> Option<Cached>;
    /// Keeps `cached` for `email`.
    fn cache_generation(&self, email: &str, cached: Cached);
}

/// Caches `read`, just read from the database (or written there), unless the cache holds a
/// fresh entry of a later generation: a logout in this pod moved the user on while `read` was
/// on its way, and generations only move on. The generation that holds, for this request too.
///
/// Without this a slow read, or a logout with a token older than the user's generation, would
/// put an earlier generation back and let revoked tokens pass until the entry expires.
pub fn cache_latest(
    cache: &impl GenerationCache,
    email: &str,
    read: Cached,
    now: i64,
) -> Option<i64> {
    let existing = cache.cached_generation(email);
    match existing.filter(|e| e.fresh(now) && later(e.generation, read.generation)) {
        Some(later) => later.generation,
        None => {
            cache.cache_generation(email, read);
            read.generation
        }
    }
}

/// Whether generation `a` is past `b` (a user gone is past nothing: its absence was read
/// from the database and stands).
fn later(a: Option<i64>, b: Option<i64>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a > b)
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
        let entries = [
            Cached {
                generation: Some(3),
                read_at: 1_700_000_000,
                max_age: 10,
            },
            Cached {
                generation: None,
                read_at: 5,
                max_age: 0,
            },
        ];
        for cached in entries {
            assert_eq!(Cached::decode(&cached.encode()), Some(cached));
        }
        let junk: [&[u8]; 7] = [
            b"",
            b"3",
            b"x 1 1",
            b"3 y 1",
            b"\xff 1 1",
            b"3 1",
            b"3 1 1 1",
        ];
        for junk in junk {
            assert_eq!(Cached::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn freshness() {
        let cached = Cached {
            generation: Some(1),
            read_at: 100,
            max_age: 10,
        };
        assert!(cached.fresh(100) && cached.fresh(109));
        assert!(!cached.fresh(110));
        assert!(!cached.fresh(99), "read in the future");
        let always_ask = Cached {
            max_age: 0,
            ..cached
        };
        assert!(!always_ask.fresh(100));
    }

    #[test]
    fn older_generations_and_gone_users_fall() {
        assert!(stands(2, Some(2)));
        assert!(!stands(1, Some(2)));
        assert!(!stands(2, None));
    }

    #[derive(Default)]
    struct Memory(std::cell::RefCell<Option<Cached>>);

    impl GenerationCache for Memory {
        fn cached_generation(&self, _: &str) -> Option<Cached> {
            *self.0.borrow()
        }
        fn cache_generation(&self, _: &str, cached: Cached) {
            *self.0.borrow_mut() = Some(cached);
        }
    }

    #[test]
    fn an_earlier_generation_never_replaces_a_fresh_later_one() {
        let entry = |generation, read_at| Cached {
            generation,
            read_at,
            max_age: 10,
        };
        let cache = Memory::default();
        // Nothing cached, then later generations, then the user gone: each is kept.
        for (read, now) in [(Some(5), 100), (Some(6), 101), (None, 102)] {
            assert_eq!(cache_latest(&cache, "a", entry(read, now), now), read);
            assert_eq!(cache.cached_generation("a"), Some(entry(read, now)));
        }
        // The user again (created anew), then an earlier read arriving after a logout's.
        assert_eq!(cache_latest(&cache, "a", entry(Some(7), 103), 103), Some(7));
        assert_eq!(cache_latest(&cache, "a", entry(Some(6), 104), 104), Some(7));
        assert_eq!(cache.cached_generation("a"), Some(entry(Some(7), 103)));
        // Once that entry is past its time, what the database says is taken again.
        assert_eq!(cache_latest(&cache, "a", entry(Some(6), 113), 113), Some(6));
        assert_eq!(cache.cached_generation("a"), Some(entry(Some(6), 113)));
    }
}
