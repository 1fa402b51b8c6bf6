//! JWT issue and verify: HS256 only, with issuer, audience and expiry always checked.
//!
//! Expiry has **no leeway**: the same service (one clock) issues and checks the tokens, so a
//! token is valid while `now < exp` and expired from `now == exp` on (RFC 7519 §4.1.4).
//! Callers pass `now` (seconds since the Unix epoch) so that tests control time; use
//! [`unix_now`] in production.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use mp3_model::Claims;

/// The shortest HMAC secret accepted: 32 bytes, the output size of SHA-256 (RFC 7518 §3.2).
pub const MIN_SECRET_LEN: usize = 32;

/// The only algorithm issued and accepted.
const ALG: &str = "HS256";

/// A configuration that refused to be built. Its message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("jwt secret is {len} bytes long; at least {MIN_SECRET_LEN} bytes are required")]
    SecretTooShort { len: usize },
    #[error("jwt issuer is empty")]
    EmptyIssuer,
    #[error("jwt audience is empty")]
    EmptyAudience,
    #[error("jwt time to live must be between 1 second and 10 years")]
    BadTtl,
}

/// Signing failed (in practice unreachable: HS256 over serialisable claims).
#[derive(Debug, thiserror::Error)]
#[error("could not sign token: {0}")]
pub struct IssueError(String);

/// Why a token was refused. `Display` is a short one-line reason, fit for a 403 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed")]
    Malformed,
    #[error("wrong algorithm")]
    WrongAlgorithm,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
}

