//! The product's speed and memory on this machine, each against a baseline measured in the same
//! process:
//!
//! 1. Upload throughput through the gateway (curl → runner or Spin → GridFS `videos` → job →
//!    queue) for growing files, against writing the same file to GridFS directly from native code
//!    (mongo-wire); and the serving process's peak resident memory during each upload, which must
//!    not grow with the file. Then resumable (tus) uploads of the same files, in the CLI's and
//!    the page's 8 MiB pieces and in the CLI's largest, 64 MiB, against `POST /upload`.
//! 2. Conversion: the pipeline (job queued → converter streams GridFS → ffmpeg → GridFS → job
//!    done) against the same ffmpeg command on a local file.
//! 3. End to end: from the upload's 202 to the MP3 being downloadable, polling the job, on each
//!    runtime.
//! 4. `GET /jobs/{id}` requests/s with MongoDB requiring logins against MongoDB without (FerretDB
//!    both, one of each), on each runtime: what logging in costs each request.
//! 5. A growing store: downloading a 300 KB MP3 and converting a 10 s clip with 0, 100 and
//!    1,000 MB of other files stored, on each FerretDB backend, against the empty store.
//! 6. Sustained throughput: jobs per minute for a batch of one-minute clips, against plain ffmpeg
//!    converting the same clips with the same parallelism.
//! 7. A large resumable upload (10 GB of real, uncompressed video) on Spin, broken off at a
//!    random offset and resumed: its time, the gateway's memory along the way (flat), the stored
//!    file compared with the original byte for byte, and its conversion.
//!
//! `cargo bench -p system-tests --bench pipeline` (or `scripts/bench-pipeline`) runs the full
//! sizes (10 MB / 100 MB / 1 GB uploads, a 60 s 720p clip, a 10 s clip); `cargo test` runs it once
//! with small sizes so it cannot rot. Needs the dev services and the release builds, as the tests.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use converter::convert::output_args;
use mongo_wire::bson::oid::ObjectId;
use mongo_wire::Bucket;
use mp3_model::options::Encoding;
use mp3_model::Options;
use system_tests::http::send;
use system_tests::memory::{memory_mib, reset_peak};
use system_tests::system::{make_video, probe, upload, System};
use system_tests::tus;
use system_tests::{available_runtimes, service_env, AppConfig, Runtime, TempDir};

const MB: u64 = 1_000_000;

struct Plan {
    /// MB of other files stored for the growing-store part.
    store_sizes: &'static [u64],
    /// After deleting the other files, how long the backend may take to reclaim their space.
    reclaim_pause: Duration,
    /// Clips (seconds each) for the throughput part, and how many.
    batch: (u32, usize),
    /// Seconds of load per `GET /jobs` run, and runs of each (alternating auth on and off).
    jobs_seconds: u32,
    jobs_runs: usize,
    upload_sizes: &'static [u64],
    /// Bytes of the large resumable upload.
    large_upload: u64,
    clip: (u32, &'static str),
    conversion_runs: usize,
    e2e_clip: (u32, &'static str),
    e2e_runs: usize,
}

fn plan() -> Plan {
    if std::env::args().any(|a| a == "--bench") {
        Plan {
            store_sizes: &[0, 100, 1000],
            reclaim_pause: Duration::from_secs(30),
            batch: (60, 50),
            jobs_seconds: 4,
            jobs_runs: 7,
            upload_sizes: &[10 * MB, 100 * MB, 1000 * MB],
            large_upload: 10_000 * MB,
            clip: (60, "1280x720"),
            conversion_runs: 9,
            e2e_clip: (10, "640x360"),
            e2e_runs: 5,
        }
    } else {
        Plan {
            store_sizes: &[0, 4],
            reclaim_pause: Duration::ZERO,
            batch: (3, 4),
            jobs_seconds: 1,
            jobs_runs: 1,
            upload_sizes: &[MB, 8 * MB],
            large_upload: 40 * MB,
            clip: (4, "320x240"),
            conversion_runs: 1,
            e2e_clip: (2, "320x240"),
            e2e_runs: 1,
        }
    }
}

/// The runtimes to measure: those this machine has, or those of `BENCH_RUNTIMES`
/// (`spin-runner`, `spin`, comma-separated) among them.
fn runtimes() -> Vec<Runtime> {
    let wanted = std::env::var("BENCH_RUNTIMES").unwrap_or_default();
    available_runtimes()
        .into_iter()
        .filter(|r| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == r.name()))
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A file of `size` bytes that starts as a real MP4 (the gateway checks the magic bytes) and is
/// padded with filler: upload speed does not depend on what the bytes are.
fn padded_video(head: &Path, path: &Path, size: u64) {
    let head = std::fs::read(head).expect("reading the clip");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).expect("creating a file"));
    out.write_all(&head).expect("writing");
    let filler: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut left = size.saturating_sub(head.len() as u64);
    while left > 0 {
        let n = left.min(filler.len() as u64) as usize;
        out.write_all(&filler[..n]).expect("writing");
        left -= n as u64;
    }
    out.flush().expect("flushing");
}

