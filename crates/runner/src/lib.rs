//! A local runner for Spin 3 HTTP applications.
//!
//! The Spin CLI cannot be installed everywhere this project is built and tested, so this crate runs
//! the same `spin.toml` and the same `.wasm` files on wasmtime, providing what Spin 3 gives
//! spin-sdk 5.x components: the HTTP trigger, application variables, key-value stores, outbound
//! MySQL, outbound HTTP (with `*.spin.internal` service chaining and self requests) and
//! wasi:sockets TCP, every outbound path checked against the component's
//! `allowed_outbound_hosts`. Anything else fails loudly at start-up.
//!
//! Layout, after Spin's own crates: [`runtime`] loads the app and pre-instantiates each component,
//! [`state`] is the per-request store data, one module per host interface under [`host`],
//! [`runtime_config`] reads the runtime config file, and [`server`] is the HTTP trigger.

pub mod build;
pub mod engine;
pub mod host;
pub mod idle_body;
pub mod runtime;
pub mod runtime_config;
pub mod server;
pub mod state;

pub use runtime::{Runtime, RuntimeOptions};
pub use server::{serve, ServeOptions};
