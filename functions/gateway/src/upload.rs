//! `POST /upload`: a multipart form with exactly one file, streamed into GridFS, then a job
//! document and a message on the `video` queue. Nothing half-done is left behind: any failure
//! after the file is stored deletes it (and the job) again.
//!
//! The request body arrives as an async stream of chunks; [`multer`] parses it, and the file
//! part is handed to the (blocking) GridFS upload as a [`Read`] that drives the parser one
//! chunk at a time through a [`BlockOn`]. Memory holds a few chunks, whatever the file size.

use std::future::Future;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use bytes::{Buf, Bytes};
use component_http::Reply;
use futures::{Stream, StreamExt};
use mp3_model::options::OptionError;
use mp3_model::{Job, JobMessage, Options};

use crate::magic;

pub mod framing;

use framing::{Framing, FramingError};

/// The longest multipart boundary (RFC 2046).
pub const MAX_BOUNDARY: usize = 70;

/// The most bytes of an ordinary (non-file) form field, and of all of them together: they are
/// options, kept until the form ends.
pub const MAX_FIELD_BYTES: u64 = 64 * 1024;

/// Runs a future to completion from blocking code: Spin's executor in the component,
/// `futures::executor::block_on` in tests.
pub trait BlockOn: Sync {
    /// Keeps a wake-up arranged by [`BlockOn::wake_soon`] alive until it is dropped.
    type WakeUp: Send;
    fn block_on<F: Future>(&self, future: F) -> F::Output;
    /// Has `waker` woken the next time the executor looks, so a stream may return `Pending`
    /// and let its reader work off what it holds.
    fn wake_soon(&self, waker: &Waker) -> Self::WakeUp;
}

/// Body bytes handed to multer before the stream pauses once (see [`paced`]).
const PACE_BYTES: usize = 64 * 1024;

/// Why the video could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// More bytes than allowed.
    #[error("upload too large")]
    TooLarge,
    /// Reading the request body failed (malformed multipart, client gone, over the limit).
    #[error("reading the request body: {0}")]
    Body(io::Error),
    /// The database refused or is unreachable.
    #[error("{0}")]
    Database(String),
}

/// What the upload needs from MongoDB and RabbitMQ.
pub trait Backend {
    /// Streams `reader` into GridFS `videos`; the file's id as hex.
    fn store_video(
        &mut self,
        reader: &mut dyn Read,
        filename: &str,
        max_bytes: u64,
    ) -> Result<String, StoreError>;
    fn delete_video(&mut self, fid: &str) -> Result<(), String>;
    fn insert_job(&mut self, job: &Job) -> Result<(), String>;
    /// Withdraws a job whose message the broker may have queued after all (a publish it never
    /// confirmed): its tombstone first, so a worker handed that message from now on drops it;
    /// then the job and its video, unless a worker claimed it meanwhile (the broker hands a
    /// message on before its confirm). `false`: claimed, so the job lives, and the tombstone
    /// is taken back.
    fn withdraw_job(&mut self, job: &Job, now_ms: i64) -> Result<bool, String>;
    /// Publishes to `video`, persistent, and waits for the broker's confirm.
    fn publish(&mut self, message: &JobMessage) -> Result<(), String>;
}

/// 413 with the limit in the reason.
pub fn too_large(max_bytes: u64) -> Reply {
    Reply::text(
        413,
        format!("upload exceeds the limit of {max_bytes} bytes"),
        "too_large",
    )
}

fn bad_request(body: &str, outcome: &str) -> Reply {
    Reply::text(400, body, outcome)
}

fn storage_unavailable(detail: impl Into<String>) -> Reply {
    Reply::text(503, "storage unavailable", "storage_unavailable").detail(detail)
}

/// Why the body stream was cut off before multer saw the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cutoff {
    TooLarge,
    Framing(FramingError),
}

/// The chunk stream multer reads, cut off with an error once more than `max` bytes came or
/// the framing broke a limit (see [`framing`]); the reason goes to `cutoff`.
fn guarded<S, E>(
    body: S,
    max: u64,
    boundary: &str,
    cutoff: Arc<Mutex<Option<Cutoff>>>,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send
where
    S: Stream<Item = Result<Vec<u8>, E>> + Send,
    E: std::fmt::Display,
{
    let mut seen = 0u64;
    let mut framing = Framing::new(boundary);
    body.map(move |chunk| {
        let chunk = chunk.map_err(|e| io::Error::other(format!("reading the request: {e}")))?;
        seen += chunk.len() as u64;
        let refused = if seen > max {
            Some(Cutoff::TooLarge)
        } else {
            framing.feed(&chunk).err().map(Cutoff::Framing)
        };
        if let Some(reason) = refused {
            if let Ok(mut cell) = cutoff.lock() {
                cell.get_or_insert(reason);
            }
            return Err(io::Error::other("request body refused"));
        }
        Ok(Bytes::from(chunk))
    })
}

/// `body`, pausing once every [`PACE_BYTES`]: multer pulls from its stream until the stream is
/// not ready, so a body that is always ready (a fast client) would otherwise pile up in
/// multer's buffer before any of it is parsed.
fn paced<'a, S, X>(body: S, exec: &'a X) -> impl Stream<Item = S::Item> + Send + 'a
where
    S: Stream<Item = Result<Bytes, io::Error>> + Send + 'a,
    X: BlockOn,
{
    let mut body = Box::pin(body);
    let mut since_pause = 0usize;
    // Held until the next poll: dropping it would cancel the wake-up.
    let mut _wake_up: Option<X::WakeUp> = None;
    futures::stream::poll_fn(move |cx| {
        _wake_up = None;
        if since_pause >= PACE_BYTES {
            since_pause = 0;
            _wake_up = Some(exec.wake_soon(cx.waker()));
            return Poll::Pending;
        }
        let next = body.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &next {
            since_pause += chunk.len();
        }
        next
    })
}