fn delete_file(db: &str, fid: &str) {
    let mut client = mongo_wire::connect(&service_env("MONGODB_URL")).expect("MongoDB");
    if let Ok(id) = ObjectId::parse_str(fid) {
        let _ = Bucket::new(db).delete(&mut client, id);
    }
}

fn uploads(plan: &Plan, dir: &Path) {
    let head = dir.join("head.mp4");
    make_video(&head, 1, "160x120");
    println!("\n### Upload through the gateway\n");
    println!(
        "| file | runtime | gateway MB/s | direct GridFS MB/s | ratio | serving process: resident \
         after warm-up, peak during the upload |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    let mut resumable = vec![
        "\n### Resumable (tus) uploads against `POST /upload`\n".to_owned(),
        "| file | runtime | `POST /upload` MB/s | tus, 8 MiB pieces with SHA-1 (the CLI's and \
         the page's): MB/s | ratio | 64 MiB with SHA-1 | ratio | 64 MiB without | ratio | \
         serving process: peak during the tus uploads |"
            .to_owned(),
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|".to_owned(),
    ];
    for runtime in runtimes() {
        let system = System::without_workers(runtime);
        let token = system.login();
        // A first small upload so the idle figure includes a warmed-up instance.
        let (warm, _) = upload(&system.app.url("/upload"), &token, &head);
        assert_eq!(warm.status, 202, "{}", warm.body);
        let pid = system.app.server_pid();
        let idle = memory_mib(pid, "VmRSS");
        let mut fids = vec![field_of(&warm.body, "video_fid")];
        for &size in plan.upload_sizes {
            let file = dir.join(format!("upload-{size}.mp4"));
            padded_video(&head, &file, size);
            reset_peak(pid);

            let (reply, secs) = upload(&system.app.url("/upload"), &token, &file);
            assert_eq!(reply.status, 202, "{}", reply.body);
            fids.push(field_of(&reply.body, "video_fid"));
            let gateway = size as f64 / MB as f64 / secs;
            let peak = memory_mib(pid, "VmHWM");

            reset_peak(pid);
            let mut tus_rates = Vec::new();
            for (piece, checksums) in [(8 << 20, true), (64 << 20, true), (64 << 20, false)] {
                let started = Instant::now();
                let mut upload =
                    tus::Upload::create(system.app.base(), &token, size, "bench-tus.mp4")
                        .expect("creating the upload");
                if !checksums {
                    upload = upload.without_checksums();
                }
                let reached = upload
                    .send_file(&file, 0, piece, |_| {})
                    .expect("the tus upload");
                assert_eq!(reached, size);
                tus_rates.push(size as f64 / MB as f64 / started.elapsed().as_secs_f64());
                fids.push(video_of_job(&system, upload.id()));
            }
            let tus_peak = memory_mib(pid, "VmHWM");
            let rates: Vec<String> = tus_rates
                .iter()
                .map(|rate| format!("{rate:.1} | {:.2}", rate / gateway))
                .collect();
            resumable.push(format!(
                "| {} MB | {} | {gateway:.1} | {} | {tus_peak:.0} MiB |",
                size / MB,
                runtime.name(),
                rates.join(" | "),
            ));

            let mut client = mongo_wire::connect(&service_env("MONGODB_URL")).expect("MongoDB");
            let started = Instant::now();
            let direct_id = Bucket::new(mp3_model::VIDEOS_DB)
                .with_chunk_size(mp3_model::GRIDFS_CHUNK_SIZE)
                .upload(
                    &mut client,
                    File::open(&file).expect("opening"),
                    "bench-direct.mp4",
                    None,
                    u64::MAX,
                )
                .expect("direct GridFS upload");
            let direct = size as f64 / MB as f64 / started.elapsed().as_secs_f64();
            fids.push(direct_id.to_hex());
            std::fs::remove_file(&file).expect("removing the file");

            println!(
                "| {} MB | {} | {gateway:.1} | {direct:.1} | {:.2} | {idle:.0} MiB, {peak:.0} MiB |",
                size / MB,
                runtime.name(),
                gateway / direct
            );
        }
        for fid in fids {
            delete_file(mp3_model::VIDEOS_DB, &fid);
        }
    }
    println!("{}", resumable.join("\n"));
}

/// The `video_fid` of job `job_id`.
fn video_of_job(system: &System, job_id: &str) -> String {
    let mut client = mongo_wire::connect(&service_env("MONGODB_URL")).expect("MongoDB");
    let job = client
        .find_one(
            mp3_model::VIDEOS_DB,
            mp3_model::JOBS_COLLECTION,
            mongo_wire::bson::doc! {"_id": job_id},
        )
        .expect("reading the job")
        .unwrap_or_else(|| panic!("no job {job_id}\n{}", system.app.log()));
    job.get_str("video_fid").expect("video_fid").to_owned()
}

