use std::collections::HashMap;

use super::*;
use mp3_model::JobStatus;

struct Executor;

impl BlockOn for Executor {
    type WakeUp = ();
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        futures::executor::block_on(future)
    }
    fn wake_soon(&self, waker: &Waker) {
        waker.wake_by_ref();
    }
}

/// Backing services in memory, with switches to make each step fail.
#[derive(Default)]
struct Fake {
    videos: HashMap<String, (String, Vec<u8>)>,
    jobs: HashMap<String, Job>,
    published: Vec<JobMessage>,
    /// Jobs withdrawn, with their tombstone's time.
    tombstones: Vec<(String, i64)>,
    /// A converter takes each job as soon as it is inserted (its message got through).
    claimed_at_once: bool,
    fail_store: bool,
    fail_insert: bool,
    fail_publish: bool,
    next: u32,
}

impl Backend for Fake {
    fn store_video(
        &mut self,
        reader: &mut dyn Read,
        filename: &str,
        max_bytes: u64,
    ) -> Result<String, StoreError> {
        if self.fail_store {
            return Err(StoreError::Database("down".into()));
        }
        let mut data = Vec::new();
        // Like GridFS: small reads, stop past the limit.
        let mut buf = [0u8; 1000];
        loop {
            let n = reader.read(&mut buf).map_err(StoreError::Body)?;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
            if data.len() as u64 > max_bytes {
                return Err(StoreError::TooLarge);
            }
        }
        self.next += 1;
        let fid = format!("{:024x}", self.next);
        self.videos.insert(fid.clone(), (filename.to_owned(), data));
        Ok(fid)
    }

    fn delete_video(&mut self, fid: &str) -> Result<(), String> {
        self.videos
            .remove(fid)
            .map(|_| ())
            .ok_or("no such video".into())
    }

    fn insert_job(&mut self, job: &Job) -> Result<(), String> {
        if self.fail_insert {
            return Err("insert failed".into());
        }
        self.jobs.insert(job.id.clone(), job.clone());
        Ok(())
    }

    fn withdraw_job(&mut self, job: &Job, now_ms: i64) -> Result<bool, String> {
        if self.claimed_at_once {
            return Ok(false);
        }
        self.tombstones.push((job.id.clone(), now_ms));
        self.videos.remove(&job.video_fid);
        self.jobs
            .remove(&job.id)
            .map(|_| true)
            .ok_or("no such job".into())
    }

    fn publish(&mut self, message: &JobMessage) -> Result<(), String> {
        if self.fail_publish {
            return Err("broker gone".into());
        }
        self.published.push(message.clone());
        Ok(())
    }
}

const BOUNDARY: &str = "XyZzY";
const JOB_ID: &str = "0123456789abcdef01234567";
const NOW: i64 = 1_700_000_000_000;

fn mp4(len: usize) -> Vec<u8> {
    let mut v = b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2".to_vec();
    let mut x: u32 = 1;
    while v.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        v.push((x >> 16) as u8);
    }
    v.truncate(len);
    v
}

enum Part<'a> {
    Text(&'a str, &'a str),
    File(&'a str, &'a [u8]),
}

fn form(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match part {
            Part::Text(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                        .as_bytes(),
                );
            }
            Part::File(filename, data) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
                         Content-Type: video/mp4\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(data);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// The body as a stream of small chunks, as it arrives over the network.
fn chunks(body: Vec<u8>, size: usize) -> impl Stream<Item = Result<Vec<u8>, String>> + Send {
    let pieces: Vec<Result<Vec<u8>, String>> = body.chunks(size).map(|c| Ok(c.to_vec())).collect();
    futures::stream::iter(pieces)
}

fn run(fake: &mut Fake, body: Vec<u8>, max: u64) -> Reply {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let upload = Upload {
        content_type: Some(&content_type),
        owner: "a@example.com",
        max_bytes: max,
        clock: || NOW,
        job_id: JOB_ID.to_owned(),
    };
    handle(upload, chunks(body, 777), fake, &Executor)
}

#[test]
fn one_file_is_stored_recorded_and_queued() {
    let mut fake = Fake::default();
    let video = mp4(100_000);
    let body = form(&[
        Part::Text("title", "holiday"),
        Part::File("dir/clip.mp4", &video),
        Part::Text("bitrate", "128"),
    ]);
    let reply = run(&mut fake, body, 1 << 20);
    assert_eq!(reply.status, 202, "{reply:?}");
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let fid = json["video_fid"].as_str().unwrap();
    assert_eq!(json["job_id"], JOB_ID);
    assert_eq!(json["status_url"], format!("/jobs/{JOB_ID}"));
    let (name, data) = &fake.videos[fid];
    assert_eq!((name.as_str(), data == &video), ("clip.mp4", true));
    let job = &fake.jobs[JOB_ID];
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.owner, "a@example.com");
    assert_eq!(job.video_fid, fid);
    assert_eq!(job.created_at, 1_700_000_000_000);
    assert_eq!(
        (job.options.title.as_deref(), job.options.bitrate),
        (Some("holiday"), Some(128))
    );
    assert_eq!(fake.published, vec![JobMessage::for_job(job)]);
    assert_eq!(fake.published[0].options, job.options);
}

