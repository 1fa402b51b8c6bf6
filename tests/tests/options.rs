//! Conversion options end to end: each option, given as a form field of `POST /upload` or as
//! tus metadata, reaches the MP3, as ffprobe reads it (bitrate or VBR, sample rate, channels,
//! the duration after trimming, the ID3 tags); a refused option stores nothing. Real services,
//! real ffmpeg, on the runner and on Spin.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mongo_wire::bson::doc;
use system_tests::system::System;
use system_tests::tus::Upload;
use system_tests::{on_each_runtime, service_env, Runtime, TempDir};

on_each_runtime!(
    each_option_reaches_the_mp3,
    a_refused_option_is_400_and_stores_nothing,
);

/// Six seconds of stereo audio, 44.1 kHz: a tone for three seconds and noise for three on the
/// left (so a variable bitrate varies), another tone on the right; over a small picture.
fn make_source(path: &Path) {
    let audio = "aevalsrc=0.4*sin(2*PI*440*t)*lt(t\\,3)+0.4*(random(0)-0.5)*gte(t\\,3)\
                 |0.4*sin(2*PI*660*t):d=6:s=44100";
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi"])
        .args([
            "-i",
            "testsrc=size=160x120:rate=10:duration=6",
            "-f",
            "lavfi",
        ])
        .args([
            "-i",
            audio,
            "-shortest",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        .args(["-c:a", "aac", "-b:a", "192k"])
        .arg(path)
        .status()
        .expect("running ffmpeg");
    assert!(status.success(), "making the source video");
}

/// What ffprobe reads of an MP3, and its duration counted in decoded samples (which, unlike
/// ffprobe's estimate, honours the encoder delay and padding the info header records).
#[derive(Debug)]
struct Probed {
    sample_rate: u32,
    channels: u32,
    /// The stream's bitrate as ffprobe states it (bits/s).
    bit_rate: u64,
    /// How many different frame sizes there are: 1 or 2 (padding) for a constant bitrate.
    frame_sizes: usize,
    /// Whether the first frame is an info header (`Xing` for VBR, `Info` for CBR).
    info_header: bool,
    seconds: f64,
    tags: serde_json::Value,
}

fn probe_mp3(mp3: &[u8], dir: &Path, name: &str) -> Probed {
    let path = dir.join(name);
    std::fs::write(&path, mp3).expect("saving the MP3");
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-of",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .args(["-show_entries", "packet=size"])
        .arg(&path)
        .output()
        .expect("running ffprobe");
    assert!(out.status.success(), "ffprobe {name}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe's JSON");
    let stream = &json["streams"][0];
    assert_eq!(stream["codec_name"], "mp3", "{name}: {stream}");
    let number = |v: &serde_json::Value| -> u64 {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v.as_u64())
            .unwrap_or(0)
    };
    let mut sizes: Vec<u64> = json["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| number(&p["size"]))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let sample_rate = number(&stream["sample_rate"]) as u32;
    // Decoded to 16-bit mono at the MP3's rate: two bytes a sample.
    let pcm = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "s16le", "-ac", "1", "-"])
        .output()
        .expect("decoding the MP3");
    assert!(pcm.status.success(), "decoding {name}");
    let audio = &mp3[id3_len(mp3)..];
    Probed {
        sample_rate,
        channels: stream["channels"].as_u64().unwrap_or(0) as u32,
        bit_rate: number(&stream["bit_rate"]),
        frame_sizes: sizes.len(),
        info_header: audio.len() > 64
            && audio[..64].windows(4).any(|w| w == b"Xing" || w == b"Info"),
        seconds: pcm.stdout.len() as f64 / 2.0 / f64::from(sample_rate),
        tags: json["format"]["tags"].clone(),
    }
}

/// The size of the ID3v2 tag an MP3 starts with (0 without one).
fn id3_len(mp3: &[u8]) -> usize {
    if mp3.len() < 10 || &mp3[..3] != b"ID3" {
        return 0;
    }
    let size = mp3[6..10]
        .iter()
        .fold(0usize, |n, b| (n << 7) | usize::from(b & 0x7f));
    10 + size
}