/// A string field (`job_id`, `video_fid`) of an upload's 202 answer.
fn field_of(upload_body: &str, field: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(upload_body).expect("upload JSON");
    json[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {json}"))
        .to_owned()
}

fn conversion(plan: &Plan, dir: &Path) {
    let (seconds, size) = plan.clip;
    // ffmpeg writes an MP4's index (moov) after the media, as most cameras do: the converter has
    // ffmpeg read such a file through its cache protocol, which keeps a seekable copy. The same
    // clip with the index first (`+faststart`) streams straight from GridFS through ffmpeg.
    let moov_last = dir.join("clip.mp4");
    make_video(&moov_last, seconds, size);
    let faststart = dir.join("clip-faststart.mp4");
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(&moov_last)
        .args(["-c", "copy", "-movflags", "+faststart"])
        .arg(&faststart)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "ffmpeg could not remux the clip");
    let system = System::start(Runtime::Runner);
    let token = system.login();

    println!(
        "\n### Conversion of a {seconds} s {size} clip ({:.1} MB, median of {})\n",
        std::fs::metadata(&moov_last).map_or(0, |m| m.len()) as f64 / MB as f64,
        plan.conversion_runs
    );
    // Each run times plain ffmpeg and then the pipeline, back to back; the ratio is the median
    // of the runs' ratios, which a slow spell of a shared machine shifts less than the
    // medians' ratio.
    println!(
        "| MP4 layout | plain ffmpeg on a file | pipeline (queued → done) | ratio \
         | GridFS read + write alone |"
    );
    println!("|---|---:|---:|---:|---:|");
    // Options change what ffmpeg does, so each is compared with plain ffmpeg run with the same
    // options: a constant bitrate and mono, a variable bitrate (written to a file, for its info
    // header), and half the clip (decoded from its start, cut to the sample).
    let (quarter, three_quarters) = ((seconds / 4).to_string(), (seconds * 3 / 4).to_string());
    let rows: [(&str, &Path, Vec<(&str, &str)>); 5] = [
        (
            "index last (read through ffmpeg's cache)",
            &moov_last,
            vec![],
        ),
        ("faststart (streamed)", &faststart, vec![]),
        (
            "faststart, `preset=voice` (mono, 64 kb/s)",
            &faststart,
            vec![("preset", "voice")],
        ),
        (
            "faststart, `preset=high` (VBR 0)",
            &faststart,
            vec![("preset", "high")],
        ),
        (
            "faststart, the middle half (`start`, `end`)",
            &faststart,
            vec![("start", &quarter), ("end", &three_quarters)],
        ),
    ];
    for (label, clip, fields) in rows {
        let encoding = Options::from_fields(fields.iter().copied(), "clip.mp4")
            .expect("valid options")
            .encoding();
        let mut plain = Vec::new();
        let mut pipeline = Vec::new();
        let mut storage = Vec::new();
        for run in 0..plan.conversion_runs {
            let out = dir.join(format!("plain-{run}.mp3"));
            let started = Instant::now();
            let status = Command::new("ffmpeg")
                .args(["-loglevel", "error", "-y", "-i"])
                .arg(clip)
                .args(mp3_args_to(&out, &encoding))
                .status()
                .expect("running ffmpeg");
            assert!(status.success());
            plain.push(started.elapsed().as_secs_f64());

            let reply = system.upload_with(&token, clip, &fields);
            assert_eq!(reply.status, 202, "{}", reply.body);
            let job_id = field_of(&reply.body, "job_id");
            // The job's own times (queued by the gateway, done by the converter), polled once
            // a second: each poll (runner, MariaDB, FerretDB) takes CPU that ffmpeg competes
            // for on this machine's two cores, and a real user polls from elsewhere.
            let job = system.poll_job(
                &token,
                &job_id,
                Duration::from_secs(600),
                Duration::from_millis(1000),
            );
            assert_eq!(job["status"], "done", "{job}");
            let millis = |field: &str| {
                job[field]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{field} in {job}"))
            };
            pipeline.push((millis("updated_at") - millis("created_at")) as f64 / 1000.0);
            storage.push(transfer_alone(&job, &out));
            // FerretDB reads GridFS by scanning every stored chunk: each run starts from the
            // same store, or later runs would pay for the earlier ones' files.
            delete_file(
                mp3_model::VIDEOS_DB,
                job["video_fid"].as_str().unwrap_or_default(),
            );
            delete_file(
                mp3_model::MP3S_DB,
                job["mp3_fid"].as_str().unwrap_or_default(),
            );
        }
        let ratio = median(pipeline.iter().zip(&plain).map(|(p, f)| p / f).collect());
        let (plain, pipeline, storage) = (median(plain), median(pipeline), median(storage));
        println!("| {label} | {plain:.2} s | {pipeline:.2} s | {ratio:.2} | {storage:.2} s |");
    }
}

