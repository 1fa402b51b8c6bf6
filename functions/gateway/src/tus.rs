//! Resumable uploads: the tus 1.0.0 protocol (core, creation, termination, expiration, and
//! checksum with SHA-1), stored into GridFS `videos` as the bytes arrive.
//!
//! An upload is a document of `videos.uploads` ([`UploadState`]): its owner, its declared
//! length, how many bytes are stored (`offset`), and the bytes past the last full GridFS chunk
//! (`tail`, less than one chunk). Full chunks go to `fs.chunks` as they fill; the files
//! document is written when the last byte is in, then the job (whose id is the upload's) and
//! its message, exactly as `POST /upload` does. So:
//! - memory holds one chunk and a batch to insert, whatever the size;
//! - the stored `offset` only moves after the chunks it covers are written, so a gateway
//!   killed mid-PATCH loses at most the bytes after its last checkpoint, which the client
//!   sends again (the chunks it wrote past the offset are replaced where the next PATCH meets
//!   them: the unique `files_id, n` index refuses its insert);
//! - one PATCH writes an upload at a time: it holds a lease keyed by the upload and its start
//!   offset, taken by a unique insert (FerretDB's conditional updates read then write in two
//!   steps, so two of them can both win), renewed at every checkpoint;
//! - the first bytes are checked for a video container as soon as there are enough of them;
//!   a refused upload is deleted at once;
//! - with `Upload-Checksum` a PATCH is all or nothing: its bytes count only if their SHA-1
//!   matches (460 otherwise), and are discarded if the body breaks off. Without one, what
//!   arrived before a break is kept.
//!
//! Abandoned uploads expire (`Upload-Expires`, renewed by every PATCH); the converter's
//! sweeper deletes them with their chunks.

use std::io::{self, Read};

use base64::Engine as _;
use component_http::Reply;
use mp3_model::{options, Job, JobMessage, Options};
use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

use crate::magic;
use crate::upload::clean_filename;

/// The protocol version spoken (the only one).
pub const VERSION: &str = "1.0.0";
/// The extensions supported, as `Tus-Extension` lists them.
pub const EXTENSIONS: &str = "creation,termination,expiration,checksum";
/// The checksum algorithms supported.
pub const CHECKSUM_ALGORITHMS: &str = "sha1";
/// The content type of a PATCH body.
pub const PATCH_CONTENT_TYPE: &str = "application/offset+octet-stream";
/// Where uploads are created, and the prefix of each upload's URL.
pub const ROOT: &str = "/uploads";

/// A PATCH saves its progress at least every this many full chunks (16 MiB at 255 KiB: what a
/// gateway killed mid-PATCH loses; a broken connection loses nothing, it is saved then)...
const CHECKPOINT_CHUNKS: u64 = 64;
/// ...and every this many milliseconds, so its lease stays fresh on a slow link.
const CHECKPOINT_MS: i64 = 10_000;
/// A lease not renewed for this long belongs to a PATCH that died: another may take over.
pub const LEASE_MS: i64 = 30_000;
/// A PATCH renews its lease this often while it reads (and before it saves).
const RENEW_MS: i64 = 5_000;
/// Full chunks inserted per round trip.
const CHUNKS_PER_INSERT: usize = 4;
/// Unfinished uploads one user may have at a time: each holds up to `max_resumable_upload_bytes` of
/// storage until it expires.
pub const MAX_OPEN_UPLOADS: u64 = 20;
/// The longest `Upload-Metadata` header read: room for every option at its longest, in base64.
const MAX_METADATA: usize = 16 * 1024;

/// An upload in progress (or just finished), as stored in `videos.uploads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// The upload's id, and the id of its job once complete.
    #[serde(rename = "_id")]
    pub id: String,
    pub owner: String,
    pub filename: String,
    /// Declared size (`Upload-Length`).
    pub length: u64,
    /// Bytes stored: full chunks plus `tail`.
    pub offset: u64,
    /// The bytes past the last full chunk.
    #[serde(with = "serde_bytes")]
    pub tail: Vec<u8>,
    /// The GridFS `videos` file the bytes go to (hex ObjectId).
    pub video_fid: String,
    /// Whether the first bytes were seen to be a video container.
    pub checked: bool,
    /// Whether every byte is in and the job was made.
    pub done: bool,
    /// What the job will ask of the conversion.
    #[serde(default)]
    pub options: Options,
    /// Unix milliseconds.
    pub created_at: i64,
    pub expires_at: i64,
}

