//! SCRAM-SHA-256 client side (RFC 5802, RFC 7677), as MongoDB's saslStart/saslContinue use it.
//!
//! Passwords are used as given: SASLprep is the identity for ASCII passwords, which is all this
//! crate supports (non-ASCII passwords are refused rather than silently mis-normalised).
//!
//! Deriving the keys from the password (PBKDF2, thousands of HMAC rounds) is nearly all of a
//! handshake's cost, and the keys do not change while the password and the server's salt and
//! iteration count do not. A [`KeyCache`] keeps them across connections, as official drivers
//! keep them across a process's connections: a caller whose connections each live in a fresh
//! process (a wasm instance per request) hands in a cache that outlives them.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// MongoDB requires at least this many PBKDF2 iterations.
const MIN_ITERATIONS: u32 = 4096;
/// Refuse iteration counts a hostile server could use to burn our CPU: a server that cannot
/// prove it knows the password gets no key cached, so every request would pay its count again.
/// MongoDB's default is 15,000 (about 40 ms of wasm CPU here); this allows hardened settings
/// (OWASP's 600,000 for PBKDF2-SHA256) and stops at seconds, not minutes.
const MAX_ITERATIONS: u32 = 1_000_000;

/// Where derived SCRAM keys are kept between connections. A cache may lose or refuse entries at
/// any time; what it returns is checked by the server, and a wrong entry costs one failed
/// attempt, after which the keys are derived again.
pub trait KeyCache {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn put(&self, key: &str, value: &[u8]);
    fn remove(&self, key: &str);
}

/// No cache: every handshake derives the keys.
pub struct NoCache;

impl KeyCache for NoCache {
    fn get(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn put(&self, _: &str, _: &[u8]) {}
    fn remove(&self, _: &str) {}
}

/// The keys SCRAM derives from a password for one salt and iteration count.
#[derive(Clone, PartialEq, Eq)]
struct DerivedKeys {
    client_key: [u8; 32],
    server_key: [u8; 32],
}

impl DerivedKeys {
    /// PBKDF2 over the password, then the client and server keys (RFC 5802 section 3).
    fn derive(password: &str, salt: &[u8], iterations: u32) -> Result<Self> {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2::<HmacSha256>(password.as_bytes(), salt, iterations, &mut salted)
            .map_err(|_| Error::Auth("PBKDF2 failed".into()))?;
        Ok(Self {
            client_key: hmac32(&salted, b"Client Key")?,
            server_key: hmac32(&salted, b"Server Key")?,
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        [self.client_key, self.server_key].concat()
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 64 {
            return None;
        }
        Some(Self {
            client_key: bytes[..32].try_into().ok()?,
            server_key: bytes[32..].try_into().ok()?,
        })
    }
}

/// The cache entry's name: a hash over everything the keys depend on, so that another
/// password, user, salt or iteration count never finds them. (Whoever can read the cache can log
/// in with the value anyway: keep the cache as secret as the password.)
fn cache_key(username: &str, password: &str, salt: &[u8], iterations: u32) -> String {
    let mut hash = Sha256::new();
    for part in [username.as_bytes(), password.as_bytes(), salt] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(iterations.to_be_bytes());
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("mongo-wire/scram-sha-256/{hex}")
}

/// One SCRAM-SHA-256 conversation.
pub struct ScramSha256 {
    username: String,
    password: String,
    client_nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
    /// The cache entry the keys came from, if they did.
    cache_entry: Option<String>,
    /// Keys derived in this conversation, cached once the server has proved itself with them.
    derived: Option<(String, DerivedKeys)>,
    verified: bool,
}

impl ScramSha256 {
    /// Starts a conversation with a fresh random nonce.
    pub fn new(username: &str, password: &str) -> Result<Self> {
        let mut raw = [0u8; 24];
        getrandom::getrandom(&mut raw)
            .map_err(|e| Error::Auth(format!("no randomness for the nonce: {e}")))?;
        Self::with_nonce(username, password, &B64.encode(raw))
    }

    /// Starts a conversation with a given nonce (tests use the RFC's).
    pub fn with_nonce(username: &str, password: &str, nonce: &str) -> Result<Self> {
        if !password.is_ascii() || !username.is_ascii() {
            return Err(Error::Auth(
                "only ASCII usernames and passwords are supported".into(),
            ));
        }
        let user = username.replace('=', "=3D").replace(',', "=2C");
        Ok(ScramSha256 {
            username: username.to_owned(),
            password: password.to_owned(),
            client_nonce: nonce.to_owned(),
            client_first_bare: format!("n={user},r={nonce}"),
            server_signature: None,
            cache_entry: None,
            derived: None,
            verified: false,
        })
    }

    /// The client-first message (gs2 header "n,," + bare part).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Takes the server-first message, returns the client-final message.
    pub fn client_final(&mut self, server_first: &str) -> Result<String> {
        self.client_final_cached(server_first, &NoCache)
    }

    /// [`ScramSha256::client_final`] with the derived keys taken from `cache` when it has them.
    /// Keys derived instead go into the cache only once the server has accepted them (see
    /// [`ScramSha256::cache_verified_keys`]): a wrong password or a server's made-up salt must
    /// not leave entries behind.
    pub fn client_final_cached(
        &mut self,
        server_first: &str,
        cache: &dyn KeyCache,
    ) -> Result<String> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(v),
                Some(("i", v)) => iterations = Some(v),
                Some(("m", _)) => {
                    return Err(Error::Auth("server requires SCRAM extensions".into()))
                }
                _ => {}
            }
        }
        let nonce = nonce.ok_or_else(|| Error::Auth("server-first has no nonce".into()))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() <= self.client_nonce.len() {
            return Err(Error::Auth(
                "server nonce does not extend the client nonce".into(),
            ));
        }
        let salt = B64
            .decode(salt.ok_or_else(|| Error::Auth("server-first has no salt".into()))?)
            .map_err(|_| Error::Auth("server salt is not base64".into()))?;
        let iterations: u32 = iterations
            .ok_or_else(|| Error::Auth("server-first has no iteration count".into()))?
            .parse()
            .map_err(|_| Error::Auth("bad iteration count".into()))?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(Error::Auth(format!(
                "iteration count {iterations} out of range"
            )));
        }

