//! Webhooks, the parts the gateway, the notifier and their tests share:
//! - [`Secret`]: a user's signing secret, `whsec_` and 32 random bytes in base64;
//! - [`sign`] and [`verify`]: the [Standard Webhooks](https://www.standardwebhooks.com/)
//!   signature, `v1,` and the base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`,
//!   so that a receiver may use any of that scheme's libraries;
//! - [`Policy`]: which addresses a callback may connect to (no loopback, private or link-local
//!   address unless allowed: the notifier runs inside the cluster, and a callback must not
//!   become a way in).
//!
//! Builds for `wasm32-wasip2` too (the gateway makes and shows secrets).

mod policy;
mod signature;

pub use ipnet::IpNet;
pub use policy::{Policy, Refusal};
pub use signature::{sign, verify, Secret, VerifyError, SIGNATURE_TOLERANCE_SECS};

/// The headers of a delivery (lower case, as HTTP/2 wants them).
pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";
