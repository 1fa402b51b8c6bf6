//! Running ffmpeg: video bytes in on stdin, MP3 bytes out on stdout, in bounded memory.

use std::collections::VecDeque;
use std::io::ErrorKind as IoErrorKind;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context as _;
use command_fds::{CommandFdExt as _, FdMapping};
use ffmpeg_sidecar::child::FfmpegChild;
use ffmpeg_sidecar::command::FfmpegCommand;
use ffmpeg_sidecar::event::{FfmpegEvent, LogLevel};
use futures_util::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use mp3_model::options::{Encoding, Millis, Options, Rate, PRESETS};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_util::compat::TokioAsyncReadCompatExt as _;

/// Bytes read at a time from GridFS and from ffmpeg.
pub(crate) const BUFFER: usize = 64 * 1024;
/// Buffers queued in each direction between GridFS and ffmpeg (2 MiB).
const READ_AHEAD: usize = 32;
/// ffmpeg error lines kept for the job's error message.
const ERROR_LINES: usize = 3;

/// What an ffmpeg process is started for: the job's encoding less its trim, which the process
/// is given with the video (as a filter, see [`Encoder::encode`]). So one process waiting ahead
/// of the jobs serves every trim of its bitrate, sample rate and channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The encoding, without `start` and `end`.
    encoding: Encoding,
    /// Whether the MP3 needs its info header ([`needs_info_header`]), so goes to a file.
    info_header: bool,
}

impl Shape {
    pub fn of(encoding: &Encoding) -> Self {
        Self {
            encoding: Encoding {
                start: None,
                end: None,
                ..*encoding
            },
            info_header: needs_info_header(encoding),
        }
    }

    /// The shapes processes are started for ahead of the jobs: the default encoding, the
    /// default encoding with its info header (every trim at the default bitrate), and each
    /// preset's.
    pub fn warm() -> Vec<Shape> {
        let trimmed = Encoding {
            start: Some(Millis(0)),
            ..Encoding::default()
        };
        let mut shapes = vec![Shape::of(&Encoding::default()), Shape::of(&trimmed)];
        for preset in PRESETS {
            let options = match Options::from_fields([("preset", preset.name)], "") {
                Ok(options) => options,
                Err(error) => {
                    tracing::warn!(preset = preset.name, %error, "no process waits for a preset");
                    continue;
                }
            };
            let shape = Shape::of(&options.encoding());
            if !shapes.contains(&shape) {
                shapes.push(shape);
            }
        }
        shapes
    }

    /// Whether this is the shape of the default encoding.
    pub fn is_default(&self) -> bool {
        *self == Shape::of(&Encoding::default())
    }
}

/// The filter that cuts the part of the audio `encoding` asks for, on decoded samples, as
/// ffmpeg 5.1 cuts for `-ss` and `-t` as output options (both times counted from the start of
/// the file, also when its audio begins later): exact to the sample.
pub fn trim_filter(encoding: &Encoding) -> String {
    match (encoding.start, encoding.end) {
        (None, None) => "anull".to_owned(),
        (Some(start), None) => format!("atrim=start={start}"),
        (None, Some(end)) => format!("atrim=end={end}"),
        // The gateway checked end > start; a message made elsewhere gets an empty part.
        (Some(start), Some(end)) => format!("atrim=start={start}:end={}", end.max(start)),
    }
}

/// The ffmpeg arguments after the input for one run: the first audio track of the video, cut
/// and encoded as `encoding` asks, without the source's tags (the converter writes its own), to
/// `output`. What [`Encoder`] runs, with its trim given inline.
pub fn output_args(encoding: &Encoding, output: &str) -> Vec<String> {
    shape_args(
        &Shape::of(encoding),
        ["-filter:a", &trim_filter(encoding)],
        output,
    )
}