/// Seconds to read a job's video from GridFS and write an MP3 (`mp3`) to GridFS, one after the
/// other, natively: what the pipeline's storage costs alone.
fn transfer_alone(job: &serde_json::Value, mp3: &Path) -> f64 {
    let mut client = mongo_wire::connect(&service_env("MONGODB_URL")).expect("MongoDB");
    let video = job["video_fid"]
        .as_str()
        .and_then(|fid| ObjectId::parse_str(fid).ok())
        .expect("the job's video_fid");
    let started = Instant::now();
    let mut bytes = Vec::new();
    Bucket::new(mp3_model::VIDEOS_DB)
        .open_download(&mut client, video)
        .expect("opening the video")
        .read_to_end(&mut bytes)
        .expect("reading the video");
    let mp3s = Bucket::new(mp3_model::MP3S_DB).with_chunk_size(mp3_model::GRIDFS_CHUNK_SIZE);
    let id = mp3s
        .upload(
            &mut client,
            File::open(mp3).expect("opening the MP3"),
            "bench.mp3",
            None,
            u64::MAX,
        )
        .expect("storing the MP3");
    let seconds = started.elapsed().as_secs_f64();
    mp3s.delete(&mut client, id).expect("deleting the MP3");
    seconds
}

/// The converter's ffmpeg output arguments for `encoding`, writing `path`.
fn mp3_args_to(path: &Path, encoding: &Encoding) -> Vec<String> {
    output_args(encoding, &path.display().to_string())
}

fn end_to_end(plan: &Plan, dir: &Path) {
    let (seconds, size) = plan.e2e_clip;
    let clip = dir.join("short.mp4");
    make_video(&clip, seconds, size);
    println!(
        "\n### End to end, {seconds} s {size} clip (median of {})\n",
        plan.e2e_runs
    );
    println!("| runtime | upload answered → MP3 downloaded | target |");
    println!("|---|---:|---:|");
    for runtime in runtimes() {
        let system = System::start(runtime);
        let token = system.login();
        let mut times = Vec::new();
        for _ in 0..plan.e2e_runs {
            let reply = system.upload(&token, &clip);
            assert_eq!(reply.status, 202, "{}", reply.body);
            let uploaded = Instant::now();
            let job = system.wait_for_job(
                &token,
                &field_of(&reply.body, "job_id"),
                Duration::from_secs(120),
            );
            let mp3_fid = job["mp3_fid"].as_str().expect("a done job");
            let download = system.download(&token, mp3_fid);
            assert_eq!(download.status, 200);
            times.push(uploaded.elapsed().as_secs_f64());
        }
        println!("| {} | {:.2} s | < 2 s |", runtime.name(), median(times));
    }
}

/// `GET /jobs/{id}` at 8 connections (wrk, on the same cores) against the gateway with MongoDB
/// requiring logins (`MONGODB_AUTH_URL`) and without (`MONGODB_URL`), alternating, each store
/// holding the same one job: the ratio is what logging in costs a request, since every request
/// is a new instance with a new connection.
fn jobs_with_and_without_login(plan: &Plan, dir: &Path) {
    const SECRET: &str = "bench-secret-that-is-long-enough-for-hs256-0123456789";
    let owner = format!("bench-{}@example.com", system_tests::unique());
    // validate reads the token's user (its token generation) from MySQL.
    let users = system_tests::TestDb::migrated();
    users.add_token_user(&owner);
    let job_id = ObjectId::new().to_hex();
    let job = mongo_wire::bson::doc! {
        "_id": &job_id, "owner": &owner, "video_fid": ObjectId::new().to_hex(),
        "filename": "bench.mp4", "status": "queued", "attempts": 0,
        "created_at": 1_i64, "updated_at": 1_i64,
    };
    let stores = [
        ("without", service_env("MONGODB_URL")),
        ("with", service_env("MONGODB_AUTH_URL")),
    ];
    for (_, url) in &stores {
        mongo_wire::connect(url)
            .expect("MongoDB")
            .insert_one(
                mp3_model::VIDEOS_DB,
                mp3_model::JOBS_COLLECTION,
                job.clone(),
            )
            .expect("storing the job");
    }
    let config = mp3_auth::TokenConfig::new(
        SECRET,
        "mp3-converter",
        "mp3-converter",
        Duration::from_secs(3600),
    )
    .expect("token config");
    let token = mp3_auth::issue(&config, &owner, false, 0, mp3_auth::unix_now()).expect("a token");
    let script = dir.join("get.lua");
    std::fs::write(
        &script,
        format!("wrk.method = \"GET\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"),
    )
    .expect("writing the wrk script");

    println!(
        "\n### `GET /jobs/{{id}}`, MongoDB with logins against without (8 connections, median \
         of {} alternating {} s runs)\n",
        plan.jobs_runs, plan.jobs_seconds
    );
    println!(
        "| runtime | without logins, requests/s | with logins, requests/s | ratio | non-2xx answers |"
    );
    println!("|---|---:|---:|---:|---:|");
    for runtime in runtimes() {
        let apps: Vec<_> = stores
            .iter()
            .map(|(_, url)| {
                let address = system_tests::services::host_port(url);
                AppConfig::app(runtime)
                    .env("SPIN_VARIABLE_MONGODB_URL", url.clone())
                    .env("SPIN_VARIABLE_MONGODB_HOST", address)
                    .env("SPIN_VARIABLE_DB_URL", users.url())
                    .env("SPIN_VARIABLE_DB_HOST", users.host_port())
                    .env("SPIN_VARIABLE_JWT_SECRET", SECRET)
                    .start()
            })
            .collect();
        let url = |app: &system_tests::App| app.url(&format!("/jobs/{job_id}"));
        for app in &apps {
            let reply = system_tests::http::send(
                "GET",
                &url(app),
                &[("Authorization", &format!("Bearer {token}"))],
                None,
            );
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        let (mut without, mut with, mut ratios, mut errors) =
            (Vec::new(), Vec::new(), Vec::new(), 0);
        for _ in 0..plan.jobs_runs {
            let (a, a_errors) = wrk_rps(&url(&apps[0]), &script, plan.jobs_seconds);
            let (b, b_errors) = wrk_rps(&url(&apps[1]), &script, plan.jobs_seconds);
            without.push(a);
            with.push(b);
            ratios.push(b / a);
            errors += a_errors + b_errors;
        }
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {errors} |",
            runtime.name(),
            median(without),
            median(with),
            median(ratios)
        );
    }
    for (_, url) in &stores {
        let _ = mongo_wire::connect(url).and_then(|mut c| {
            c.delete_many(
                mp3_model::VIDEOS_DB,
                mp3_model::JOBS_COLLECTION,
                mongo_wire::bson::doc! {"_id": &job_id},
            )
        });
    }
}

