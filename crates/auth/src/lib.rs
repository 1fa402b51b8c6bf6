//! Password hashing, JWT issue/verify and `Authorization` header parsing for the auth components.
//!
//! Pure logic with no I/O: it builds for the host (tests, `mp3-admin`) and for `wasm32-wasip2`
//! (the `login` and `validate` Spin components).
//!
//! - [`token`]: [`TokenConfig`], [`issue`] and [`verify`] (HS256 only).
//! - [`password`]: argon2id [`hash_password`], [`verify_password`] and the timing-safe
//!   [`verify_login`].
//! - [`credentials`]: [`parse_basic`] and [`parse_bearer`].
//! - [`revocation`]: token generations, and how validate caches them.

pub mod credentials;
pub mod password;
pub mod revocation;
pub mod token;

pub use credentials::{parse_basic, parse_bearer, CredentialsError};
pub use mp3_model::Claims;
pub use password::{hash_password, verify_login, verify_password, PasswordError, DUMMY_HASH};
pub use token::{issue, unix_now, verify, ConfigError, IssueError, TokenConfig, VerifyError};