impl UploadState {
    /// Full chunks stored.
    fn chunks(&self, chunk_size: u64) -> u64 {
        self.offset / chunk_size
    }

    pub fn url(&self) -> String {
        format!("{ROOT}/{}", self.id)
    }
}

/// The request headers the protocol reads (`None` when absent).
#[derive(Debug, Default, Clone)]
pub struct Headers {
    pub tus_resumable: Option<String>,
    pub upload_length: Option<String>,
    pub upload_defer_length: Option<String>,
    pub upload_metadata: Option<String>,
    pub upload_offset: Option<String>,
    pub upload_checksum: Option<String>,
    pub content_type: Option<String>,
    pub content_length: Option<String>,
}

/// What the upload needs from MongoDB (and, to finish, RabbitMQ). Errors are one line.
pub trait Store {
    fn create(&mut self, state: &UploadState) -> Result<(), String>;
    fn load(&mut self, id: &str) -> Result<Option<UploadState>, String>;
    /// Takes the lease of the PATCH starting at `offset`; false if a live one holds it.
    fn lease(&mut self, id: &str, offset: u64, token: &str, now: i64) -> Result<bool, String>;
    /// Renews this PATCH's lease at `offset`; false if it is no longer there (taken over, or
    /// removed with the upload by a termination or the sweeper): never takes it anew.
    fn renew(&mut self, id: &str, offset: u64, token: &str, now: i64) -> Result<bool, String>;
    fn release(&mut self, id: &str, offset: u64, token: &str) -> Result<(), String>;
    /// Deletes chunks `chunks.start <= n < chunks.end` of the file (left by a PATCH that died
    /// before saving).
    fn drop_chunks(&mut self, video_fid: &str, chunks: std::ops::Range<u64>) -> Result<(), String>;
    /// Inserts chunks `first, first + 1, ...` of the file, in order; false if one of those
    /// numbers is taken (by a PATCH that died before saving), where the insert stopped.
    fn insert_chunks(
        &mut self,
        video_fid: &str,
        first: u64,
        chunks: &[Vec<u8>],
    ) -> Result<bool, String>;
    /// Saves `state` if the stored one is still at offset `from`; false if it moved on.
    fn save(&mut self, state: &UploadState, from: u64) -> Result<bool, String>;
    /// Writes the GridFS files document of a complete upload (done already is fine).
    fn finish_file(&mut self, state: &UploadState, chunk_size: u32) -> Result<(), String>;
    /// Inserts the job of a complete upload (there already is fine).
    fn insert_job(&mut self, job: &Job) -> Result<(), String>;
    /// Whether job `id` exists (an upload of that id was finished).
    fn job_exists(&mut self, id: &str) -> Result<bool, String>;
    /// `owner`'s unfinished, unexpired uploads: how many, and their `Upload-Length`s summed
    /// (counting at most [`MAX_OPEN_UPLOADS`] + 1 of them).
    fn open_uploads(&mut self, owner: &str, now: i64) -> Result<OpenUploads, String>;
    /// Deletes the upload: its chunks unless it is done, its document, its leases.
    fn remove(&mut self, state: &UploadState) -> Result<(), String>;
}

/// `OPTIONS /uploads`: what this server speaks.
pub fn options(max_bytes: u64) -> Reply {
    empty(204, "tus_options")
        .header("tus-resumable", VERSION)
        .header("tus-version", VERSION)
        .header("tus-extension", EXTENSIONS)
        .header("tus-max-size", max_bytes.to_string())
        .header("tus-checksum-algorithm", CHECKSUM_ALGORITHMS)
}

/// A reply without a body (and without a content type), carrying `Tus-Resumable`.
fn empty(status: u16, outcome: &str) -> Reply {
    let mut reply = Reply::text(status, "", outcome);
    reply.headers.clear();
    reply.header("tus-resumable", VERSION)
}