/// A multipart field as a blocking reader: the bytes already taken (`pending`), then the rest
/// of the field, one chunk at a time.
struct FieldReader<'a, 'r, X: BlockOn> {
    field: &'a mut multer::Field<'r>,
    pending: Bytes,
    exec: &'a X,
}

impl<X: BlockOn> Read for FieldReader<'_, '_, X> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match self.exec.block_on(self.field.chunk()) {
                Ok(Some(chunk)) => self.pending = chunk,
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        Ok(n)
    }
}

/// The first [`magic::PREFIX_LEN`] bytes of a field (fewer if it is shorter), as one buffer.
fn prefix<X: BlockOn>(field: &mut multer::Field<'_>, exec: &X) -> Result<Bytes, multer::Error> {
    let mut taken: Vec<u8> = Vec::new();
    while taken.len() < magic::PREFIX_LEN {
        match exec.block_on(field.chunk())? {
            Some(chunk) if taken.is_empty() && chunk.len() >= magic::PREFIX_LEN => {
                return Ok(chunk)
            }
            Some(chunk) => taken.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(Bytes::from(taken))
}

/// A client-supplied file name made safe to store and to show: no control characters, no
/// path, at most 255 characters.
pub fn clean_filename(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    let cleaned = cleaned.trim().to_owned();
    if cleaned.is_empty() {
        "upload".to_owned()
    } else {
        cleaned
    }
}

/// Everything about one upload once the caller is known and the services are connected.
pub struct Upload<'a> {
    /// The request's `Content-Type` (must be `multipart/form-data` with a boundary).
    pub content_type: Option<&'a str>,
    /// The uploader (`claims.username`).
    pub owner: &'a str,
    pub max_bytes: u64,
    /// Milliseconds since the Unix epoch, read when the job is recorded: a job is created once
    /// its video is stored, and its conversion time counts from then.
    pub clock: fn() -> i64,
    /// A fresh job id (24 hex digits).
    pub job_id: String,
}

/// Reads the form, stores its one file, records the job and queues it; the reply to send.
pub fn handle<S, E, X>(upload: Upload<'_>, body: S, backend: &mut impl Backend, exec: &X) -> Reply
where
    S: Stream<Item = Result<Vec<u8>, E>> + Send,
    E: std::fmt::Display,
    X: BlockOn,
{
    let Some(boundary) = upload
        .content_type
        .and_then(|ct| multer::parse_boundary(ct).ok())
    else {
        return bad_request(
            "expected a multipart/form-data body with a boundary",
            "not_multipart",
        );
    };
    // RFC 2046 allows 1 to 70 characters; a longer one only makes the search dearer.
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY {
        return bad_request(
            &format!("the multipart boundary must be 1 to {MAX_BOUNDARY} characters"),
            "bad_boundary",
        );
    }
    let cutoff = Arc::new(Mutex::new(None));
    let stream = paced(
        guarded(body, upload.max_bytes, &boundary, cutoff.clone()),
        exec,
    );
    let mut form = multer::Multipart::new(stream, boundary);
    let body_error = |detail: String| -> Reply {
        match cutoff.lock().ok().and_then(|cell| *cell) {
            Some(Cutoff::TooLarge) => too_large(upload.max_bytes).detail(detail),
            Some(Cutoff::Framing(e)) => bad_request(&e.to_string(), "bad_multipart"),
            None => bad_request("malformed multipart body", "bad_multipart").detail(detail),
        }
    };
    // The stored file: (fid, clean file name).
    let mut stored: Option<(String, String)> = None;
    // The other fields, (name, value): options.
    let mut fields: Vec<(String, String)> = Vec::new();
    let failure = |backend: &mut dyn Backend, stored: &Option<(String, String)>, reply: Reply| {
        discard(backend, stored.as_ref().map(|(fid, _)| fid.as_str()), reply)
    };
    loop {
        let mut field = match exec.block_on(form.next_field()) {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return failure(backend, &stored, body_error(e.to_string())),
        };
        let Some(filename) = field.file_name().map(clean_filename) else {
            // An ordinary form field: an option, read up to its limit and what the options
            // before it left of theirs.
            let name = field.name().unwrap_or_default().to_owned();
            let kept: u64 = fields.iter().map(|(n, v)| (n.len() + v.len()) as u64).sum();
            let mut value = Vec::new();
            loop {
                match exec.block_on(field.chunk()) {
                    Ok(Some(chunk)) => value.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(e) => return failure(backend, &stored, body_error(e.to_string())),
                }
                let reply = if value.len() as u64 > MAX_FIELD_BYTES {
                    bad_request(
                        &format!("form field over {MAX_FIELD_BYTES} bytes"),
                        "field_too_large",
                    )
                } else if kept + (name.len() + value.len()) as u64 > MAX_FIELD_BYTES {
                    bad_request(
                        &format!("form fields over {MAX_FIELD_BYTES} bytes in all"),
                        "field_too_large",
                    )
                } else {
                    continue;
                };
                return failure(backend, &stored, reply);
            }
            let Ok(value) = String::from_utf8(value) else {
                let reply = bad_request(&format!("{name}: not UTF-8 text"), "bad_option");
                return failure(backend, &stored, reply);
            };
            fields.push((name, value));
            // A field that is no option, or one given twice, is refused as it comes (the rules
            // between options wait for all of them: before the file, and at the end).
            let names = fields.iter().map(|(n, v)| (n.as_str(), v.as_str()));
            if let Err(e) = Options::check_names(names) {
                return failure(backend, &stored, bad_option(&e));
            }
            continue;
        };
        if stored.is_some() {
            return failure(
                backend,
                &stored,
                bad_request("exactly one file expected, got several", "several_files"),
            );
        }
        // Options given before the file are checked before it is stored.
        if let Err(e) = read_options(&fields, &filename) {
            return bad_option(&e);
        }
        let head = match prefix(&mut field, exec) {
            Ok(head) => head,
            Err(e) => return body_error(e.to_string()),
        };
        if magic::container(&head).is_none() {
            return Reply::text(415, "the file is not a video", "not_a_video")
                .detail(format!("file {filename:?}"));
        }
        let mut reader = FieldReader {
            field: &mut field,
            pending: head,
            exec,
        };
        match backend.store_video(&mut reader, &filename, upload.max_bytes) {
            Ok(fid) => stored = Some((fid, filename)),
            Err(StoreError::TooLarge) => return too_large(upload.max_bytes),
            Err(StoreError::Body(e)) => return body_error(e.to_string()),
            Err(StoreError::Database(e)) => return storage_unavailable(e),
        }
    }
    let Some((video_fid, filename)) = stored else {
        return bad_request("no file in the form", "no_file");
    };
    let options = match read_options(&fields, &filename) {
        Ok(options) => options,
        Err(e) => return discard(backend, Some(&video_fid), bad_option(&e)),
    };

    let now = (upload.clock)();
    let job =
        Job::queued(&upload.job_id, upload.owner, &video_fid, &filename, now).with_options(options);
    if let Err(e) = backend.insert_job(&job) {
        return discard(backend, Some(&video_fid), storage_unavailable(e));
    }
    let message = JobMessage::for_job(&job);
    if let Err(e) = backend.publish(&message) {
        let reply = Reply::text(503, "queue unavailable", "queue_unavailable").detail(&e);
        match backend.withdraw_job(&job, now) {
            Ok(true) => return reply,
            // The message got through after all: the upload is accepted.
            Ok(false) => {
                return accepted(&job, &video_fid, upload.owner)
                    .detail(format!("{e}; but a converter took the job meanwhile"))
            }
            Err(cleanup) => return with_cleanup_failure(reply, Some(cleanup)),
        }
    }
    accepted(&job, &video_fid, upload.owner)
}

/// 202 with where to follow the job.
fn accepted(job: &Job, video_fid: &str, owner: &str) -> Reply {
    let body = serde_json::json!({
        "job_id": job.id,
        "video_fid": video_fid,
        "status_url": format!("/jobs/{}", job.id),
    });
    Reply::new(202, "application/json", body.to_string(), "queued")
        .header("location", format!("/jobs/{}", job.id))
        .user(owner)
}

fn read_options(fields: &[(String, String)], filename: &str) -> Result<Options, OptionError> {
    Options::from_fields(
        fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
        filename,
    )
}

/// 400 naming the option and the rule it broke.
pub fn bad_option(error: &OptionError) -> Reply {
    bad_request(&error.to_string(), "bad_option")
}

/// Deletes the video stored for a failed upload, then gives `reply`, with any cleanup failure
/// added to its logged detail.
fn discard(backend: &mut dyn Backend, video_fid: Option<&str>, reply: Reply) -> Reply {
    let cleanup = video_fid.and_then(|fid| backend.delete_video(fid).err());
    with_cleanup_failure(reply, cleanup)
}

fn with_cleanup_failure(reply: Reply, problem: Option<String>) -> Reply {
    let Some(problem) = problem else {
        return reply;
    };
    let detail = match &reply.detail {
        Some(d) => format!("{d}; cleanup failed: {problem}"),
        None => format!("cleanup failed: {problem}"),
    };
    reply.detail(detail)
}

#[cfg(test)]
mod tests;
