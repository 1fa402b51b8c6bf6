//! The runtime the native workers share, so that the converter and the notifier only say what
//! they do with one message.
//!
//! - [`amqp`]: connecting to RabbitMQ with backoff, declaring the topology of
//!   [`mp3_model::topology`] exactly as the gateway does, and publishing with confirms.
//! - [`retry`]: the attempt header and the exponential backoff of the retry policy.
//! - [`consumer`]: the [`Handler`] trait and the [`Worker`] that consumes a queue with bounded
//!   concurrency, retries through `<queue>.retry`, dead-letters to `<queue>.dead` and shuts down
//!   gracefully.
//! - [`server`]: `/healthz` and `/metrics` over HTTP.
//! - [`telemetry`]: tracing setup (text or JSON).

pub mod amqp;
pub mod cli;
pub mod consumer;
pub mod retry;
pub mod server;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;

pub use amqp::{Publisher, DEFAULT_CONFIRM_TIMEOUT};
pub use consumer::{
    one_line, stop_on_signal, Context, Failure, GivenUp, Handler, Interrupted, Worker,
    WorkerOptions,
};
pub use telemetry::LogFormat;