/// Requests/s wrk reaches on `url` with 8 connections for `seconds`, and how many answers were
/// not 2xx (reported, so a rare failure under load is seen rather than hidden or fatal).
fn wrk_rps(url: &str, script: &Path, seconds: u32) -> (f64, u64) {
    let out = Command::new("wrk")
        .args(["-t2", "-c8", &format!("-d{seconds}s"), "-s"])
        .arg(script)
        .arg(url)
        .output()
        .expect("running wrk (scripts/dev-services installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no requests/s in wrk's output:\n{text}"));
    (rps, errors)
}

/// Stores `mb` MB of other files (half as videos, half as MP3s, 10 MB each): what a store
/// holding other users' files looks like to a query. Their ids, to delete.
fn fill_store(mb: u64) -> Vec<(&'static str, ObjectId)> {
    let mut client = mongo_wire::connect(&service_env("MONGODB_URL")).expect("MongoDB");
    let filler: Vec<u8> = (0..10 * MB as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut stored = Vec::new();
    for n in 0..mb.div_ceil(10) {
        let db = if n % 2 == 0 {
            mp3_model::VIDEOS_DB
        } else {
            mp3_model::MP3S_DB
        };
        let size = (mb - n * 10).min(10) as usize * MB as usize;
        let id = Bucket::new(db)
            .with_chunk_size(mp3_model::GRIDFS_CHUNK_SIZE)
            .upload(&mut client, &filler[..size], "other.bin", None, u64::MAX)
            .expect("storing a filler file");
        stored.push((db, id));
    }
    stored
}

/// Deletes files of both buckets with one query per collection: FerretDB scans a whole
/// collection for each query, so a query per file would take minutes on a full store.
fn delete_all(files: Vec<(&'static str, ObjectId)>) {
    let mut client = mongo_wire::connect(&service_env("MONGODB_URL")).expect("MongoDB");
    for db in [mp3_model::VIDEOS_DB, mp3_model::MP3S_DB] {
        let ids: Vec<ObjectId> = files
            .iter()
            .filter(|(d, _)| *d == db)
            .map(|(_, id)| *id)
            .collect();
        for (coll, field) in [("fs.files", "_id"), ("fs.chunks", "files_id")] {
            client
                .delete_many(db, coll, mongo_wire::bson::doc! { field: { "$in": &ids } })
                .expect("deleting the other files");
        }
    }
}

/// `scripts/dev-services` with FerretDB on `backend`: the shared instance is restarted on it.
fn ferretdb_on(backend: &str) {
    let script = system_tests::root().join("scripts/dev-services");
    for args in [&["crash", "ferretdb"][..], &["start"][..]] {
        let status = Command::new(&script)
            .args(args)
            .env("FERRETDB_BACKEND", backend)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running scripts/dev-services");
        assert!(status.success(), "scripts/dev-services {args:?}");
    }
}

fn growing_store(plan: &Plan, dir: &Path) {
    let clip = dir.join("store-clip.mp4");
    make_video(&clip, 10, "640x360");
    println!("\n### A growing store: a 10 s clip converted, its MP3 (about 300 KB) downloaded\n");
    println!("| FerretDB backend | other files stored | conversion (queued → done) | download | vs. empty store (conversion, download) |");
    println!("|---|---:|---:|---:|---:|");
    let backends: &[&str] = if std::env::args().any(|a| a == "--bench") {
        &["postgresql", "sqlite"]
    } else {
        // Under `cargo test`, the store the suite runs on, as it is.
        &[""]
    };
    for &backend in backends {
        if !backend.is_empty() {
            ferretdb_on(backend);
        }
        let system = System::start(Runtime::Runner);
        let token = system.login();
        let mut empty = None;
        let mut stored = Vec::new();
        // Each stage: the store filled to a size, then everything deleted again (after a pause
        // in which the backend may reclaim the space: PostgreSQL's autovacuum runs every 10 s).
        let last = plan.store_sizes.last().copied().unwrap_or(0);
        let stages = plan
            .store_sizes
            .iter()
            .map(|&mb| (mb, format!("{mb} MB")))
            .chain([(0, format!("{last} MB, then deleted"))]);
        let mut filled = 0;
        for (mb, label) in stages {
            if mb >= filled {
                stored.extend(fill_store(mb - filled));
            } else {
                delete_all(std::mem::take(&mut stored));
                std::thread::sleep(plan.reclaim_pause);
            }
            filled = mb;
            let mut conversions = Vec::new();
            let mut downloads = Vec::new();
            for _ in 0..3 {
                let reply = system.upload(&token, &clip);
                assert_eq!(reply.status, 202, "{}", reply.body);
                let job = system.poll_job(
                    &token,
                    &field_of(&reply.body, "job_id"),
                    Duration::from_secs(900),
                    Duration::from_millis(500),
                );
                assert_eq!(job["status"], "done", "{job}");
                let millis = |field: &str| job[field].as_i64().unwrap_or_default();
                conversions.push((millis("updated_at") - millis("created_at")) as f64 / 1000.0);
                let mp3_fid = job["mp3_fid"].as_str().unwrap_or_default().to_owned();
                let started = Instant::now();
                let download = system.download(&token, &mp3_fid);
                assert_eq!(download.status, 200);
                downloads.push(started.elapsed().as_secs_f64());
                delete_file(mp3_model::MP3S_DB, &mp3_fid);
                delete_file(
                    mp3_model::VIDEOS_DB,
                    job["video_fid"].as_str().unwrap_or_default(),
                );
            }
            let (conversion, download) = (median(conversions), median(downloads));
            let (c0, d0) = *empty.get_or_insert((conversion, download));
            println!(
                "| {} | {label} | {conversion:.2} s | {download:.3} s | {:.1}×, {:.1}× |",
                if backend.is_empty() {
                    "as running"
                } else {
                    backend
                },
                conversion / c0,
                download / d0
            );
        }
        drop(system);
    }
    if backends.len() > 1 {
        ferretdb_on("postgresql");
    }
}

fn throughput(plan: &Plan, dir: &Path) {
    let (seconds, count) = plan.batch;
    let clip = dir.join("batch-clip.mp4");
    make_video(&clip, seconds, "640x360");
    let parallel = 2usize;
    // Plain ffmpeg, two at a time (the converter's default concurrency on two cores).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= count {
                    return;
                }
                let out = dir.join(format!("batch-{n}.mp3"));
                let status = Command::new("ffmpeg")
                    .args(["-loglevel", "error", "-y", "-i"])
                    .arg(&clip)
                    .args(mp3_args_to(&out, &Encoding::default()))
                    .status()
                    .expect("running ffmpeg");
                assert!(status.success());
                let _ = std::fs::remove_file(out);
            });
        }
    });
    let plain = started.elapsed().as_secs_f64();

    // The pipeline: every clip uploaded first, then one converter (concurrency 2) drains them.
    let mut system = System::without_workers(Runtime::Runner);
    let token = system.login();
    let jobs: Vec<String> = (0..count)
        .map(|_| {
            let reply = system.upload(&token, &clip);
            assert_eq!(reply.status, 202, "{}", reply.body);
            field_of(&reply.body, "job_id")
        })
        .collect();
    // From the converter's start to the last job's `updated_at` (the converter's clock, the
    // same machine's).
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let cpu_before = cpu_by_process();
    system.converter = Some(system.start_converter());
    let mut last_ms = start_ms;
    for job_id in &jobs {
        let job = system.poll_job(
            &token,
            job_id,
            Duration::from_secs(1800),
            Duration::from_millis(500),
        );
        assert_eq!(job["status"], "done", "{job}");
        last_ms = last_ms.max(job["updated_at"].as_i64().unwrap_or_default());
    }
    let pipeline = (last_ms - start_ms) as f64 / 1000.0;
    let cpu = cpu_since(&cpu_before);
    println!("\n### Sustained throughput: {count} clips of {seconds} s, 640x360, two at a time\n");
    println!(
        "| plain ffmpeg | pipeline (one converter, CONCURRENCY=2) | throughput ratio | target |"
    );
    println!("|---:|---:|---:|---:|");
    println!(
        "| {:.1} jobs/min | {:.1} jobs/min | {:.2} | ≥ 0.9 |",
        count as f64 * 60.0 / plain,
        count as f64 * 60.0 / pipeline,
        plain / pipeline
    );
    // Where the CPU went while the converter drained the queue (until the last job was done).
    println!("\n| process | CPU-seconds while the pipeline ran ({pipeline:.1} s) |");
    println!("|---|---:|");
    for name in [
        "converter",
        "ffmpeg",
        "postgres",
        "ferretdb",
        "beam.smp",
        "spin-runner",
    ] {
        let used = cpu.get(name).copied().unwrap_or_default();
        let name = if name == "converter" {
            "converter (with the ffmpeg processes it ended)"
        } else {
            name
        };
        println!("| {name} | {used:.1} |");
    }
}

