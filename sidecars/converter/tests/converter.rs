//! The converter binary against real RabbitMQ, FerretDB (or MongoDB) and ffmpeg:
//! `eval "$(scripts/dev-services env)"` first. Each test has its own RabbitMQ vhost and its own
//! job and file ids; the shared databases `videos` and `mp3s` are only touched through them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_util::io::AsyncWriteExt as _;
use futures_util::TryStreamExt as _;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::options::GridFsBucketOptions;
use mongodb::{Client, Database};
use mp3_model::{
    Job, JobMessage, JobStatus, DELETED_JOBS_COLLECTION, JOBS_COLLECTION, MP3S_DB,
    UPLOADS_COLLECTION, UPLOAD_LEASES_COLLECTION, VIDEOS_DB,
};
use mp3_worker::testing::{env, http_get, unique, wait_for, Vhost, WorkerProcess};

const CONVERTER: &str = env!("CARGO_BIN_EXE_converter");
/// Generous: the dev services are shared, and FerretDB slows down under other tests' uploads.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

struct Fixture {
    vhost: Vhost,
    client: Client,
    dir: PathBuf,
    /// (job id, video id) of every job made, deleted with their MP3s on drop.
    made: std::sync::Mutex<Vec<(String, ObjectId)>>,
}

impl Fixture {
    async fn new(what: &str) -> Self {
        let client = Client::with_uri_str(env("MONGODB_URL"))
            .await
            .expect("MongoDB client");
        let dir = std::env::temp_dir().join(unique("converter-test"));
        std::fs::create_dir_all(&dir).expect("test directory");
        Self {
            vhost: Vhost::new(what),
            client,
            dir,
            made: Default::default(),
        }
    }

    fn videos(&self) -> Database {
        self.client.database(VIDEOS_DB)
    }

    fn mp3s(&self) -> Database {
        self.client.database(MP3S_DB)
    }

    fn start(&self, extra: &[(&str, String)]) -> WorkerProcess {
        let mut envs = vec![
            ("AMQP_URL", self.vhost.amqp_url()),
            ("MONGODB_URL", env("MONGODB_URL")),
            ("CONCURRENCY", "2".to_owned()),
            ("RETRY_BASE_DELAY_MS", "200".to_owned()),
            ("SHUTDOWN_TIMEOUT_SECS", "10".to_owned()),
            // The tests share the databases: only the sweeper's own test sweeps them.
            ("SWEEP_INTERVAL_SECS", "0".to_owned()),
        ];
        envs.extend(extra.iter().cloned());
        let mut worker = WorkerProcess::start(CONVERTER, &envs);
        worker.wait_healthy();
        worker
    }

    /// Stores `bytes` in GridFS `videos` with `chunk_size` and a queued job for it; returns the
    /// job.
    async fn queue_job(&self, bytes: &[u8], filename: &str, chunk_size: u32) -> Job {
        let bucket = self.videos().gridfs_bucket(
            GridFsBucketOptions::builder()
                .chunk_size_bytes(chunk_size)
                .build(),
        );
        let mut upload = bucket.open_upload_stream(filename).await.expect("upload");
        upload.write_all(bytes).await.expect("uploading the video");
        upload.close().await.expect("closing the upload");
        let video_id = match upload.id() {
            Bson::ObjectId(id) => *id,
            other => panic!("unexpected file id {other:?}"),
        };
        let video_fid = video_id.to_hex();
        // Now: the sweeper judges jobs by their times.
        let now = converter::store::now_ms();
        let job = Job {
            id: ObjectId::new().to_hex(),
            owner: format!("{}@example.com", unique("owner")),
            video_fid,
            filename: filename.to_owned(),
            status: JobStatus::Queued,
            mp3_fid: None,
            error: None,
            attempts: 0,
            options: Default::default(),
            webhook: None,
            created_at: now,
            updated_at: now,
        };
        self.videos()
            .collection::<Job>(JOBS_COLLECTION)
            .insert_one(&job)
            .await
            .expect("inserting the job");
        self.made.lock().unwrap().push((job.id.clone(), video_id));
        job
    }

    /// Stores an MP3 for `job` in GridFS `mp3s`, as the converter does.
    async fn store_mp3(&self, job: &Job, bytes: &[u8]) -> ObjectId {
        let bucket = self.mp3s().gridfs_bucket(None);
        let options = mongodb::options::GridFsUploadOptions::builder()
            .metadata(doc! { "job_id": &job.id })
            .build();
        let mut upload = bucket
            .open_upload_stream("x.mp3")
            .with_options(options)
            .await
            .expect("upload");
        upload.write_all(bytes).await.expect("uploading the MP3");
        upload.close().await.expect("closing the upload");
        upload.id().as_object_id().expect("an ObjectId")
    }

    fn publish(&self, job: &Job) {
        let message = JobMessage::queued(&job.id, &job.video_fid, &job.owner);
        self.vhost
            .publish("video", &serde_json::to_string(&message).unwrap());
    }

    async fn job(&self, id: &str) -> Job {
        self.videos()
            .collection::<Job>(JOBS_COLLECTION)
            .find_one(doc! { "_id": id })
            .await
            .expect("reading the job")
            .expect("the job exists")
    }