fn refuse(status: u16, body: &str, outcome: &str) -> Reply {
    Reply::text(status, body, outcome).header("tus-resumable", VERSION)
}

/// 412 unless the client speaks our version (every request but OPTIONS must say so).
pub fn check_version(headers: &Headers) -> Result<(), Reply> {
    match headers.tus_resumable.as_deref().map(str::trim) {
        Some(VERSION) => Ok(()),
        _ => Err(refuse(
            412,
            &format!("Tus-Resumable: {VERSION} required"),
            "tus_version",
        )
        .header("tus-version", VERSION)),
    }
}

/// A strict unsigned decimal: digits only, no sign, no spaces inside.
fn number(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent).
pub fn parse_metadata(text: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    if text.len() > MAX_METADATA {
        return Err(format!("Upload-Metadata over {MAX_METADATA} bytes"));
    }
    let mut pairs = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut parts = pair.split(' ');
        let key = parts.next().unwrap_or_default();
        let value = parts.next().unwrap_or_default();
        if key.is_empty() || parts.next().is_some() || !key.is_ascii() {
            return Err("malformed Upload-Metadata".into());
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| format!("Upload-Metadata: {key} is not base64"))?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// `Upload-Checksum: sha1 <base64 digest>`.
pub fn parse_checksum(text: &str) -> Result<[u8; 20], Reply> {
    let (algorithm, digest) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    if !algorithm.eq_ignore_ascii_case("sha1") {
        return Err(refuse(
            400,
            &format!("unsupported checksum algorithm (supported: {CHECKSUM_ALGORITHMS})"),
            "tus_bad_checksum",
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .ok()
        .and_then(|d| <[u8; 20]>::try_from(d).ok())
        .ok_or_else(|| refuse(400, "malformed Upload-Checksum", "tus_bad_checksum"))
}

/// What `POST /uploads` asks for: the length, the file name and the conversion's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creation {
    pub length: u64,
    pub filename: String,
    pub options: Options,
}

/// Checks a creation request: 400 for a missing or malformed `Upload-Length` or metadata, 413
/// over the limit. A body (creation-with-upload) is not supported: 400.
pub fn creation(headers: &Headers, max_bytes: u64) -> Result<Creation, Reply> {
    check_version(headers)?;
    if headers.upload_defer_length.is_some() {
        return Err(refuse(
            400,
            "Upload-Defer-Length is not supported: send Upload-Length",
            "tus_defer",
        ));
    }
    let Some(length) = headers.upload_length.as_deref() else {
        return Err(refuse(400, "Upload-Length required", "tus_no_length"));
    };
    let length =
        number(length).ok_or_else(|| refuse(400, "malformed Upload-Length", "tus_bad_length"))?;
    if length == 0 {
        return Err(refuse(400, "an empty file is not a video", "tus_empty"));
    }
    if length > max_bytes {
        return Err(refuse(
            413,
            &format!("upload exceeds the limit of {max_bytes} bytes"),
            "too_large",
        ));
    }
    if headers
        .content_length
        .as_deref()
        .and_then(number)
        .is_some_and(|n| n > 0)
    {
        return Err(refuse(
            400,
            "send the bytes with PATCH after creating the upload",
            "tus_body_on_create",
        ));
    }
    let metadata = match headers.upload_metadata.as_deref() {
        Some(text) => parse_metadata(text).map_err(|e| refuse(400, &e, "tus_bad_metadata"))?,
        None => Vec::new(),
    };
    let filename = metadata
        .iter()
        .find(|(k, _)| k == "filename")
        .map(|(_, v)| clean_filename(&String::from_utf8_lossy(v)))
        .unwrap_or_else(|| "upload".to_owned());
    // The options among the metadata; other keys (`filetype`, what tus clients add) are not
    // ours to judge.
    let mut fields = Vec::new();
    for (key, value) in &metadata {
        if !options::FIELDS.contains(&key.as_str()) {
            continue;
        }
        let value = std::str::from_utf8(value)
            .map_err(|_| refuse(400, &format!("{key}: not UTF-8 text"), "bad_option"))?;
        fields.push((key.as_str(), value));
    }
    let options = Options::from_fields(fields, &filename)
        .map_err(|e| refuse(400, &e.to_string(), "bad_option"))?;
    Ok(Creation {
        length,
        filename,
        options,
    })
}

/// A user's unfinished uploads, as [`Store::open_uploads`] counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenUploads {
    pub count: u64,
    pub bytes: u64,
}

/// Whether a user with `open` unfinished uploads may start one of `length` bytes: 429 (with a
/// `Retry-After`: another upload may finish meanwhile) for the [`MAX_OPEN_UPLOADS`]th, or for
/// one that would bring the bytes they hold open past `max_bytes` (what one upload may be), so
/// that an account cannot park more storage than that.
pub fn admit(open: OpenUploads, length: u64, max_bytes: u64) -> Result<(), Reply> {
    let reason = if open.count >= MAX_OPEN_UPLOADS {
        format!("{MAX_OPEN_UPLOADS} uploads are under way already: finish or cancel one first")
    } else if open.bytes.saturating_add(length) > max_bytes {
        format!(
            "unfinished uploads would hold more than {max_bytes} bytes: finish or cancel one first"
        )
    } else {
        return Ok(());
    };
    Err(refuse(429, &reason, "tus_too_many").header("retry-after", "60"))
}

/// 201 for a new upload: where to send its bytes, and until when.
pub fn created(state: &UploadState) -> Reply {
    empty(201, "tus_created")
        .header("location", state.url())
        .header("upload-expires", http_date(state.expires_at))
}

/// `HEAD /uploads/{id}`: how far the upload got.
pub fn progress(state: &UploadState) -> Reply {
    let mut reply = empty(200, "tus_offset")
        .header("upload-offset", state.offset.to_string())
        .header("upload-length", state.length.to_string())
        .header("cache-control", "no-store");
    if !state.done {
        reply = reply.header("upload-expires", http_date(state.expires_at));
    }
    reply
}

/// 404 for an upload that does not exist, is another user's or has expired (the same answer).
pub fn not_found() -> Reply {
    refuse(404, "upload not found", "tus_not_found")
}

/// The caller's upload `state`, or 404 (not theirs, or expired).
pub fn owned(state: Option<UploadState>, user: &str, now: i64) -> Result<UploadState, Reply> {
    match state {
        Some(state) if state.owner == user && (state.done || state.expires_at > now) => Ok(state),
        Some(state) if state.owner == user => {
            let mut reply = not_found();
            reply.outcome = "tus_expired".into();
            Err(reply)
        }
        Some(_) => {
            let mut reply = not_found();
            reply.outcome = "tus_not_owner".into();
            Err(reply)
        }
        None => Err(not_found()),
    }
}

/// 204 once an upload was deleted.
/// `DELETE`: the upload and its bytes (204), unless a PATCH is writing it (423): it would go
/// on storing chunks for up to a lease renewal after, which nothing would own. So the
/// termination takes the upload's lease first, as a PATCH does.
pub fn terminate(state: &UploadState, store: &mut dyn Store, token: &str, now: i64) -> Reply {
    let state = if state.done {
        state.clone()
    } else {
        match store.lease(&state.id, state.offset, token, now) {
            Ok(true) => {}
            Ok(false) => return locked(),
            Err(e) => return unavailable(e),
        }
        // Read again under the lease: a PATCH may have moved the upload on (and taken the
        // lease at its new offset) since `state` was read, and still be writing.
        match store.load(&state.id) {
            // Still where it was, or finished meanwhile (then removed as a finished one is).
            Ok(Some(current)) if current.done || current.offset == state.offset => current,
            Err(e) => return unavailable(e),
            moved => {
                // Not ours to hold; one not given back lapses with its lease.
                let _ = store.release(&state.id, state.offset, token);
                return if matches!(moved, Ok(None)) {
                    not_found()
                } else {
                    locked()
                };
            }
        }
    };
    // Its leases go with it.
    match store.remove(&state) {
        Ok(()) => empty(204, "tus_terminated"),
        Err(e) => unavailable(e),
    }
}

/// What a PATCH asks for, checked against the upload before reading the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchRequest {
    pub checksum: Option<[u8; 20]>,
}

/// 415 without the tus content type, 400 without a valid `Upload-Offset`, 409 when it is not
/// the stored offset (the client must ask with HEAD), 400 for a bad checksum header.
pub fn patch_request(headers: &Headers, state: &UploadState) -> Result<PatchRequest, Reply> {
    check_version(headers)?;
    let content_type = headers.content_type.as_deref().unwrap_or_default();
    if !content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(PATCH_CONTENT_TYPE))
    {
        return Err(refuse(
            415,
            &format!("Content-Type: {PATCH_CONTENT_TYPE} required"),
            "tus_content_type",
        ));
    }
    let offset = headers
        .upload_offset
        .as_deref()
        .and_then(number)
        .ok_or_else(|| refuse(400, "Upload-Offset required", "tus_no_offset"))?;
    if offset != state.offset || state.done {
        return Err(refuse(
            409,
            &format!("the upload is at offset {}", state.offset),
            "tus_offset_mismatch",
        )
        .header("upload-offset", state.offset.to_string()));
    }
    let declared = headers.content_length.as_deref().and_then(number);
    if declared.is_some_and(|n| n > state.length - state.offset) {
        return Err(refuse(
            413,
            "the body runs past Upload-Length",
            "tus_past_length",
        ));
    }
    let checksum = headers
        .upload_checksum
        .as_deref()
        .map(parse_checksum)
        .transpose()?;
    Ok(PatchRequest { checksum })
}