#[test]
fn without_options_the_job_is_titled_after_its_file() {
    let mut fake = Fake::default();
    let reply = run(
        &mut fake,
        form(&[Part::File("talk.mp4", &mp4(5000))]),
        1 << 20,
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let job = &fake.jobs[JOB_ID];
    assert_eq!(job.options.title.as_deref(), Some("talk"));
    assert_eq!(
        job.options.encoding(),
        mp3_model::options::Encoding::default()
    );
}

#[test]
fn a_bad_option_is_400_naming_it_and_stores_nothing() {
    let video = mp4(5000);
    // Before the file: refused before a byte of it is stored.
    let mut fake = Fake::default();
    let body = form(&[Part::Text("bitrate", "100"), Part::File("a.mp4", &video)]);
    let reply = run(&mut fake, body, 1 << 20);
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        reply.body.starts_with("bitrate: one of 32, 40"),
        "{}",
        reply.body
    );
    assert_eq!(fake.next, 0);
    // After it: the stored file is deleted again.
    for (name, value, reason) in [
        ("end", "1", "end: after start (2 s)"),
        ("colour", "red", "colour: not an option"),
        ("title", "NOT-UTF-8", "title: not UTF-8 text"),
    ] {
        let mut fake = Fake::default();
        let parts = [
            Part::Text("start", "2"),
            Part::File("a.mp4", &video),
            Part::Text(name, value),
        ];
        let mut body = form(&parts);
        if let Some(at) = body.windows(9).position(|w| w == b"NOT-UTF-8") {
            body.splice(at..at + 9, [0xFF]);
        }
        let reply = run(&mut fake, body, 1 << 20);
        assert_eq!(reply.status, 400, "{name}: {reply:?}");
        assert!(reply.body.starts_with(reason), "{}", reply.body);
        assert_eq!(fake.next, 1, "{name}: the file was not stored first");
        assert!(fake.videos.is_empty() && fake.jobs.is_empty() && fake.published.is_empty());
    }
}

#[test]
fn a_tiny_video_file_shorter_than_the_prefix_is_stored_whole() {
    let mut fake = Fake::default();
    let video = mp4(40);
    let reply = run(&mut fake, form(&[Part::File("a.mp4", &video)]), 1 << 20);
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(fake.videos.values().next().unwrap().1, video);
}

#[test]
fn no_file_or_several_files_are_400_and_leave_nothing() {
    let mut fake = Fake::default();
    let reply = run(&mut fake, form(&[Part::Text("title", "b")]), 1 << 20);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "no file in the form")
    );

    let video = mp4(5000);
    let body = form(&[Part::File("a.mp4", &video), Part::File("b.mp4", &video)]);
    let reply = run(&mut fake, body, 1 << 20);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "exactly one file expected, got several")
    );
    assert!(fake.videos.is_empty() && fake.jobs.is_empty() && fake.published.is_empty());
}

#[test]
fn not_a_video_is_415_before_anything_is_stored() {
    let mut fake = Fake::default();
    let body = form(&[Part::File(
        "notes.txt",
        b"just some text, long enough to look at",
    )]);
    let reply = run(&mut fake, body, 1 << 20);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (415, "the file is not a video")
    );
    let reply = run(&mut fake, form(&[Part::File("empty.mp4", b"")]), 1 << 20);
    assert_eq!(reply.status, 415);
    assert!(fake.videos.is_empty());
}