    /// Waits for the job to exist with `status`.
    async fn wait_status(&self, id: &str, status: JobStatus) -> Job {
        let deadline = std::time::Instant::now() + JOB_TIMEOUT;
        loop {
            let job = self
                .videos()
                .collection::<Job>(JOBS_COLLECTION)
                .find_one(doc! { "_id": id })
                .await
                .expect("reading the job");
            if let Some(job) = job.as_ref().filter(|job| job.status == status) {
                return job.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {id} is {:?}, not {status:?}",
                job.map(|job| job.status)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `mp3s` files documents of a job.
    async fn mp3_files(&self, job_id: &str) -> Vec<Document> {
        self.mp3s()
            .collection::<Document>("fs.files")
            .find(doc! { "metadata.job_id": job_id })
            .await
            .expect("listing MP3s")
            .try_collect()
            .await
            .expect("listing MP3s")
    }

    async fn chunk_count(&self, files_id: ObjectId) -> u64 {
        self.mp3s()
            .collection::<Document>("fs.chunks")
            .count_documents(doc! { "files_id": files_id })
            .await
            .expect("counting chunks")
    }

    /// Downloads an MP3 from GridFS `mp3s` with the driver, to a file.
    async fn download_mp3(&self, fid: &str) -> PathBuf {
        let id = ObjectId::parse_str(fid).expect("mp3_fid is an ObjectId");
        let bucket = self.mp3s().gridfs_bucket(None);
        let mut stream = bucket
            .open_download_stream(Bson::ObjectId(id))
            .await
            .expect("the MP3 is in GridFS mp3s");
        let mut bytes = Vec::new();
        futures_util::io::AsyncReadExt::read_to_end(&mut stream, &mut bytes)
            .await
            .expect("reading the MP3");
        let path = self.dir.join(format!("{fid}.mp3"));
        std::fs::write(&path, bytes).expect("writing the MP3");
        path
    }

    /// The chunks collection of GridFS `videos`.
    fn video_chunks(&self) -> mongodb::Collection<Document> {
        self.videos().collection::<Document>("fs.chunks")
    }

    /// Stores the chunks of the job's video again in reverse order, as a GridFS writer that
    /// does not write front to back might have.
    async fn reverse_chunks(&self, job: &Job) {
        let files_id = ObjectId::parse_str(&job.video_fid).unwrap();
        let mut chunks: Vec<Document> = self
            .video_chunks()
            .find(doc! { "files_id": files_id })
            .sort(doc! { "n": 1 })
            .await
            .expect("reading the chunks")
            .try_collect()
            .await
            .expect("reading the chunks");
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        self.video_chunks()
            .delete_many(doc! { "files_id": files_id })
            .await
            .expect("deleting the chunks");
        chunks.reverse();
        for chunk in chunks {
            self.video_chunks()
                .insert_one(chunk)
                .await
                .expect("inserting a chunk");
        }
    }

    /// Waits for `n` messages on `queue` and takes them.
    fn take(&self, queue: &str, n: u64) -> Vec<serde_json::Value> {
        wait_for(&format!("{n} message(s) on {queue}"), JOB_TIMEOUT, || {
            (self.vhost.queue_len(queue)? >= n).then_some(())
        });
        let messages = self.vhost.take(queue, 100);
        assert_eq!(messages.len() as u64, n, "{queue}: {messages:#?}");
        messages
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        // The shared databases outlive the test: delete what it made, on a runtime of its own
        // (drop cannot await).
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let client = Client::with_uri_str(env("MONGODB_URL")).await?;
                let (videos, mp3s) = (client.database(VIDEOS_DB), client.database(MP3S_DB));
                for (job_id, video_id) in made {
                    let mp3_ids: Vec<Bson> = mp3s
                        .collection::<Document>("fs.files")
                        .distinct("_id", doc! { "metadata.job_id": &job_id })
                        .await?;
                    let files = doc! { "_id": { "$in": mp3_ids.clone() } };
                    mp3s.collection::<Document>("fs.files")
                        .delete_many(files)
                        .await?;
                    let chunks = doc! { "files_id": { "$in": mp3_ids } };
                    mp3s.collection::<Document>("fs.chunks")
                        .delete_many(chunks)
                        .await?;
                    let video = doc! { "_id": video_id };
                    videos
                        .collection::<Document>("fs.files")
                        .delete_one(video)
                        .await?;
                    let chunks = doc! { "files_id": video_id };
                    videos
                        .collection::<Document>("fs.chunks")
                        .delete_many(chunks)
                        .await?;
                    let job = doc! { "_id": &job_id };
                    videos
                        .collection::<Document>(JOBS_COLLECTION)
                        .delete_one(job)
                        .await?;
                }
                Ok::<_, mongodb::error::Error>(())
            })
        });
        if let Ok(Err(error)) = cleanup.join() {
            eprintln!("cleaning up the test's documents: {error}");
        }
    }
}

fn payload(message: &serde_json::Value) -> JobMessage {
    serde_json::from_str(message["payload"].as_str().expect("a string payload"))
        .expect("a JobMessage")
}

/// A test video: `seconds` of a sine tone over a small test pattern.
fn make_video(dir: &Path, name: &str, seconds: u32, extra: &[&str]) -> Vec<u8> {
    let path = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=160x120:rate=10:duration={seconds}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "sine=frequency=440:sample_rate=44100:duration={seconds}"
        ))
        .args(["-shortest", "-c:a", "aac"])
        .args(extra)
        .arg(&path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "generating {name}");
    std::fs::read(&path).expect("reading the test video")
}

/// (format name, duration in seconds) per ffprobe.
fn probe(path: &Path) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=format_name,duration",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success(), "ffprobe {}", path.display());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    let format = &json["format"];
    (
        format["format_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        format["duration"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .expect("a duration"),
    )
}

/// Top-level box types of an MP4, in order.
fn boxes(bytes: &[u8]) -> Vec<String> {
    let mut kinds = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        kinds.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        if size < 8 {
            break;
        }
        at += size;
    }
    kinds
}

