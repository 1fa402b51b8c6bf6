//! `mp3`: the service from the command line. Log in once, then convert videos (resumable
//! uploads, several files at once, the MP3s downloaded when ready), list, download and delete
//! jobs.
//!
//! Exit codes: 0 done; 1 something failed (a file, a job, a request); 2 bad usage; 3 not
//! logged in, or the server refused the login or token; 4 the server cannot be reached.

mod api;
mod config;
mod convert;
mod interrupt;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

use api::{Api, ApiError};
use config::Credentials;

#[derive(Parser)]
#[command(
    name = "mp3",
    version,
    about = "Convert videos to MP3 with the mp3-converter service"
)]
struct Cli {
    /// The service's base URL (default: the one logged in to, else http://127.0.0.1:3000).
    #[arg(long, env = "MP3_SERVER", global = true)]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Log in and keep the token (in the user's configuration directory, readable by them only).
    Login {
        /// The account's email address (asked if not given).
        email: Option<String>,
        /// Read the password from standard input instead of asking for it.
        #[arg(long)]
        password_stdin: bool,
    },
    /// End every session of the account and forget the token.
    Logout,
    /// Upload videos, wait for their MP3s and download them.
    Convert {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where the MP3s go.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Files converted at once.
        #[arg(long, default_value_t = 3)]
        parallel: usize,
        /// MiB per upload request (each checked by its SHA-1, resumed from the last one kept).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
        piece_mib: u32,
        /// Seconds to wait for a job to end.
        #[arg(long, default_value_t = 3600)]
        wait_secs: u64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List your jobs, newest first.
    Jobs {
        /// Jobs shown (all of them with --all).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
        #[arg(long)]
        all: bool,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download the MP3 of a done job.
    Download {
        id: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Show your webhook secret and default callback, or change them.
    Webhook {
        /// Send the events of jobs that name no callback to this URL.
        #[arg(long, conflicts_with = "no_url")]
        url: Option<String>,
        /// Stop sending events of jobs that name no callback.
        #[arg(long)]
        no_url: bool,
        /// Replace the signing secret (the old one keeps signing too for 24 hours).
        #[arg(long)]
        rotate: bool,
    },
    /// Delete jobs with their video and MP3.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// What the MP3 should be (the server's defaults otherwise: CBR 192 kb/s, the source's rate
/// and channels, the whole file, titled after the file).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Output")]
struct OutputArgs {
    /// A named set of options: voice (mono, 64 kb/s), standard (192 kb/s), high (VBR quality 0).
    #[arg(long)]
    preset: Option<String>,
    /// Constant bitrate in kb/s (32 to 320, an MP3 bitrate).
    #[arg(long, conflicts_with = "quality")]
    bitrate: Option<String>,
    /// Variable bitrate: LAME quality, 0 (best) to 9 (smallest).
    #[arg(long)]
    quality: Option<String>,
    /// Sample rate in Hz (8000 to 48000, an MP3 rate).
    #[arg(long)]
    sample_rate: Option<String>,
    /// 1 (mono) or 2 (stereo).
    #[arg(long)]
    channels: Option<String>,
    /// Keep the audio from this many seconds on.
    #[arg(long)]
    start: Option<String>,
    /// Keep the audio up to this many seconds.
    #[arg(long, conflicts_with = "duration")]
    end: Option<String>,
    /// Keep this many seconds of audio (from --start).
    #[arg(long)]
    duration: Option<String>,
    /// ID3 title (the file's name otherwise).
    #[arg(long)]
    title: Option<String>,
    /// ID3 artist.
    #[arg(long)]
    artist: Option<String>,
    /// ID3 album.
    #[arg(long)]
    album: Option<String>,
    /// POST the job's signed event here when it ends (see `mp3 webhook`).
    #[arg(long)]
    callback_url: Option<String>,
}

impl OutputArgs {
    /// The options given, as (field, value) pairs for the upload's metadata.
    fn fields(&self) -> Vec<(&'static str, String)> {
        [
            ("preset", &self.preset),
            ("bitrate", &self.bitrate),
            ("quality", &self.quality),
            ("sample_rate", &self.sample_rate),
            ("channels", &self.channels),
            ("start", &self.start),
            ("end", &self.end),
            ("duration", &self.duration),
            ("title", &self.title),
            ("artist", &self.artist),
            ("album", &self.album),
            ("callback_url", &self.callback_url),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
        .collect()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    interrupt::install();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("mp3: {error:#}");
            ExitCode::from(exit_code(&error))
        }
    }
}

fn exit_code(error: &anyhow::Error) -> u8 {
    match api::api_error(error) {
        Some(ApiError::Auth(_)) => 3,
        Some(ApiError::Unreachable(_)) => 4,
        Some(ApiError::Refused { .. }) | None => 1,
    }
}

/// The server and token to use: `--server`/`MP3_SERVER` wins; the saved login's token is used
/// only with its own server.
fn api(server: Option<String>) -> anyhow::Result<Api> {
    let saved = config::load_credentials()?;
    let server = server
        .or_else(|| saved.as_ref().map(|c| c.server.clone()))
        .unwrap_or_else(|| config::DEFAULT_SERVER.to_owned());
    let server = server.trim_end_matches('/').to_owned();
    let token = saved.filter(|c| c.server == server).map(|c| c.token);
    Ok(Api::new(&server, token))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Login {
            email,
            password_stdin,
        } => {
            let api = api(cli.server)?;
            let email = match email {
                Some(email) => email,
                None => prompt("Email: ")?,
            };
            let password = if password_stdin {
                read_line(&mut std::io::stdin().lock())?
            } else if std::io::stdin().is_terminal() {
                rpassword::prompt_password("Password: ").context("reading the password")?
            } else {
                bail!("no terminal to ask the password on: use --password-stdin");
            };
            let token = api.login(&email, &password)?;
            let path = config::save_credentials(&Credentials {
                server: api.base().to_owned(),
                email: email.clone(),
                token,
            })?;
            eprintln!(
                "logged in to {} as {email} (token in {})",
                api.base(),
                path.display()
            );
        }
        Command::Logout => {
            let saved = config::load_credentials()?;
            let api = api(cli.server)?;
            if !api.has_token() {
                return match saved {
                    // A login saved for another server is not this one's to forget: its token
                    // would stay valid on that server, unrevoked.
                    Some(other) => Err(ApiError::Auth(format!(
                        "not logged in to {} (the saved login, for {}, is kept)",
                        api.base(),
                        other.server
                    ))
                    .into()),
                    None => {
                        eprintln!("not logged in");
                        Ok(ExitCode::SUCCESS)
                    }
                };
            }
            match api.logout() {
                // Unreachable: the token still works, so it is kept for another try.
                Err(error) if exit_code(&error) == 4 => return Err(error),
                // Refused: it did not work anyway.
                Err(error) if exit_code(&error) == 3 => {
                    config::forget_credentials()?;
                    eprintln!("mp3: {error:#}; the saved token is forgotten");
                }
                Err(error) => return Err(error),
                Ok(()) => {
                    config::forget_credentials()?;
                    eprintln!("logged out");
                }
            }
        }
        Command::Convert {
            files,
            out,
            parallel,
            piece_mib,
            wait_secs,
            output,
        } => {
            let fields = output.fields();
            // Checked here by the server's own rules, before anything is sent.
            let given = fields.iter().map(|(name, value)| (*name, value.as_str()));
            if let Err(error) = mp3_model::Options::from_fields(given, "file") {
                let message = format!("--{}: {}", error.field.replace('_', "-"), error.rule);
                // A usage error, as clap reports its own (exit code 2).
                <Cli as clap::CommandFactory>::command()
                    .error(clap::error::ErrorKind::InvalidValue, message)
                    .exit();
            }
            let api = api(cli.server)?;
            for file in &files {
                if !file.is_file() {
                    bail!("{}: no such file", file.display());
                }
            }
            let options = convert::Options {
                out,
                piece: piece_mib as usize * 1024 * 1024,
                parallel,
                wait: Duration::from_secs(wait_secs),
                tries: 8,
                fields,
            };
            let results = convert::convert_all(&api, &files, &options);
            let mut worst: Option<anyhow::Error> = None;
            for converted in results {
                match converted.result {
                    Ok(mp3) => println!("{} -> {}", converted.file.display(), mp3.display()),
                    Err(error) => {
                        eprintln!("mp3: {}: {error:#}", converted.file.display());
                        let code = exit_code(&error);
                        if worst.as_ref().is_none_or(|w| exit_code(w) < code) {
                            worst = Some(error);
                        }
                    }
                }
            }
            if let Some(error) = worst {
                return Ok(ExitCode::from(exit_code(&error)));
            }
        }
        Command::Jobs { limit, all, json } => {
            let api = api(cli.server)?;
            let mut next = Some(format!("/jobs?limit={limit}"));
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if !json {
                writeln!(
                    out,
                    "{:<24}  {:<10}  {:<20}  FILE",
                    "ID", "STATUS", "CREATED (UTC)"
                )?;
            }
            while let Some(path) = next.take() {
                let page = api.jobs(&path)?;
                for job in &page.jobs {
                    if json {
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({
                                "job_id": job.job_id, "status": job.status, "filename": job.filename,
                                "created_at": job.created_at, "download_url": job.download_url, "error": job.error,
                            })
                        )?;
                    } else {
                        let note = job
                            .error
                            .as_deref()
                            .map(|e| format!("  ({e})"))
                            .unwrap_or_default();
                        writeln!(
                            out,
                            "{:<24}  {:<10}  {:<20}  {}{note}",
                            job.job_id,
                            job.status,
                            utc(job.created_at),
                            job.filename
                        )?;
                    }
                }
                if all {
                    next = page.next;
                }
            }
        }
        Command::Download { id, out } => {
            let api = api(cli.server)?;
            let (job, _) = api.job(&id)?;
            let mp3 = convert::download(&api, &job, &out)?;
            println!("{}", mp3.display());
        }
        Command::Webhook {
            url,
            no_url,
            rotate,
        } => {
            let api = api(cli.server)?;
            let mut settings = if rotate {
                api.rotate_webhook_secret()?
            } else {
                api.webhook()?
            };
            if url.is_some() || no_url {
                settings = api.set_webhook_url(url.as_deref())?;
            }
            println!("secret: {}", settings.secret);
            println!("url: {}", settings.url.as_deref().unwrap_or("(none)"));
            if let Some(until) = settings.previous_secret_expires_at {
                println!("previous secret signs too until {}", utc(until));
            }
        }
        Command::Rm { ids } => {
            let api = api(cli.server)?;
            let mut worst = 0;
            for id in &ids {
                match api.delete_job(id) {
                    Ok(()) => println!("deleted {id}"),
                    Err(error) => {
                        eprintln!("mp3: {error:#}");
                        worst = worst.max(exit_code(&error));
                    }
                }
            }
            if worst != 0 {
                return Ok(ExitCode::from(worst));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn prompt(question: &str) -> anyhow::Result<String> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    read_line(&mut std::io::stdin().lock())
}

fn read_line(input: &mut dyn std::io::BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("reading standard input")?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        bail!("nothing was entered");
    }
    Ok(line)
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc(951_825_600_000), "2000-02-29 12:00:00");
    }

    #[test]
    fn usage_is_checked() {
        assert!(Cli::try_parse_from(["mp3", "convert"]).is_err());
        assert!(Cli::try_parse_from(["mp3", "jobs", "--limit", "0"]).is_err());
        assert!(Cli::try_parse_from(["mp3", "convert", "a.mp4", "--piece-mib", "0"]).is_err());
        assert!(Cli::try_parse_from(["mp3", "--server", "http://x", "rm", "a", "b"]).is_ok());
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
