//! Types shared by the components and the workers.
//!
//! One Rust type per thing that crosses a process boundary (JWT claims, queue messages, job
//! documents, the queue topology), so the wasm components and the native workers cannot drift
//! apart. Only `serde`, `getrandom` and `url` here: this crate builds for the host and for
//! `wasm32-wasip2`.

mod claims;
mod id;
mod job;
pub mod options;
pub mod topology;
pub mod webhook;

pub use claims::Claims;
pub use id::new_object_id;
pub use job::{Job, JobMessage, JobStatus};
pub use options::Options;

/// MongoDB database of the uploaded videos (GridFS default bucket `fs`) and of the `jobs`
/// collection.
pub const VIDEOS_DB: &str = "videos";
/// MongoDB database of the converted MP3s (GridFS default bucket `fs`).
pub const MP3S_DB: &str = "mp3s";
/// Collection of [`Job`] documents, in [`VIDEOS_DB`].
pub const JOBS_COLLECTION: &str = "jobs";
/// Collection of the notifier's claims on jobs' emails (`job_id` names the job), in
/// [`VIDEOS_DB`].
pub const NOTIFY_CLAIMS_COLLECTION: &str = "notify_claims";
/// Collection of the jobs their owners deleted (`_id`: the job's id, `deleted_at` in Unix
/// milliseconds), in [`VIDEOS_DB`]: a worker handed a message for one of them drops it instead
/// of dead-lettering it as unknown. Kept for the retention, then swept.
pub const DELETED_JOBS_COLLECTION: &str = "deleted_jobs";
/// Collection of the resumable (tus) uploads in progress, in [`VIDEOS_DB`]: `_id` (the job's id
/// once complete), `owner`, `video_fid` (the GridFS `videos` file being written), `offset`,
/// `length`, `done`, `expires_at` (Unix milliseconds) and the bytes past the last full chunk.
pub const UPLOADS_COLLECTION: &str = "uploads";
/// Collection of the leases of the PATCH requests writing uploads (`_id`: `<upload>/<offset>`,
/// `upload`, `token`, `at`), in [`VIDEOS_DB`].
pub const UPLOAD_LEASES_COLLECTION: &str = "upload_leases";
/// GridFS chunk size of both buckets: the official drivers' default (255 KiB).
pub const GRIDFS_CHUNK_SIZE: u32 = 255 * 1024;
