//! Secrets and signatures.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a signed timestamp may be from the receiver's clock (the Standard Webhooks default).
pub const SIGNATURE_TOLERANCE_SECS: u64 = 5 * 60;
const PREFIX: &str = "whsec_";

/// A signing secret: what `GET /webhook` shows, written `whsec_<base64 of 32 bytes>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Result<Self, String> {
        let mut bytes = vec![0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness for a secret: {e}"))?;
        Ok(Self(bytes))
    }

    /// Reads `whsec_<base64>` (at least 16 bytes).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = STANDARD.decode(text.strip_prefix(PREFIX)?).ok()?;
        (bytes.len() >= 16).then_some(Self(bytes))
    }

    pub fn encode(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes())
        )
    }

    fn mac(&self, id: &str, timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` header: one signature per secret, space-separated (the current one,
/// and the previous one while it is still honoured after a rotation).
pub fn sign(secrets: &[&Secret], id: &str, timestamp: u64, body: &[u8]) -> String {
    let signatures: Vec<String> = secrets
        .iter()
        .map(|secret| secret.signature(id, timestamp, body))
        .collect();
    signatures.join(" ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the timestamp is more than {SIGNATURE_TOLERANCE_SECS} seconds away from now")]
    Stale,
    #[error("no signature matches")]
    NoMatch,
}

/// Checks a delivery as a receiver does: the timestamp close to `now` (Unix seconds), and one
/// of the `v1` signatures in `header` made with `secret` over this very id and body.
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    body: &[u8],
    header: &str,
    now: u64,
) -> Result<(), VerifyError> {
    let timestamp: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if timestamp.abs_diff(now) > SIGNATURE_TOLERANCE_SECS {
        return Err(VerifyError::Stale);
    }
    for candidate in header.split(' ') {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = STANDARD.decode(encoded) else {
            continue;
        };
        // Compared in constant time.
        if secret.mac(id, timestamp, body).verify_slice(&given).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_test_vector_verifies() {
        // From the Standard Webhooks specification's reference implementations.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let header = sign(&[&secret], id, 1614265330, body);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            verify(&secret, id, "1614265330", body, &header, 1614265330),
            Ok(())
        );
    }

    #[test]
    fn anything_changed_breaks_the_signature() {
        let secret = Secret::generate().unwrap();
        let other = Secret::generate().unwrap();
        let now = 1_800_000_000;
        let header = sign(&[&other, &secret], "e1", now, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert_eq!(
            verify(&secret, "e1", &now.to_string(), b"{}", &header, now),
            Ok(())
        );
        let check = |id: &str, ts: &str, body: &[u8], header: &str| {
            verify(&secret, id, ts, body, header, now)
        };
        assert_eq!(
            check("e2", &now.to_string(), b"{}", &header),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check("e1", "1800000001", b"{}", &header),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check("e1", &now.to_string(), b"{ }", &header),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check("e1", "1799999000", b"{}", &header),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            check("e1", "soon", b"{}", &header),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            check("e1", &now.to_string(), b"{}", "v1,!!! v2,x"),
            Err(VerifyError::NoMatch)
        );
        let only_other = sign(&[&other], "e1", now, b"{}");
        assert_eq!(
            check("e1", &now.to_string(), b"{}", &only_other),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn secrets_round_trip_and_short_ones_are_refused() {
        let secret = Secret::generate().unwrap();
        assert!(secret.encode().starts_with("whsec_"));
        assert_eq!(Secret::parse(&secret.encode()), Some(secret.clone()));
        assert_ne!(Secret::generate().unwrap(), secret);
        assert_eq!(Secret::parse("whsec_c2hvcnQ="), None);
        assert_eq!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), None);
        assert_eq!(format!("{secret:?}"), "Secret(…)");
    }
}