        let name = cache_key(&self.username, &self.password, &salt, iterations);
        let keys = match cache
            .get(&name)
            .and_then(|bytes| DerivedKeys::from_bytes(&bytes))
        {
            Some(keys) => {
                self.cache_entry = Some(name);
                keys
            }
            None => {
                let keys = DerivedKeys::derive(&self.password, &salt, iterations)?;
                self.derived = Some((name, keys.clone()));
                keys
            }
        };
        let stored_key = Sha256::digest(keys.client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, server_first, without_proof
        );
        let client_signature = hmac(&stored_key, auth_message.as_bytes())?;
        let proof: Vec<u8> = keys
            .client_key
            .iter()
            .zip(client_signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        self.server_signature = Some(hmac(&keys.server_key, auth_message.as_bytes())?);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// The cache entry this conversation's keys came from, if they came from one: the entry to
    /// drop if the server refuses them.
    pub fn cache_entry(&self) -> Option<&str> {
        self.cache_entry.as_deref()
    }

    /// Puts the keys this conversation derived into `cache`, if the server has proved it
    /// knows them (its final message checked out) and they did not come from the cache.
    pub fn cache_verified_keys(&self, cache: &dyn KeyCache) {
        if let (true, Some((name, keys))) = (self.verified, &self.derived) {
            cache.put(name, &keys.to_bytes());
        }
    }

    /// Checks the server-final message: the server must prove it knows the password too.
    pub fn verify_server_final(&mut self, server_final: &str) -> Result<()> {
        let expected = self
            .server_signature
            .as_ref()
            .ok_or_else(|| Error::Auth("server-final before client-final".into()))?;
        for attr in server_final.split(',') {
            match attr.split_once('=') {
                Some(("e", v)) => return Err(Error::Auth(format!("server error: {v}"))),
                Some(("v", v)) => {
                    let got = B64
                        .decode(v)
                        .map_err(|_| Error::Auth("server signature is not base64".into()))?;
                    // Constant time is not needed here: the value is the server's, not a secret.
                    return if &got == expected {
                        self.verified = true;
                        Ok(())
                    } else {
                        Err(Error::Auth("server signature does not match".into()))
                    };
                }
                _ => {}
            }
        }
        Err(Error::Auth("server-final has no signature".into()))
    }
}

fn hmac32(key: &[u8], data: &[u8]) -> Result<[u8; 32]> {
    let mut mac =
        HmacSha256::new_from_slice(key).map_err(|_| Error::Auth("bad HMAC key".into()))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().into())
}

