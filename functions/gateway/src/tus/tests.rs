//! The protocol against an in-memory store that behaves as the MongoDB one does (unique chunk
//! keys, leases by unique insert, saves conditional on the offset).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};

use super::*;
use mp3_model::JobStatus;

const CHUNK: u32 = 1024;
const MAX: u64 = 1 << 20;

#[derive(Default)]
struct Memory {
    /// Leases granted before another request takes the upload over (none: never).
    leases_before_theft: Option<usize>,
    /// What comes then is a termination (DELETE, or the sweeper), not another request.
    theft_is_termination: bool,
    /// The save that marks an upload done fails.
    fail_done_save: bool,
    states: HashMap<String, UploadState>,
    chunks: BTreeMap<(String, u64), Vec<u8>>,
    leases: HashMap<(String, u64), (String, i64)>,
    files: HashMap<String, u64>,
    jobs: HashMap<String, Job>,
    saves: usize,
}

impl Memory {
    /// Another request takes the upload over once `leases_before_theft` leases were granted.
    fn maybe_stolen(&mut self, id: &str, offset: u64, now: i64) {
        if let Some(left) = self.leases_before_theft.as_mut() {
            if *left == 0 && self.theft_is_termination {
                self.states.remove(id);
                self.leases.retain(|(upload, _), _| upload != id);
            } else if *left == 0 {
                self.leases
                    .insert((id.to_owned(), offset), ("thief".into(), now));
            } else {
                *left -= 1;
            }
        }
    }
}

