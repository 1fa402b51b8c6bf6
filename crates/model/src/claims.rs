//! The JWT claims.

use serde::{Deserialize, Serialize};

/// The claims of the JWT issued by `POST /login` and checked by `POST /validate`.
///
/// Wire-compatible with the seed system (`username`, `exp`, `iat`, `admin`) plus the registered
/// claims `sub`, `iss` and `aud`.
///
/// - `username`: the user's email, as stored in `auth.user.email` (the seed system's claim).
/// - `sub`: the same email. The email is the user's identity everywhere else too (queue messages
///   carry `username`, downloads are checked against it), so `sub` repeats it rather than exposing
///   the table's numeric id, which has no meaning outside the auth database.
/// - `admin`: whether the user has the `admin` flag.
/// - `iat`, `exp`: issue and expiry times, seconds since the Unix epoch.
/// - `iss`, `aud`: issuer and audience, from the deployment's configuration.
/// - `gen`: the user's token generation when the token was issued. Logging out or a new
///   password moves the user's generation on, and validate refuses tokens of an older one.
///   Tokens without it (issued before it existed) count as generation 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub username: String,
    pub sub: String,
    pub admin: bool,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    #[serde(rename = "gen", default)]
    pub generation: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_with_seed_field_names() {
        let claims = Claims {
            username: "a@example.com".into(),
            sub: "a@example.com".into(),
            admin: true,
            iat: 1_700_000_000,
            exp: 1_700_086_400,
            iss: "mp3-auth".into(),
            aud: "mp3".into(),
            generation: 3,
        };
        let json = serde_json::to_value(&claims).unwrap();
        for key in [
            "username", "sub", "admin", "iat", "exp", "iss", "aud", "gen",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        let back: Claims = serde_json::from_value(json).unwrap();
        assert_eq!(back, claims);
    }
}

#[cfg(test)]
mod older_tokens {
    use super::*;

    #[test]
    fn a_token_without_a_generation_is_generation_0() {
        let json =
            r#"{"username":"a","sub":"a","admin":false,"iat":1,"exp":2,"iss":"i","aud":"a"}"#;
        let claims: Claims = serde_json::from_str(json).unwrap();
        assert_eq!(claims.generation, 0);
    }
}