/// Everything a PATCH needs besides the store.
pub struct Patch<'a> {
    pub request: PatchRequest,
    pub chunk_size: u32,
    /// Unix milliseconds, read as the PATCH goes.
    pub clock: &'a dyn Fn() -> i64,
    /// How long an upload lives after its last PATCH.
    pub expiry_ms: i64,
    /// A random token naming this PATCH's lease.
    pub token: &'a str,
    /// Publishes the finished upload's job message (connecting to RabbitMQ only then).
    pub publish: &'a mut dyn FnMut(&JobMessage) -> Result<(), String>,
}

/// Streams `body` into the upload from its offset, saving progress as it goes; finishes the
/// upload (files document, job, message) when the last byte is in. Replies 204 with the new
/// `Upload-Offset`.
pub fn patch(
    state: UploadState,
    body: &mut dyn Read,
    patch: Patch<'_>,
    store: &mut dyn Store,
) -> Reply {
    let id = state.id.clone();
    let now = (patch.clock)();
    match store.lease(&id, state.offset, patch.token, now) {
        Ok(true) => {}
        Ok(false) => return locked(),
        Err(e) => return unavailable(e),
    }
    let mut writer = Writer {
        chunk_size: u64::from(patch.chunk_size),
        lease_at: state.offset,
        last_save: now,
        last_renew: now,
        state,
        patch,
    };
    let reply = writer.run(body, store);
    // A lease left behind lapses by itself.
    let _ = store.release(&id, writer.lease_at, writer.patch.token);
    reply
}