fn hmac(key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let mut mac =
        HmacSha256::new_from_slice(key).map_err(|_| Error::Auth("bad HMAC key".into()))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3.
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

    #[test]
    fn rfc7677_test_vector() {
        let mut scram = ScramSha256::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(scram.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let client_final = scram.client_final(SERVER_FIRST).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        scram
            .verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn wrong_server_signature_is_rejected() {
        let mut scram = ScramSha256::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
        scram.client_final(SERVER_FIRST).unwrap();
        assert!(scram
            .verify_server_final("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .is_err());
        assert!(scram.verify_server_final("e=invalid-proof").is_err());
    }

    #[test]
    fn hostile_server_first_is_rejected() {
        for bad in [
            "r=someone-else,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=***,i=4096",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1",
            // Seconds of CPU per connection, for a server that need not know the password.
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1000001",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000000",
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==",
            "",
        ] {
            let mut scram =
                ScramSha256::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
            assert!(scram.client_final(bad).is_err(), "{bad}");
        }
    }

    /// A cache that counts what it was asked.
    #[derive(Default)]
    struct Counting {
        entries: std::cell::RefCell<std::collections::HashMap<String, Vec<u8>>>,
        puts: std::cell::Cell<u32>,
    }

    impl KeyCache for Counting {
        fn get(&self, key: &str) -> Option<Vec<u8>> {
            self.entries.borrow().get(key).cloned()
        }
        fn put(&self, key: &str, value: &[u8]) {
            self.puts.set(self.puts.get() + 1);
            self.entries
                .borrow_mut()
                .insert(key.to_owned(), value.to_vec());
        }
        fn remove(&self, key: &str) {
            self.entries.borrow_mut().remove(key);
        }
    }

    #[test]
    fn cached_keys_give_the_same_proof_as_derived_ones() {
        let cache = Counting::default();
        for expect_cached in [false, true] {
            let mut scram =
                ScramSha256::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
            let puts = cache.puts.get();
            let message = scram.client_final_cached(SERVER_FIRST, &cache).unwrap();
            assert_eq!(scram.cache_entry().is_some(), expect_cached);
            assert!(message.ends_with("p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="));
            scram.cache_verified_keys(&cache);
            assert_eq!(
                cache.puts.get(),
                puts,
                "nothing cached before the server proved itself"
            );
            scram
                .verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
                .unwrap();
            scram.cache_verified_keys(&cache);
        }
        assert_eq!(cache.puts.get(), 1, "derived once, cached once");
    }

    #[test]
    fn the_cache_entry_depends_on_password_user_salt_and_iterations() {
        let base = cache_key("user", "pencil", b"salt", 4096);
        assert!(base.starts_with("mongo-wire/scram-sha-256/"));
        assert!(!base.contains("pencil"));
        for other in [
            cache_key("user", "pencil2", b"salt", 4096),
            cache_key("user2", "pencil", b"salt", 4096),
            cache_key("user", "pencil", b"salt2", 4096),
            cache_key("user", "pencil", b"salt", 4097),
            // Length prefixes: moving a byte from one part to the next is another entry.
            cache_key("userp", "encil", b"salt", 4096),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn keys_the_server_did_not_confirm_are_not_cached() {
        let cache = Counting::default();
        let mut scram = ScramSha256::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
        scram.client_final_cached(SERVER_FIRST, &cache).unwrap();
        assert!(scram.verify_server_final("e=invalid-proof").is_err());
        scram.cache_verified_keys(&cache);
        assert!(cache.entries.borrow().is_empty());
    }

    #[test]
    fn a_malformed_cache_entry_is_ignored() {
        let cache = Counting::default();
        let mut scram = ScramSha256::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
        let name = cache_key(
            "user",
            "pencil",
            &B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
        );
        cache.entries.borrow_mut().insert(name, vec![1, 2, 3]);
        let message = scram.client_final_cached(SERVER_FIRST, &cache).unwrap();
        assert!(scram.cache_entry().is_none());
        assert!(message.ends_with("p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="));
    }

    #[test]
    fn username_is_escaped_and_nonce_is_random() {
        let a = ScramSha256::new("a=b,c", "p").unwrap();
        let b = ScramSha256::new("a=b,c", "p").unwrap();
        assert!(a.client_first().starts_with("n,,n=a=3Db=2Cc,r="));
        assert_ne!(a.client_first(), b.client_first());
    }
}