#[test]
fn a_body_over_the_limit_is_413_and_leaves_nothing() {
    let mut fake = Fake::default();
    let body = form(&[Part::File("big.mp4", &mp4(50_000))]);
    let reply = run(&mut fake, body, 20_000);
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(reply.body, "upload exceeds the limit of 20000 bytes");
    assert!(fake.videos.is_empty() && fake.jobs.is_empty());

    // Over the limit only because of a field after the stored file: that file goes too.
    let big_text = "x".repeat(30_000);
    let body = form(&[Part::File("ok.mp4", &mp4(1000)), Part::Text("t", &big_text)]);
    let reply = run(&mut fake, body, 20_000);
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(fake.videos.is_empty());
}

#[test]
fn malformed_or_missing_multipart_is_400() {
    let mut fake = Fake::default();
    let mut body = form(&[Part::File("a.mp4", &mp4(5000))]);
    body.truncate(3000);
    let reply = run(&mut fake, body, 1 << 20);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "malformed multipart body")
    );
    assert!(fake.videos.is_empty());

    let upload = Upload {
        content_type: Some("application/json"),
        owner: "a@example.com",
        max_bytes: 100,
        clock: || 0,
        job_id: JOB_ID.into(),
    };
    let reply = handle(upload, chunks(Vec::new(), 1), &mut fake, &Executor);
    assert_eq!(reply.status, 400);

    let long = format!("multipart/form-data; boundary={}", "b".repeat(71));
    let upload = Upload {
        content_type: Some(&long),
        owner: "a@example.com",
        max_bytes: 100,
        clock: || 0,
        job_id: JOB_ID.into(),
    };
    let reply = handle(upload, chunks(Vec::new(), 1), &mut fake, &Executor);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "the multipart boundary must be 1 to 70 characters")
    );
}

#[test]
fn failures_after_storing_undo_everything_and_are_503() {
    let body = || form(&[Part::File("a.mp4", &mp4(3000))]);
    let mut fake = Fake {
        fail_publish: true,
        ..Fake::default()
    };
    let reply = run(&mut fake, body(), 1 << 20);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "queue unavailable")
    );
    assert!(fake.videos.is_empty() && fake.jobs.is_empty());
    // The broker may have queued the message all the same: the job is withdrawn as deleted.
    assert_eq!(fake.tombstones, [(JOB_ID.to_owned(), NOW)]);

    // It did, and a converter took the job before the withdrawal: the upload went through.
    let mut fake = Fake {
        fail_publish: true,
        claimed_at_once: true,
        ..Fake::default()
    };
    let reply = run(&mut fake, body(), 1 << 20);
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert!(reply
        .detail
        .as_deref()
        .unwrap_or("")
        .contains("took the job"));
    assert_eq!((fake.videos.len(), fake.jobs.len()), (1, 1));
    assert!(fake.tombstones.is_empty());

    let mut fake = Fake {
        fail_insert: true,
        ..Fake::default()
    };
    let reply = run(&mut fake, body(), 1 << 20);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "storage unavailable")
    );
    assert!(fake.videos.is_empty() && fake.tombstones.is_empty());

    let mut fake = Fake {
        fail_store: true,
        ..Fake::default()
    };
    assert_eq!(run(&mut fake, body(), 1 << 20).status, 503);
}

#[test]
fn file_names_are_cleaned() {
    assert_eq!(clean_filename("C:\\videos\\a.mp4"), "a.mp4");
    assert_eq!(clean_filename("../../etc/x.mkv"), "x.mkv");
    assert_eq!(clean_filename("a\nb\r.mp4"), "ab.mp4");
    assert_eq!(clean_filename("   "), "upload");
    assert_eq!(clean_filename(&"é".repeat(300)).chars().count(), 255);
}

/// An endless body: `head`, then `filler` forever, in 16 KiB chunks (as Spin hands them out);
/// `pulled` counts the bytes the parser took.
fn endless(
    head: Vec<u8>,
    filler: u8,
    pulled: Arc<std::sync::atomic::AtomicU64>,
) -> impl Stream<Item = Result<Vec<u8>, String>> + Send {
    let head = futures::stream::iter([Ok::<_, String>(head)]);
    let rest = futures::stream::repeat_with(move || Ok(vec![filler; 16 * 1024]));
    head.chain(rest).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            pulled.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    })
}

