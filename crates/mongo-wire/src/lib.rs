//! A small blocking MongoDB client for places the official driver cannot go (wasm32-wasip2
//! components): OP_MSG over any `Read + Write` stream, SCRAM-SHA-256, a few CRUD helpers and
//! streaming GridFS in the standard layout.
//!
//! ```no_run
//! let mut client = mongo_wire::connect("mongodb://127.0.0.1:27017/")?;
//! let bucket = mongo_wire::Bucket::new("videos");
//! let id = bucket.upload(&mut client, std::io::empty(), "a.mp4", None, 1 << 30)?;
//! # Ok::<(), mongo_wire::Error>(())
//! ```

mod client;
mod depth;
mod error;
mod gridfs;
pub mod scram;
mod uri;
pub mod wire;

pub use bson;
pub use client::{connect, connect_cached, Client, Cursor, FindOptions, ServerInfo, UpdateResult};
pub use error::{Error, Result};
pub use gridfs::{Bucket, Download, FileInfo, DEFAULT_CHUNK_SIZE};
pub use scram::{KeyCache, NoCache};
pub use uri::{ConnectionString, Credentials};
