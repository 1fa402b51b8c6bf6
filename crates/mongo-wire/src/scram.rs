//! SCRAM-SHA-256 client side (RFC 5802, RFC 7677), as MongoDB's saslStart/saslContinue use it.
//!
//! Passwords are used as given: SASLprep is the identity for ASCII passwords, which is all this
//! crate supports (non-ASCII passwords are refused rather than silently mis-normalised).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// MongoDB requires at least this many PBKDF2 iterations.
const MIN_ITERATIONS: u32 = 4096;
/// Refuse absurd iteration counts a hostile server could use to burn our CPU.
const MAX_ITERATIONS: u32 = 10_000_000;

/// One SCRAM-SHA-256 conversation.
pub struct ScramSha256 {
    password: String,
    client_nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
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
            password: password.to_owned(),
            client_nonce: nonce.to_owned(),
            client_first_bare: format!("n={user},r={nonce}"),
            server_signature: None,
        })
    }

    /// The client-first message (gs2 header "n,," + bare part).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Takes the server-first message, returns the client-final message.
    pub fn client_final(&mut self, server_first: &str) -> Result<String> {
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

        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2::<HmacSha256>(self.password.as_bytes(), &salt, iterations, &mut salted)
            .map_err(|_| Error::Auth("PBKDF2 failed".into()))?;
        let client_key = hmac(&salted, b"Client Key")?;
        let stored_key = Sha256::digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, server_first, without_proof
        );
        let client_signature = hmac(&stored_key, auth_message.as_bytes())?;
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&salted, b"Server Key")?;
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes())?);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message: the server must prove it knows the password too.
    pub fn verify_server_final(&self, server_final: &str) -> Result<()> {
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
            "r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==",
            "",
        ] {
            let mut scram =
                ScramSha256::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO").unwrap();
            assert!(scram.client_final(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn username_is_escaped_and_nonce_is_random() {
        let a = ScramSha256::new("a=b,c", "p").unwrap();
        let b = ScramSha256::new("a=b,c", "p").unwrap();
        assert!(a.client_first().starts_with("n,,n=a=3Db=2Cc,r="));
        assert_ne!(a.client_first(), b.client_first());
    }
}
