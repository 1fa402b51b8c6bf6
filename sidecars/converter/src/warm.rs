//! ffmpeg processes started ahead of the jobs that will use them.
//!
//! Starting ffmpeg (the process, its libraries, its codecs) takes about 80 ms of CPU, a fifth
//! of converting a one-minute clip. A job with the default encoding takes a waiting ffmpeg of
//! the kind its video needs (see [`Source`]); a new one is started once the job is over, off
//! every job's critical path. A job with options of its own starts its own.

use std::path::PathBuf;
use std::sync::Mutex;

use mp3_model::options::Encoding;

use crate::convert::{Encoder, Source};

pub struct WarmEncoders {
    ffmpeg: PathBuf,
    /// How many ffmpeg processes of each [`Source`] wait at most.
    capacity: usize,
    idle: Mutex<Vec<Encoder>>,
}

impl WarmEncoders {
    /// Keeps up to `capacity` ffmpeg processes of each [`Source`] (0: none) started by
    /// [`WarmEncoders::refill`].
    pub fn new(ffmpeg: PathBuf, capacity: usize) -> Self {
        Self {
            ffmpeg,
            capacity,
            idle: Mutex::new(Vec::with_capacity(capacity * Source::ALL.len())),
        }
    }

    /// An ffmpeg reading `source` and encoding as `encoding` says: a waiting one if there is one
    /// still running, else a new one. Needs the Tokio runtime.
    pub fn take(&self, source: Source, encoding: &Encoding) -> anyhow::Result<Encoder> {
        if *encoding != Encoding::default() {
            return Encoder::start(&self.ffmpeg, source, encoding);
        }
        loop {
            let waiting = {
                let mut idle = self.lock();
                idle.iter()
                    .position(|encoder| encoder.source() == source)
                    .map(|at| idle.swap_remove(at))
            };
            let Some(mut encoder) = waiting else {
                return Encoder::start(&self.ffmpeg, source, encoding);
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
        for source in Source::ALL {
            while self.waiting(source) < self.capacity {
                // Started outside the lock: spawning a process takes a moment.
                let encoder = match Encoder::start(&self.ffmpeg, source, &Encoding::default()) {
                    Ok(encoder) => encoder,
                    Err(error) => {
                        // A job starts its own, and reports the error if it fails again.
                        tracing::warn!(error = format!("{error:#}"), "starting a waiting ffmpeg");
                        return;
                    }
                };
                let mut idle = self.lock();
                // A concurrent refill may have filled the list meanwhile: then this one is
                // dropped, which stops it.
                if waiting(&idle, source) < self.capacity {
                    idle.push(encoder);
                }
            }
        }
    }

    /// ffmpeg processes reading `source` waiting for a job.
    pub fn waiting(&self, source: Source) -> usize {
        waiting(&self.lock(), source)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Encoder>> {
        // A panic while holding the lock leaves the list itself intact.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn waiting(idle: &[Encoder], source: Source) -> usize {
    idle.iter().filter(|e| e.source() == source).count()
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Two seconds of a tone over a test pattern, as Matroska.
    fn video() -> Vec<u8> {
        let output = Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=64x48:rate=5:duration=2",
            ])
            .args([
                "-f",
                "lavfi",
                "-i",
                "sine=duration=2",
                "-shortest",
                "-f",
                "matroska",
                "-",
            ])
            .output()
            .expect("ffmpeg runs");
        assert!(output.status.success(), "generating the video");
        output.stdout
    }

    async fn mp3_from(encoder: Encoder) -> Vec<u8> {
        let mut mp3 = futures_util::io::Cursor::new(Vec::new());
        let converted = encoder
            .encode(futures_util::io::Cursor::new(video()), &mut mp3)
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

    #[tokio::test]
    async fn jobs_take_the_waiting_ffmpeg_and_refill_replaces_it() {
        let encoders = WarmEncoders::new("ffmpeg".into(), 1);
        assert_eq!(encoders.waiting(Source::Stdin), 0);
        encoders.refill();
        assert_eq!(encoders.waiting(Source::Stdin), 1);
        assert_eq!(encoders.waiting(Source::SeekableStdin), 1);
        let waiting_pid = encoders.lock()[0].pid();

        let mut encoder = encoders.take(Source::Stdin, &Encoding::default()).unwrap();
        assert_eq!(encoder.source(), Source::Stdin);
        assert_eq!(encoder.pid(), waiting_pid, "not the waiting process");
        assert_eq!(encoders.waiting(Source::Stdin), 0);
        assert_eq!(encoders.waiting(Source::SeekableStdin), 1);
        assert!(is_mp3(&mp3_from(encoder).await));

        let encoder = encoders
            .take(Source::SeekableStdin, &Encoding::default())
            .unwrap();
        assert_eq!(encoder.source(), Source::SeekableStdin);
        assert!(is_mp3(&mp3_from(encoder).await));

        encoders.refill();
        assert_eq!(encoders.waiting(Source::Stdin), 1);
        assert_eq!(encoders.waiting(Source::SeekableStdin), 1);
        encoders.refill();
        assert_eq!(encoders.lock().len(), 2, "refilled past the capacity");
    }

    #[tokio::test]
    async fn options_start_their_own_ffmpeg_and_a_trim_past_the_end_encodes_nothing() {
        use mp3_model::options::{Millis, Rate};
        let encoders = WarmEncoders::new("ffmpeg".into(), 1);
        encoders.refill();
        let vbr = Encoding {
            rate: Rate::Variable { quality: 4 },
            start: Some(Millis(500)),
            end: Some(Millis(1500)),
            ..Encoding::default()
        };
        let encoder = encoders.take(Source::Stdin, &vbr).unwrap();
        assert_eq!(encoder.encoding(), &vbr);
        assert_eq!(
            encoders.waiting(Source::Stdin),
            1,
            "the waiting one is for defaults"
        );
        let mp3 = mp3_from(encoder).await;
        // Written to a file, so with its info header, at the start.
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
            .encode(futures_util::io::Cursor::new(video()), &mut out)
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
        assert!(is_mp3(&mp3_from(encoder).await));
    }

    #[tokio::test]
    async fn without_capacity_each_job_starts_its_own() {
        let encoders = WarmEncoders::new("ffmpeg".into(), 0);
        encoders.refill();
        assert_eq!(encoders.lock().len(), 0);
        assert!(is_mp3(
            &mp3_from(encoders.take(Source::Stdin, &Encoding::default()).unwrap()).await
        ));
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