/// Everything needed to issue and verify tokens. Built only through [`TokenConfig::new`], which
/// refuses weak secrets, so holding one means the secret is long enough.
#[derive(Clone)]
pub struct TokenConfig {
    issuer: String,
    audience: String,
    ttl: Duration,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenConfig {
    /// `secret` must be at least [`MIN_SECRET_LEN`] bytes; `issuer` and `audience` non-empty;
    /// `ttl` between 1 s and 10 years (it is added to `iat` to make `exp`).
    pub fn new(
        secret: impl AsRef<[u8]>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        ttl: Duration,
    ) -> Result<Self, ConfigError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::SecretTooShort { len: secret.len() });
        }
        let issuer = issuer.into();
        if issuer.is_empty() {
            return Err(ConfigError::EmptyIssuer);
        }
        let audience = audience.into();
        if audience.is_empty() {
            return Err(ConfigError::EmptyAudience);
        }
        if ttl.as_secs() < 1 || ttl.as_secs() > 10 * 366 * 24 * 3600 {
            return Err(ConfigError::BadTtl);
        }
        Ok(Self {
            issuer,
            audience,
            ttl,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl", &self.ttl)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Issue an HS256 token for `username` (an email) of token generation `generation`:
/// `sub = username`, `iat = now`, `exp = now + ttl`, `iss`/`aud` from the configuration.
pub fn issue(
    config: &TokenConfig,
    username: &str,
    admin: bool,
    generation: i64,
    now: i64,
) -> Result<String, IssueError> {
    // The constructor bounds ttl to 10 years, so this only fails for absurd `now` values.
    let ttl = i64::try_from(config.ttl.as_secs()).map_err(|e| IssueError(e.to_string()))?;
    let exp = now
        .checked_add(ttl)
        .ok_or_else(|| IssueError("expiry overflows".into()))?;
    let claims = Claims {
        username: username.to_owned(),
        sub: username.to_owned(),
        admin,
        iat: now,
        exp,
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        generation,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &config.encoding)
        .map_err(|e| IssueError(e.to_string()))
}

/// Verify `token` at time `now`: the header must say `"alg":"HS256"` (checked on the raw header
/// before anything else, so `none`, `HS384`, `HS512`, `RS256`... are refused whatever the
/// library's defaults), then the signature, then `iss`, `aud` and `exp` (no leeway).
///
/// The signature is checked by jsonwebtoken's HMAC; the claims are read once, straight into
/// [`Claims`]. `jsonwebtoken::decode` would parse the header and the claims twice and build its
/// `Validation` sets for every call, which is most of a token's cost inside a per-request wasm
/// instance.
pub fn verify(config: &TokenConfig, token: &str, now: i64) -> Result<Claims, VerifyError> {
    let (signed, signature) = token.rsplit_once('.').ok_or(VerifyError::Malformed)?;
    let (header, payload) = signed.split_once('.').ok_or(VerifyError::Malformed)?;
    if payload.contains('.') {
        return Err(VerifyError::Malformed);
    }
    check_header(header)?;
    match jsonwebtoken::crypto::verify(
        signature,
        signed.as_bytes(),
        &config.decoding,
        Algorithm::HS256,
    ) {
        Ok(true) => {}
        Ok(false) => return Err(VerifyError::BadSignature),
        Err(_) => return Err(VerifyError::Malformed),
    }
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(VerifyError::Malformed)?;
    if claims.iss != config.issuer {
        return Err(VerifyError::WrongIssuer);
    }
    if claims.aud != config.audience {
        return Err(VerifyError::WrongAudience);
    }
    if now >= claims.exp {
        return Err(VerifyError::Expired);
    }
    Ok(claims)
}

/// Decode the JOSE header and accept only `alg == "HS256"` and no `crit` extensions.
fn check_header(header: &str) -> Result<(), VerifyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| VerifyError::Malformed)?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed)?;
    let object = value.as_object().ok_or(VerifyError::Malformed)?;
    match object.get("alg") {
        Some(serde_json::Value::String(alg)) if alg == ALG => {}
        Some(serde_json::Value::String(_)) => return Err(VerifyError::WrongAlgorithm),
        _ => return Err(VerifyError::Malformed),
    }
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; we understand none.
    if object.contains_key("crit") {
        return Err(VerifyError::Malformed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";
    const NOW: i64 = 1_700_000_000;

    fn config() -> TokenConfig {
        TokenConfig::new(SECRET, "mp3-auth", "mp3", Duration::from_secs(3600)).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn claims_json(iss: &str, aud: &str, exp: i64) -> String {
        format!(
            r#"{{"username":"a@example.com","sub":"a@example.com","admin":false,"iat":{NOW},"exp":{exp},"iss":"{iss}","aud":"{aud}"}}"#
        )
    }

    /// A token signed with `alg` over the given claims, with the test secret.
    fn signed_with(alg: Algorithm, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn sample_claims() -> Claims {
        Claims {
            username: "a@example.com".into(),
            sub: "a@example.com".into(),
            admin: false,
            iat: NOW,
            exp: NOW + 3600,
            iss: "mp3-auth".into(),
            aud: "mp3".into(),
            generation: 0,
        }
    }

    #[test]
    fn refuses_short_secret() {
        let err = TokenConfig::new([7u8; 31], "i", "a", Duration::from_secs(60)).unwrap_err();
        assert_eq!(err, ConfigError::SecretTooShort { len: 31 });
        assert_eq!(
            err.to_string(),
            "jwt secret is 31 bytes long; at least 32 bytes are required"
        );
        assert!(TokenConfig::new([7u8; 32], "i", "a", Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn refuses_empty_issuer_audience_and_zero_ttl() {
        let s = [7u8; 32];
        let ttl = Duration::from_secs(60);
        assert_eq!(
            TokenConfig::new(s, "", "a", ttl).unwrap_err(),
            ConfigError::EmptyIssuer
        );
        assert_eq!(
            TokenConfig::new(s, "i", "", ttl).unwrap_err(),
            ConfigError::EmptyAudience
        );
        assert_eq!(
            TokenConfig::new(s, "i", "a", Duration::ZERO).unwrap_err(),
            ConfigError::BadTtl
        );
    }

    #[test]
    fn debug_hides_secret() {
        let text = format!("{:?}", config());
        assert!(!text.contains("0123456789abcdef"));
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn issue_then_verify_round_trips() {
        let token = issue(&config(), "a@example.com", true, 0, NOW).unwrap();
        let claims = verify(&config(), &token, NOW + 10).unwrap();
        assert_eq!(claims.username, "a@example.com");
        assert_eq!(claims.sub, "a@example.com");
        assert!(claims.admin);
        assert_eq!(claims.iat, NOW);
        assert_eq!(claims.exp, NOW + 3600);
        assert_eq!(claims.iss, "mp3-auth");
        assert_eq!(claims.aud, "mp3");
        // The header is exactly HS256/JWT.
        let header = token.split('.').next().unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["typ"], "JWT");
    }

    #[test]
    fn expired_without_leeway() {
        let token = issue(&config(), "a@example.com", false, 0, NOW).unwrap();
        assert!(verify(&config(), &token, NOW + 3599).is_ok());
        assert_eq!(
            verify(&config(), &token, NOW + 3600),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            verify(&config(), &token, NOW + 7200),
            Err(VerifyError::Expired)
        );
        assert_eq!(VerifyError::Expired.to_string(), "expired");
    }

    #[test]
    fn tampered_signature_is_refused() {
        let token = issue(&config(), "a@example.com", false, 0, NOW).unwrap();
        let (body, sig) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[0] ^= 1;
        let tampered = format!("{body}.{}", b64(&sig));
        assert_eq!(
            verify(&config(), &tampered, NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_refused() {
        let token = issue(&config(), "a@example.com", false, 0, NOW).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
        claims["admin"] = true.into();
        parts[1] = b64(claims.to_string().as_bytes());
        assert_eq!(
            verify(&config(), &parts.join("."), NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn other_secret_is_refused() {
        let other =
            TokenConfig::new([9u8; 32], "mp3-auth", "mp3", Duration::from_secs(3600)).unwrap();
        let token = issue(&other, "a@example.com", false, 0, NOW).unwrap();
        assert_eq!(
            verify(&config(), &token, NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let payload = b64(claims_json("mp3-auth", "mp3", NOW + 3600).as_bytes());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"hs256"}"#,
        ] {
            let token = format!("{}.{payload}.", b64(header.as_bytes()));
            assert_eq!(
                verify(&config(), &token, NOW),
                Err(VerifyError::WrongAlgorithm),
                "{header}"
            );
        }
    }

    #[test]
    fn other_hmac_algorithms_with_the_same_secret_are_refused() {
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = signed_with(alg, &sample_claims());
            assert_eq!(
                verify(&config(), &token, NOW),
                Err(VerifyError::WrongAlgorithm),
                "{alg:?}"
            );
        }
        // Sanity: the same claims signed HS256 by hand pass.
        assert!(verify(
            &config(),
            &signed_with(Algorithm::HS256, &sample_claims()),
            NOW
        )
        .is_ok());
    }

    #[test]
    fn rs256_header_is_refused() {
        let payload = b64(claims_json("mp3-auth", "mp3", NOW + 3600).as_bytes());
        let token = format!("{}.{payload}.{}", b64(br#"{"alg":"RS256"}"#), b64(b"sig"));
        assert_eq!(
            verify(&config(), &token, NOW),
            Err(VerifyError::WrongAlgorithm)
        );
    }

    #[test]
    fn wrong_issuer_and_audience_are_refused() {
        let mut claims = sample_claims();
        claims.iss = "someone-else".into();
        let token = signed_with(Algorithm::HS256, &claims);
        assert_eq!(
            verify(&config(), &token, NOW),
            Err(VerifyError::WrongIssuer)
        );

        let mut claims = sample_claims();
        claims.aud = "other-app".into();
        let token = signed_with(Algorithm::HS256, &claims);
        assert_eq!(
            verify(&config(), &token, NOW),
            Err(VerifyError::WrongAudience)
        );
    }

    #[test]
    fn missing_claims_are_malformed() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"username": "a@example.com", "exp": NOW + 60}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(verify(&config(), &token, NOW), Err(VerifyError::Malformed));
    }

    #[test]
    fn garbage_is_malformed() {
        let token = issue(&config(), "a@example.com", false, 0, NOW).unwrap();
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.sig",
            &format!("{}.e30.sig", b64(b"not json")),
            &format!("{}.e30.sig", b64(b"[1,2]")),
            &format!("{}.e30.sig", b64(br#"{"typ":"JWT"}"#)),
            &format!("{}.e30.sig", b64(br#"{"alg":256}"#)),
            &format!("{token}.extra"),
        ] {
            assert_eq!(
                verify(&config(), bad, NOW),
                Err(VerifyError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_signature_that_is_not_base64_is_malformed() {
        let token = issue(&config(), "a@example.com", false, 0, NOW).unwrap();
        let (signed, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            verify(&config(), &format!("{signed}.!!"), NOW),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn correctly_signed_claims_of_the_wrong_shape_are_malformed() {
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let sample = claims_json("mp3-auth", "mp3", NOW + 3600);
        for payload in [
            "!!".to_owned(),
            b64(b"not json"),
            b64(sample
                .replace(r#""aud":"mp3""#, r#""aud":["mp3"]"#)
                .as_bytes()),
            b64(sample
                .replace('}', &format!(r#","exp":{}}}"#, NOW + 7200))
                .as_bytes()),
        ] {
            let signed = format!("{header}.{payload}");
            let signature = jsonwebtoken::crypto::sign(
                signed.as_bytes(),
                &EncodingKey::from_secret(SECRET),
                Algorithm::HS256,
            )
            .unwrap();
            assert_eq!(
                verify(&config(), &format!("{signed}.{signature}"), NOW),
                Err(VerifyError::Malformed),
                "{payload}"
            );
        }
    }

    /// Seeded mutations of a valid token (a byte changed, inserted or removed, anywhere):
    /// none may panic, and none but the token itself may verify.
    #[test]
    fn no_mutation_of_a_valid_token_verifies() {
        let token = issue(&config(), "a@example.com", false, 0, NOW).unwrap();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: usize| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
        };
        for _ in 0..20_000 {
            let mut bytes = token.clone().into_bytes();
            for _ in 0..=next(3) {
                let at = next(bytes.len() + 1);
                let byte = alphabet[next(alphabet.len())];
                match next(3) {
                    0 if at < bytes.len() => bytes[at] = byte,
                    1 if at < bytes.len() => drop(bytes.remove(at)),
                    _ => bytes.insert(at, byte),
                }
            }
            let mutated = String::from_utf8(bytes).unwrap();
            if mutated != token {
                assert!(verify(&config(), &mutated, NOW).is_err(), "{mutated}");
            }
        }
    }

    #[test]
    fn crit_header_is_refused() {
        let payload = b64(claims_json("mp3-auth", "mp3", NOW + 3600).as_bytes());
        let token = format!("{}.{payload}.x", b64(br#"{"alg":"HS256","crit":["exp"]}"#));
        assert_eq!(verify(&config(), &token, NOW), Err(VerifyError::Malformed));
    }

    #[test]
    fn reasons_are_one_line() {
        for e in [
            VerifyError::Malformed,
            VerifyError::WrongAlgorithm,
            VerifyError::BadSignature,
            VerifyError::Expired,
            VerifyError::WrongIssuer,
            VerifyError::WrongAudience,
        ] {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n'));
        }
    }
}