/// Each process's CPU time (user and system, its own and its waited-for children's), in clock
/// ticks, by `pid:start time`, with its name.
fn cpu_by_process() -> std::collections::HashMap<String, (String, u64)> {
    let mut found = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let key = format!("{}:{}", &stat[..open].trim(), tick(19));
        found.insert(
            key,
            (
                stat[open + 1..close].to_owned(),
                tick(11) + tick(12) + tick(13) + tick(14),
            ),
        );
    }
    found
}

/// CPU-seconds used by name since `before` (processes that ended count through the parent that
/// waited for them: ffmpeg through the converter, PostgreSQL's backends through the server).
fn cpu_since(
    before: &std::collections::HashMap<String, (String, u64)>,
) -> std::collections::HashMap<String, f64> {
    // Linux's USER_HZ.
    const TICKS: f64 = 100.0;
    let mut used = std::collections::HashMap::new();
    for (key, (name, ticks)) in cpu_by_process() {
        let earlier = before.get(&key).map_or(0, |(_, t)| *t);
        *used.entry(name).or_insert(0.0) += ticks.saturating_sub(earlier) as f64 / TICKS;
    }
    used
}

/// Real video of about `size` bytes that does not compress: uncompressed pictures and sound in
/// Matroska, `seconds` long. The duration.
fn raw_video(path: &Path, size: u64) -> f64 {
    let (picture, frame) = if size > 1000 * MB {
        ("1280x720", 1280 * 720 * 3 / 2)
    } else {
        ("320x240", 320 * 240 * 3 / 2)
    };
    let per_second = frame * 25 + 48_000 * 2 * 2;
    let seconds = (size / per_second).max(1);
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={picture}:rate=25"))
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "pcm_s16le", "-ac", "2", "-f", "matroska"])
        .arg(path)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "ffmpeg could not make {}", path.display());
    seconds as f64
}