fn unavailable(detail: String) -> Reply {
    refuse(503, "storage unavailable", "storage_unavailable").detail(detail)
}

/// 423 while another request holds the upload (its lease lapses if it died).
fn locked() -> Reply {
    refuse(423, "another request is writing this upload", "tus_locked")
        .header("retry-after", (RENEW_MS / 1000 + 1).to_string())
}

/// The upload as it really is: one whose job exists was finished by a PATCH that could not
/// record it (its publish or its last save failed, or it died), whatever its document says.
/// Its job's message is published again (a job is never left without one; a second copy is
/// harmless, the converter converts a job once), then the upload is saved done, best effort.
pub fn settled(
    mut state: UploadState,
    store: &mut dyn Store,
    publish: &mut dyn FnMut(&JobMessage) -> Result<(), String>,
) -> Result<UploadState, Reply> {
    if !state.done && store.job_exists(&state.id).map_err(unavailable)? {
        publish(&JobMessage::for_job(&job_of(&state, state.created_at)))
            .map_err(|e| refuse(503, "queue unavailable", "queue_unavailable").detail(e))?;
        let from = state.offset;
        state.offset = state.length;
        state.tail = Vec::new();
        state.done = true;
        let _ = store.save(&state, from);
    }
    Ok(state)
}

/// One PATCH at work, holding the upload's lease.
struct Writer<'p> {
    state: UploadState,
    patch: Patch<'p>,
    chunk_size: u64,
    /// The offset the lease (and the stored state) is at.
    lease_at: u64,
    last_save: i64,
    last_renew: i64,
}

