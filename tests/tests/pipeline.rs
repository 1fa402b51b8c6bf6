//! The product end to end, as a user meets it: log in, upload a video through the gateway, the
//! converter makes the MP3, the notifier emails it, the user downloads it. Everything real: the
//! project's spin.toml on the runner and on Spin, MariaDB, RabbitMQ (a vhost per test), FerretDB, Mailpit,
//! ffmpeg, and the worker binaries.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongo_wire::bson::{doc, Bson, Document};
use mp3_download_link::LinkKey;
use system_tests::system::{mailpit_search, make_video, probe, System, DOWNLOAD_KEY};
use system_tests::{on_each_runtime, service_env, Runtime, TempDir};

on_each_runtime!(
    upload_convert_notify_download,
    converter_killed_mid_job_finishes_it_once_after_restart,
    a_video_ffmpeg_cannot_read_fails_the_job_dead_letters_it_and_tells_the_user,
);

/// Job documents and MP3 files, read straight from MongoDB.
fn mongo() -> mongo_wire::Client<std::net::TcpStream> {
    mongo_wire::connect(&service_env("MONGODB_URL")).expect("connecting to MongoDB")
}

fn job_document(job_id: &str) -> Document {
    mongo()
        .find_one(
            mp3_model::VIDEOS_DB,
            mp3_model::JOBS_COLLECTION,
            doc! {"_id": job_id},
        )
        .expect("reading the job")
        .expect("the job exists")
}

/// The GridFS files in `mp3s` made for `job_id`.
fn mp3_files(job_id: &str) -> Vec<Document> {
    let mut client = mongo();
    let cursor = client
        .find(
            mp3_model::MP3S_DB,
            "fs.files",
            doc! {"metadata.job_id": job_id},
            Default::default(),
        )
        .expect("listing mp3 files");
    cursor
        .collect::<Result<Vec<_>, _>>()
        .expect("reading mp3 files")
}

fn chunk_count(files_id: mongo_wire::bson::oid::ObjectId) -> usize {
    let mut client = mongo();
    let cursor = client
        .find(
            mp3_model::MP3S_DB,
            "fs.chunks",
            doc! {"files_id": files_id},
            Default::default(),
        )
        .expect("listing chunks");
    cursor.count()
}