/// The arguments for `shape`, with `filter` (the option and its value) giving the trim.
///
/// A constant-bitrate MP3 of the whole file is streamed to a pipe without an info (Xing/LAME)
/// header, which cannot be written there: players and ffprobe compute its exact duration from
/// its size. Where they cannot ([`needs_info_header`]) the output goes to a seekable file.
fn shape_args(shape: &Shape, filter: [&str; 2], output: &str) -> Vec<String> {
    let encoding = &shape.encoding;
    let mut args: Vec<String> = ["-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1"]
        .map(String::from)
        .to_vec();
    args.extend(filter.map(String::from));
    args.extend(["-c:a".into(), "libmp3lame".into()]);
    match encoding.rate {
        Rate::Constant { kbps } => args.extend(["-b:a".into(), format!("{kbps}k")]),
        Rate::Variable { quality } => args.extend(["-q:a".into(), quality.to_string()]),
    }
    if let Some(hz) = encoding.sample_rate {
        args.extend(["-ar".into(), hz.to_string()]);
    }
    if let Some(channels) = encoding.channels {
        args.extend(["-ac".into(), channels.to_string()]);
    }
    let xing = if shape.info_header {
        // Written to a temporary file first: bounded, so that no job fills the disk.
        args.extend(["-fs".into(), MAX_FILE_OUTPUT.to_string()]);
        "1"
    } else {
        "0"
    };
    args.extend(
        [
            "-write_xing",
            xing,
            "-id3v2_version",
            "0",
            "-f",
            "mp3",
            output,
        ]
        .map(String::from),
    );
    args
}

/// The largest MP3 written to a temporary file (VBR or trimmed): 2 GiB, 14 hours at 320 kb/s.
/// The converter's `/tmp` is sized for it (see the Kubernetes manifests).
pub const MAX_FILE_OUTPUT: u64 = 2 * 1024 * 1024 * 1024;

/// Whether the MP3 needs its info header: a variable bitrate (its duration cannot be told
/// from its size) or a trimmed part (the encoder's delay and padding, which the header
/// records, would otherwise add up to 50 ms).
pub fn needs_info_header(encoding: &Encoding) -> bool {
    matches!(encoding.rate, Rate::Variable { .. })
        || encoding.start.is_some()
        || encoding.end.is_some()
}

/// How ffmpeg reads the video from its stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Front to back.
    Stdin,
    /// Through ffmpeg's cache protocol, which keeps what it reads in a temporary file of its own
    /// (unlinked at once, so nothing outlives the process) and can seek back in it, reading ahead
    /// as far as a seek forward needs: for a video whose index comes after its media.
    SeekableStdin,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Stdin, Source::SeekableStdin];
}

/// Bytes moved by a successful conversion.
#[derive(Debug, Clone, Copy, Default)]
pub struct Converted {
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// ffmpeg rejected the input (not a video, no audio track, corrupt): the same input will
    /// fail again.
    #[error("ffmpeg could not convert the video ({status}): {message}")]
    Rejected { status: ExitStatus, message: String },
    /// ffmpeg encoded no audio: the part asked for (`trimmed`: from `start`) lies past the
    /// audio's end, or the audio track is empty.
    #[error("no audio to encode")]
    Empty { trimmed: bool },
    /// The MP3 would be larger than [`MAX_FILE_OUTPUT`].
    #[error("the MP3 would exceed {MAX_FILE_OUTPUT} bytes")]
    TooLong,
    /// Anything else (reading the video, writing the MP3, ffmpeg killed): may pass next time.
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
}

/// What ffmpeg said on stderr.
#[derive(Debug, Default)]
struct Report {
    /// Its last error lines.
    errors: String,
    /// Whether it encoded nothing.
    nothing_encoded: bool,
}

/// The descriptor ffmpeg gets its output file as.
const OUTPUT_FD: i32 = 3;
/// The descriptor ffmpeg reads its audio filter (the job's trim) from, once it has a job.
const FILTER_FD: i32 = 4;

/// Where ffmpeg writes the MP3.
enum Output {
    /// Its stdout, read as it encodes.
    Pipe(tokio::process::ChildStdout),
    /// An unlinked file, handed to ffmpeg as descriptor [`OUTPUT_FD`], which it reopens as
    /// `/dev/fd/3` (its file protocol, unlike its pipe protocol, seeks back to write the info
    /// header), read once ffmpeg is done. Nothing is left behind whatever happens to either
    /// process.
    File(std::fs::File, tokio::process::ChildStdout),
}

/// A running ffmpeg encoding MP3, started before it is given a video (see [`crate::warm`]);
/// dropping it kills the process.
pub struct Encoder {
    source: Source,
    shape: Shape,
    child: Running,
    stdin: tokio::process::ChildStdin,
    /// The pipe ffmpeg reads its filter from (descriptor [`FILTER_FD`]).
    filter: std::io::PipeWriter,
    output: Output,
    /// ffmpeg's last error lines.
    errors: tokio::task::JoinHandle<Report>,
}