fn run_endless(head: &str, filler: u8) -> (Reply, u64) {
    let pulled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let upload = Upload {
        content_type: Some(&content_type),
        owner: "a@example.com",
        max_bytes: 1 << 40,
        clock: || 0,
        job_id: JOB_ID.to_owned(),
    };
    let body = endless(head.as_bytes().to_vec(), filler, pulled.clone());
    let mut fake = Fake::default();
    let reply = handle(upload, body, &mut fake, &Executor);
    assert!(fake.videos.is_empty() && fake.jobs.is_empty() && fake.published.is_empty());
    (reply, pulled.load(std::sync::atomic::Ordering::Relaxed))
}

#[test]
fn hostile_framing_is_refused_after_a_bounded_read() {
    let bound = (framing::MAX_PART_HEADERS + PACE_BYTES + 16 * 1024) as u64;
    // No boundary ever.
    let (reply, pulled) = run_endless("", 0);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "no multipart boundary in the first 8192 bytes")
    );
    assert!(pulled <= bound, "read {pulled} bytes");
    // A part whose headers never end.
    let head =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"");
    let (reply, pulled) = run_endless(&head, b'a');
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "multipart part headers over 16384 bytes")
    );
    assert!(pulled <= bound, "read {pulled} bytes");
    // A field that never ends.
    let head = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n");
    let (reply, pulled) = run_endless(&head, b'x');
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "form field over 65536 bytes")
    );
    assert!(pulled <= MAX_FIELD_BYTES + bound, "read {pulled} bytes");
}

#[test]
fn options_are_refused_as_they_come_and_held_to_one_field_s_worth() {
    // Blank values are no option given (each passes), but they are held all the same.
    let big = " ".repeat(40 * 1024);
    for (parts, reason) in [
        (
            vec![Part::Text("title", &big), Part::Text("artist", &big)],
            "form fields over 65536 bytes in all",
        ),
        (
            vec![Part::Text("title", "a"), Part::Text("title", "b")],
            "title: given more than once",
        ),
        (
            vec![Part::Text("colour", "red"), Part::Text("title", &big)],
            "colour: not an option",
        ),
    ] {
        // A video after them, never reached: nothing is stored.
        let video = mp4(3000);
        let mut all = parts;
        all.push(Part::File("a.mp4", &video));
        let mut fake = Fake::default();
        let reply = run(&mut fake, form(&all), 1 << 20);
        assert_eq!(reply.status, 400, "{reply:?}");
        assert!(reply.body.starts_with(reason), "{}", reply.body);
        assert_eq!(fake.next, 0, "nothing stored");
    }
}

#[test]
fn options_valid_together_pass_in_any_order_before_or_after_the_file() {
    // 144 kb/s is no MPEG-1 rate, but it is at 22,050 Hz; the preset's 192 kb/s is not.
    let video = mp4(3000);
    for options in [
        [
            ("bitrate", "144"),
            ("sample_rate", "22050"),
            ("channels", ""),
        ],
        [
            ("preset", "standard"),
            ("sample_rate", "22050"),
            ("bitrate", "64"),
        ],
    ] {
        // All before the file or all after it (those before it are checked together first).
        for file_at in [0, options.len()] {
            let mut parts: Vec<Part<'_>> = options.iter().map(|(n, v)| Part::Text(n, v)).collect();
            parts.insert(file_at, Part::File("a.mp4", &video));
            let mut fake = Fake::default();
            let reply = run(&mut fake, form(&parts), 1 << 20);
            assert_eq!(
                reply.status, 202,
                "{options:?}, file at {file_at}: {reply:?}"
            );
        }
    }
}

#[test]
fn a_million_tiny_fields_stop_at_the_part_limit() {
    // Empty options: each is an option, none given twice, so only the part limit stops them.
    let field =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n\r\n");
    let (reply, pulled) = run_endless(&field, 0);
    // The filler is not a part; build the flood itself instead.
    assert_eq!(reply.status, 400, "{reply:?} after {pulled}");
    let mut fake = Fake::default();
    let flood = field.repeat(1_000_000).into_bytes();
    let reply = run(&mut fake, flood, 1 << 30);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "more than 32 parts in the form")
    );
    // A file among them is deleted again.
    let video = mp4(3000);
    let mut body = form(&[Part::File("a.mp4", &video)]);
    body.truncate(body.len() - format!("--{BOUNDARY}--\r\n").len());
    body.extend(field.repeat(40).into_bytes());
    let reply = run(&mut fake, body, 1 << 30);
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(fake.videos.is_empty() && fake.jobs.is_empty());
}
