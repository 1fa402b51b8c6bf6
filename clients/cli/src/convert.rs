//! `mp3 convert`: each file uploaded over tus in pieces (resumed after a network error, and
//! after the CLI itself was stopped), its job followed until it ends, its MP3 downloaded.
//! Several files go at once, each with its progress bar.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::api::{is_transient, retry_after, status_of, Api, Job};
use crate::config::{upload_key, Uploads};

/// How `mp3 convert` runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub out: PathBuf,
    /// Bytes per PATCH (each checked by its SHA-1).
    pub piece: usize,
    pub parallel: usize,
    /// Give up on a job that has not ended after this long.
    pub wait: Duration,
    /// Tries of one piece before giving up on a file.
    pub tries: u32,
    /// Conversion options, (field, value), sent as the upload's metadata.
    pub fields: Vec<(&'static str, String)>,
}

/// What became of one file.
pub struct Converted {
    pub file: PathBuf,
    pub result: anyhow::Result<PathBuf>,
}

/// Converts every file, `parallel` at a time; one result per file, in the order given.
pub fn convert_all(api: &Api, files: &[PathBuf], options: &Options) -> Vec<Converted> {
    let bars = MultiProgress::new();
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bars.set_draw_target(ProgressDrawTarget::hidden());
    }
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results: Vec<std::sync::Mutex<Option<anyhow::Result<PathBuf>>>> =
        files.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..options.parallel.clamp(1, files.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(file) = files.get(i) else { break };
                let bar = bars.add(ProgressBar::new(0));
                bar.set_style(style());
                bar.set_prefix(display_name(file));
                let result = convert_one(api, file, options, &bar);
                match &result {
                    Ok(mp3) => bar.finish_with_message(format!("-> {}", mp3.display())),
                    Err(e) => bar.abandon_with_message(format!("failed: {e:#}")),
                }
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            });
        }
    });
    files
        .iter()
        .zip(results)
        .map(|(file, result)| Converted {
            file: file.clone(),
            result: result
                .into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err(anyhow!("not converted"))),
        })
        .collect()
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:20!} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// A line above the bars, or on stderr when there are none (not a terminal).
fn note(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn display_name(file: &Path) -> String {
    file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn convert_one(
    api: &Api,
    file: &Path,
    options: &Options,
    bar: &ProgressBar,
) -> anyhow::Result<PathBuf> {
    let job_id = upload(api, file, options, bar)?;
    bar.set_message("converting");
    let job = wait_for(api, &job_id, options.wait)?;
    if job.status == "failed" {
        bail!(
            "conversion failed: {}",
            job.error.as_deref().unwrap_or("no reason given")
        );
    }
    bar.set_message("downloading");
    download(api, &job, &options.out)
}

/// Uploads `file` (resuming an upload of it this CLI started before); its job's id.
fn upload(api: &Api, file: &Path, options: &Options, bar: &ProgressBar) -> anyhow::Result<String> {
    let mut source = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let length = source
        .metadata()
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    if length == 0 {
        bail!("{} is empty", file.display());
    }
    bar.set_length(length);
    let key = upload_key(api.base(), file, &options.fields)?;
    let mut path = None;
    let mut offset = 0;
    if let Some(saved) = Uploads::load().get(&key) {
        if let Ok(Some((stored, declared))) = api.upload_offset(saved) {
            if declared == length {
                note(
                    bar,
                    format!("{}: resuming at {stored} bytes", display_name(file)),
                );
                path = Some(saved.to_owned());
                offset = stored;
            }
        }
    }
    let path = match path {
        Some(path) => path,
        None => {
            let path = api.create_upload(length, &display_name(file), &options.fields)?;
            Uploads::update(&key, Some(&path))?;
            path
        }
    };
    bar.set_position(offset);
    let mut piece = Vec::with_capacity(
        options
            .piece
            .min(usize::try_from(length).unwrap_or(usize::MAX)),
    );
    let mut failures = 0;
    while offset < length {
        let want = u64::try_from(options.piece)
            .unwrap_or(u64::MAX)
            .min(length - offset);
        piece.resize(usize::try_from(want).unwrap_or(usize::MAX), 0);
        source
            .seek(SeekFrom::Start(offset))
            .and_then(|_| source.read_exact(&mut piece))
            .with_context(|| format!("reading {}", file.display()))?;
        let start = offset;
        let sent = |n: u64| bar.inc(n);
        let error = match api.patch(&path, offset, &piece, &sent) {
            Ok(now) if now > start && now <= length => {
                offset = now;
                failures = 0;
                bar.set_position(offset);
                continue;
            }
            Ok(now) => bail!(
                "the server answered an impossible offset {now} (sent {start}..{})",
                start + want
            ),
            Err(error) => error,
        };
        match status_of(&error) {
            // Refused for good (not a video, too large, malformed): nothing to resume.
            Some(400 | 413 | 415) => {
                let _ = api.terminate_upload(&path);
                let _ = Uploads::update(&key, None);
                return Err(error);
            }
            // Expired or deleted on the server.
            Some(404) => {
                let _ = Uploads::update(&key, None);
                return Err(
                    error.context("the upload is gone from the server; run the command again")
                );
            }
            // Worth another try: where the server is (409), a lock (423), a checksum (460),
            // the connection, a busy or restarting server. A refused token is not.
            Some(409 | 460) => {}
            _ if is_transient(&error) => {}
            _ => return Err(error),
        }
        failures += 1;
        if failures >= options.tries {
            // Kept for a later run, which resumes it.
            return Err(error.context(format!("giving up after {failures} tries")));
        }
        bar.set_message(format!("retrying: {error:#}"));
        let wait = retry_after(&error)
            .map(|secs| Duration::from_secs(secs.clamp(1, 60)))
            .unwrap_or(Duration::from_millis(500 << failures.min(6)));
        std::thread::sleep(wait);
        // The server says where it is.
        match api.upload_offset(&path) {
            Ok(Some((stored, _))) if stored <= length => offset = stored,
            Ok(Some((stored, _))) => bail!("the server answered an impossible offset {stored}"),
            Ok(None) => {
                let _ = Uploads::update(&key, None);
                bail!("the upload is gone from the server; run the command again");
            }
            Err(_) => offset = start,
        }
        bar.set_position(offset);
    }
    bar.set_message("");
    Uploads::update(&key, None)?;
    path.strip_prefix("/uploads/")
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("unexpected upload path {path:?}"))
}

/// Follows the job until it ends, as often as the server's `Retry-After` says.
pub fn wait_for(api: &Api, id: &str, limit: Duration) -> anyhow::Result<Job> {
    let deadline = Instant::now() + limit;
    loop {
        // A server that is restarting or briefly unreachable is waited for, up to the limit.
        let wait = match api.job(id) {
            Ok((job, _)) if job.is_final() => return Ok(job),
            Ok((_, retry_after)) => Duration::from_secs(retry_after.unwrap_or(2).clamp(1, 30)),
            Err(error) if is_transient(&error) && Instant::now() < deadline => {
                Duration::from_secs(2)
            }
            Err(error) => return Err(error),
        };
        if Instant::now() + wait > deadline {
            bail!(
                "job {id} has not finished after {} s; see `mp3 jobs`",
                limit.as_secs()
            );
        }
        std::thread::sleep(wait);
    }
}

/// The most bytes of the upload's name an MP3 is named after: with ` (99).mp3` after it, the
/// name stays under the 255 bytes most file systems allow (the server takes 255 characters).
const STEM_BYTES: usize = 200;

/// The name an MP3 of upload `filename` gets before `.mp3`: its stem, cut at a character
/// boundary to [`STEM_BYTES`]; `None` for none (or a hidden file's).
fn mp3_stem(filename: &str) -> Option<String> {
    let stem = Path::new(filename).file_stem()?.to_string_lossy();
    if stem.is_empty() || stem.starts_with('.') {
        return None;
    }
    let mut end = stem.len().min(STEM_BYTES);
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    let cut = stem[..end].trim_end();
    (!cut.is_empty()).then(|| cut.to_owned())
}

/// Downloads the job's MP3 into `dir` (named after the upload, never over an existing file);
/// the file written.
pub fn download(api: &Api, job: &Job, dir: &Path) -> anyhow::Result<PathBuf> {
    let url = job
        .download_url
        .as_deref()
        .ok_or_else(|| anyhow!("job {} has no MP3 (status {})", job.job_id, job.status))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = mp3_stem(&job.filename).unwrap_or_else(|| job.job_id.clone());
    // The id names files here: only the server's own kind of id is taken.
    if job.job_id.len() != 24 || !job.job_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("unexpected job id {:?} from the server", job.job_id);
    }
    let temporary = dir.join(format!(".{}.{}.mp3.part", job.job_id, std::process::id()));
    // create_new: never through a link someone planted under that name.
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    let _partial = crate::interrupt::Partial::new(&temporary);
    let result = api
        .download(url, &mut out)
        .and_then(|_| out.sync_all().map_err(Into::into));
    if let Err(error) = result {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    for n in 0.. {
        let name = if n == 0 {
            format!("{stem}.mp3")
        } else {
            format!("{stem} ({n}).mp3")
        };
        let target = dir.join(name);
        // A hard link fails if the name is taken: no file is ever overwritten. Where links
        // are not supported (FAT, some network shares), a copy into a new file does the same.
        let saved = std::fs::hard_link(&temporary, &target).or_else(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return Err(e);
            }
            let mut to = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)?;
            let _copying = crate::interrupt::Partial::new(&target);
            std::io::copy(&mut File::open(&temporary)?, &mut to)
                .and_then(|_| to.sync_all())
                .inspect_err(|_| {
                    // Not a half-written MP3 under its final name.
                    let _ = std::fs::remove_file(&target);
                })
        });
        match saved {
            Ok(()) => {
                let _ = std::fs::remove_file(&temporary);
                return Ok(target);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                return Err(e).with_context(|| format!("saving {}", target.display()));
            }
        }
    }
    unreachable!("the names run out")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp3s_are_named_after_the_upload_within_the_file_systems_limit() {
        assert_eq!(mp3_stem("holiday.mp4").as_deref(), Some("holiday"));
        assert_eq!(mp3_stem("../../etc/x.mov").as_deref(), Some("x"));
        for none in ["", ".hidden.mp4", "   .mp4", "/"] {
            assert_eq!(mp3_stem(none), None, "{none:?}");
        }
        // 300 bytes of three-byte characters: cut whole, at most STEM_BYTES.
        let long = format!("{}.mp4", "あ".repeat(100));
        let stem = mp3_stem(&long).unwrap();
        assert_eq!(stem, "あ".repeat(STEM_BYTES / 3));
        assert!(format!("{stem} (99).mp3").len() <= 255);
        let ascii = mp3_stem(&format!("{}.mp4", "a".repeat(251))).unwrap();
        assert_eq!(ascii.len(), STEM_BYTES);
    }
}