impl Encoder {
    /// Starts ffmpeg reading `source`, encoding as `shape` says. Needs the Tokio runtime.
    pub fn start(ffmpeg: &Path, source: Source, shape: &Shape) -> anyhow::Result<Self> {
        let mut command = FfmpegCommand::new_with_path(ffmpeg);
        command.hide_banner();
        match source {
            Source::Stdin => command.input("pipe:0"),
            Source::SeekableStdin => command
                .args(["-read_ahead_limit", "-1"])
                .input("cache:pipe:0"),
        };
        let (filter_reader, filter) = std::io::pipe().context("creating ffmpeg's filter pipe")?;
        let mut fds = vec![FdMapping {
            parent_fd: filter_reader.into(),
            child_fd: FILTER_FD,
        }];
        // Read when ffmpeg sets up its output, which is once it has a video.
        let script = ["-filter_script:a", &format!("/dev/fd/{FILTER_FD}")];
        let file = if shape.info_header {
            let file = tempfile::tempfile().context("creating a file for ffmpeg's output")?;
            let shared = file.try_clone().context("sharing ffmpeg's output file")?;
            fds.push(FdMapping {
                parent_fd: shared.into(),
                child_fd: OUTPUT_FD,
            });
            // Overwrites (truncates) the empty file rather than asking.
            command.arg("-y");
            command.args(shape_args(shape, script, &format!("/dev/fd/{OUTPUT_FD}")));
            Some(file)
        } else {
            command.args(shape_args(shape, script, "pipe:1"));
            None
        };
        command
            .as_inner_mut()
            .fd_mappings(fds)
            .context("handing ffmpeg its descriptors")?;
        // ffmpeg parses untrusted files: it gets none of the worker's environment, which holds
        // the RabbitMQ and MongoDB URLs with their passwords. PATH alone, to find its helpers.
        let inner = command.as_inner_mut().env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            inner.env("PATH", path);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", ffmpeg.display()))?;
        let stdin = child.take_stdin().context("ffmpeg has no stdin")?;
        let stdout = child.take_stdout().context("ffmpeg has no stdout")?;
        // With a file, the pipe stays empty: it is read to its end like any other.
        let stdout = tokio::process::ChildStdout::from_std(stdout).context("ffmpeg's stdout")?;
        let output = match file {
            Some(file) => Output::File(file, stdout),
            None => Output::Pipe(stdout),
        };
        let events = child.iter().context("reading ffmpeg's stderr")?;
        let child = Running(Some(child));

        let errors = tokio::task::spawn_blocking(move || {
            let mut report = Report::default();
            let mut last = VecDeque::with_capacity(ERROR_LINES);
            for event in events {
                let line = match event {
                    FfmpegEvent::Log(LogLevel::Error | LogLevel::Fatal, line) => line,
                    // A trim past the audio's end: the header (with an info frame) is all
                    // that is written.
                    FfmpegEvent::Log(LogLevel::Warning, line)
                        if line.contains("Output file is empty") =>
                    {
                        report.nothing_encoded = true;
                        continue;
                    }
                    _ => continue,
                };
                tracing::debug!(ffmpeg = %line);
                if last.len() == ERROR_LINES {
                    last.pop_front();
                }
                last.push_back(strip_level(&line).to_owned());
            }
            report.errors = Vec::from(last).join("; ");
            report
        });
        Ok(Self {
            source,
            shape: *shape,
            child,
            stdin: tokio::process::ChildStdin::from_std(stdin).context("ffmpeg's stdin")?,
            filter,
            output,
            errors,
        })
    }

    pub fn source(&self) -> Source {
        self.source
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// ffmpeg's process id, while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        self.child.0.as_mut().map(|child| child.as_inner().id())
    }

    /// Whether ffmpeg is no longer running (it cannot take a video any more).
    pub fn has_exited(&mut self) -> bool {
        self.child.has_exited()
    }