/// Whether GridFS file `fid` in `videos` holds exactly the bytes of `path`: its length, and
/// each chunk against the file at its place, read in storage order as the converter reads (a
/// sorted query would make FerretDB sort gigabytes before answering).
fn stored_as(fid: &str, path: &Path) -> bool {
    let url = service_env("MONGODB_URL");
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut client =
        mongo_wire::connect(&format!("{url}{sep}socketTimeoutMS=3600000")).expect("MongoDB");
    let id = ObjectId::parse_str(fid).expect("an ObjectId");
    let info = Bucket::new(mp3_model::VIDEOS_DB)
        .file_info(&mut client, id)
        .expect("the stored video's files document");
    let mut original = File::open(path).unwrap();
    if info.length != original.metadata().unwrap().len() {
        return false;
    }
    let chunk = u64::from(info.chunk_size);
    let mut seen = vec![false; info.length.div_ceil(chunk) as usize];
    let options = mongo_wire::FindOptions {
        batch_size: Some(4),
        ..mongo_wire::FindOptions::default()
    };
    let cursor = client
        .find(
            mp3_model::VIDEOS_DB,
            "fs.chunks",
            mongo_wire::bson::doc! {"files_id": id},
            options,
        )
        .expect("reading the chunks");
    for doc in cursor {
        let doc = doc.expect("a chunk");
        let n = match doc.get("n") {
            Some(mongo_wire::bson::Bson::Int32(n)) => *n as u64,
            Some(mongo_wire::bson::Bson::Int64(n)) => *n as u64,
            _ => return false,
        };
        let Ok(data) = doc.get_binary_generic("data") else {
            return false;
        };
        if n as usize >= seen.len() || seen[n as usize] {
            return false;
        }
        seen[n as usize] = true;
        match tus::read_at(&mut original, n * chunk, chunk as usize) {
            Ok(bytes) if bytes == *data => {}
            _ => return false,
        }
    }
    seen.iter().all(|&s| s)
}

