//! ffmpeg processes started ahead of the jobs that will use them.
//!
//! Starting ffmpeg (the process, its libraries, its codecs) takes about 80 ms of CPU, a fifth
//! of converting a one-minute clip. Processes wait for each [`Source`] and each of the
//! [`Shape::warm`] shapes: the default encoding (as many as the capacity), and one each for the
//! default bitrate with an info header, which serves every trim (a process is given its job's
//! trim with the video), and for each preset. A job takes a waiting ffmpeg of the kind it
//! needs; a new one is started once the job is over, off every job's critical path. A job of
//! any other shape (a bitrate, quality, sample rate or channels of its own) starts its own.

use std::path::PathBuf;
use std::sync::Mutex;

use mp3_model::options::Encoding;

use crate::convert::{Encoder, Shape, Source};

pub struct WarmEncoders {
    ffmpeg: PathBuf,
    /// How many ffmpeg processes of each [`Source`] wait at most for the default encoding (for
    /// the other warm shapes, one).
    capacity: usize,
    /// [`Shape::warm`], once.
    shapes: Vec<Shape>,
    idle: Mutex<Vec<Encoder>>,
}

impl WarmEncoders {
    /// Keeps up to `capacity` ffmpeg processes of each [`Source`] for the default encoding and
    /// one for each other warm [`Shape`] (0: none), started by [`WarmEncoders::refill`].
    pub fn new(ffmpeg: PathBuf, capacity: usize) -> Self {
        Self {
            ffmpeg,
            capacity,
            shapes: Shape::warm(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// How many processes of `shape` wait at most for each [`Source`].
    fn capacity_of(&self, shape: &Shape) -> usize {
        if shape.is_default() {
            self.capacity
        } else {
            self.capacity.min(1)
        }
    }

    /// An ffmpeg reading `source`, able to encode as `encoding` says: a waiting one if there is
    /// one still running, else a new one. Needs the Tokio runtime.
    pub fn take(&self, source: Source, encoding: &Encoding) -> anyhow::Result<Encoder> {
        let shape = Shape::of(encoding);
        loop {
            let waiting = {
                let mut idle = self.lock();
                idle.iter()
                    .position(|encoder| encoder.source() == source && *encoder.shape() == shape)
                    .map(|at| idle.swap_remove(at))
            };
            let Some(mut encoder) = waiting else {
                return Encoder::start(&self.ffmpeg, source, &shape);
            };
            // One that exited meanwhile (killed by an operator, say) is dropped.
            if !encoder.has_exited() {
                tracing::debug!(pid = encoder.pid(), ?source, "took a waiting ffmpeg");
                return Ok(encoder);
            }
            tracing::warn!(?source, "a waiting ffmpeg had exited; taking another");
        }
    }

    /// Starts ffmpeg processes until `capacity` of each kind wait. Needs the Tokio runtime.
    pub fn refill(&self) {
        for (source, shape) in self.kinds() {
            let capacity = self.capacity_of(&shape);
            while self.waiting(source, &shape) < capacity {
                // Started outside the lock: spawning a process takes a moment.
                let encoder = match Encoder::start(&self.ffmpeg, source, &shape) {
                    Ok(encoder) => encoder,
                    Err(error) => {
                        // A job starts its own, and reports the error if it fails again. The
                        // other kinds may still start (a full /tmp fails only the file ones).
                        tracing::warn!(
                            error = format!("{error:#}"),
                            ?source,
                            ?shape,
                            "starting a waiting ffmpeg"
                        );
                        break;
                    }
                };
                let mut idle = self.lock();
                // A concurrent refill may have filled the list meanwhile: then this one is
                // dropped, which stops it.
                if waiting(&idle, source, &shape) < capacity {
                    idle.push(encoder);
                }
            }
        }
    }

    /// ffmpeg processes reading `source` for `shape` waiting for a job.
    pub fn waiting(&self, source: Source, shape: &Shape) -> usize {
        waiting(&self.lock(), source, shape)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Encoder>> {
        // A panic while holding the lock leaves the list itself intact.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn waiting(idle: &[Encoder], source: Source, shape: &Shape) -> usize {
    idle.iter()
        .filter(|e| e.source() == source && e.shape() == shape)
        .count()
}

impl WarmEncoders {
    /// The kinds of process kept waiting.
    fn kinds(&self) -> impl Iterator<Item = (Source, Shape)> + '_ {
        Source::ALL
            .into_iter()
            .flat_map(|source| self.shapes.iter().map(move |shape| (source, *shape)))
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Two seconds of a tone over a test pattern, as Matroska.
    fn video() -> Vec<u8> {
        video_with_audio_from(0.0)
    }

    /// A test pattern with a tone from `offset` seconds to its end, `2 + offset` seconds of
    /// tone, as Matroska.
    fn video_with_audio_from(offset: f64) -> Vec<u8> {
        let (video, audio) = (
            format!("testsrc=size=64x48:rate=5:duration={}", 2.0 + offset * 2.0),
            format!("sine=duration={}", 2.0 + offset),
        );
        let output = Command::new("ffmpeg")
            .args(["-v", "error", "-f", "lavfi", "-i", &video])
            .args([
                "-itsoffset",
                &offset.to_string(),
                "-f",
                "lavfi",
                "-i",
                &audio,
            ])
            .args(["-f", "matroska", "-"])
            .output()
            .expect("ffmpeg runs");
        assert!(output.status.success(), "generating the video");
        output.stdout
    }

    async fn mp3_from(encoder: Encoder, encoding: &Encoding) -> Vec<u8> {
        let mut mp3 = futures_util::io::Cursor::new(Vec::new());
        let converted = encoder
            .encode(encoding, futures_util::io::Cursor::new(video()), &mut mp3)
            .await
            .expect("the video converts");
        let mp3 = mp3.into_inner();
        assert_eq!(converted.bytes_out, mp3.len() as u64);
        mp3
    }

    fn is_mp3(bytes: &[u8]) -> bool {
        // An MPEG-1 Layer III frame header (no ID3 tag is written).
        bytes.len() > 4096 && bytes[0] == 0xFF && bytes[1] & 0xFE == 0xFA
    }

    fn default_shape() -> Shape {
        Shape::of(&Encoding::default())
    }

    #[tokio::test]
    async fn jobs_take_the_waiting_ffmpeg_and_refill_replaces_it() {
        let encoders = WarmEncoders::new("ffmpeg".into(), 1);
        let default = default_shape();
        assert_eq!(encoders.waiting(Source::Stdin, &default), 0);
        encoders.refill();
        for (source, shape) in encoders.kinds() {
            assert_eq!(encoders.waiting(source, &shape), 1, "{source:?} {shape:?}");
        }
        let waiting_pid = encoders.lock()[0].pid();

        let mut encoder = encoders.take(Source::Stdin, &Encoding::default()).unwrap();
        assert_eq!(encoder.source(), Source::Stdin);
        assert_eq!(encoder.pid(), waiting_pid, "not the waiting process");
        assert_eq!(encoders.waiting(Source::Stdin, &default), 0);
        assert_eq!(encoders.waiting(Source::SeekableStdin, &default), 1);
        let mp3 = mp3_from(encoder, &Encoding::default()).await;
        assert!(is_mp3(&mp3));
        assert!(
            !mp3[..200].windows(4).any(|w| w == b"Xing" || w == b"Info"),
            "a streamed MP3 has no info header"
        );

        let encoder = encoders
            .take(Source::SeekableStdin, &Encoding::default())
            .unwrap();
        assert_eq!(encoder.source(), Source::SeekableStdin);
        assert!(is_mp3(&mp3_from(encoder, &Encoding::default()).await));

        encoders.refill();
        for (source, shape) in encoders.kinds() {
            assert_eq!(encoders.waiting(source, &shape), 1, "{source:?} {shape:?}");
        }
        encoders.refill();
        assert_eq!(
            encoders.lock().len(),
            encoders.kinds().count(),
            "refilled past the capacity"
        );
    }

    /// Two trims of the same bitrate are served by waiting processes, each cut as its job asks.
    #[tokio::test]
    async fn a_waiting_ffmpeg_serves_any_trim_at_the_default_bitrate() {
        use mp3_model::options::Millis;
        let encoders = WarmEncoders::new("ffmpeg".into(), 1);
        encoders.refill();
        let trimmed = Shape::warm()[1];
        for (start, end) in [(Some(500), Some(1500)), (None, Some(700))] {
            let trim = Encoding {
                start: start.map(Millis),
                end: end.map(Millis),
                ..Encoding::default()
            };
            assert_eq!(Shape::of(&trim), trimmed);
            let waiting_pid = encoders
                .lock()
                .iter_mut()
                .find(|e| e.source() == Source::Stdin && *e.shape() == trimmed)
                .and_then(Encoder::pid);
            let mut encoder = encoders.take(Source::Stdin, &trim).unwrap();
            assert_eq!(encoder.pid(), waiting_pid, "not the waiting process");
            let mp3 = mp3_from(encoder, &trim).await;
            // Written to a file, so with its info header ("Info" at a constant bitrate).
            assert!(
                mp3[..200].windows(4).any(|w| w == b"Info"),
                "no info header"
            );
            let seconds = duration(&mp3);
            let asked = (end.unwrap_or(2000) - start.unwrap_or(0)) as f64 / 1000.0;
            assert!(
                (seconds - asked).abs() < 0.05,
                "{seconds} s, asked {asked} s"
            );
            encoders.refill();
        }
    }

    /// Each preset's jobs take a waiting process too.
    #[tokio::test]
    async fn a_preset_takes_a_waiting_ffmpeg() {
        use mp3_model::options::Options;
        let encoders = WarmEncoders::new("ffmpeg".into(), 2);
        encoders.refill();
        for preset in ["voice", "high"] {
            let encoding = Options::from_fields([("preset", preset)], "")
                .unwrap()
                .encoding();
            let shape = Shape::of(&encoding);
            assert_eq!(encoders.waiting(Source::Stdin, &shape), 1, "{preset}");
            let waiting_pid = encoders
                .lock()
                .iter_mut()
                .find(|e| e.source() == Source::Stdin && *e.shape() == shape)
                .and_then(Encoder::pid);
            let mut encoder = encoders.take(Source::Stdin, &encoding).unwrap();
            assert_eq!(
                encoder.pid(),
                waiting_pid,
                "{preset}: not the waiting process"
            );
            assert!(is_mp3(&mp3_from(encoder, &encoding).await), "{preset}");
        }
        assert_eq!(
            encoders.waiting(Source::Stdin, &Shape::of(&Encoding::default())),
            2,
            "the default's kinds keep the capacity"
        );
    }

    /// A trim cuts what ffmpeg's `-ss` and `-t` cut, also when the audio begins after the video
    /// (here half a second later: times count from the start of the file, so `end=1.5` keeps
    /// one second), and through the `cache:` reader.
    #[tokio::test]
    async fn a_trim_cuts_what_ffmpeg_cuts_when_the_audio_starts_late() {
        use mp3_model::options::Millis;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let video = dir.path().join("late.mkv");
        let bytes = video_with_audio_from(0.5);
        std::fs::write(&video, &bytes).expect("writing the video");
        let encoders = WarmEncoders::new("ffmpeg".into(), 0);
        for (start, end, asked) in [
            (None, 1500, 1.0),
            (Some(200), 1500, 1.0),
            (Some(1000), 2000, 1.0),
        ] {
            let trim = Encoding {
                start: start.map(Millis),
                end: Some(Millis(end)),
                ..Encoding::default()
            };
            let encoder = encoders.take(Source::SeekableStdin, &trim).unwrap();
            let mut mp3 = futures_util::io::Cursor::new(Vec::new());
            encoder
                .encode(
                    &trim,
                    futures_util::io::Cursor::new(bytes.clone()),
                    &mut mp3,
                )
                .await
                .expect("the video converts");
            let seconds = duration(&mp3.into_inner());

            // ffmpeg itself, with the times as output options.
            let plain = dir.path().join("plain.mp3");
            let mut times = Vec::new();
            if let Some(start) = start {
                times.extend(["-ss".to_owned(), Millis(start).to_string()]);
            }
            times.extend([
                "-t".to_owned(),
                Millis(end - start.unwrap_or(0)).to_string(),
            ]);
            let status = Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-i"])
                .arg(&video)
                .args(["-map", "0:a:0"])
                .args(&times)
                .args(["-c:a", "libmp3lame", "-write_xing", "1"])
                .arg(&plain)
                .status()
                .expect("ffmpeg runs");
            assert!(status.success());
            let by_ffmpeg = duration(&std::fs::read(&plain).expect("ffmpeg's MP3"));
            // The same part (ffmpeg's own cut may end up to a frame of its input later).
            assert!(
                (seconds - by_ffmpeg).abs() < 0.05,
                "{start:?}..{end}: {seconds} s, ffmpeg's {by_ffmpeg} s"
            );
            assert!(
                (seconds - asked).abs() < 0.01,
                "{seconds} s, {asked} s expected"
            );
        }
    }

    /// The MP3's duration in decoded samples (ffmpeg's decoder drops the encoder's delay and
    /// padding that the info header records).
    fn duration(mp3: &[u8]) -> f64 {
        // A file of its own: the tests run at once.
        let file = tempfile::Builder::new()
            .suffix(".mp3")
            .tempfile()
            .expect("a temporary file");
        std::fs::write(file.path(), mp3).expect("writing the MP3");
        let output = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(file.path())
            .args(["-f", "s16le", "-ac", "1", "-ar", "44100", "-"])
            .output()
            .expect("ffmpeg runs");
        assert!(
            output.status.success(),
            "decoding {} bytes: {}",
            mp3.len(),
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout.len() as f64 / 2.0 / 44100.0
    }

    #[tokio::test]
    async fn other_shapes_start_their_own_ffmpeg_and_a_trim_past_the_end_encodes_nothing() {
        use mp3_model::options::{Millis, Rate};
        let encoders = WarmEncoders::new("ffmpeg".into(), 1);
        encoders.refill();
        let vbr = Encoding {
            rate: Rate::Variable { quality: 4 },
            start: Some(Millis(500)),
            end: Some(Millis(1500)),
            ..Encoding::default()
        };
        let waiting = encoders.lock().len();
        let encoder = encoders.take(Source::Stdin, &vbr).unwrap();
        assert_eq!(encoder.shape(), &Shape::of(&vbr));
        assert_eq!(encoders.lock().len(), waiting, "a waiting one was taken");
        let mp3 = mp3_from(encoder, &vbr).await;
        assert!(
            mp3[..200].windows(4).any(|w| w == b"Xing"),
            "no Xing header"
        );

        let past = Encoding {
            start: Some(Millis(100_000)),
            ..Encoding::default()
        };
        let encoder = encoders.take(Source::Stdin, &past).unwrap();
        let mut out = futures_util::io::Cursor::new(Vec::new());
        let result = encoder
            .encode(&past, futures_util::io::Cursor::new(video()), &mut out)
            .await;
        assert!(
            matches!(
                result,
                Err(crate::convert::ConvertError::Empty { trimmed: true })
            ),
            "{:?}",
            result.err()
        );
    }

    /// An ffmpeg killed before it is given its job: the job fails as not the video's fault,
    /// with ffmpeg's end as the reason, not the filter pipe's broken write.
    #[tokio::test]
    async fn an_ffmpeg_killed_before_its_job_is_reported_as_killed() {
        let mut encoder =
            Encoder::start("ffmpeg".as_ref(), Source::Stdin, &default_shape()).unwrap();
        let pid = encoder.pid().expect("a running ffmpeg");
        let killed = Command::new("kill").args(["-9", &pid.to_string()]).status();
        assert!(killed.unwrap().success());
        while !encoder.has_exited() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut out = futures_util::io::Cursor::new(Vec::new());
        let result = encoder
            .encode(
                &Encoding::default(),
                futures_util::io::Cursor::new(video()),
                &mut out,
            )
            .await;
        match result {
            Err(crate::convert::ConvertError::Transient(error)) => {
                let error = format!("{error:#}");
                assert!(error.contains("ffmpeg was killed"), "{error}");
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[tokio::test]
    async fn an_encoder_refuses_an_encoding_of_another_shape() {
        let encoder = Encoder::start("ffmpeg".as_ref(), Source::Stdin, &default_shape()).unwrap();
        let voice = Encoding {
            channels: Some(1),
            ..Encoding::default()
        };
        let mut out = futures_util::io::Cursor::new(Vec::new());
        let result = encoder
            .encode(&voice, futures_util::io::Cursor::new(video()), &mut out)
            .await;
        assert!(
            matches!(result, Err(crate::convert::ConvertError::Transient(_))),
            "{:?}",
            result.err()
        );
        assert!(out.into_inner().is_empty());
    }

    #[tokio::test]
    async fn a_waiting_ffmpeg_that_died_is_replaced() {
        let encoders = WarmEncoders::new("ffmpeg".into(), 1);
        encoders.refill();
        let pid = encoders.lock()[0].pid().expect("a running ffmpeg");
        let killed = Command::new("kill").args(["-9", &pid.to_string()]).status();
        assert!(killed.unwrap().success());
        while !encoders.lock()[0].has_exited() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }

        let mut encoder = encoders.take(Source::Stdin, &Encoding::default()).unwrap();
        assert_ne!(encoder.pid(), Some(pid));
        assert!(is_mp3(&mp3_from(encoder, &Encoding::default()).await));
    }

    #[tokio::test]
    async fn without_capacity_each_job_starts_its_own() {
        let encoders = WarmEncoders::new("ffmpeg".into(), 0);
        encoders.refill();
        assert_eq!(encoders.lock().len(), 0);
        let encoder = encoders.take(Source::Stdin, &Encoding::default()).unwrap();
        assert!(is_mp3(&mp3_from(encoder, &Encoding::default()).await));
    }

    #[tokio::test]
    async fn a_missing_ffmpeg_fills_nothing_and_fails_the_take() {
        let encoders = WarmEncoders::new("/nonexistent/ffmpeg".into(), 2);
        encoders.refill();
        assert_eq!(encoders.lock().len(), 0);
        let error = encoders
            .take(Source::Stdin, &Encoding::default())
            .err()
            .expect("no ffmpeg to start");
        assert!(
            format!("{error:#}").contains("/nonexistent/ffmpeg"),
            "{error:#}"
        );
    }
}