    /// Feeds `video` to ffmpeg, encoded as `encoding` says (of this encoder's shape), and writes
    /// the MP3 to `output` (not closed: the caller closes or aborts it).
    pub async fn encode<R, W>(
        self,
        encoding: &Encoding,
        video: R,
        output: &mut W,
    ) -> Result<Converted, ConvertError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Self {
            source: _,
            shape,
            mut child,
            mut stdin,
            mut filter,
            output: ffmpeg_output,
            errors,
        } = self;
        if Shape::of(encoding) != shape {
            return Err(ConvertError::Transient(anyhow::anyhow!(
                "an ffmpeg started for {shape:?} cannot encode {encoding:?}"
            )));
        }
        // A few bytes into an empty pipe: the write does not block. Closed, so ffmpeg reads
        // to its end. An ffmpeg that died meanwhile: its exit status tells why, below.
        match std::io::Write::write_all(&mut filter, trim_filter(encoding).as_bytes()) {
            Err(e) if e.kind() != IoErrorKind::BrokenPipe => {
                return Err(ConvertError::Transient(
                    anyhow::Error::new(e).context("giving ffmpeg its filter"),
                ))
            }
            _ => drop(filter),
        }
        let (stdout, file) = match ffmpeg_output {
            Output::Pipe(stdout) => (stdout, None),
            Output::File(file, stdout) => (stdout, Some(file)),
        };
        // Each direction is two halves joined by a queue of up to READ_AHEAD buffers, so a slow
        // GridFS round trip (a chunk fetched or inserted) does not stall ffmpeg, nor ffmpeg the
        // transfers: memory stays bounded at 2 x READ_AHEAD x BUFFER per job.
        let (video_tx, mut video_rx) = mpsc::channel::<Vec<u8>>(READ_AHEAD);
        // Once ffmpeg stops reading, its exit status tells why.
        let fetch = pump(video, video_tx, "reading the video");
        let feed = async move {
            let mut total = 0u64;
            while let Some(buffer) = video_rx.recv().await {
                match stdin.write_all(&buffer).await {
                    Ok(()) => total += buffer.len() as u64,
                    // ffmpeg stopped reading (it failed, or needs no more input): its exit status
                    // tells which.
                    Err(e) if e.kind() == IoErrorKind::BrokenPipe => break,
                    Err(e) => return Err(anyhow::Error::new(e).context("writing to ffmpeg")),
                }
            }
            Ok(total)
        };
        let (mp3_tx, mut mp3_rx) = mpsc::channel::<Vec<u8>>(READ_AHEAD);
        // Once the store stops, it says why.
        let drain = pump(stdout.compat(), mp3_tx, "reading ffmpeg's output");
        let store = async {
            let mut total = 0u64;
            while let Some(buffer) = mp3_rx.recv().await {
                output.write_all(&buffer).await.context("writing the MP3")?;
                total += buffer.len() as u64;
            }
            output.flush().await.context("writing the MP3")?;
            Ok::<u64, anyhow::Error>(total)
        };
        // A failed drain drops stdout, so ffmpeg ends on EPIPE; a failed feed drops stdin, so ffmpeg
        // sees the end of its input: both sides always finish.
        let (fetched, fed, drained, stored) = tokio::join!(fetch, feed, drain, store);
        let status = child.wait().await.context("waiting for ffmpeg")?;
        let Report {
            errors: message,
            nothing_encoded,
        } = errors.await.unwrap_or_default();
        let mut bytes_out = stored?;
        drained?;
        let bytes_in = fed?;
        fetched?;
        if status.success() {
            if let Some(file) = file {
                // ffmpeg stops at the limit (`-fs`) without an error.
                if file.metadata().map(|m| m.len()).unwrap_or(0) >= MAX_FILE_OUTPUT {
                    return Err(ConvertError::TooLong);
                }
                bytes_out = copy_file(file, output).await?;
            }
            if bytes_out == 0 || nothing_encoded {
                return Err(ConvertError::Empty {
                    trimmed: encoding.start.is_some(),
                });
            }
            return Ok(Converted {
                bytes_in,
                bytes_out,
            });
        }
        if status.code().is_none() {
            // Killed by a signal (the OOM killer, an operator): not the input's fault.
            return Err(ConvertError::Transient(anyhow::anyhow!(
                "ffmpeg was killed ({status}): {message}"
            )));
        }
        if is_the_machines_fault(&message) {
            return Err(ConvertError::Transient(anyhow::anyhow!(
                "ffmpeg failed ({status}) for want of resources: {message}"
            )));
        }
        let message = if message.is_empty() {
            "no error message".to_owned()
        } else {
            message
        };
        Err(ConvertError::Rejected { status, message })
    }
}