/// 7. The large resumable upload, broken off once at a random offset.
fn large_upload(plan: &Plan, dir: &Path) {
    let size = plan.large_upload;
    let video = dir.join("large.mkv");
    let seconds = raw_video(&video, size);
    let size = std::fs::metadata(&video).unwrap().len();
    let piece: usize = 8 << 20;
    println!("\n### A large resumable upload, broken off and resumed\n");
    println!(
        "| file | runtime | upload | MB/s | broken off at | resumed from | serving process: \
         resident before, peak after 10%, peak at the end | stored bytes identical | \
         conversion | MP3 length |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---|---:|---:|");
    // Spin is what production runs: the full size runs there only (on the runner without one).
    let runtimes = runtimes();
    let runtimes = if size > 1000 * MB {
        &runtimes[runtimes.len() - 1..]
    } else {
        &runtimes[..]
    };
    for &runtime in runtimes {
        let mut system = System::without_workers(runtime);
        let token = system.login();
        let pid = system.app.server_pid();
        let before = memory_mib(pid, "VmRSS");
        reset_peak(pid);

        let started = Instant::now();
        let upload = tus::Upload::create(system.app.base(), &token, size, "large.mkv")
            .expect("creating the upload");
        // A piece broken off somewhere between 10% and 90%, at a byte chosen by the clock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        let break_at = size / 10 + nanos % (size * 8 / 10);
        let piece_start = break_at - break_at % piece as u64;
        let mut peak_early = None;
        let mut note = |offset: u64| {
            if peak_early.is_none() && offset >= size / 10 {
                peak_early = Some(memory_mib(pid, "VmHWM"));
            }
        };
        let mut source = File::open(&video).unwrap();
        let mut offset = 0;
        while offset < piece_start {
            let bytes = tus::read_at(&mut source, offset, piece).unwrap();
            offset = upload.patch(offset, bytes).expect("a piece");
            note(offset);
        }
        let bytes = tus::read_at(&mut source, piece_start, piece).unwrap();
        let sent = (break_at - piece_start) as usize;
        upload.break_off(piece_start, &bytes[..sent], bytes.len() as u64);
        // Until the server notices the broken PATCH, it holds the upload (423, which may come
        // before the body is sent: a broken pipe here) and may still save what it read (409 for
        // an older offset); its lease lapses after 30 s at most. Ask again, as the clients do.
        let deadline = Instant::now() + Duration::from_secs(60);
        let resumed = loop {
            let resumed = upload.offset().expect("the upload's offset");
            match upload.send_file(&video, resumed, piece, &mut note) {
                Ok(reached) => {
                    assert_eq!(reached, size);
                    break resumed;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                Err(e) => panic!("resuming: {e}\n{}", system.app.log()),
            }
        };
        assert!(resumed <= break_at, "{resumed} > {break_at}");
        let upload_secs = started.elapsed().as_secs_f64();
        let peak_end = memory_mib(pid, "VmHWM");
        let identical = stored_as(&video_of_job(&system, upload.id()), &video);

        system.converter = Some(system.start_converter());
        let started = Instant::now();
        let job = system.poll_job(
            &token,
            upload.id(),
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        let convert_secs = started.elapsed().as_secs_f64();
        assert_eq!(job["status"], "done", "{job}");
        let mp3 = dir.join("large.mp3");
        let download = system.download(&token, job["mp3_fid"].as_str().expect("mp3_fid"));
        assert_eq!(download.status, 200);
        std::fs::write(&mp3, &download.body).unwrap();
        let (mp3_seconds, _) = probe(&mp3);
        println!(
            "| {:.1} GB | {} | {upload_secs:.0} s | {:.1} | {break_at} | {resumed} | {before:.0} MiB, \
             {:.0} MiB, {peak_end:.0} MiB | {} | {convert_secs:.0} s | {mp3_seconds:.1} s of {seconds:.0} s |",
            size as f64 / 1e9,
            runtime.name(),
            size as f64 / MB as f64 / upload_secs,
            peak_early.unwrap_or(peak_end),
            if identical { "yes" } else { "**no**" },
        );
        assert!(identical, "the stored video differs from the file sent");
        assert!(
            (mp3_seconds - seconds).abs() < 1.0,
            "{mp3_seconds} s of {seconds} s"
        );
        let deleted = send(
            "DELETE",
            &system.app.url(&format!("/jobs/{}", upload.id())),
            &[("Authorization", &format!("Bearer {token}"))],
            None,
        );
        assert_eq!(deleted.status, 204, "{}", deleted.body);
    }
    std::fs::remove_file(&video).expect("removing the video");
}

fn main() {
    let plan = plan();
    let dir = TempDir::new("bench-pipeline");
    // BENCH_ONLY=uploads|conversion|end-to-end|jobs|store|throughput|large runs one part.
    let only = std::env::var("BENCH_ONLY").ok();
    let run = |part: &str| only.as_deref().is_none_or(|only| only == part);
    if run("uploads") {
        uploads(&plan, dir.path());
    }
    if run("conversion") {
        conversion(&plan, dir.path());
    }
    if run("end-to-end") {
        end_to_end(&plan, dir.path());
    }
    if run("jobs") {
        jobs_with_and_without_login(&plan, dir.path());
    }
    if run("store") {
        growing_store(&plan, dir.path());
    }
    if run("throughput") {
        throughput(&plan, dir.path());
    }
    if run("large") {
        large_upload(&plan, dir.path());
    }
}
