//! Password hashing with argon2id, stored as PHC strings in `auth.user.password`.
//!
//! # Parameters: m = 9216 KiB (9 MiB), t = 4, p = 1
//!
//! This is one of OWASP's equivalent argon2id configurations (Password Storage Cheat Sheet:
//! m=19456/t=2, m=12288/t=3, m=9216/t=4, m=7168/t=5, all p=1 and about the same CPU cost).
//! We take the low-memory one because `login` runs in a fresh wasm instance per request: every
//! concurrent login grows its own linear memory to hold the argon2 blocks, so 9 MiB instead of
//! 19 MiB halves the memory a burst of logins needs (32 concurrent: ~300 MiB, not ~620 MiB) and
//! the page faults each instance pays, for the same work factor per guess.
//! Measured natively (release build, this 2-core machine, `cargo test -p mp3-auth --release --
//! --ignored --nocapture verify_cost`): one verification takes 25-32 ms with these parameters,
//! against 44-50 ms for m=19456/t=2 (the larger working set misses the caches more). Expect wasm
//! (no SIMD) to be slower than native; `login` is benchmarked end to end.
//!
//! [`verify_password`] reads the parameters from the stored PHC string, so raising them later
//! only needs `mp3-admin user add` to rehash; old hashes keep working.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Memory cost in KiB.
pub const M_COST_KIB: u32 = 9216;
/// Iterations.
pub const T_COST: u32 = 4;
/// Lanes.
pub const P_COST: u32 = 1;

/// A valid argon2id PHC string made with the same parameters as [`hash_password`] (for a random
/// password nobody knows). [`verify_login`] verifies against it when the user does not exist, so
/// that an unknown email costs the same time as a wrong password.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=9216,t=4,p=1$VMZf7k4IDO9VEA8BuPheBg$c5xoU1edDfVtjFLcnfkiqewKyX711GiBvKmKs0KfEZI";

/// Hashing failed, or a stored hash could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password must not be empty")]
    Empty,
    #[error("stored password hash is not a valid PHC string: {0}")]
    BadHash(String),
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

fn hasher() -> Argon2<'static> {
    // The constants are valid argon2 parameters; `Params::new` only fails outside its ranges.
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hash `password` with argon2id and a fresh random 16-byte salt; returns the PHC string.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Check `password` against a stored PHC string, in constant time (the argon2 crate compares
/// the outputs with `subtle`). `Ok(false)` means wrong password; `Err` a hash that cannot be read.
pub fn verify_password(phc: &str, password: &str) -> Result<bool, PasswordError> {
    let parsed = PasswordHash::new(phc).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    match hasher().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(PasswordError::BadHash(e.to_string())),
    }
}

/// The login decision: true only if `stored` is a readable hash of `password`.
///
/// When the user is unknown (`None`) or the stored hash is unreadable, a full argon2
/// verification runs against [`DUMMY_HASH`] anyway, so every failure costs one argon2 run and an
/// attacker cannot tell unknown emails from wrong passwords by timing.
pub fn verify_login(stored: Option<&str>, password: &str) -> bool {
    if let Some(phc) = stored {
        if let Ok(ok) = verify_password(phc, password) {
            return ok;
        }
    }
    let _ = std::hint::black_box(verify_password(DUMMY_HASH, password));
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn hash_and_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=9216,t=4,p=1$"), "{phc}");
        assert!(verify_password(&phc, "correct horse").unwrap());
        assert!(!verify_password(&phc, "correct horsE").unwrap());
        assert!(!verify_password(&phc, "").unwrap());
    }

    #[test]
    fn salts_differ() {
        assert_ne!(hash_password("pw").unwrap(), hash_password("pw").unwrap());
    }

    #[test]
    fn empty_password_is_refused() {
        assert!(matches!(hash_password(""), Err(PasswordError::Empty)));
    }

    #[test]
    fn bad_hash_is_an_error() {
        assert!(matches!(
            verify_password("plaintext", "x"),
            Err(PasswordError::BadHash(_))
        ));
        assert!(matches!(
            verify_password("", "x"),
            Err(PasswordError::BadHash(_))
        ));
    }

    #[test]
    fn dummy_hash_uses_current_params() {
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        let params = Params::try_from(&parsed).unwrap();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (M_COST_KIB, T_COST, P_COST)
        );
        assert!(!verify_password(DUMMY_HASH, "").unwrap());
    }

    #[test]
    fn verify_login_cases() {
        let phc = hash_password("s3cret").unwrap();
        assert!(verify_login(Some(&phc), "s3cret"));
        assert!(!verify_login(Some(&phc), "wrong"));
        assert!(!verify_login(None, "s3cret"));
        assert!(!verify_login(Some("not a hash"), "s3cret"));
    }

    fn time(f: impl Fn()) -> Duration {
        f(); // warm up
        let start = Instant::now();
        for _ in 0..3 {
            f();
        }
        start.elapsed() / 3
    }

    /// Unknown user and wrong password must cost about the same: both one full argon2 run.
    /// Loose bounds (shared CI cores); the point is "not 1000x cheaper".
    #[test]
    fn unknown_user_costs_as_much_as_wrong_password() {
        let phc = hash_password("s3cret").unwrap();
        let wrong = time(|| assert!(!verify_login(Some(&phc), "wrong")));
        let unknown = time(|| assert!(!verify_login(None, "wrong")));
        let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
        assert!(
            (0.33..3.0).contains(&ratio),
            "wrong {wrong:?} unknown {unknown:?}"
        );
    }

    /// Prints the cost of one verification. Run with
    /// `cargo test -p mp3-auth --release -- --ignored --nocapture verify_cost`.
    #[test]
    #[ignore]
    fn verify_cost() {
        let phc = hash_password("s3cret").unwrap();
        let per = time(|| assert!(verify_password(&phc, "s3cret").unwrap()));
        eprintln!("argon2id m={M_COST_KIB} t={T_COST} p={P_COST}: verify {per:?}");
        for (m, t) in [(19456, 2), (12288, 3), (9216, 4), (7168, 5)] {
            let a = Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(m, t, 1, None).unwrap(),
            );
            let salt = SaltString::generate(&mut OsRng);
            let h = a.hash_password(b"s3cret", &salt).unwrap().to_string();
            let parsed = PasswordHash::new(&h).unwrap();
            let per = time(|| a.verify_password(b"s3cret", &parsed).unwrap());
            eprintln!("  m={m} t={t}: {per:?}");
        }
    }

    /// Prints a fresh dummy hash (for DUMMY_HASH when the parameters change).
    #[test]
    #[ignore]
    fn print_dummy_hash() {
        let random = SaltString::generate(&mut OsRng);
        eprintln!("{}", hash_password(random.as_str()).unwrap());
    }
}