/// An ffmpeg failure the machine caused, not the file: a full /tmp (its cache of the video, its
/// output file), memory or descriptors running out. Worth another attempt, perhaps on another
/// converter, rather than telling the owner the file is damaged. (ffmpeg prints strerror's
/// text, which its C library makes English whatever the locale, since ffmpeg gets no LANG.)
fn is_the_machines_fault(message: &str) -> bool {
    const SIGNS: [&str; 4] = [
        "No space left on device",
        "Cannot allocate memory",
        "Too many open files",
        "Disk quota exceeded",
    ];
    SIGNS.iter().any(|sign| message.contains(sign))
}

/// Writes what ffmpeg left in `file` to `output`; the bytes written.
async fn copy_file<W: AsyncWrite + Unpin>(
    file: std::fs::File,
    output: &mut W,
) -> anyhow::Result<u64> {
    use std::io::Seek as _;
    let mut file = file;
    file.rewind().context("reading ffmpeg's output")?;
    let mut reader = tokio::fs::File::from_std(file).compat();
    let copied = futures_util::io::copy(&mut reader, output)
        .await
        .context("writing the MP3")?;
    output.flush().await.context("writing the MP3")?;
    Ok(copied)
}

/// Reads `reader` to its end in buffers sent to `tx`; stops early, without error, when the
/// receiving side is gone.
async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    tx: mpsc::Sender<Vec<u8>>,
    what: &'static str,
) -> anyhow::Result<()> {
    loop {
        let mut buffer = vec![0u8; BUFFER];
        let n = reader.read(&mut buffer).await.context(what)?;
        if n == 0 {
            return Ok(());
        }
        buffer.truncate(n);
        if tx.send(buffer).await.is_err() {
            return Ok(());
        }
    }
}

/// An ffmpeg log line without the `[error] ` level prefix that `-loglevel level+...` adds.
fn strip_level(line: &str) -> &str {
    let line = line.trim();
    match line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
    {
        Some((level, message)) if !level.contains(' ') => message.trim(),
        _ => line,
    }
}

/// The ffmpeg process, killed if the conversion is dropped (shutdown timeout) before it ends.
struct Running(Option<FfmpegChild>);

impl Running {
    fn has_exited(&mut self) -> bool {
        match self.0.as_mut() {
            Some(child) => !matches!(child.as_inner_mut().try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Called once ffmpeg closed its output, so it is about to exit: polled briefly at first.
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let mut pause = Duration::from_millis(1);
        loop {
            let Some(child) = self.0.as_mut() else {
                return Err(std::io::Error::other("ffmpeg already reaped"));
            };
            if let Some(status) = child.as_inner_mut().try_wait()? {
                self.0 = None;
                return Ok(status);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_prefixes_are_stripped_from_error_lines() {
        assert_eq!(
            strip_level("[error] pipe:0: Invalid data found when processing input "),
            "pipe:0: Invalid data found when processing input"
        );
        assert_eq!(strip_level("[fatal] x"), "x");
        assert_eq!(strip_level("no prefix"), "no prefix");
        assert_eq!(strip_level("[mp3 @ 0x1] bad"), "[mp3 @ 0x1] bad");
    }

    #[test]
    fn a_trim_is_a_filter_and_not_part_of_the_shape() {
        let trim = |start: Option<u64>, end: Option<u64>| Encoding {
            start: start.map(Millis),
            end: end.map(Millis),
            ..Encoding::default()
        };
        assert_eq!(trim_filter(&Encoding::default()), "anull");
        assert_eq!(trim_filter(&trim(Some(1500), None)), "atrim=start=1.5");
        assert_eq!(trim_filter(&trim(None, Some(45_000))), "atrim=end=45");
        assert_eq!(
            trim_filter(&trim(Some(15_000), Some(45_125))),
            "atrim=start=15:end=45.125"
        );
        // An end before its start (not from the gateway) cuts nothing rather than erring.
        assert_eq!(
            trim_filter(&trim(Some(2000), Some(1000))),
            "atrim=start=2:end=2"
        );
        assert_eq!(
            Shape::of(&trim(Some(1), None)),
            Shape::of(&trim(Some(2), Some(3)))
        );
        assert_ne!(
            Shape::of(&trim(Some(1), None)),
            Shape::of(&Encoding::default()),
            "a trimmed MP3 gets its info header"
        );
        let args = output_args(&trim(Some(15_000), Some(45_000)), "out.mp3");
        let at = args
            .iter()
            .position(|a| a == "-filter:a")
            .expect("-filter:a");
        assert_eq!(args[at + 1], "atrim=start=15:end=45");
        assert!(!args.iter().any(|a| a == "-ss" || a == "-t"), "{args:?}");
    }
}