/// Waits for exactly `count` emails to `to` (and no more within a short grace period).
fn emails_to(to: &str, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found = mailpit_search(&format!("to:{to}"));
    while found.len() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        found = mailpit_search(&format!("to:{to}"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let found = mailpit_search(&format!("to:{to}"));
    assert_eq!(found.len(), count, "emails to {to}: {found:#?}");
    found
}

/// The plain-text body of a Mailpit message.
fn email_text(message: &serde_json::Value) -> String {
    let id = message["ID"].as_str().expect("a message id");
    let reply = system_tests::http::get(&format!(
        "{}/api/v1/message/{id}",
        service_env("MAILPIT_URL")
    ));
    let full: serde_json::Value = serde_json::from_str(&reply.body).expect("Mailpit JSON");
    full["Text"].as_str().unwrap_or_default().to_owned()
}

fn upload_ok(system: &System, token: &str, video: &std::path::Path) -> serde_json::Value {
    let reply = system.upload(token, video);
    assert_eq!(reply.status, 202, "upload: {}", reply.body);
    serde_json::from_str(&reply.body).expect("the upload answer is JSON")
}

fn upload_convert_notify_download(runtime: Runtime) {
    let system = System::start(runtime);
    let dir = TempDir::new("pipeline");
    let video = dir.path().join("holiday.mp4");
    make_video(&video, 3, "320x240");
    let (source_duration, _) = probe(&video);

    let token = system.login();
    let upload = upload_ok(&system, &token, &video);
    let job_id = upload["job_id"].as_str().expect("job_id");
    assert_eq!(upload["status_url"], format!("/jobs/{job_id}"));

    let job = system.wait_for_job(&token, job_id, Duration::from_secs(60));
    assert_eq!(job["status"], "done", "{job}");
    let mp3_fid = job["mp3_fid"].as_str().expect("mp3_fid").to_owned();

    let download = system.download(&token, &mp3_fid);
    assert_eq!(download.status, 200, "download: {}", download.text());
    assert_eq!(download.header("content-type"), Some("audio/mpeg"));
    let mp3 = dir.path().join("holiday.mp3");
    std::fs::write(&mp3, &download.body).expect("saving the mp3");
    let (duration, format) = probe(&mp3);
    assert_eq!(format, "mp3");
    assert!(
        (duration - source_duration).abs() <= 0.1,
        "mp3 lasts {duration} s, the video {source_duration} s"
    );

    let emails = emails_to(&system.email, 1);
    assert_eq!(emails[0]["Subject"], "MP3 Download");
    let text = email_text(&emails[0]);
    assert!(text.contains(&mp3_fid), "the email names the mp3: {text}");
    assert!(
        text.contains(&format!("/download?fid={mp3_fid}")),
        "the email has the download URL: {text}"
    );

    // The email's link works in a browser, without a token, and gives the same bytes.
    let link = text
        .lines()
        .find_map(|line| line.strip_prefix("Download: "))
        .expect("a Download: line")
        .trim()
        .to_owned();
    assert!(link.starts_with(system.app.base()), "{link}");
    let clicked = system.fetch_link(&link, None);
    assert_eq!(clicked.status, 200, "{link}: {}", clicked.text());
    assert!(clicked.body == download.body, "the link gives other bytes");
    let part = system.fetch_link(&link, Some("bytes=0-99"));
    assert_eq!((part.status, part.body.len()), (206, 100));
    // So does the job view's, which the page uses.
    let signed = job["signed_download_url"]
        .as_str()
        .expect("signed_download_url");
    let from_view = system.fetch_link(&system.app.url(signed), None);
    assert_eq!(from_view.status, 200, "{signed}: {}", from_view.text());
    // A day, but never past the token that asked for the view (its login was moments ago).
    let expires_at = job["signed_url_expires_at"].as_u64().unwrap();
    assert!(expires_at > now_secs() + 80_000 && expires_at <= now_secs() + 86_400);

    // Altered, expired or made for someone else, it opens nothing, and says why.
    let key = LinkKey::new(DOWNLOAD_KEY).unwrap();
    let at = link.find("sig=").expect("a sig") + 10;
    let swapped = if &link[at..=at] == "A" { "B" } else { "A" };
    let altered = format!("{}{swapped}{}", &link[..at], &link[at + 1..]);
    let expired = system.app.url(&format!(
        "/download?{}",
        key.query(&mp3_fid, &system.email, now_secs() - 1)
    ));
    let foreign = system.app.url(&format!(
        "/download?{}",
        key.query(&mp3_fid, "someone-else@example.com", now_secs() + 600)
    ));
    let forged = system.app.url(&format!(
        "/download?{}",
        LinkKey::new("not the server's key, but long enough to be one")
            .unwrap()
            .query(&mp3_fid, &system.email, now_secs() + 600)
    ));
    for (url, reason) in [
        (&altered, "invalid link"),
        (&expired, "link expired"),
        (&foreign, "invalid link"),
        (&forged, "invalid link"),
    ] {
        let reply = system.fetch_link(url, None);
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (403, reason),
            "{url}"
        );
    }
    // Without a signature it is the token route, as before.
    let bare = system.fetch_link(&system.app.url(&format!("/download?fid={mp3_fid}")), None);
    assert_eq!(bare.status, 401);

    // The converter and the notifier count what they did.
    let converter = system.converter.as_ref().expect("converter").metrics();
    assert!(converter.contains("converter_"), "{converter}");

    // The converter gave the store the indexes the listing, the download, the uploads and the
    // sweeper use.
    for (collection, wanted) in [
        (JOBS, doc! {"owner": 1, "created_at": -1, "_id": -1}),
        (JOBS, doc! {"mp3_fid": 1}),
        (JOBS, doc! {"status": 1, "updated_at": 1}),
        (mp3_model::UPLOADS_COLLECTION, doc! {"owner": 1}),
        (mp3_model::UPLOADS_COLLECTION, doc! {"expires_at": 1}),
        (mp3_model::UPLOAD_LEASES_COLLECTION, doc! {"upload": 1}),
    ] {
        let keys = index_keys(collection);
        // Field by field, in order; a direction may come back as any number type.
        let direction = |value: &Bson| match value {
            Bson::Int32(n) => Some(f64::from(*n)),
            Bson::Int64(n) => Some(*n as f64),
            Bson::Double(n) => Some(*n),
            _ => None,
        };
        let same = |key: &Document| {
            key.len() == wanted.len()
                && key
                    .iter()
                    .zip(wanted.iter())
                    .all(|((a, x), (b, y))| a == b && direction(x) == direction(y))
        };
        assert!(
            keys.iter().any(same),
            "{collection}: {wanted} missing from {keys:?}"
        );
    }
}

const JOBS: &str = mp3_model::JOBS_COLLECTION;

/// The keys of the indexes of `videos.<collection>`.
fn index_keys(collection: &str) -> Vec<Document> {
    let listed = mongo()
        .command(mp3_model::VIDEOS_DB, doc! {"listIndexes": collection})
        .unwrap_or_else(|e| panic!("listing the indexes of {collection}: {e}"));
    listed
        .get_document("cursor")
        .and_then(|cursor| cursor.get_array("firstBatch"))
        .expect("a cursor")
        .iter()
        .filter_map(|index| index.as_document()?.get_document("key").ok().cloned())
        .collect()
}

fn converter_killed_mid_job_finishes_it_once_after_restart(runtime: Runtime) {
    let mut system = System::without_workers(runtime);
    system.notifier = Some(system.start_notifier());
    let dir = TempDir::new("kill");
    // Long enough that the kill lands while ffmpeg is encoding.
    let video = dir.path().join("long.mp4");
    make_video(&video, 240, "160x120");
    let token = system.login();
    let job_id = upload_ok(&system, &token, &video)["job_id"]
        .as_str()
        .expect("job_id")
        .to_owned();

    let converter = system.start_converter();
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_attempt = loop {
        let job = job_document(&job_id);
        if job.get_str("status") == Ok("converting") {
            if let Ok(fid) = job.get_str("converting_fid") {
                break fid.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "the job never started: {job}");
        std::thread::sleep(Duration::from_millis(5));
    };
    // Let it write some of the MP3 before the kill.
    std::thread::sleep(Duration::from_millis(300));
    converter.kill();
    assert_ne!(
        job_document(&job_id).get_str("status"),
        Ok("done"),
        "the conversion finished before the kill: make the video longer"
    );

    let _converter = system.start_converter();
    let job = system.wait_for_job(&token, &job_id, Duration::from_secs(120));
    assert_eq!(job["status"], "done", "{job}");
    let files = mp3_files(&job_id);
    assert_eq!(files.len(), 1, "exactly one mp3 for the job: {files:#?}");
    let mp3_fid = job["mp3_fid"].as_str().expect("mp3_fid");
    assert_eq!(
        files[0].get_object_id("_id").expect("an ObjectId").to_hex(),
        mp3_fid
    );
    let killed = mongo_wire::bson::oid::ObjectId::parse_str(&killed_attempt).expect("an ObjectId");
    if killed.to_hex() != mp3_fid {
        assert_eq!(
            chunk_count(killed),
            0,
            "the killed attempt's chunks are cleaned up"
        );
    }
    assert_eq!(system.download(&token, mp3_fid).status, 200);
    emails_to(&system.email, 1);
}

fn a_video_ffmpeg_cannot_read_fails_the_job_dead_letters_it_and_tells_the_user(runtime: Runtime) {
    let system = System::start(runtime);
    let dir = TempDir::new("poison");
    // The magic bytes of an MP4 (so the gateway takes it), then nothing ffmpeg can decode.
    let fake = dir.path().join("broken.mp4");
    let mut bytes = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2".to_vec();
    bytes.extend(std::iter::repeat_n(0xA5u8, 64 * 1024));
    std::fs::write(&fake, bytes).expect("writing the file");

    let token = system.login();
    let job_id = upload_ok(&system, &token, &fake)["job_id"]
        .as_str()
        .expect("job_id")
        .to_owned();
    let job = system.wait_for_job(&token, &job_id, Duration::from_secs(60));
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{job}"
    );
    assert!(mp3_files(&job_id).is_empty(), "no mp3 for a failed job");

    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead = system.vhost.take_messages("video.dead", 10);
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(dead.len(), 1, "the message is dead-lettered: {dead:#?}");
    let message: serde_json::Value =
        serde_json::from_str(dead[0]["payload"].as_str().expect("a text payload"))
            .expect("JSON payload");
    assert_eq!(message["job_id"], job_id.as_str());

    let emails = emails_to(&system.email, 1);
    let text = email_text(&emails[0]);
    assert!(
        text.contains(&job_id),
        "the failure email names the job: {text}"
    );
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