impl Store for Memory {
    fn create(&mut self, state: &UploadState) -> Result<(), String> {
        self.states.insert(state.id.clone(), state.clone());
        Ok(())
    }
    fn load(&mut self, id: &str) -> Result<Option<UploadState>, String> {
        Ok(self.states.get(id).cloned())
    }
    fn lease(&mut self, id: &str, offset: u64, token: &str, now: i64) -> Result<bool, String> {
        self.maybe_stolen(id, offset, now);
        let key = (id.to_owned(), offset);
        match self.leases.get(&key) {
            Some((holder, at)) if holder != token && now - at < LEASE_MS => Ok(false),
            _ => {
                self.leases.insert(key, (token.to_owned(), now));
                Ok(true)
            }
        }
    }
    fn renew(&mut self, id: &str, offset: u64, token: &str, now: i64) -> Result<bool, String> {
        self.maybe_stolen(id, offset, now);
        match self.leases.get_mut(&(id.to_owned(), offset)) {
            Some((holder, at)) if holder == token => {
                *at = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    fn release(&mut self, id: &str, offset: u64, token: &str) -> Result<(), String> {
        let key = (id.to_owned(), offset);
        if self.leases.get(&key).is_some_and(|(t, _)| t == token) {
            self.leases.remove(&key);
        }
        Ok(())
    }
    fn drop_chunks(&mut self, video_fid: &str, chunks: std::ops::Range<u64>) -> Result<(), String> {
        self.chunks
            .retain(|(fid, n), _| fid != video_fid || !chunks.contains(n));
        Ok(())
    }
    fn insert_chunks(&mut self, fid: &str, first: u64, chunks: &[Vec<u8>]) -> Result<bool, String> {
        for (i, data) in chunks.iter().enumerate() {
            let key = (fid.to_owned(), first + i as u64);
            if self.chunks.contains_key(&key) {
                return Ok(false);
            }
            self.chunks.insert(key, data.clone());
        }
        Ok(true)
    }
    fn save(&mut self, state: &UploadState, from: u64) -> Result<bool, String> {
        if state.done && self.fail_done_save {
            return Err("MongoDB went away".into());
        }
        match self.states.get_mut(&state.id) {
            Some(stored) if stored.offset == from && !stored.done => {
                *stored = state.clone();
                self.saves += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    fn finish_file(&mut self, state: &UploadState, _chunk_size: u32) -> Result<(), String> {
        self.files.insert(state.video_fid.clone(), state.length);
        Ok(())
    }
    fn insert_job(&mut self, job: &Job) -> Result<(), String> {
        self.jobs.insert(job.id.clone(), job.clone());
        Ok(())
    }
    fn open_uploads(&mut self, owner: &str, now: i64) -> Result<OpenUploads, String> {
        let open = self
            .states
            .values()
            .filter(|s| s.owner == owner && !s.done && s.expires_at > now);
        Ok(open.fold(OpenUploads::default(), |sum, s| OpenUploads {
            count: sum.count + 1,
            bytes: sum.bytes + s.length,
        }))
    }
    fn job_exists(&mut self, id: &str) -> Result<bool, String> {
        Ok(self.jobs.contains_key(id))
    }
    fn remove(&mut self, state: &UploadState) -> Result<(), String> {
        if !state.done {
            self.drop_chunks(&state.video_fid, 0..u64::MAX)?;
            self.files.remove(&state.video_fid);
        }
        self.states.remove(&state.id);
        self.leases.retain(|(id, _), _| *id != state.id);
        Ok(())
    }
}

impl Memory {
    /// The file's bytes as a download would read them: chunks in order, each full but the last.
    fn file(&self, fid: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut expected = 0;
        for ((f, n), data) in &self.chunks {
            if f == fid {
                assert_eq!(*n, expected, "a gap in the chunks");
                bytes.extend_from_slice(data);
                expected += 1;
            }
        }
        bytes
    }
}

/// A 3000-byte upload with its first 1500 bytes stored by one PATCH.
fn half_uploaded() -> (Vec<u8>, Memory, Run) {
    let data = video(3000);
    let mut store = Memory::default();
    store.create(&state(3000)).unwrap();
    let mut run = Run::new();
    assert_eq!(
        run.patch(&mut store, &data[..1500], false, None).status,
        204
    );
    (data, store, run)
}

/// A video-looking file: an MP4 `ftyp` box, then counting bytes.
fn video(len: usize) -> Vec<u8> {
    let mut bytes = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2".to_vec();
    bytes.extend((0..).map(|i: u32| (i % 251) as u8).take(len - bytes.len()));
    bytes
}

fn state(length: u64) -> UploadState {
    UploadState {
        id: "0123456789abcdef01234567".into(),
        owner: "a@example.com".into(),
        filename: "clip.mp4".into(),
        length,
        offset: 0,
        tail: Vec::new(),
        video_fid: "aaaaaaaaaaaaaaaaaaaaaaaa".into(),
        checked: false,
        done: false,
        options: Options::default(),
        created_at: 1_000,
        expires_at: 1_000 + 86_400_000,
    }
}

fn headers(offset: u64) -> Headers {
    Headers {
        tus_resumable: Some(VERSION.into()),
        upload_offset: Some(offset.to_string()),
        content_type: Some(PATCH_CONTENT_TYPE.into()),
        ..Headers::default()
    }
}

/// A body that yields `data` in reads of at most 100 bytes, then fails if `breaks`.
struct Body {
    data: Vec<u8>,
    pos: usize,
    breaks: bool,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.data.len() {
            return if self.breaks {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "client gone",
                ))
            } else {
                Ok(0)
            };
        }
        let n = buf.len().min(100).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct Run {
    published: Vec<JobMessage>,
    fail_publish: bool,
    now: i64,
}

impl Run {
    fn new() -> Self {
        Run {
            published: Vec::new(),
            fail_publish: false,
            now: 5_000,
        }
    }

    /// PATCHes `data` at the stored offset (with `checksum` if given).
    fn patch(
        &mut self,
        store: &mut Memory,
        data: &[u8],
        breaks: bool,
        checksum: Option<[u8; 20]>,
    ) -> Reply {
        let stored = store.states.values().next().cloned().expect("an upload");
        let mut h = headers(stored.offset);
        if let Some(digest) = checksum {
            h.upload_checksum = Some(format!(
                "sha1 {}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ));
        }
        let request = match patch_request(&h, &stored) {
            Ok(request) => request,
            Err(reply) => return reply,
        };
        let fail = self.fail_publish;
        let published = &mut self.published;
        let mut publish = |m: &JobMessage| {
            if fail {
                return Err("broker gone".to_owned());
            }
            published.push(m.clone());
            Ok(())
        };
        let now = self.now;
        let clock = move || now;
        let mut body = Body {
            data: data.to_vec(),
            pos: 0,
            breaks,
        };
        patch(
            stored,
            &mut body,
            Patch {
                request,
                chunk_size: CHUNK,
                clock: &clock,
                expiry_ms: 86_400_000,
                token: "token-a",
                publish: &mut publish,
            },
            store,
        )
    }
}

fn offset_of(reply: &Reply) -> Option<u64> {
    reply.header_value("upload-offset")?.parse().ok()
}

#[test]
fn options_say_what_is_spoken() {
    let reply = options(MAX);
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header_value("tus-version"), Some("1.0.0"));
    assert_eq!(reply.header_value("tus-extension"), Some(EXTENSIONS));
    assert_eq!(reply.header_value("tus-max-size"), Some("1048576"));
    assert_eq!(reply.header_value("tus-checksum-algorithm"), Some("sha1"));
    assert!(reply.body.is_empty());
}

#[test]
fn creation_checks_version_length_and_metadata() {
    let ok = Headers {
        tus_resumable: Some(VERSION.into()),
        upload_length: Some("5000".into()),
        upload_metadata: Some(format!(
            "filename {},filetype {}, is_confidential",
            base64::engine::general_purpose::STANDARD.encode("../holiday\u{7}.mp4"),
            base64::engine::general_purpose::STANDARD.encode("video/mp4"),
        )),
        ..Headers::default()
    };
    assert_eq!(
        creation(&ok, MAX),
        Ok(Creation {
            length: 5000,
            filename: "holiday.mp4".into(),
            options: Options::from_fields([], "holiday.mp4").unwrap(),
        })
    );
    // Options travel as metadata too, checked the same way.
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let mut asked = ok.clone();
    asked.upload_metadata = Some(format!(
        "filename {},preset {},start {},title {}",
        b64("a.mp4"),
        b64("voice"),
        b64("1.5"),
        b64("Ünïcode")
    ));
    let options = creation(&asked, MAX).unwrap().options;
    assert_eq!(
        (options.bitrate, options.channels, options.title.as_deref()),
        (Some(64), Some(1), Some("Ünïcode"))
    );
    assert_eq!(options.start, Some(mp3_model::options::Millis(1500)));
    for (metadata, reason) in [
        (format!("bitrate {}", b64("100")), "bitrate: one of 32"),
        (format!("channels {}", b64("3")), "channels: 1 (mono) or 2"),
        (format!("title {}", b64(&"x".repeat(300))), "title: at most"),
        ("title /w==".to_owned(), "title: not UTF-8 text"),
    ] {
        let mut bad = ok.clone();
        bad.upload_metadata = Some(metadata);
        let reply = creation(&bad, MAX).unwrap_err();
        assert_eq!(reply.status, 400);
        assert!(reply.body.starts_with(reason), "{}", reply.body);
        assert_eq!(reply.outcome, "bad_option");
    }
    let status = |change: &dyn Fn(&mut Headers)| {
        let mut h = ok.clone();
        change(&mut h);
        creation(&h, MAX).unwrap_err().status
    };
    assert_eq!(status(&|h| h.tus_resumable = None), 412);
    assert_eq!(status(&|h| h.tus_resumable = Some("0.2.2".into())), 412);
    assert_eq!(status(&|h| h.upload_length = None), 400);
    for bad in [
        "",
        "-1",
        "+5",
        "1e3",
        "12 3",
        "0x10",
        "99999999999999999999999",
    ] {
        assert_eq!(
            status(&|h| h.upload_length = Some(bad.into())),
            400,
            "{bad:?}"
        );
    }
    assert_eq!(status(&|h| h.upload_length = Some("0".into())), 400);
    assert_eq!(
        status(&|h| h.upload_length = Some((MAX + 1).to_string())),
        413
    );
    assert_eq!(status(&|h| h.upload_defer_length = Some("1".into())), 400);
    assert_eq!(
        status(&|h| h.upload_metadata = Some("filename !!!".into())),
        400
    );
    assert_eq!(status(&|h| h.upload_metadata = Some("a b c".into())), 400);
    assert_eq!(
        status(&|h| h.upload_metadata = Some("x ".repeat(9000))),
        400
    );
    assert_eq!(status(&|h| h.content_length = Some("10".into())), 400);
    let mut bare = ok.clone();
    bare.upload_metadata = None;
    assert_eq!(creation(&bare, MAX).unwrap().filename, "upload");
}

#[test]
fn patches_are_checked_before_the_body_is_read() {
    let stored = state(5000);
    assert!(patch_request(&headers(0), &stored).is_ok());
    let mut h = headers(0);
    h.content_type = Some("application/octet-stream".into());
    assert_eq!(patch_request(&h, &stored).unwrap_err().status, 415);
    let refused = patch_request(&headers(10), &stored).unwrap_err();
    assert_eq!((refused.status, offset_of(&refused)), (409, Some(0)));
    let mut h = headers(0);
    h.upload_offset = None;
    assert_eq!(patch_request(&h, &stored).unwrap_err().status, 400);
    let mut h = headers(0);
    h.content_length = Some("5001".into());
    assert_eq!(patch_request(&h, &stored).unwrap_err().status, 413);
    for bad in ["md5 AAAA", "sha1 not-base64", "sha1 AAAA", "sha1"] {
        let mut h = headers(0);
        h.upload_checksum = Some(bad.into());
        assert_eq!(patch_request(&h, &stored).unwrap_err().status, 400, "{bad}");
    }
    let mut done = stored.clone();
    done.done = true;
    assert_eq!(patch_request(&headers(0), &done).unwrap_err().status, 409);
}

#[test]
fn an_upload_in_pieces_becomes_a_file_a_job_and_a_message() {
    let data = video(5000);
    let mut store = Memory::default();
    store.create(&state(5000)).unwrap();
    let mut run = Run::new();

    let reply = run.patch(&mut store, &data[..1500], false, None);
    assert_eq!(
        (reply.status, offset_of(&reply)),
        (204, Some(1500)),
        "{reply:?}"
    );
    let stored = store.states.values().next().unwrap().clone();
    assert_eq!(
        (stored.offset, stored.tail.len(), stored.checked),
        (1500, 476, true)
    );
    assert_eq!(store.chunks.len(), 1);
    assert!(store.leases.is_empty(), "the lease is given back");
    assert!(run.published.is_empty());

    let reply = run.patch(&mut store, &data[1500..], false, None);
    assert_eq!(
        (reply.status, offset_of(&reply)),
        (204, Some(5000)),
        "{reply:?}"
    );
    assert_eq!(reply.outcome, "queued");
    assert!(store.file(&stored.video_fid) == data);
    assert_eq!(store.files.get(&stored.video_fid), Some(&5000));
    let job = store.jobs.get(&stored.id).expect("the job");
    assert_eq!(
        (job.status, job.owner.as_str(), job.filename.as_str()),
        (JobStatus::Queued, "a@example.com", "clip.mp4")
    );
    assert_eq!(
        run.published,
        vec![JobMessage::queued(
            &stored.id,
            &stored.video_fid,
            &stored.owner
        )]
    );
    let finished = store.states.values().next().unwrap();
    assert!(finished.done && finished.offset == 5000 && finished.tail.is_empty());
    // Nothing more may be sent.
    assert_eq!(run.patch(&mut store, b"x", false, None).status, 409);
}

#[test]
fn a_broken_off_patch_keeps_what_arrived_unless_it_was_checksummed() {
    let data = video(3000);
    let mut store = Memory::default();
    store.create(&state(3000)).unwrap();
    let mut run = Run::new();
    let reply = run.patch(&mut store, &data[..2100], true, None);
    assert_eq!((reply.status, offset_of(&reply)), (400, Some(2100)));
    assert_eq!(reply.outcome, "tus_interrupted");

    // With a checksum, nothing of a broken PATCH counts, and its chunks go.
    let digest: [u8; 20] = Sha1::digest(&data[2100..]).into();
    let reply = run.patch(&mut store, &data[2100..2900], true, Some(digest));
    assert_eq!(reply.status, 400);
    assert_eq!(store.states.values().next().unwrap().offset, 2100);
    assert_eq!(store.chunks.len(), 2);

    let reply = run.patch(&mut store, &data[2100..], false, Some(digest));
    assert_eq!(
        (reply.status, offset_of(&reply)),
        (204, Some(3000)),
        "{reply:?}"
    );
    assert!(store.file("aaaaaaaaaaaaaaaaaaaaaaaa") == data);
}

#[test]
fn a_checksum_mismatch_is_460_and_changes_nothing() {
    let data = video(3000);
    let mut store = Memory::default();
    store.create(&state(3000)).unwrap();
    let mut run = Run::new();
    let wrong: [u8; 20] = Sha1::digest(b"something else").into();
    let reply = run.patch(&mut store, &data, false, Some(wrong));
    assert_eq!(reply.status, 460);
    assert_eq!(store.states.values().next().unwrap().offset, 0);
    // Its chunks are past the stored offset: the next PATCH replaces them.
    assert!(store.jobs.is_empty() && run.published.is_empty());
    let right: [u8; 20] = Sha1::digest(&data).into();
    assert_eq!(run.patch(&mut store, &data, false, Some(right)).status, 204);
}

#[test]
fn a_file_that_is_not_a_video_is_refused_and_deleted_at_once() {
    let mut store = Memory::default();
    store.create(&state(5000)).unwrap();
    let mut run = Run::new();
    let reply = run.patch(&mut store, &[b'x'; 300], false, None);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (415, "the file is not a video")
    );
    assert!(store.states.is_empty() && store.chunks.is_empty() && store.leases.is_empty());

    // A tiny upload is judged on all its bytes when it completes.
    let mut store = Memory::default();
    store.create(&state(100)).unwrap();
    assert_eq!(run.patch(&mut store, &[b'x'; 100], false, None).status, 415);
    assert!(store.states.is_empty());
}

#[test]
fn bytes_past_the_declared_length_are_refused() {
    let data = video(3000);
    let mut store = Memory::default();
    store.create(&state(2000)).unwrap();
    let mut run = Run::new();
    let reply = run.patch(&mut store, &data, false, None);
    assert_eq!(reply.status, 413);
    assert_eq!(store.states.values().next().unwrap().offset, 0);
    assert!(store.chunks.is_empty() && store.jobs.is_empty());
}

#[test]
fn one_patch_at_a_time_and_a_dead_ones_lease_lapses() {
    let data = video(3000);
    let mut store = Memory::default();
    store.create(&state(3000)).unwrap();
    let mut run = Run::new();
    store
        .leases
        .insert((state(0).id, 0), ("token-b".into(), run.now - 1000));
    let reply = run.patch(&mut store, &data, false, None);
    assert_eq!((reply.status, reply.outcome.as_str()), (423, "tus_locked"));
    assert_eq!(reply.header_value("retry-after"), Some("6"));
    // A minute later, the other PATCH is taken for dead; its chunks past the offset too.
    store
        .insert_chunks("aaaaaaaaaaaaaaaaaaaaaaaa", 0, &[vec![7; CHUNK as usize]])
        .unwrap();
    run.now += LEASE_MS;
    let reply = run.patch(&mut store, &data, false, None);
    assert_eq!(reply.status, 204, "{reply:?}");
    assert!(store.file("aaaaaaaaaaaaaaaaaaaaaaaa") == data);
}

#[test]
fn a_failed_publish_keeps_the_job_and_the_next_request_publishes_it() {
    let data = video(3000);
    let mut store = Memory::default();
    store.create(&state(3000)).unwrap();
    let mut run = Run::new();
    run.fail_publish = true;
    let reply = run.patch(&mut store, &data, false, None);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "queue unavailable")
    );
    // The job stays, the upload not yet done: the next request publishes it again.
    assert_eq!(store.jobs.len(), 1);
    let stored = store.states.values().next().unwrap().clone();
    assert!(!stored.done);
    let mut published = Vec::new();
    let reply = settled(stored.clone(), &mut store, &mut |_: &JobMessage| {
        Err("still down".to_owned())
    })
    .unwrap_err();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "queue unavailable")
    );
    assert!(!store.states.values().next().unwrap().done);
    let state = settled(stored, &mut store, &mut |m: &JobMessage| {
        published.push(m.clone());
        Ok(())
    })
    .unwrap();
    assert!(state.done && state.offset == 3000);
    assert!(store.states.values().next().unwrap().done);
    assert_eq!(published.len(), 1);
    assert_eq!(
        (
            published[0].job_id.as_str(),
            published[0].video_fid.as_str()
        ),
        ("0123456789abcdef01234567", "aaaaaaaaaaaaaaaaaaaaaaaa")
    );
    assert_eq!(store.jobs.len(), 1);
    assert!(store.file("aaaaaaaaaaaaaaaaaaaaaaaa") == data);
}

#[test]
fn a_long_patch_saves_its_progress_as_it_goes() {
    // Two checkpoints and a half.
    let cp = CHECKPOINT_CHUNKS as usize;
    let data = video(5 * cp / 2 * CHUNK as usize + 10);
    let mut store = Memory::default();
    store.create(&state(data.len() as u64)).unwrap();
    let mut run = Run::new();
    // Broken off two checkpoints and a bit in: all of it kept, saved twice on the way and once
    // at the break.
    let cut = (2 * cp + 5) * CHUNK as usize + 5;
    let reply = run.patch(&mut store, &data[..cut], true, None);
    assert_eq!(offset_of(&reply), Some(cut as u64));
    assert_eq!(store.saves, 3);
    let reply = run.patch(&mut store, &data[cut..], false, None);
    assert_eq!(reply.status, 204);
    assert!(store.file("aaaaaaaaaaaaaaaaaaaaaaaa") == data);
}

#[test]
fn ownership_and_expiry() {
    let s = state(10);
    assert!(owned(Some(s.clone()), "a@example.com", 2_000).is_ok());
    let theirs = owned(Some(s.clone()), "b@example.com", 2_000).unwrap_err();
    let expired = owned(Some(s.clone()), "a@example.com", s.expires_at).unwrap_err();
    let unknown = owned(None, "a@example.com", 2_000).unwrap_err();
    for reply in [&theirs, &expired] {
        assert_eq!((reply.status, &reply.body), (unknown.status, &unknown.body));
    }
    assert_eq!(
        (theirs.outcome.as_str(), expired.outcome.as_str()),
        ("tus_not_owner", "tus_expired")
    );
    let mut done = s.clone();
    done.done = true;
    assert!(
        owned(Some(done), "a@example.com", s.expires_at + 1).is_ok(),
        "a finished upload stays readable"
    );
}

#[test]
fn http_dates() {
    assert_eq!(
        http_date(1_700_000_000_000),
        "Tue, 14 Nov 2023 22:13:20 GMT"
    );
}

#[test]
fn a_patch_whose_lease_was_taken_over_stops_and_deletes_nothing() {
    let data = video(5 * CHECKPOINT_CHUNKS as usize / 2 * CHUNK as usize);
    let mut store = Memory::default();
    store.create(&state(data.len() as u64)).unwrap();
    // The first save renews twice (take, renew); the thief comes at the next renewal.
    store.leases_before_theft = Some(3);
    let mut run = Run::new();
    let reply = run.patch(&mut store, &data, false, None);
    assert_eq!(
        (reply.status, reply.outcome.as_str()),
        (423, "tus_locked"),
        "{reply:?}"
    );
    let stored = store.states.values().next().unwrap().clone();
    assert_eq!(
        stored.offset,
        CHECKPOINT_CHUNKS * u64::from(CHUNK),
        "saved up to its first checkpoint"
    );
    assert!(
        store.chunks.len() >= CHECKPOINT_CHUNKS as usize,
        "nothing deleted on the way out"
    );
    assert!(store.jobs.is_empty());
}

#[test]
fn open_uploads_are_bounded_in_number_and_in_bytes() {
    let open = |count, bytes| OpenUploads { count, bytes };
    assert!(admit(open(0, 0), MAX, MAX).is_ok());
    assert!(admit(open(MAX_OPEN_UPLOADS - 1, MAX - 10), 10, MAX).is_ok());
    for (held, length, reason) in [
        (
            open(MAX_OPEN_UPLOADS, 0),
            1,
            "20 uploads are under way already",
        ),
        (open(1, MAX - 10), 11, "would hold more than 1048576 bytes"),
        (open(1, u64::MAX), 1, "would hold more than"),
    ] {
        let reply = admit(held, length, MAX).unwrap_err();
        assert_eq!(reply.status, 429);
        assert!(reply.body.contains(reason), "{}", reply.body);
        assert_eq!(reply.header_value("retry-after"), Some("60"));
    }
}

#[test]
fn an_empty_patch_does_not_push_the_expiry_back() {
    let (_, mut store, mut run) = half_uploaded();
    let before = store.states.values().next().unwrap().clone();
    let saves = store.saves;
    run.now += 60_000;
    let reply = run.patch(&mut store, &[], false, None);
    assert_eq!((reply.status, offset_of(&reply)), (204, Some(1500)));
    assert_eq!(store.saves, saves, "nothing saved");
    assert_eq!(store.states.values().next().unwrap(), &before);
}

#[test]
fn an_upload_terminated_under_a_patch_stops_it_without_a_job() {
    let data = video(5 * CHECKPOINT_CHUNKS as usize / 2 * CHUNK as usize);
    let mut store = Memory::default();
    store.create(&state(data.len() as u64)).unwrap();
    store.leases_before_theft = Some(3);
    store.theft_is_termination = true;
    let mut run = Run::new();
    let reply = run.patch(&mut store, &data, false, None);
    assert_eq!(reply.status, 423, "{reply:?}");
    assert!(store.leases.is_empty(), "its lease is not taken anew");
    assert!(store.states.is_empty() && store.jobs.is_empty() && store.files.is_empty());
    assert!(run.published.is_empty());
}

#[test]
fn a_state_read_before_the_lease_is_read_again_under_it() {
    let (data, mut store, _) = half_uploaded();
    // Another request's view from before that PATCH.
    let stale = state(3000);
    let request = patch_request(&headers(0), &stale).unwrap();
    let clock = || 5_000;
    let mut publish = |_: &JobMessage| Ok(());
    let reply = patch(
        stale,
        &mut Body {
            data: data.clone(),
            pos: 0,
            breaks: false,
        },
        Patch {
            request,
            chunk_size: CHUNK,
            clock: &clock,
            expiry_ms: 1,
            token: "token-b",
            publish: &mut publish,
        },
        &mut store,
    );
    assert_eq!((reply.status, offset_of(&reply)), (409, Some(1500)));
    assert_eq!(store.states.values().next().unwrap().offset, 1500);
}

#[test]
fn an_upload_finished_without_its_record_is_taken_for_done() {
    let data = video(3000);
    let mut store = Memory::default();
    store.create(&state(3000)).unwrap();
    store.fail_done_save = true;
    let mut run = Run::new();
    let reply = run.patch(&mut store, &data, false, None);
    assert_eq!(reply.status, 503);
    assert_eq!(
        (store.jobs.len(), run.published.len()),
        (1, 1),
        "the job is made and announced"
    );
    // HEAD says it is done; a PATCH of the rest again gets the same answer as the first would
    // have, and makes nothing twice.
    store.fail_done_save = false;
    let stored = store.states.values().next().unwrap().clone();
    let settled = settled(stored, &mut store, &mut |m: &JobMessage| {
        run.published.push(m.clone());
        Ok(())
    })
    .unwrap();
    assert!(settled.done && settled.offset == 3000);
    store.states.insert(
        settled.id.clone(),
        UploadState {
            done: false,
            offset: 0,
            ..settled
        },
    );
    let reply = run.patch(&mut store, &data, false, None);
    assert_eq!(
        (reply.status, offset_of(&reply)),
        (204, Some(3000)),
        "{reply:?}"
    );
    // Announced again by each request that found it unrecorded: one job, three copies of its
    // message (the converter converts a job once).
    assert_eq!((store.jobs.len(), run.published.len()), (1, 3));
    assert!(store.file("aaaaaaaaaaaaaaaaaaaaaaaa") == data);
}

#[test]
fn a_patch_that_lost_its_lease_deletes_nothing_it_meets() {
    // Chunk 2 is already there (written by the request that took the upload over); this
    // PATCH meets it, finds its lease gone, and stops without deleting it.
    let data = video(10 * CHUNK as usize);
    let mut store = Memory::default();
    store.create(&state(data.len() as u64)).unwrap();
    let theirs = vec![9; CHUNK as usize];
    store
        .chunks
        .insert(("aaaaaaaaaaaaaaaaaaaaaaaa".into(), 2), theirs.clone());
    store.leases_before_theft = Some(1);
    let mut run = Run::new();
    let reply = run.patch(&mut store, &data, false, None);
    assert_eq!((reply.status, reply.outcome.as_str()), (423, "tus_locked"));
    assert_eq!(
        store.chunks.get(&("aaaaaaaaaaaaaaaaaaaaaaaa".into(), 2)),
        Some(&theirs)
    );
    assert!(store.jobs.is_empty());
}

#[test]
fn a_chunk_left_by_a_dead_patch_is_replaced_where_it_is_met() {
    let data = video(10 * CHUNK as usize + 7);
    let mut store = Memory::default();
    store.create(&state(data.len() as u64)).unwrap();
    for n in [3, 10] {
        store
            .chunks
            .insert(("aaaaaaaaaaaaaaaaaaaaaaaa".into(), n), vec![9; 5]);
    }
    let mut run = Run::new();
    let reply = run.patch(&mut store, &data, false, None);
    assert_eq!(reply.status, 204, "{reply:?}");
    assert!(store.file("aaaaaaaaaaaaaaaaaaaaaaaa") == data);
    assert_eq!(store.jobs.len(), 1);
}

#[test]
fn a_termination_read_before_a_patch_moved_on_does_not_remove_under_it() {
    let (_, mut store, run) = half_uploaded();
    let stored = store.states.values().next().unwrap().clone();
    // Read at an earlier offset: since then a PATCH checkpointed, gave back that offset's
    // lease and holds the new one while it writes.
    let earlier = UploadState {
        offset: 0,
        ..stored.clone()
    };
    assert_ne!(stored.offset, 0);
    store.leases.insert(
        (stored.id.clone(), stored.offset),
        ("writer".into(), run.now),
    );
    let reply = terminate(&earlier, &mut store, "terminator", run.now + 1_000);
    assert_eq!((reply.status, reply.outcome.as_str()), (423, "tus_locked"));
    assert!(!store.states.is_empty() && !store.chunks.is_empty());
    assert!(
        !store
            .leases
            .values()
            .any(|(token, _)| token == "terminator"),
        "the lease taken at the stale offset is given back"
    );
}

#[test]
fn a_termination_read_before_the_upload_finished_keeps_the_finished_video() {
    let (data, mut store, mut run) = half_uploaded();
    let half = store.states.values().next().unwrap().clone();
    // The rest arrives, and the job is made, after the DELETE read the upload.
    let reply = run.patch(&mut store, &data[1500..], false, None);
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_eq!(store.jobs.len(), 1);
    let reply = terminate(&half, &mut store, "terminator", run.now + 1_000);
    assert_eq!(
        (reply.status, reply.outcome.as_str()),
        (204, "tus_terminated")
    );
    // Removed as a finished upload is: its video stays with its job.
    assert!(store.states.is_empty());
    assert!(
        store.file(&half.video_fid) == data,
        "the job's video is gone"
    );
}

#[test]
fn a_termination_waits_for_a_live_patch_and_then_removes_everything() {
    let (_, mut store, run) = half_uploaded();
    let upload = state(3000);
    let stored = store.states.values().next().unwrap().clone();
    // A PATCH holds the upload: the termination would leave it writing chunks nobody owns.
    store.leases.insert(
        (upload.id.clone(), stored.offset),
        ("writer".into(), run.now),
    );
    let reply = terminate(&stored, &mut store, "terminator", run.now + 1_000);
    assert_eq!((reply.status, reply.outcome.as_str()), (423, "tus_locked"));
    assert!(!store.states.is_empty() && !store.chunks.is_empty());
    // Once that PATCH is over (or its lease lapsed), everything goes.
    let reply = terminate(&stored, &mut store, "terminator", run.now + LEASE_MS + 1);
    assert_eq!(
        (reply.status, reply.outcome.as_str()),
        (204, "tus_terminated")
    );
    assert!(store.states.is_empty() && store.chunks.is_empty() && store.leases.is_empty());
}