fn each_option_reaches_the_mp3(runtime: Runtime) {
    let system = System::start(runtime);
    let dir = TempDir::new("options");
    let source = dir.path().join("concert.mp4");
    make_source(&source);
    let token = system.login();

    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("default", vec![]),
        ("cbr", vec![("bitrate", "64")]),
        ("vbr", vec![("quality", "2")]),
        ("rate", vec![("sample_rate", "22050"), ("channels", "1")]),
        ("trim", vec![("start", "1.5"), ("end", "4")]),
        ("duration", vec![("start", "2"), ("duration", "1.25")]),
        (
            "tags",
            vec![
                ("title", "Live at Home"),
                ("artist", "Ünïcode Band"),
                ("album", "Tests"),
            ],
        ),
        ("voice", vec![("preset", "voice")]),
        ("high", vec![("preset", "high"), ("end", "3")]),
        ("past", vec![("start", "100")]),
    ];
    let mut jobs = Vec::new();
    for (name, fields) in &cases {
        let reply = system.upload_with(&token, &source, fields);
        assert_eq!(reply.status, 202, "{name}: {}", reply.body);
        let json: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
        jobs.push(json["job_id"].as_str().expect("job_id").to_owned());
    }
    // The same options as tus metadata.
    let bytes = std::fs::read(&source).expect("reading the source");
    let upload = Upload::create_with(
        system.app.base(),
        &token,
        bytes.len() as u64,
        "concert.mp4",
        &[
            ("preset", "voice"),
            ("start", "1"),
            ("duration", "2"),
            ("title", "Resumed"),
        ],
    )
    .expect("creating the upload");
    upload.patch(0, bytes).expect("sending the video");
    let tus_job = upload.id().to_owned();

    let mut probed = std::collections::HashMap::new();
    for ((name, _), job_id) in cases
        .iter()
        .zip(&jobs)
        .chain([(&("tus", vec![]), &tus_job)])
    {
        let job = system.poll_job(
            &token,
            job_id,
            Duration::from_secs(120),
            Duration::from_millis(100),
        );
        if *name == "past" {
            assert_eq!(job["status"], "failed", "{name}: {job}");
            let error = job["error"].as_str().unwrap_or_default();
            assert!(error.contains("start is past its end"), "{error}");
            continue;
        }
        assert_eq!(job["status"], "done", "{name}: {job}");
        let mp3 = system.download(&token, job["mp3_fid"].as_str().expect("mp3_fid"));
        assert_eq!(mp3.status, 200, "{name}");
        probed.insert(
            *name,
            (
                job,
                probe_mp3(&mp3.body, dir.path(), &format!("{name}.mp3")),
            ),
        );
    }
    let close = |seconds: f64, expected: f64| (seconds - expected).abs() <= 0.05;

    let (job, default) = &probed["default"];
    assert_eq!(job["options"]["title"], "concert", "{job}");
    assert_eq!(job["options"]["bitrate"], 192, "{job}");
    assert_eq!(
        (default.bit_rate, default.frame_sizes <= 2),
        (192_000, true),
        "{default:?}"
    );
    assert_eq!(
        (default.sample_rate, default.channels),
        (44100, 2),
        "{default:?}"
    );
    assert!(!default.info_header, "a whole CBR file streams without one");
    assert_eq!(default.tags["title"], "concert", "{default:?}");
    assert!(default.seconds > 5.9, "{default:?}");

    let (job, cbr) = &probed["cbr"];
    assert_eq!(job["options"]["bitrate"], 64, "{job}");
    assert_eq!(
        (cbr.bit_rate, cbr.frame_sizes <= 2),
        (64_000, true),
        "{cbr:?}"
    );

    let (job, vbr) = &probed["vbr"];
    assert_eq!(job["options"]["quality"], 2, "{job}");
    assert!(job["options"].get("bitrate").is_none(), "{job}");
    assert!(vbr.frame_sizes > 3 && vbr.info_header, "{vbr:?}");
    assert!(
        close(vbr.seconds, default.seconds),
        "{vbr:?} against {default:?}"
    );

    let (_, rate) = &probed["rate"];
    assert_eq!((rate.sample_rate, rate.channels), (22050, 1), "{rate:?}");
    // 192 kb/s does not exist at 22.05 kHz: the default becomes the best that does.
    assert_eq!(rate.bit_rate, 160_000, "{rate:?}");

    let (job, trim) = &probed["trim"];
    assert_eq!(
        (
            job["options"]["start"].as_f64(),
            job["options"]["end"].as_f64()
        ),
        (Some(1.5), Some(4.0))
    );
    assert!(close(trim.seconds, 2.5) && trim.info_header, "{trim:?}");
    let (job, duration) = &probed["duration"];
    assert_eq!(job["options"]["end"].as_f64(), Some(3.25), "{job}");
    assert!(close(duration.seconds, 1.25), "{duration:?}");

    let (_, tags) = &probed["tags"];
    assert_eq!(
        (
            &tags.tags["title"],
            &tags.tags["artist"],
            &tags.tags["album"]
        ),
        (
            &"Live at Home".into(),
            &"Ünïcode Band".into(),
            &"Tests".into()
        ),
        "{tags:?}"
    );

    let (job, voice) = &probed["voice"];
    assert_eq!(job["options"]["preset"], "voice", "{job}");
    assert_eq!((voice.bit_rate, voice.channels), (64_000, 1), "{voice:?}");
    let (_, high) = &probed["high"];
    assert!(high.frame_sizes > 3 && close(high.seconds, 3.0), "{high:?}");

    let (job, resumed) = &probed["tus"];
    assert_eq!(job["options"]["preset"], "voice", "{job}");
    assert_eq!(
        (resumed.bit_rate, resumed.channels),
        (64_000, 1),
        "{resumed:?}"
    );
    assert!(close(resumed.seconds, 2.0), "{resumed:?}");
    assert_eq!(resumed.tags["title"], "Resumed", "{resumed:?}");
}