/// Bytes read from the body between two looks at the clock.
const READ_STEP: usize = 64 * 1024;

impl Writer<'_> {
    /// Nothing is deleted when a PATCH fails: what it wrote past the stored offset may be
    /// another PATCH's by then (if this one lost its lease), and the next PATCH to hold the
    /// lease replaces it anyway as it writes.
    fn run(&mut self, body: &mut dyn Read, store: &mut dyn Store) -> Reply {
        self.stream(body, store).unwrap_or_else(|reply| reply)
    }

    fn stream(&mut self, body: &mut dyn Read, store: &mut dyn Store) -> Result<Reply, Reply> {
        let cs = self.chunk_size;
        // Read again under the lease: the state read before it may be stale.
        let current = store
            .load(&self.state.id)
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        let current = settled(current, store, &mut *self.patch.publish)?;
        if current.done {
            // Finished by an earlier PATCH whose answer was lost: the same answer again.
            self.state = current;
            return Ok(self.done_reply());
        }
        if current.offset != self.state.offset {
            return Err(refuse(
                409,
                &format!("the upload is at offset {}", current.offset),
                "tus_offset_mismatch",
            )
            .header("upload-offset", current.offset.to_string()));
        }
        self.state = current;
        let remaining = self.state.length - self.state.offset;
        let mut hasher = self.patch.request.checksum.map(|_| Sha1::new());
        // The chunk being filled: it starts with the stored tail.
        let mut buffer = std::mem::take(&mut self.state.tail);
        let first = self.state.chunks(cs);
        let mut next_n = first;
        let mut saved_n = first;
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(CHUNKS_PER_INSERT);
        let mut received: u64 = 0;
        let broke_off = loop {
            let old = buffer.len();
            let want = (usize::try_from(cs).unwrap_or(usize::MAX) - old).min(READ_STEP);
            buffer.resize(old + want, 0);
            let (got, error) = fill(body, &mut buffer[old..]);
            buffer.truncate(old + got);
            received += got as u64;
            if received > remaining {
                return Err(refuse(
                    413,
                    "the body runs past Upload-Length",
                    "tus_past_length",
                ));
            }
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&buffer[old..]);
            }
            let ended = error.is_some() || got < want;
            let complete = received == remaining && error.is_none();
            if !self.state.checked && next_n == 0 && (buffer.len() >= magic::PREFIX_LEN || complete)
            {
                if magic::container(&buffer[..buffer.len().min(magic::PREFIX_LEN)]).is_none() {
                    let _ = store.remove(&self.state);
                    return Err(refuse(415, "the file is not a video", "not_a_video"));
                }
                self.state.checked = true;
            }
            let now = (self.patch.clock)();
            if buffer.len() as u64 == cs {
                let full = std::mem::replace(&mut buffer, Vec::with_capacity(cs as usize));
                batch.push(full);
                next_n += 1;
                if batch.len() >= CHUNKS_PER_INSERT {
                    self.insert(store, next_n, &mut batch)?;
                }
                let due =
                    next_n - saved_n >= CHECKPOINT_CHUNKS || now - self.last_save >= CHECKPOINT_MS;
                if due && hasher.is_none() {
                    self.insert(store, next_n, &mut batch)?;
                    self.save(store, next_n * cs, &buffer, now, true)?;
                    saved_n = next_n;
                }
            }
            if now - self.last_renew >= RENEW_MS {
                self.renew(store, now)?;
            }
            if ended {
                break error;
            }
        };
        self.insert(store, next_n, &mut batch)?;
        let offset = next_n * cs + buffer.len() as u64;
        let now = (self.patch.clock)();
        if offset == self.state.offset {
            // Nothing arrived: nothing to save, and the expiry stays where it was (only progress
            // keeps an upload alive, so empty PATCHes cannot hold storage forever).
            return Ok(match broke_off {
                Some(error) => refuse(400, "the request body broke off", "tus_interrupted")
                    .header("upload-offset", offset.to_string())
                    .detail(error.to_string()),
                None => self.done_reply(),
            });
        }
        if let Some(error) = broke_off {
            if hasher.is_some() {
                return Err(refuse(400, "the request body broke off", "tus_interrupted")
                    .detail(error.to_string()));
            }
            // What arrived is kept: the client resumes from there.
            self.save(store, offset, &buffer, now, false)?;
            return Ok(refuse(400, "the request body broke off", "tus_interrupted")
                .header("upload-offset", offset.to_string())
                .detail(error.to_string()));
        }
        if let (Some(hasher), Some(expected)) = (hasher, self.patch.request.checksum) {
            if <[u8; 20]>::from(hasher.finalize()) != expected {
                return Err(refuse(460, "checksum mismatch", "tus_checksum_mismatch"));
            }
        }
        if offset < self.state.length {
            self.save(store, offset, &buffer, now, false)?;
            return Ok(self.done_reply());
        }
        self.finish(store, next_n, buffer, now)?;
        Ok(self.done_reply())
    }

    /// 204 with where the upload is now.
    fn done_reply(&self) -> Reply {
        let reply = empty(
            204,
            if self.state.done {
                "queued"
            } else {
                "tus_patched"
            },
        )
        .header("upload-offset", self.state.offset.to_string());
        if self.state.done {
            reply
        } else {
            reply.header("upload-expires", http_date(self.state.expires_at))
        }
    }

    /// Inserts the full chunks waiting in `batch`, the last of which is chunk `next_n - 1`.
    fn insert(
        &mut self,
        store: &mut dyn Store,
        next_n: u64,
        batch: &mut Vec<Vec<u8>>,
    ) -> Result<(), Reply> {
        if batch.is_empty() {
            return Ok(());
        }
        let first = next_n - batch.len() as u64;
        self.put_chunks(store, first, batch)?;
        batch.clear();
        Ok(())
    }

    /// Stores chunks `first, first + 1, ...`. Chunks past the stored offset are a dead PATCH's:
    /// met here (the unique `files_id, n` index refuses the insert), those of this batch's
    /// numbers are deleted and the insert made again; later ones are met later. Found so
    /// rather than looked for, because a query on the chunks costs a scan of every stored chunk
    /// on FerretDB, and would make each PATCH slower than the last. Only this batch's numbers:
    /// a PATCH that stalled past its lease between its renewal and the delete then deletes
    /// only what it inserts again at once (the same bytes of the same file), never a stretch of
    /// the chunks the PATCH that took over wrote since.
    fn put_chunks(
        &mut self,
        store: &mut dyn Store,
        first: u64,
        chunks: &[Vec<u8>],
    ) -> Result<(), Reply> {
        if store
            .insert_chunks(&self.state.video_fid, first, chunks)
            .map_err(unavailable)?
        {
            return Ok(());
        }
        // Only while the upload is still this PATCH's: one that lost its lease must not delete
        // what the one that took over wrote.
        let now = (self.patch.clock)();
        self.renew(store, now)?;
        let fid = &self.state.video_fid;
        let batch = first..first + chunks.len() as u64;
        store.drop_chunks(fid, batch).map_err(unavailable)?;
        if store
            .insert_chunks(fid, first, chunks)
            .map_err(unavailable)?
        {
            return Ok(());
        }
        // Another writer is at it still (it lost its lease and has not noticed yet).
        Err(locked())
    }

    /// Saves the state at `offset` with `tail`; first checks that the lease is still this
    /// PATCH's. At a checkpoint (`going_on`) the lease moves to the new offset; at the PATCH's
    /// end it stays where it is and is released (two round trips fewer per request).
    fn save(
        &mut self,
        store: &mut dyn Store,
        offset: u64,
        tail: &[u8],
        now: i64,
        going_on: bool,
    ) -> Result<(), Reply> {
        self.renew(store, now)?;
        let from = self.state.offset;
        let mut next = self.state.clone();
        next.offset = offset;
        next.tail = tail.to_vec();
        next.expires_at = now.saturating_add(self.patch.expiry_ms);
        if !store.save(&next, from).map_err(unavailable)? {
            return Err(refuse(
                409,
                "another request moved this upload on",
                "tus_moved",
            ));
        }
        next.tail = Vec::new();
        self.state = next;
        self.last_save = now;
        if going_on && offset != self.lease_at {
            if !store
                .lease(&self.state.id, offset, self.patch.token, now)
                .map_err(unavailable)?
            {
                return Err(locked());
            }
            let _ = store.release(&self.state.id, self.lease_at, self.patch.token);
            self.lease_at = offset;
        }
        Ok(())
    }

    /// Keeps the lease fresh; 423 if another request took it over meanwhile.
    fn renew(&mut self, store: &mut dyn Store, now: i64) -> Result<(), Reply> {
        self.last_renew = now;
        match store.renew(&self.state.id, self.lease_at, self.patch.token, now) {
            Ok(true) => Ok(()),
            Ok(false) => Err(locked()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The last byte is in: the last chunk, the files document, the job and its message, then
    /// the state marked done. A failure before the job leaves none (the retry makes it); a
    /// failure after it leaves a job the next PATCH or HEAD finds, publishes again and takes
    /// for the upload's end ([`settled`]).
    fn finish(
        &mut self,
        store: &mut dyn Store,
        last_n: u64,
        last: Vec<u8>,
        now: i64,
    ) -> Result<(), Reply> {
        // Every chunk is there without counting them (a scan of every stored chunk on
        // FerretDB): each PATCH writes its chunks in order from the saved offset, under its
        // lease, and a chunk left by a dead one is replaced where it is met (`put_chunks`).
        // What could still leave a gap takes a PATCH stalled for 30 s that then dies between
        // deleting and inserting its batch again; the converter checks the sequence, and such
        // a job fails with the missing chunk named.
        if !last.is_empty() {
            self.put_chunks(store, last_n, &[last])?;
        }
        self.renew(store, now)?;
        let mut done = self.state.clone();
        done.offset = done.length;
        done.tail = Vec::new();
        done.done = true;
        done.expires_at = now.saturating_add(self.patch.expiry_ms);
        store
            .finish_file(&done, self.patch.chunk_size)
            .map_err(unavailable)?;
        // Still this PATCH's (not terminated meanwhile: a DELETE takes the lease), so the job
        // is not made for an upload its owner cancelled.
        self.renew(store, (self.patch.clock)())?;
        let job = job_of(&done, now);
        store.insert_job(&job).map_err(unavailable)?;
        let message = JobMessage::for_job(&job);
        if let Err(e) = (self.patch.publish)(&message) {
            // The job stays: the client's next request publishes it again (see `settled`),
            // and the sweeper does once it looks stuck. Deleting it instead could race a
            // request that had already taken the upload for done.
            return Err(refuse(503, "queue unavailable", "queue_unavailable").detail(e));
        }
        let from = self.state.offset;
        match store.save(&done, from) {
            Ok(_) => {}
            Err(e) => return Err(unavailable(e)),
        }
        self.state = done;
        Ok(())
    }
}

/// Reads into `buf` until it is full, the reader ends, or it fails: how many bytes came, and
/// the failure if any.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

/// Formats Unix milliseconds as an HTTP date (`Upload-Expires`).
pub fn http_date(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// The job of a finished upload.
pub fn job_of(state: &UploadState, now: i64) -> Job {
    Job::queued(
        &state.id,
        &state.owner,
        &state.video_fid,
        &state.filename,
        now,
    )
    .with_options(state.options.clone())
}

#[cfg(test)]
mod tests;
