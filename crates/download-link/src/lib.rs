//! Signed download links: `/download?fid=<mp3 id>&expires=<unix seconds>&sig=<signature>` lets
//! a browser (a click in the email, a link on the page) fetch one MP3 without a bearer token
//! until the link expires.
//!
//! The signature is HMAC-SHA256, keyed with a key of its own (not the JWT secret: a leaked link
//! key cannot mint logins), over the MP3's id, the owner of its job and the expiry time. So a
//! link opens one file, only while that file belongs to the user it was made for, and its
//! expiry cannot be moved: changing any of the three breaks the signature.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The shortest key accepted: as long as the hash, as for HS256 tokens.
pub const MIN_KEY_BYTES: usize = 32;

/// Characters of a `sig`: 32 bytes in unpadded base64url.
pub const SIGNATURE_CHARS: usize = 43;

/// What a link says before the fields it binds (a version, so the format can change).
const DOMAIN: &[u8] = b"mp3-converter download link v1";

/// Why a link is refused. The texts are the one-line reasons clients get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Genuine, but past its expiry time.
    #[error("link expired")]
    Expired,
    /// Not made with this key for this file and owner and expiry (altered, truncated, forged).
    #[error("invalid link")]
    Invalid,
}

/// The signing key. Its `Debug` does not show it.
#[derive(Clone)]
pub struct LinkKey(Vec<u8>);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    /// The key from its configured text (its bytes, as given): at least [`MIN_KEY_BYTES`].
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the download link key has {} bytes; at least {MIN_KEY_BYTES} are needed",
                secret.len()
            ));
        }
        Ok(Self(secret.as_bytes().to_vec()))
    }

    fn mac(&self, fid: &str, owner: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        // Each field with its length first: no two different triples give the same input. Ids
        // are hex, compared case-blind everywhere: the signed form is lower-case.
        let fid = fid.to_ascii_lowercase();
        for field in [
            DOMAIN,
            fid.as_bytes(),
            owner.as_bytes(),
            &expires.to_be_bytes(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// The `sig` of the link to MP3 `fid` of `owner`, valid until `expires` (Unix seconds).
    pub fn sign(&self, fid: &str, owner: &str, expires: u64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(fid, owner, expires).finalize().into_bytes())
    }

    /// The link's query string: `fid=…&expires=…&sig=…` (every part URL-safe as it is; `fid` is
    /// a hex id).
    pub fn query(&self, fid: &str, owner: &str, expires: u64) -> String {
        format!(
            "fid={fid}&expires={expires}&sig={}",
            self.sign(fid, owner, expires)
        )
    }

    /// Whether `sig` and `expires`, as a client sent them, open MP3 `fid` of `owner` at `now`
    /// (Unix seconds). The signature is checked first, in constant time, so "expired" is only
    /// ever said of a genuine link.
    pub fn verify(
        &self,
        fid: &str,
        owner: &str,
        expires: &str,
        sig: &str,
        now: u64,
    ) -> Result<(), Refusal> {
        // Only the canonical decimal form, so one link has one spelling.
        let expires_at = expires
            .parse::<u64>()
            .ok()
            .filter(|n| n.to_string() == expires)
            .ok_or(Refusal::Invalid)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| Refusal::Invalid)?;
        self.mac(fid, owner, expires_at)
            .verify_slice(&sig)
            .map_err(|_| Refusal::Invalid)?;
        if now >= expires_at {
            return Err(Refusal::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FID: &str = "665f1c0e8b3e4a2d9c1b0a03";
    const OWNER: &str = "a@example.com";

    fn key() -> LinkKey {
        LinkKey::new("0123456789abcdef0123456789abcdef-link").unwrap()
    }

    #[test]
    fn a_link_opens_its_file_until_it_expires() {
        let sig = key().sign(FID, OWNER, 1_000);
        assert_eq!(key().verify(FID, OWNER, "1000", &sig, 999), Ok(()));
        assert_eq!(
            key().verify(FID, OWNER, "1000", &sig, 1_000),
            Err(Refusal::Expired)
        );
        assert_eq!(Refusal::Expired.to_string(), "link expired");
        assert_eq!(Refusal::Invalid.to_string(), "invalid link");
    }

    #[test]
    fn changing_anything_breaks_it() {
        let sig = key().sign(FID, OWNER, 1_000);
        let other_key = LinkKey::new("another key, also at least 32 bytes long").unwrap();
        for (fid, owner, expires, sig, key) in [
            (
                "665f1c0e8b3e4a2d9c1b0a04",
                OWNER,
                "1000",
                sig.as_str(),
                key(),
            ),
            (FID, "b@example.com", "1000", &sig, key()),
            (FID, OWNER, "2000", &sig, key()),
            (FID, OWNER, "01000", &sig, key()),
            (FID, OWNER, "+1000", &sig, key()),
            (FID, OWNER, "1000", &sig[1..], key()),
            (FID, OWNER, "1000", "", key()),
            (FID, OWNER, "1000", "!!!", key()),
            (FID, OWNER, "", &sig, key()),
            (FID, OWNER, "1000", &sig, other_key),
        ] {
            assert_eq!(
                key.verify(fid, owner, expires, sig, 0),
                Err(Refusal::Invalid),
                "{fid} {owner} {expires} {sig}"
            );
        }
        // An altered link past its time is invalid, not expired: nothing is said about it.
        assert_eq!(
            key().verify(FID, OWNER, "2000", &sig, 5_000),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn fields_cannot_slide_into_each_other() {
        // Without the lengths, "ab"+"c" and "a"+"bc" would sign the same bytes.
        assert_ne!(key().sign("ab", "c", 1), key().sign("a", "bc", 1));
    }

    #[test]
    fn the_query_is_url_safe_and_reads_back() {
        let query = key().query(FID, OWNER, 1_700_000_000);
        let fields: Vec<(&str, &str)> = query
            .split('&')
            .map(|p| p.split_once('=').unwrap())
            .collect();
        assert_eq!(fields[0], ("fid", FID));
        assert_eq!(fields[1], ("expires", "1700000000"));
        let sig = fields[2].1;
        assert_eq!(sig.len(), SIGNATURE_CHARS);
        // The same file however its id is spelt.
        assert_eq!(
            key().verify(&FID.to_ascii_uppercase(), OWNER, "1700000000", sig, 1),
            Ok(())
        );
        assert!(sig
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(key().verify(FID, OWNER, "1700000000", sig, 1), Ok(()));
    }

    #[test]
    fn short_keys_are_refused_and_keys_never_shown() {
        let err = LinkKey::new("short").unwrap_err();
        assert!(err.contains("at least 32"), "{err}");
        assert_eq!(format!("{:?}", key()), "LinkKey(..)");
    }
}
