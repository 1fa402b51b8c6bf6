//! The claims of a request's bearer token, or the reply refusing it.

use mp3_auth::{parse_bearer, verify, Claims, TokenConfig};

use crate::Reply;

// The refusal is the reply to send, built once per request: its size does not matter.
#[allow(clippy::result_large_err)]
/// The verified claims of `authorization` (`Bearer <jwt>`), or the refusal: 401 `missing token`
/// with the `WWW-Authenticate` challenge when there is no bearer token, 403
/// `invalid token: <reason>` when it does not verify at `now`.
pub fn bearer_claims(
    config: &TokenConfig,
    authorization: Option<&str>,
    now: i64,
) -> Result<Claims, Reply> {
    let Some(token) = authorization.and_then(parse_bearer) else {
        return Err(Reply::text(401, "missing token", "missing_token")
            .header("www-authenticate", r#"Bearer realm="mp3""#));
    };
    verify(config, token, now).map_err(|e| {
        Reply::text(
            403,
            format!("invalid token: {e}"),
            e.to_string().replace(' ', "_"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mp3_auth::issue;
    use std::time::Duration;

    #[test]
    fn claims_or_the_refusal() {
        let config = TokenConfig::new([7u8; 32], "i", "a", Duration::from_secs(60)).unwrap();
        let token = issue(&config, "a@b.c", false, 2, 1_000).unwrap();
        let claims = bearer_claims(&config, Some(&format!("Bearer {token}")), 1_001).unwrap();
        assert_eq!((claims.username.as_str(), claims.generation), ("a@b.c", 2));
        let missing = bearer_claims(&config, Some("Basic x"), 1_001).unwrap_err();
        assert_eq!(
            (missing.status, missing.body.as_str()),
            (401, "missing token")
        );
        assert!(missing
            .headers
            .contains(&("www-authenticate", r#"Bearer realm="mp3""#.into())));
        let expired = bearer_claims(&config, Some(&format!("Bearer {token}")), 1_060).unwrap_err();
        assert_eq!(
            (expired.status, expired.body.as_str()),
            (403, "invalid token: expired")
        );
        assert_eq!(expired.outcome, "expired");
    }
}