fn a_refused_option_is_400_and_stores_nothing(runtime: Runtime) {
    let system = System::start(runtime);
    let dir = TempDir::new("bad-options");
    let source = dir.path().join("refused.mp4");
    make_source(&source);
    let token = system.login();
    for (fields, reason) in [
        (vec![("bitrate", "100")], "bitrate: one of 32, 40"),
        (
            vec![("bitrate", "128"), ("quality", "2")],
            "bitrate: give bitrate",
        ),
        (vec![("quality", "10")], "quality: 0 (best) to 9"),
        (vec![("sample_rate", "44000")], "sample_rate: one of 8000"),
        (vec![("channels", "6")], "channels: 1 (mono) or 2"),
        (vec![("start", "-1")], "start: seconds"),
        (vec![("start", "3"), ("end", "2")], "end: after start (3 s)"),
        (
            vec![("end", "2"), ("duration", "1")],
            "end: give end or duration",
        ),
        (
            vec![("preset", "loud")],
            "preset: one of voice, standard, high",
        ),
        (vec![("colour", "red")], "colour: not an option"),
    ] {
        let reply = system.upload_with(&token, &source, &fields);
        assert_eq!(reply.status, 400, "{fields:?}: {}", reply.body);
        assert!(reply.body.starts_with(reason), "{fields:?}: {}", reply.body);
    }
    let title = "x".repeat(300);
    let reply = system.upload_with(&token, &source, &[("title", &title)]);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "title: at most 255 characters")
    );
    // The same rules for tus metadata, at creation: nothing is created.
    let error = Upload::create_with(
        system.app.base(),
        &token,
        1000,
        "a.mp4",
        &[("channels", "3")],
    )
    .err()
    .expect("refused");
    assert!(
        error.contains("400") && error.contains("channels: 1 (mono) or 2"),
        "{error}"
    );

    let mut mongo = mongo_wire::connect(&service_env("MONGODB_URL")).expect("MongoDB");
    let stored = |mongo: &mut mongo_wire::Client<_>, collection: &str, filter| {
        mongo
            .find(mp3_model::VIDEOS_DB, collection, filter, Default::default())
            .expect("querying")
            .count()
    };
    assert_eq!(
        stored(
            &mut mongo,
            mp3_model::JOBS_COLLECTION,
            doc! {"owner": &system.email}
        ),
        0
    );
    assert_eq!(
        stored(&mut mongo, "fs.files", doc! {"filename": "refused.mp4"}),
        0
    );
    assert_eq!(
        stored(
            &mut mongo,
            mp3_model::UPLOADS_COLLECTION,
            doc! {"owner": &system.email}
        ),
        0
    );
}
