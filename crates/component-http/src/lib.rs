//! What every Spin HTTP component shares, so that a component's `lib.rs` holds only its decision.
//!
//! A component decides in a plain function that returns a [`Reply`] and reads its configuration
//! through [`Variables`], so the decision is unit-tested natively with a fake. Its
//! `#[http_component]` entry point (wasm only) is a few lines over `spin`:
//!
//! ```ignore
//! #[http_component]
//! fn handle(req: IncomingRequest, out: ResponseOutparam) {
//!     let started = Instant::now();
//!     let method = method_name(&req.method());
//!     let reply = decide(&method, authorization(&req).as_deref(), &SpinVariables);
//!     respond("name", &method, out, reply, started)
//! }
//! ```
//!
//! - [`reply`]: [`Reply`] and its builders, and [`log_line`], the one stderr line per request.
//! - [`variables`]: [`Variables`] and [`token_config`], the JWT settings every token-handling
//!   component reads (`jwt_secret`, `jwt_issuer`, `jwt_audience`).
//! - [`bearer`]: [`bearer_claims`], a request's verified token or the 401/403 refusing it.
//! - [`forwarded`]: the client's address behind trusted proxies (`X-Forwarded-For`).
//! - `spin` (wasm only): `method_name`, `header` and `authorization` (a single request header),
//!   `respond` (log the line, send the response head and body in one piece), `start_body` and
//!   `BodyWriter` for streamed bodies, and `SpinVariables`.

pub mod bearer;
pub mod forwarded;
pub mod reply;
#[cfg(target_arch = "wasm32")]
pub mod spin;
pub mod variables;

pub use bearer::bearer_claims;
pub use reply::{log_line, without_password, Reply};
pub use variables::{token_check_seconds, token_config, Variables};