async fn assert_converted(fx: &Fixture, job: &Job, seconds: f64) -> String {
    let done = fx.wait_status(&job.id, JobStatus::Done).await;
    let fid = done.mp3_fid.clone().expect("a done job has its mp3_fid");
    assert_eq!(done.error, None);
    let files = fx.mp3_files(&job.id).await;
    assert_eq!(files.len(), 1, "exactly one MP3 for the job: {files:#?}");
    assert_eq!(files[0].get_object_id("_id").unwrap().to_hex(), fid);
    assert_eq!(files[0].get_i32("chunkSize").unwrap(), 255 * 1024);
    let mp3 = fx.download_mp3(&fid).await;
    let (format, duration) = probe(&mp3);
    assert_eq!(format, "mp3");
    assert!(
        (duration - seconds).abs() <= 0.1,
        "MP3 lasts {duration} s, the video {seconds} s"
    );
    fid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converts_streamable_and_moov_at_end_videos() {
    let fx = Fixture::new("convert").await;
    let mkv = make_video(&fx.dir, "clip.mkv", 3, &[]);
    let mp4 = make_video(&fx.dir, "clip.mp4", 4, &["-c:v", "mpeg4"]);
    let order = boxes(&mp4);
    let (mdat, moov) = (
        order.iter().position(|b| b == "mdat").expect("an mdat box"),
        order.iter().position(|b| b == "moov").expect("a moov box"),
    );
    assert!(
        mdat < moov,
        "the MP4 must have its moov at the end: {order:?}"
    );
    let (_, source) = probe(&fx.dir.join("clip.mp4"));
    assert!((source - 4.0).abs() < 0.05, "source lasts {source} s");

    let worker = fx.start(&[]);
    assert_eq!(worker.metric("converter_jobs_done_total"), Some(0.0));
    let streamed = fx.queue_job(&mkv, "clip.mkv", 255 * 1024).await;
    // Small chunks: the box walk must read headers across chunk boundaries.
    let seeking = fx.queue_job(&mp4, "holiday.mp4", 1000).await;
    fx.publish(&streamed);
    fx.publish(&seeking);

    let streamed_fid = assert_converted(&fx, &streamed, 3.0).await;
    let seeking_fid = assert_converted(&fx, &seeking, 4.0).await;
    assert_eq!(fx.job(&seeking.id).await.attempts, 1);
    let files = fx.mp3_files(&seeking.id).await;
    assert_eq!(files[0].get_str("filename").unwrap(), "holiday.mp3");

    let mut announced: Vec<_> = fx.take("mp3", 2).iter().map(payload).collect();
    announced.sort_by_key(|m| m.job_id != streamed.id);
    assert_eq!(
        announced[0],
        JobMessage::queued(&streamed.id, &streamed.video_fid, &streamed.owner)
            .converted(&streamed_fid)
    );
    assert_eq!(
        announced[1],
        JobMessage::queued(&seeking.id, &seeking.video_fid, &seeking.owner).converted(&seeking_fid)
    );
    assert_eq!(fx.vhost.queue_len("video.dead"), Some(0));

    // Judged from the start of each stream: the Matroska file read front to back, the MP4
    // through ffmpeg's cache (its box headers spread over several 1000-byte chunks).
    let log = worker.log();
    let layout_of = |job: &Job| {
        log.lines()
            .find(|l| l.contains(&job.id) && l.contains("converting"))
            .unwrap_or_else(|| panic!("no `converting` line for job {}:\n{log}", job.id))
            .to_owned()
    };
    assert!(layout_of(&streamed).contains("layout=Streamable"), "{log}");
    assert!(layout_of(&seeking).contains("layout=NeedsSeek"), "{log}");

    assert_eq!(
        mp3_worker::testing::http_get(&format!("{}/healthz", worker.metrics_url)).0,
        200
    );
    assert_eq!(worker.metric("converter_jobs_done_total"), Some(2.0));
    assert_eq!(worker.metric("converter_jobs_in_flight"), Some(0.0));
    assert!(worker.metric("converter_bytes_in_total").unwrap() >= (mkv.len() + mp4.len()) as f64);
    assert!(worker.metric("converter_bytes_out_total").unwrap() > 0.0);
    assert_eq!(
        worker.metric("converter_conversion_duration_seconds_count"),
        Some(2.0)
    );
    assert_eq!(
        mp3_worker::testing::http_get(&format!("{}/nope", worker.metrics_url)).0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_stored_out_of_order_are_read_in_order() {
    let fx = Fixture::new("chunk-order").await;
    let video = make_video(&fx.dir, "clip.mkv", 3, &[]);
    let worker = fx.start(&[]);
    // Small chunks: a dozen or more of them.
    let job = fx.queue_job(&video, "clip.mkv", 8 * 1024).await;
    fx.reverse_chunks(&job).await;
    fx.publish(&job);
    assert_converted(&fx, &job, 3.0).await;
    assert_eq!(fx.job(&job.id).await.attempts, 1);
    assert!(
        worker.log().contains("video chunks out of order"),
        "{}",
        worker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_with_a_missing_chunk_fails_without_an_mp3() {
    let fx = Fixture::new("chunk-missing").await;
    let video = make_video(&fx.dir, "clip.mkv", 3, &[]);
    let worker = fx.start(&[]);
    let job = fx.queue_job(&video, "clip.mkv", 8 * 1024).await;
    let files_id = ObjectId::parse_str(&job.video_fid).unwrap();
    let deleted = fx
        .video_chunks()
        .delete_one(doc! { "files_id": files_id, "n": 2 })
        .await
        .expect("deleting a chunk");
    assert_eq!(deleted.deleted_count, 1);
    fx.publish(&job);

    let failed = fx.wait_status(&job.id, JobStatus::Failed).await;
    // The owner gets a short reason; the operator the cause, in the log.
    let error = failed.error.expect("a failed job says why");
    assert_eq!(
        error,
        "the conversion kept failing; please upload the video again later"
    );
    assert!(
        worker.log().contains("chunk 2 is missing"),
        "{}",
        worker.log()
    );
    assert!(fx.mp3_files(&job.id).await.is_empty());
    let told = payload(&fx.take("mp3", 1)[0]);
    assert_eq!(told.error.as_deref(), Some(error.as_str()));
    assert_eq!(worker.metric("converter_jobs_failed_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_done_job_is_announced_again_without_a_second_mp3() {
    let fx = Fixture::new("redeliver").await;
    let video = make_video(&fx.dir, "clip.mkv", 2, &[]);
    let worker = fx.start(&[]);
    let job = fx.queue_job(&video, "clip.mkv", 255 * 1024).await;
    fx.publish(&job);
    let fid = assert_converted(&fx, &job, 2.0).await;
    let first = fx.take("mp3", 1);

    fx.publish(&job);
    let second = fx.take("mp3", 1);
    assert_eq!(payload(&first[0]), payload(&second[0]));
    assert_eq!(payload(&second[0]).mp3_fid.as_deref(), Some(fid.as_str()));
    let again = fx.job(&job.id).await;
    assert_eq!((again.status, again.attempts), (JobStatus::Done, 1));
    assert_eq!(fx.mp3_files(&job.id).await.len(), 1);
    assert_eq!(worker.metric("converter_jobs_done_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_conversion_and_restarted_converts_once() {
    let fx = Fixture::new("sigkill").await;
    // 24 s at 192 kb/s is about 560 KiB of MP3: at least two GridFS chunks.
    let video = make_video(&fx.dir, "long.mkv", 24, &[]);
    // An ffmpeg that reads its input at 4x real time, so the kill lands mid-conversion.
    let slow = fx.dir.join("slow-ffmpeg");
    std::fs::write(&slow, "#!/bin/sh\nexec ffmpeg -readrate 4 \"$@\"\n").unwrap();
    Command::new("chmod").arg("+x").arg(&slow).status().unwrap();

    let mut worker = fx.start(&[("FFMPEG_PATH", slow.display().to_string())]);
    let job = fx.queue_job(&video, "long.mkv", 255 * 1024).await;
    fx.publish(&job);

    // Wait until the MP3 has chunks in GridFS but is not finished, then SIGKILL.
    let deadline = std::time::Instant::now() + JOB_TIMEOUT;
    let partial = loop {
        let doc = fx
            .videos()
            .collection::<Document>(JOBS_COLLECTION)
            .find_one(doc! { "_id": &job.id })
            .await
            .unwrap()
            .unwrap();
        if let Ok(hex) = doc.get_str("converting_fid") {
            let fid = ObjectId::parse_str(hex).unwrap();
            if fx.chunk_count(fid).await > 0 {
                break fid;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no partial MP3 appeared:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    worker.signal("KILL");
    worker.wait_exit(Duration::from_secs(10));
    let interrupted = fx.job(&job.id).await;
    assert_eq!(interrupted.status, JobStatus::Converting);
    assert!(
        fx.mp3_files(&job.id).await.is_empty(),
        "the killed upload was not finished"
    );
    drop(worker);

    let worker = fx.start(&[]);
    let fid = assert_converted(&fx, &job, 24.0).await;
    assert_ne!(fid, partial.to_hex());
    assert_eq!(
        fx.chunk_count(partial).await,
        0,
        "the partial MP3's chunks are deleted"
    );
    assert_eq!(fx.job(&job.id).await.attempts, 2);
    let announced = fx.take("mp3", 1);
    assert_eq!(
        payload(&announced[0]).mp3_fid.as_deref(),
        Some(fid.as_str())
    );
    assert_eq!(worker.metric("converter_jobs_done_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_end_in_the_dead_letter_queue_and_the_user_is_told() {
    let fx = Fixture::new("poison").await;
    let worker = fx.start(&[]);
    let job = fx
        .queue_job(
            b"these bytes are not a video, whatever the name says",
            "fake.mp4",
            255 * 1024,
        )
        .await;
    fx.publish(&job);
    fx.vhost.publish("video", "{not json");

    let failed = fx.wait_status(&job.id, JobStatus::Failed).await;
    let error = failed.error.expect("a failed job says why");
    assert_eq!(
        error,
        "the file has no audio track that could be converted, or it is damaged"
    );
    assert!(
        worker.log().contains("ffmpeg could not convert"),
        "{}",
        worker.log()
    );
    assert_eq!(failed.mp3_fid, None);
    assert_eq!(failed.attempts, 1, "a rejected input is not retried");

    let told = payload(&fx.take("mp3", 1)[0]);
    assert_eq!(
        told,
        JobMessage::queued(&job.id, &job.video_fid, &job.owner).failed(&error)
    );
    let dead: Vec<String> = fx
        .take("video.dead", 2)
        .iter()
        .map(|m| m["payload"].as_str().unwrap().to_owned())
        .collect();
    assert!(dead.iter().any(|p| p == "{not json"), "{dead:?}");
    assert!(
        dead.iter()
            .any(|p| serde_json::from_str::<JobMessage>(p).is_ok_and(|m| m.job_id == job.id)),
        "{dead:?}"
    );
    assert!(!error.starts_with('['), "error: {error}");
    assert!(fx.mp3_files(&job.id).await.is_empty());
    assert_eq!(worker.metric("converter_jobs_failed_total"), Some(1.0));
    assert_eq!(
        worker.metric("converter_messages_unparseable_total"),
        Some(1.0)
    );
    assert_eq!(
        worker.metric("converter_messages_dead_lettered_total"),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_backoff_then_given_up() {
    let fx = Fixture::new("retry").await;
    // An ffmpeg that cannot be started fails every attempt, transiently as far as the
    // converter can tell.
    let worker = fx.start(&[
        ("FFMPEG_PATH", "/nonexistent/ffmpeg".to_owned()),
        ("MAX_ATTEMPTS", "3".to_owned()),
    ]);
    let video = make_video(&fx.dir, "clip.mkv", 1, &[]);
    let job = fx.queue_job(&video, "clip.mkv", 255 * 1024).await;
    let started = std::time::Instant::now();
    fx.publish(&job);
    let failed = fx.wait_status(&job.id, JobStatus::Failed).await;
    // Backoff 200 ms then 400 ms between the three attempts.
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert_eq!(failed.attempts, 3);
    assert!(failed.error.unwrap().contains("kept failing"));
    assert!(
        worker.log().contains("/nonexistent/ffmpeg"),
        "{}",
        worker.log()
    );
    assert_eq!(fx.take("video.dead", 1).len(), 1);
    let dead_headers = fx.vhost.queue_len("video.retry");
    assert_eq!(dead_headers, Some(0));
    assert_eq!(payload(&fx.take("mp3", 1)[0]).job_id, job.id);
    assert_eq!(worker.metric("converter_jobs_retried_total"), Some(2.0));
    assert_eq!(worker.metric("converter_jobs_failed_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_its_retry_shows_queued_not_converting() {
    let fx = Fixture::new("release").await;
    // The retry comes back after 30 s: meanwhile nothing converts the job.
    let worker = fx.start(&[
        ("FFMPEG_PATH", "/nonexistent/ffmpeg".to_owned()),
        ("MAX_ATTEMPTS", "3".to_owned()),
        ("RETRY_BASE_DELAY_MS", "30000".to_owned()),
    ]);
    let video = make_video(&fx.dir, "clip.mkv", 1, &[]);
    let job = fx.queue_job(&video, "clip.mkv", 255 * 1024).await;
    fx.publish(&job);
    let deadline = std::time::Instant::now() + JOB_TIMEOUT;
    while worker.metric("converter_jobs_retried_total") != Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "{}", worker.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Left converting, the sweeper would take it for a conversion that outlived every
    // deadline (republished, then failed) while its retry waits.
    let waiting = fx.job(&job.id).await;
    assert_eq!(
        (waiting.status, waiting.attempts),
        (JobStatus::Queued, 1),
        "{}",
        worker.log()
    );
    assert!(waiting.updated_at > job.updated_at);
}

/// An executable shell script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    assert!(Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .status()
        .unwrap()
        .success());
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ffmpeg_short_of_disk_is_retried_and_sees_none_of_the_secrets() {
    let fx = Fixture::new("no-space").await;
    // As ffmpeg fails when /tmp is full: after reading its input, an error line, exit 1.
    let seen = fx.dir.join("ffmpeg-env");
    let ffmpeg = script(
        &fx.dir,
        "ffmpeg-no-space",
        &format!(
            "env > '{}'\ncat /proc/$PPID/environ >> '{}' 2>/dev/null && echo 'READ PARENT' >> '{}'\ncat > /dev/null\necho '[error] /tmp/cache: No space left on device' >&2\nexit 1",
            seen.display(),
            seen.display(),
            seen.display()
        ),
    );
    // As in its pod, the converter runs as a user without privileges (root reads any /proc),
    // and ffmpeg as the same user.
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ];
    let prefix: &[&str] = if root { &as_nobody } else { &[] };
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&fx.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&seen, "").unwrap();
    std::fs::set_permissions(&seen, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut envs = vec![
        ("AMQP_URL", fx.vhost.amqp_url()),
        ("MONGODB_URL", env("MONGODB_URL")),
        ("SWEEP_INTERVAL_SECS", "0".to_owned()),
        ("RETRY_BASE_DELAY_MS", "200".to_owned()),
        ("FFMPEG_PATH", ffmpeg),
        ("WARM_FFMPEG", "0".to_owned()),
        ("MAX_ATTEMPTS", "2".to_owned()),
    ];
    if let Ok(path) = std::env::var("PATH") {
        envs.push(("PATH", path));
    }
    // A copy where that user can run it (the build's folder may be closed to it).
    let binary = fx.dir.join("converter");
    std::fs::copy(CONVERTER, &binary).unwrap();
    let mut worker = WorkerProcess::start_as(prefix, binary.to_str().unwrap(), &envs);
    worker.wait_healthy();
    let video = make_video(&fx.dir, "clip.mkv", 1, &[]);
    let job = fx.queue_job(&video, "clip.mkv", 255 * 1024).await;
    fx.publish(&job);
    let failed = fx.wait_status(&job.id, JobStatus::Failed).await;
    // Not the file's fault: tried again, and the owner is not told the file is damaged.
    assert_eq!(failed.attempts, 2, "{}", worker.log());
    assert_eq!(
        failed.error.as_deref(),
        Some("the conversion kept failing; please upload the video again later")
    );
    assert_eq!(worker.metric("converter_jobs_retried_total"), Some(1.0));
    // ffmpeg parses what users upload: the worker's credentials stay out of its reach.
    let environment = std::fs::read_to_string(&seen).expect("the script ran");
    for secret in [
        "AMQP_URL",
        "MONGODB_URL",
        &env("MONGODB_URL"),
        &fx.vhost.amqp_url(),
    ] {
        assert!(!environment.contains(secret), "ffmpeg saw {secret}");
    }
    assert!(environment.contains("PATH="), "{environment}");
    // Nor through the converter's own /proc (undumpable): the same user may not read it.
    assert!(
        !environment.contains("READ PARENT"),
        "ffmpeg read its parent's environment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_kills_the_converter_fails_after_the_allowed_attempts() {
    let fx = Fixture::new("killer").await;
    // What kills the converter here is its ffmpeg; it could be a crash in any library. Started
    // per job (WARM_FFMPEG=0), so the converter lives until it takes the message.
    let killer = script(&fx.dir, "ffmpeg-kills-parent", "kill -9 $PPID; sleep 5");
    let video = make_video(&fx.dir, "clip.mkv", 1, &[]);
    let job = fx.queue_job(&video, "clip.mkv", 255 * 1024).await;
    let envs = [
        ("AMQP_URL", fx.vhost.amqp_url()),
        ("MONGODB_URL", env("MONGODB_URL")),
        ("FFMPEG_PATH", killer),
        ("WARM_FFMPEG", "0".to_owned()),
        ("MAX_ATTEMPTS", "2".to_owned()),
        ("RETRY_BASE_DELAY_MS", "200".to_owned()),
    ];
    // Restarted after each death, as Kubernetes would; before, this looped forever.
    let mut deaths = 0;
    let survivor = loop {
        let mut worker = WorkerProcess::start(CONVERTER, &envs);
        if deaths == 0 {
            // Idle until the queues are declared and the message published.
            worker.wait_healthy();
            fx.publish(&job);
        }
        let deadline = std::time::Instant::now() + JOB_TIMEOUT;
        loop {
            if worker.has_exited() {
                deaths += 1;
                break;
            }
            if fx.job(&job.id).await.status == JobStatus::Failed {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}", worker.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !worker.has_exited() {
            break worker;
        }
        assert!(deaths <= 2, "killed {deaths} times:\n{}", worker.log());
    };
    assert_eq!(deaths, 2, "one death per allowed attempt");
    let failed = fx.job(&job.id).await;
    // Two claims that died, and the third that gave up.
    assert_eq!((failed.status, failed.attempts), (JobStatus::Failed, 3));
    assert!(failed.error.unwrap().contains("kept failing"));
    assert!(
        survivor.log().contains("attempts kept stopping"),
        "{}",
        survivor.log()
    );
    let told = payload(&fx.take("mp3", 1)[0]);
    assert_eq!(
        (told.job_id.as_str(), told.mp3_fid),
        (job.id.as_str(), None)
    );
    assert_eq!(fx.take("video.dead", 1).len(), 1);
    assert!(fx.mp3_files(&job.id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_past_the_job_deadline_is_stopped_and_its_ffmpeg_killed() {
    let fx = Fixture::new("deadline").await;
    // Read at real time, a 30 s clip takes 30 s: past the 2 s deadline.
    let video = make_video(&fx.dir, "clip.mkv", 30, &[]);
    let worker = fx.start(&[
        ("FFMPEG_PATH", slow_ffmpeg(&fx.dir, 1)),
        ("JOB_TIMEOUT_SECS", "2".to_owned()),
        ("MAX_ATTEMPTS", "1".to_owned()),
        ("WARM_FFMPEG", "0".to_owned()),
    ]);
    let job = fx.queue_job(&video, "clip.mkv", 255 * 1024).await;
    let started = std::time::Instant::now();
    fx.publish(&job);
    let failed = fx.wait_status(&job.id, JobStatus::Failed).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        failed.error.as_deref(),
        Some("the conversion took longer than allowed")
    );
    wait_for(
        "the killed ffmpeg to be gone",
        Duration::from_secs(5),
        || children(worker.pid()).is_empty().then_some(()),
    );
    assert!(fx.mp3_files(&job.id).await.is_empty());
    assert_eq!(payload(&fx.take("mp3", 1)[0]).mp3_fid, None);
    assert_eq!(http_get(&format!("{}/healthz", worker.metrics_url)).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_format_message_is_converted_into_a_job_of_its_own() {
    let fx = Fixture::new("seed").await;
    let _worker = fx.start(&[]);
    let video = make_video(&fx.dir, "clip.mkv", 2, &[]);
    // The video as the seed's gateway stores it, without a job: only its message names it.
    let stored = fx.queue_job(&video, "seed clip.mkv", 255 * 1024).await;
    fx.videos()
        .collection::<Job>(JOBS_COLLECTION)
        .delete_one(doc! { "_id": &stored.id })
        .await
        .unwrap();
    let seed = serde_json::json!({
        "video_fid": stored.video_fid, "mp3_fid": null, "username": stored.owner,
    });
    fx.made.lock().unwrap().push((
        stored.video_fid.clone(),
        ObjectId::parse_str(&stored.video_fid).unwrap(),
    ));
    fx.vhost.publish("video", &seed.to_string());
    let done = fx.wait_status(&stored.video_fid, JobStatus::Done).await;
    // Again, as a redelivery would: the same job, announced again, no second MP3.
    fx.vhost.publish("video", &seed.to_string());
    assert_eq!(
        (done.owner.as_str(), done.filename.as_str()),
        (stored.owner.as_str(), "seed clip.mkv")
    );
    let announced = fx.take("mp3", 2);
    for message in &announced {
        let told = payload(message);
        assert_eq!(told.mp3_fid, done.mp3_fid);
        // What the seed's notifier reads is there.
        let raw: serde_json::Value =
            serde_json::from_str(message["payload"].as_str().unwrap()).unwrap();
        assert_eq!(raw["username"], stored.owner.as_str());
        assert_eq!(raw["video_fid"], stored.video_fid.as_str());
    }
    assert_eq!(fx.mp3_files(&stored.video_fid).await.len(), 1);

    // A seed-format message naming a video an upload of ours made cannot give it an owner.
    let theirs = fx.queue_job(&video, "theirs.mkv", 255 * 1024).await;
    let hijack = serde_json::json!({
        "video_fid": theirs.video_fid, "mp3_fid": null, "username": "mallory@example.com",
    });
    fx.vhost.publish("video", &hijack.to_string());
    fx.take("video.dead", 1);
    let untouched = fx.job(&theirs.id).await;
    assert_eq!(
        (untouched.status, untouched.owner.as_str()),
        (JobStatus::Queued, theirs.owner.as_str())
    );
    let jobs = fx.videos().collection::<Job>(JOBS_COLLECTION);
    assert!(jobs
        .find_one(doc! { "_id": &theirs.video_fid })
        .await
        .unwrap()
        .is_none());
}

/// The processes whose parent is `pid`, with their command names.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("listing /proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let (child, comm) = head.split_once(" (").unwrap_or_default();
        if tail.split(' ').nth(1) == Some(&pid.to_string()) {
            children.push((child.parse().unwrap_or_default(), comm.to_owned()));
        }
    }
    children
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_idle_exits_zero_promptly() {
    let fx = Fixture::new("sigterm").await;
    let mut worker = fx.start(&[]);
    // Waiting for jobs, for each of 2 ways of reading the video: an ffmpeg for the default
    // encoding per job slot (CONCURRENCY=2), and one each for trims and the 2 presets of their
    // own encoding; stopped on exit.
    let waiting = children(worker.pid());
    assert_eq!(
        waiting.iter().filter(|(_, comm)| comm == "ffmpeg").count(),
        10,
        "{waiting:?}"
    );
    let started = std::time::Instant::now();
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}:\n{}", worker.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for (pid, _) in waiting {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "ffmpeg {pid} outlived the converter"
        );
    }
}

/// An ffmpeg that reads its input at `speed` times real time, so a test can act mid-conversion.
fn slow_ffmpeg(dir: &Path, speed: u32) -> String {
    let path = dir.join(format!("ffmpeg-x{speed}"));
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec ffmpeg -readrate {speed} \"$@\"\n"),
    )
    .unwrap();
    assert!(Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .status()
        .unwrap()
        .success());
    path.display().to_string()
}

async fn wait_converting(fx: &Fixture, job: &Job, worker: &WorkerProcess) {
    let deadline = std::time::Instant::now() + JOB_TIMEOUT;
    while fx.job(&job.id).await.status != JobStatus::Converting {
        assert!(
            std::time::Instant::now() < deadline,
            "never converting:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let ffmpeg get going.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_conversion_lets_the_job_finish_then_exits_zero() {
    let fx = Fixture::new("drain").await;
    let video = make_video(&fx.dir, "clip.mkv", 12, &[]);
    let mut worker = fx.start(&[
        ("FFMPEG_PATH", slow_ffmpeg(&fx.dir, 4)),
        ("SHUTDOWN_TIMEOUT_SECS", "120".to_owned()),
    ]);
    let job = fx.queue_job(&video, "clip.mkv", 255 * 1024).await;
    fx.publish(&job);
    wait_converting(&fx, &job, &worker).await;

    worker.signal("TERM");
    wait_for("/healthz to report 503", Duration::from_secs(5), || {
        (mp3_worker::testing::http_get(&format!("{}/healthz", worker.metrics_url)).0 == 503)
            .then_some(())
    });
    let status = worker.wait_exit(JOB_TIMEOUT);
    assert!(status.success(), "exit status {status}:\n{}", worker.log());
    assert!(
        !worker.log().contains("shutdown timeout"),
        "{}",
        worker.log()
    );
    let done = fx.job(&job.id).await;
    assert_eq!(
        (done.status, done.attempts),
        (JobStatus::Done, 1),
        "{}",
        worker.log()
    );
    assert_eq!(fx.mp3_files(&job.id).await.len(), 1);
    assert_eq!(fx.take("mp3", 1).len(), 1);
    // The message was acked: the queue empties (the management API's figures lag by up to its
    // stats interval, 5 s).
    wait_for("the video queue to empty", Duration::from_secs(15), || {
        (fx.vhost.queue_len("video")? == 0).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_shutdown_timeout_requeues_the_job() {
    let fx = Fixture::new("requeue").await;
    let video = make_video(&fx.dir, "clip.mkv", 20, &[]);
    let mut worker = fx.start(&[
        ("FFMPEG_PATH", slow_ffmpeg(&fx.dir, 1)),
        ("SHUTDOWN_TIMEOUT_SECS", "1".to_owned()),
    ]);
    let job = fx.queue_job(&video, "clip.mkv", 255 * 1024).await;
    fx.publish(&job);
    wait_converting(&fx, &job, &worker).await;

    let started = std::time::Instant::now();
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}:\n{}", worker.log());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(fx.job(&job.id).await.status, JobStatus::Converting);
    wait_for("the job back on video", Duration::from_secs(10), || {
        (fx.vhost.queue_len("video")? == 1).then_some(())
    });
    assert!(fx.mp3_files(&job.id).await.is_empty());

    let _worker = fx.start(&[]);
    assert_converted(&fx, &job, 20.0).await;
    assert_eq!(fx.job(&job.id).await.attempts, 2);
    assert_eq!(fx.take("mp3", 1).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_of_one_job_at_once_make_one_mp3() {
    let fx = Fixture::new("race").await;
    let video = make_video(&fx.dir, "clip.mkv", 8, &[]);
    let worker = fx.start(&[
        ("FFMPEG_PATH", slow_ffmpeg(&fx.dir, 4)),
        ("CONCURRENCY", "2".to_owned()),
    ]);
    let job = fx.queue_job(&video, "clip.mkv", 255 * 1024).await;
    // A duplicated message (say, the gateway retrying a publish): both copies run together.
    fx.publish(&job);
    fx.publish(&job);

    // The delivery that loses the claim may still be writing (then deleting) its MP3 when the
    // job turns done: count the files once both deliveries have settled.
    fx.wait_status(&job.id, JobStatus::Done).await;
    wait_for("both deliveries settled", JOB_TIMEOUT, || {
        (worker.metric("converter_jobs_in_flight")? == 0.0).then_some(())
    });
    let fid = assert_converted(&fx, &job, 8.0).await;
    // The management API's queue figures lag by up to its stats interval (5 s).
    wait_for("the video queue to empty", Duration::from_secs(15), || {
        (fx.vhost.queue_len("video")? == 0).then_some(())
    });
    // Not `attempts == 2`: FerretDB (SQLite) applies findAndModify as a read then a write, so
    // two claims in the same instant may both count from 0. What must hold either way is that
    // only the attempt holding the claim last stores its MP3.
    let files = fx.mp3_files(&job.id).await;
    assert_eq!(files.len(), 1, "{files:#?}\n{}", worker.log());
    let announced = fx.take("mp3", 1);
    assert_eq!(
        payload(&announced[0]).mp3_fid.as_deref(),
        Some(fid.as_str())
    );
    assert_eq!(worker.metric("converter_jobs_done_total"), Some(1.0));
}

/// An ObjectId made `secs_ago` seconds ago, as a driver would have then.
fn id_made_ago(secs_ago: u32) -> ObjectId {
    let mut bytes = ObjectId::new().bytes();
    let then = (converter::store::now_ms() / 1000) as u32 - secs_ago;
    bytes[..4].copy_from_slice(&then.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The tests whose converters sweep: a sweeper works on the whole store, so it would take the
/// other test's old jobs for its own (announce them in its own vhost, count them).
static SWEEPERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_the_broker_refuses_does_not_use_up_a_try() {
    let _alone = SWEEPERS.lock().await;
    let fx = Fixture::new("sweep-refused").await;
    let jobs = fx.videos().collection::<Document>(JOBS_COLLECTION);
    let video = make_video(&fx.dir, "clip.mkv", 1, &[]);
    let untold = fx.queue_job(&video, "untold.mkv", 255 * 1024).await;
    let mp3 = fx.store_mp3(&untold, b"an untold MP3").await;
    let now = converter::store::now_ms();
    let done = doc! { "status": "done", "mp3_fid": mp3.to_hex(), "updated_at": now };
    jobs.update_one(doc! { "_id": &untold.id }, doc! { "$set": done })
        .await
        .unwrap();
    let sweeping = [
        ("SWEEP_INTERVAL_SECS", "1".to_owned()),
        ("STUCK_AFTER_SECS", "3600".to_owned()),
        ("JOB_TIMEOUT_SECS", "600".to_owned()),
    ];
    let worker = fx.start(&sweeping);
    // `mp3` gone (an operator's mistake, a broker restored without it): every announcement
    // comes back unroutable. Then the job turns out unannounced for two hours.
    let mgmt = env("RABBITMQ_MGMT_URL");
    let (status, body) = mp3_worker::testing::curl(&[
        "-X",
        "DELETE",
        &format!("{mgmt}/api/queues/{}/mp3", fx.vhost.name),
    ]);
    assert_eq!(status, 204, "{body}");
    let two_hours_ago = doc! { "updated_at": now - 2 * 3600 * 1000 };
    jobs.update_one(doc! { "_id": &untold.id }, doc! { "$set": two_hours_ago })
        .await
        .unwrap();
    let mut worker = worker;
    wait_for("a sweep that cannot announce", JOB_TIMEOUT, || {
        (worker.metric("converter_sweeps_failed_total")? >= 1.0).then_some(())
    });
    // Stopped, not killed: a sweep under way finishes (and undoes what it could not do).
    worker.signal("TERM");
    assert!(worker.wait_exit(JOB_TIMEOUT).success(), "{}", worker.log());
    let job = jobs
        .find_one(doc! { "_id": &untold.id })
        .await
        .unwrap()
        .unwrap();
    assert!(
        !job.contains_key("reannounced_at") && job.get_i32("reannounced").unwrap_or(0) == 0,
        "a refused announcement was counted as made: {job}\n{}",
        worker.log()
    );
    drop(worker);

    // The queue back (a worker declares it at start): the very next sweep announces it.
    let worker = fx.start(&sweeping);
    wait_for("the announcement", JOB_TIMEOUT, || {
        (fx.vhost.queue_len("mp3")? == 1).then_some(())
    });
    assert_eq!(payload(&fx.take("mp3", 1)[0]).mp3_fid, Some(mp3.to_hex()));
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_expires_recovers_and_cleans_up_safely_on_two_replicas() {
    let _alone = SWEEPERS.lock().await;
    let fx = Fixture::new("sweeper").await;
    let jobs = fx.videos().collection::<Document>(JOBS_COLLECTION);
    let now = converter::store::now_ms();
    let set = |id: &str, fields: Document| {
        let jobs = jobs.clone();
        let id = id.to_owned();
        async move {
            jobs.update_one(doc! { "_id": id }, doc! { "$set": fields })
                .await
                .unwrap();
        }
    };
    let video = make_video(&fx.dir, "clip.mkv", 1, &[]);

    // Done two days ago, past the one-day retention: job, MP3 and video go.
    let expired = fx.queue_job(&video, "old.mkv", 255 * 1024).await;
    let expired_mp3 = fx.store_mp3(&expired, b"an old MP3").await;
    set(
        &expired.id,
        doc! { "status": "done", "mp3_fid": expired_mp3.to_hex(), "updated_at": now - 2 * DAY_MS },
    )
    .await;
    // Done now: its video goes, the job and MP3 stay.
    let recent = fx.queue_job(&video, "new.mkv", 255 * 1024).await;
    let recent_mp3 = fx.store_mp3(&recent, b"a new MP3").await;
    set(
        &recent.id,
        doc! { "status": "done", "mp3_fid": recent_mp3.to_hex(), "updated_at": now },
    )
    .await;
    // Queued two hours ago and never published (a gateway killed in between): published again.
    let lost = fx.queue_job(&video, "lost.mkv", 255 * 1024).await;
    set(&lost.id, doc! { "updated_at": now - 2 * 3600 * 1000 }).await;
    // Stuck again after being published twice already: failed, and the owner told.
    let hopeless = fx.queue_job(&video, "hopeless.mkv", 255 * 1024).await;
    set(
        &hopeless.id,
        doc! { "updated_at": now - 2 * 3600 * 1000, "republished": 2 },
    )
    .await;
    // Done two hours ago and its owner never emailed (its announcement dead-lettered): again.
    let untold = fx.queue_job(&video, "untold.mkv", 255 * 1024).await;
    let untold_mp3 = fx.store_mp3(&untold, b"an untold MP3").await;
    set(&untold.id, doc! { "status": "done", "mp3_fid": untold_mp3.to_hex(), "updated_at": now - 2 * 3600 * 1000 }).await;
    // Chunks of an upload killed two days ago (no files document), and of one under way now.
    let chunks = fx.video_chunks();
    let (dead_upload, live_upload) = (id_made_ago(2 * 86_400), ObjectId::new());
    for files_id in [dead_upload, live_upload] {
        let data = mongodb::bson::Binary {
            subtype: mongodb::bson::spec::BinarySubtype::Generic,
            bytes: vec![1; 100],
        };
        chunks
            .insert_one(doc! { "files_id": files_id, "n": 0, "data": data })
            .await
            .unwrap();
    }
    // An MP3 no job names, two days old (a conversion whose job was deleted meanwhile).
    let stray = id_made_ago(2 * 86_400);
    let bucket = fx.mp3s().gridfs_bucket(None);
    let mut upload = bucket
        .open_upload_stream("stray.mp3")
        .id(Bson::ObjectId(stray))
        .await
        .unwrap();
    upload.write_all(b"stray").await.unwrap();
    upload.close().await.unwrap();

    // Resumable uploads: one abandoned (expired, with a chunk and a lease: all go), one under
    // way for two days (its chunks older than the orphan age, but its upload's: kept), one
    // finished and expired (its record goes, its file is its job's).
    let uploads = fx.videos().collection::<Document>(UPLOADS_COLLECTION);
    let (abandoned_fid, slow_fid) = (id_made_ago(2 * 86_400), id_made_ago(2 * 86_400));
    let upload = |fid: ObjectId, expires_at: i64, done: bool| {
        doc! { "_id": ObjectId::new().to_hex(), "owner": "someone@example.com", "video_fid": fid.to_hex(),
        "offset": 100_i64, "length": 1000_i64, "done": done, "expires_at": expires_at }
    };
    let abandoned = upload(abandoned_fid, now - DAY_MS, false);
    let slow = upload(slow_fid, now + DAY_MS, false);
    let finished = upload(
        ObjectId::parse_str(&recent.video_fid).unwrap(),
        now - DAY_MS,
        true,
    );
    // Expired, but a PATCH holds a fresh lease on it (a long checksummed one): kept.
    let writing_fid = id_made_ago(2 * 86_400);
    let writing = upload(writing_fid, now - DAY_MS, false);
    for (doc, fid) in [
        (&abandoned, Some(abandoned_fid)),
        (&slow, Some(slow_fid)),
        (&finished, None),
        (&writing, Some(writing_fid)),
    ] {
        uploads.insert_one(doc).await.unwrap();
        if let Some(fid) = fid {
            let data = mongodb::bson::Binary {
                subtype: mongodb::bson::spec::BinarySubtype::Generic,
                bytes: vec![2; 100],
            };
            fx.video_chunks()
                .insert_one(doc! { "files_id": fid, "n": 0, "data": data })
                .await
                .unwrap();
        }
    }
    let upload_leases = fx.videos().collection::<Document>(UPLOAD_LEASES_COLLECTION);
    for (doc, at) in [(&abandoned, now - DAY_MS), (&writing, now + 3600 * 1000)] {
        let id = doc.get_str("_id").unwrap();
        upload_leases
            .insert_one(doc! { "_id": format!("{id}/0"), "upload": id, "token": "t", "at": at })
            .await
            .unwrap();
    }

    // Records of jobs their owners deleted: two days ago (dropped) and now (kept).
    let tombstones = fx.videos().collection::<Document>(DELETED_JOBS_COLLECTION);
    let (old_tombstone, new_tombstone) = (ObjectId::new().to_hex(), ObjectId::new().to_hex());
    for (id, at) in [(&old_tombstone, now - 2 * DAY_MS), (&new_tombstone, now)] {
        tombstones
            .insert_one(doc! { "_id": id, "owner": "someone@example.com", "deleted_at": at })
            .await
            .unwrap();
    }

    // Two replicas sweeping every second.
    let sweeping = [
        ("SWEEP_INTERVAL_SECS", "1".to_owned()),
        ("RETENTION_SECS", "86400".to_owned()),
        ("STUCK_AFTER_SECS", "3600".to_owned()),
        ("JOB_TIMEOUT_SECS", "600".to_owned()),
        ("ORPHAN_AGE_SECS", "3600".to_owned()),
    ];
    let first = fx.start(&sweeping);
    let second = fx.start(&sweeping);

    let converted = fx.wait_status(&lost.id, JobStatus::Done).await;
    let failed = fx.wait_status(&hopeless.id, JobStatus::Failed).await;
    assert_eq!(
        failed.error.as_deref(),
        Some(converter::sweeper::LOST_REASON)
    );
    let deadline = std::time::Instant::now() + JOB_TIMEOUT;
    while jobs
        .find_one(doc! { "_id": &expired.id })
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired job is still there"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give both replicas a few more sweeps, to see that nothing is done twice.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let file_exists = |db: Database, id: ObjectId| async move {
        db.collection::<Document>("fs.files")
            .count_documents(doc! { "_id": id })
            .await
            .unwrap()
            == 1
    };
    let chunks_of = |db: Database, id: ObjectId| async move {
        db.collection::<Document>("fs.chunks")
            .count_documents(doc! { "files_id": id })
            .await
            .unwrap()
    };
    let video_of = |job: &Job| ObjectId::parse_str(&job.video_fid).unwrap();
    // Expired: everything gone.
    assert!(!file_exists(fx.mp3s(), expired_mp3).await);
    assert_eq!(chunks_of(fx.mp3s(), expired_mp3).await, 0);
    assert!(!file_exists(fx.videos(), video_of(&expired)).await);
    assert_eq!(chunks_of(fx.videos(), video_of(&expired)).await, 0);
    // Recent: its video gone, the rest kept.
    let kept = jobs
        .find_one(doc! { "_id": &recent.id })
        .await
        .unwrap()
        .unwrap();
    assert!(kept.contains_key("video_deleted_at"));
    assert!(file_exists(fx.mp3s(), recent_mp3).await);
    assert!(!file_exists(fx.videos(), video_of(&recent)).await);
    assert_eq!(chunks_of(fx.videos(), video_of(&recent)).await, 0);
    let untold_doc = jobs
        .find_one(doc! { "_id": &untold.id })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        untold_doc.get_i32("reannounced").ok(),
        Some(1),
        "{untold_doc}"
    );
    // Lost: published again once (two replicas), converted once, its video then deleted.
    let lost_doc = jobs
        .find_one(doc! { "_id": &lost.id })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lost_doc.get_i32("republished").ok(), Some(1), "{lost_doc}");
    assert_eq!(converted.attempts, 1);
    assert_eq!(fx.mp3_files(&lost.id).await.len(), 1);
    assert!(!file_exists(fx.videos(), video_of(&lost)).await);
    // Orphans: the old ones gone, the young upload's chunks kept.
    assert_eq!(chunks_of(fx.videos(), dead_upload).await, 0);
    assert_eq!(chunks_of(fx.videos(), live_upload).await, 1);
    assert!(!file_exists(fx.mp3s(), stray).await);
    assert_eq!(chunks_of(fx.mp3s(), stray).await, 0);
    // The owners heard once each: the converted job and the failed one.
    let told: Vec<JobMessage> = fx
        .vhost
        .take("mp3", 100)
        .iter()
        .map(payload)
        .filter(|m| [&lost.id, &hopeless.id, &untold.id].contains(&&m.job_id))
        .collect();
    assert_eq!(told.len(), 3, "{told:?}");
    assert!(told
        .iter()
        .any(|m| m.job_id == untold.id && m.mp3_fid == Some(untold_mp3.to_hex())));
    assert!(told
        .iter()
        .any(|m| m.job_id == hopeless.id
            && m.error.as_deref() == Some(converter::sweeper::LOST_REASON)));
    assert!(told
        .iter()
        .any(|m| m.job_id == lost.id && m.mp3_fid == converted.mp3_fid));
    let upload_left = |doc: &Document| {
        let uploads = uploads.clone();
        let id = doc.get_str("_id").unwrap().to_owned();
        async move { uploads.count_documents(doc! { "_id": id }).await.unwrap() }
    };
    assert_eq!(upload_left(&abandoned).await, 0);
    assert_eq!(chunks_of(fx.videos(), abandoned_fid).await, 0);
    assert_eq!(
        fx.videos()
            .collection::<Document>(UPLOAD_LEASES_COLLECTION)
            .count_documents(doc! { "upload": abandoned.get_str("_id").unwrap() })
            .await
            .unwrap(),
        0
    );
    assert_eq!(upload_left(&slow).await, 1);
    assert_eq!(
        chunks_of(fx.videos(), slow_fid).await,
        1,
        "a live upload's chunks are kept"
    );
    assert_eq!(upload_left(&finished).await, 0);
    assert_eq!(upload_left(&writing).await, 1, "a PATCH is writing it");
    assert_eq!(chunks_of(fx.videos(), writing_fid).await, 1);
    uploads
        .delete_one(doc! { "_id": writing.get_str("_id").unwrap() })
        .await
        .unwrap();
    upload_leases
        .delete_many(doc! { "upload": writing.get_str("_id").unwrap() })
        .await
        .unwrap();
    chunks
        .delete_many(doc! { "files_id": writing_fid })
        .await
        .unwrap();
    uploads
        .delete_one(doc! { "_id": slow.get_str("_id").unwrap() })
        .await
        .unwrap();
    chunks
        .delete_many(doc! { "files_id": slow_fid })
        .await
        .unwrap();
    let left = |id: String| {
        let tombstones = tombstones.clone();
        async move {
            tombstones
                .count_documents(doc! { "_id": id })
                .await
                .unwrap()
        }
    };
    assert_eq!(left(old_tombstone).await, 0);
    assert_eq!(left(new_tombstone.clone()).await, 1);
    tombstones
        .delete_one(doc! { "_id": &new_tombstone })
        .await
        .unwrap();
    for worker in [&first, &second] {
        assert!(
            worker.metric("converter_sweeps_failed_total") == Some(0.0),
            "{}",
            worker.log()
        );
    }
    chunks
        .delete_many(doc! { "files_id": live_upload })
        .await
        .unwrap();
}

/// What `DELETE /jobs/{id}` does to a job (see the gateway): a tombstone, the video, the job.
async fn delete_as_the_gateway_does(fx: &Fixture, job: &Job) {
    let videos = fx.videos();
    videos
        .collection::<Document>(DELETED_JOBS_COLLECTION)
        .insert_one(
            doc! { "_id": &job.id, "owner": &job.owner, "deleted_at": converter::store::now_ms() },
        )
        .await
        .expect("the tombstone");
    let video = ObjectId::parse_str(&job.video_fid).unwrap();
    videos
        .collection::<Document>("fs.files")
        .delete_one(doc! { "_id": video })
        .await
        .unwrap();
    fx.video_chunks()
        .delete_many(doc! { "files_id": video })
        .await
        .unwrap();
    videos
        .collection::<Document>(JOBS_COLLECTION)
        .delete_one(doc! { "_id": &job.id })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_deleted_by_their_owners_before_or_during_conversion_are_dropped_quietly() {
    let fx = Fixture::new("deleted").await;
    let video = make_video(&fx.dir, "clip.mkv", 12, &[]);
    // Slow enough that the deletion falls in the middle of the conversion.
    let worker = fx.start(&[("FFMPEG_PATH", slow_ffmpeg(&fx.dir, 4))]);

    // Deleted before its message came: dropped.
    let before = fx.queue_job(&video, "before.mkv", 255 * 1024).await;
    delete_as_the_gateway_does(&fx, &before).await;
    fx.publish(&before);
    // Deleted while converting: stopped (its video is gone) or finished and its MP3 deleted.
    let during = fx.queue_job(&video, "during.mkv", 64 * 1024).await;
    fx.publish(&during);
    wait_converting(&fx, &during, &worker).await;
    delete_as_the_gateway_does(&fx, &during).await;

    wait_for("both messages settled", JOB_TIMEOUT, || {
        let log = worker.log();
        (log.matches("deleted by its owner").count() == 2
            || log.contains("the job was taken over or deleted"))
        .then_some(())
    });
    wait_for("the video queue to empty", Duration::from_secs(15), || {
        (fx.vhost.queue_len("video")? == 0).then_some(())
    });
    assert_eq!(
        fx.vhost.queue_len("video.dead"),
        Some(0),
        "{}",
        worker.log()
    );
    assert_eq!(fx.vhost.queue_len("mp3"), Some(0), "nobody to tell");
    assert!(worker
        .log()
        .contains("the job was deleted by its owner; dropping its message"));
    for job in [&before, &during] {
        // A finished MP3 is deleted right after the log line that said so.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fx.mp3_files(&job.id).await.is_empty() {
            assert!(std::time::Instant::now() < deadline, "{}", worker.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fx.videos()
            .collection::<Document>(DELETED_JOBS_COLLECTION)
            .delete_one(doc! { "_id": &job.id })
            .await
            .unwrap();
    }
    assert_eq!(
        worker.metric("converter_messages_dead_lettered_total"),
        Some(0.0)
    );
}
