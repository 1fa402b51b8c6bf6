//! Parsing of HTTP `Authorization` headers (RFC 7617 Basic, RFC 6750 Bearer).

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

/// Standard base64, padding optional (some clients omit it).
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a Basic `Authorization` header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("not a Basic authorization")]
    NotBasic,
    #[error("credentials are not valid base64")]
    BadBase64,
    #[error("credentials are not valid UTF-8")]
    NotUtf8,
    #[error("credentials have no colon between email and password")]
    MissingColon,
    #[error("email is empty")]
    EmptyEmail,
}

/// Split `header` into its scheme and the rest, trimmed.
fn scheme_and_rest(header: &str) -> Option<(&str, &str)> {
    let header = header.trim();
    let (scheme, rest) = header.split_once([' ', '\t'])?;
    Some((scheme, rest.trim()))
}

/// Parse `Basic base64(email:password)`: scheme case-insensitive, split at the first colon (a
/// password may contain colons, an email may not), both parts UTF-8, email non-empty.
pub fn parse_basic(header: &str) -> Result<(String, String), CredentialsError> {
    let (scheme, encoded) = scheme_and_rest(header).ok_or(CredentialsError::NotBasic)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(CredentialsError::NotBasic);
    }
    let bytes = BASIC_B64
        .decode(encoded)
        .map_err(|_| CredentialsError::BadBase64)?;
    let text = String::from_utf8(bytes).map_err(|_| CredentialsError::NotUtf8)?;
    let (email, password) = text.split_once(':').ok_or(CredentialsError::MissingColon)?;
    if email.is_empty() {
        return Err(CredentialsError::EmptyEmail);
    }
    Ok((email.to_owned(), password.to_owned()))
}

/// The token of `Bearer <token>` (scheme case-insensitive), or `None` for any other header.
pub fn parse_bearer(header: &str) -> Option<&str> {
    let (scheme, token) = scheme_and_rest(header)?;
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.contains(char::is_whitespace)
    {
        return None;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn basic(raw: &[u8]) -> String {
        format!("Basic {}", STANDARD.encode(raw))
    }

    #[test]
    fn basic_ok() {
        assert_eq!(
            parse_basic(&basic(b"a@example.com:pw")).unwrap(),
            ("a@example.com".to_owned(), "pw".to_owned())
        );
    }

    #[test]
    fn basic_splits_at_first_colon() {
        let (email, pw) = parse_basic(&basic(b"a@example.com:p:w:")).unwrap();
        assert_eq!((email.as_str(), pw.as_str()), ("a@example.com", "p:w:"));
    }

    #[test]
    fn basic_scheme_is_case_insensitive_and_whitespace_tolerant() {
        let enc = STANDARD.encode("a@b:pw");
        for h in [
            format!("basic {enc}"),
            format!("BASIC  {enc} "),
            format!(" Basic\t{enc}"),
        ] {
            assert_eq!(parse_basic(&h).unwrap().0, "a@b", "{h:?}");
        }
    }

    #[test]
    fn basic_accepts_unpadded_base64_and_utf8() {
        let enc = STANDARD.encode("é@b:mötley".as_bytes());
        let h = format!("Basic {}", enc.trim_end_matches('='));
        assert_eq!(parse_basic(&h).unwrap(), ("é@b".into(), "mötley".into()));
    }

    #[test]
    fn basic_empty_password_parses() {
        assert_eq!(
            parse_basic(&basic(b"a@b:")).unwrap(),
            ("a@b".into(), String::new())
        );
    }

    #[test]
    fn basic_errors() {
        assert_eq!(parse_basic(""), Err(CredentialsError::NotBasic));
        assert_eq!(parse_basic("Basic"), Err(CredentialsError::NotBasic));
        assert_eq!(parse_basic("Bearer abc"), Err(CredentialsError::NotBasic));
        assert_eq!(
            parse_basic("Basic !!!notbase64"),
            Err(CredentialsError::BadBase64)
        );
        assert_eq!(parse_basic("Basic YQ=x"), Err(CredentialsError::BadBase64));
        assert_eq!(
            parse_basic(&basic(b"nocolon")),
            Err(CredentialsError::MissingColon)
        );
        assert_eq!(
            parse_basic(&basic(b":pw")),
            Err(CredentialsError::EmptyEmail)
        );
        assert_eq!(
            parse_basic(&basic(b"a@b:\xff")),
            Err(CredentialsError::NotUtf8)
        );
    }

    #[test]
    fn bearer() {
        assert_eq!(parse_bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(parse_bearer("bearer x"), Some("x"));
        assert_eq!(parse_bearer("BEARER  x "), Some("x"));
        assert_eq!(parse_bearer("Bearer"), None);
        assert_eq!(parse_bearer("Bearer "), None);
        assert_eq!(parse_bearer("Bearer a b"), None);
        assert_eq!(parse_bearer("Basic abc"), None);
        assert_eq!(parse_bearer("Bearerabc"), None);
        assert_eq!(parse_bearer(""), None);
    }
}
