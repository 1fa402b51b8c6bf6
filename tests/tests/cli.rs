//! The `mp3` CLI end to end, as a user runs it, against the whole system on the runner and on
//! Spin: log in, convert several videos at once, list, download, delete, log out; an upload
//! stopped half-way (the CLI killed) resumed by the next run; every error a clear line and the
//! exit code the CLI documents. Its files live in a home of the test's own (`XDG_CONFIG_HOME`,
//! `XDG_CACHE_HOME`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use system_tests::http::send;
use system_tests::services::TcpProxy;
use system_tests::system::{make_noisy_video, make_video, probe, System, PASSWORD};
use system_tests::{on_each_runtime, release_bin, Runtime, TempDir};

on_each_runtime!(
    logs_in_converts_lists_downloads_deletes_and_logs_out,
    an_upload_the_cli_was_killed_in_resumes_on_the_next_run,
);

/// The CLI with a home of its own.
struct Cli {
    home: TempDir,
    server: String,
}

impl Cli {
    fn new(server: &str) -> Self {
        Cli {
            home: TempDir::new("cli-home"),
            server: server.to_owned(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(release_bin("mp3"));
        command
            .args(args)
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("XDG_CACHE_HOME", self.home.path().join("cache"))
            .env("MP3_SERVER", &self.server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `mp3 args...` with `input` on stdin.
    fn run(&self, args: &[&str], input: &str) -> Output {
        let mut child = self.command(args).spawn().expect("running mp3");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("writing stdin");
        drop(stdin);
        child.wait_with_output().expect("mp3 output")
    }

    fn credentials(&self) -> PathBuf {
        self.home.path().join("config/mp3/credentials.json")
    }

    fn token(&self) -> String {
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.credentials()).expect("credentials"))
                .expect("credentials JSON");
        saved["token"].as_str().expect("a token").to_owned()
    }
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn says(output: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        code(output),
        text(&output.stdout),
        text(&output.stderr)
    )
}

fn jobs(cli: &Cli) -> Vec<serde_json::Value> {
    let output = cli.run(&["jobs", "--all", "--json"], "");
    assert_eq!(code(&output), 0, "{}", says(&output));
    text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn assert_mp3(path: &Path, seconds: f64) {
    let (duration, format) = probe(path);
    assert_eq!(format, "mp3", "{}", path.display());
    assert!(
        (duration - seconds).abs() < 0.5,
        "{duration} s in {}",
        path.display()
    );
}

fn logs_in_converts_lists_downloads_deletes_and_logs_out(runtime: Runtime) {
    let system = System::start(runtime);
    let cli = Cli::new(system.app.base());
    let dir = TempDir::new("cli-files");

    // A wrong password: refused, nothing saved.
    let output = cli.run(&["login", &system.email, "--password-stdin"], "wrong\n");
    assert_eq!(code(&output), 3, "{}", says(&output));
    assert!(
        text(&output.stderr).contains("invalid credentials"),
        "{}",
        says(&output)
    );
    assert!(!cli.credentials().exists());
    // Commands that need a login say so.
    let output = cli.run(&["jobs"], "");
    assert_eq!(code(&output), 3, "{}", says(&output));
    assert!(
        text(&output.stderr).contains("mp3 login"),
        "{}",
        says(&output)
    );

    let output = cli.run(
        &["login", &system.email, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(code(&output), 0, "{}", says(&output));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(cli.credentials())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is the user's alone");
    }

    // Two videos at once, one not a video, one missing.
    let (a, b) = (
        dir.path().join("first clip.mp4"),
        dir.path().join("second.mp4"),
    );
    make_video(&a, 3, "320x240");
    make_video(&b, 2, "160x120");
    let out = dir.path().join("mp3s");
    let output = cli.run(
        &[
            "convert",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--piece-mib",
            "1",
        ],
        "",
    );
    assert_eq!(code(&output), 0, "{}\n{}", says(&output), system.app.log());
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains(&format!(
            "{} -> {}",
            a.display(),
            out.join("first clip.mp3").display()
        )),
        "{stdout}"
    );
    assert_mp3(&out.join("first clip.mp3"), 3.0);
    assert_mp3(&out.join("second.mp3"), 2.0);

    let notes = dir.path().join("notes.mp4");
    std::fs::write(
        &notes,
        "not a video at all, whatever the name says\n".repeat(100),
    )
    .unwrap();
    let output = cli.run(
        &[
            "convert",
            notes.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code(&output), 1, "{}", says(&output));
    assert!(
        text(&output.stderr).contains("the file is not a video"),
        "{}",
        says(&output)
    );
    let output = cli.run(&["convert", "/no/such/file.mp4"], "");
    assert_eq!(code(&output), 1, "{}", says(&output));
    assert!(
        text(&output.stderr).contains("no such file"),
        "{}",
        says(&output)
    );

    // The list, a download, a deletion.
    let listed = jobs(&cli);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|j| j["status"] == "done"), "{listed:?}");
    assert!(
        listed[0]["created_at"].as_i64() >= listed[1]["created_at"].as_i64(),
        "newest first"
    );
    let first = listed
        .iter()
        .find(|j| j["filename"] == "first clip.mp4")
        .and_then(|j| j["job_id"].as_str())
        .expect("the first clip's job")
        .to_owned();
    let again = dir.path().join("again");
    let output = cli.run(&["download", &first, "--out", again.to_str().unwrap()], "");
    assert_eq!(code(&output), 0, "{}", says(&output));
    assert_mp3(&again.join("first clip.mp3"), 3.0);
    let output = cli.run(&["download", &first, "--out", again.to_str().unwrap()], "");
    assert_eq!(
        text(&output.stdout).trim(),
        again.join("first clip (1).mp3").display().to_string(),
        "never overwritten"
    );
    let output = cli.run(&["rm", &first], "");
    assert_eq!(
        (code(&output), text(&output.stdout).trim().to_owned()),
        (0, format!("deleted {first}")),
        "{}",
        says(&output)
    );
    assert_eq!(jobs(&cli).len(), 1);
    let output = cli.run(&["rm", &first], "");
    assert_eq!(code(&output), 1, "{}", says(&output));
    assert!(
        text(&output.stderr).contains("job not found (404)"),
        "{}",
        says(&output)
    );
    let output = cli.run(&["download", "../../etc/passwd"], "");
    assert_eq!(code(&output), 1, "{}", says(&output));

    // Options, sent with the upload: a voice MP3 of one second of the clip, titled.
    let voice = dir.path().join("voice");
    let output = cli.run(
        &[
            "convert",
            b.to_str().unwrap(),
            "--out",
            voice.to_str().unwrap(),
            "--preset",
            "voice",
            "--start",
            "0.5",
            "--duration",
            "1",
            "--title",
            "Second, short",
        ],
        "",
    );
    assert_eq!(code(&output), 0, "{}", says(&output));
    let mp3 = voice.join("second.mp3");
    assert_mp3(&mp3, 1.0);
    let probed = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-of",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .arg(&mp3)
        .output()
        .expect("running ffprobe");
    let probed: serde_json::Value = serde_json::from_slice(&probed.stdout).expect("JSON");
    assert_eq!(probed["streams"][0]["channels"], 1, "{probed}");
    assert_eq!(probed["streams"][0]["bit_rate"], "64000", "{probed}");
    assert_eq!(
        probed["format"]["tags"]["title"], "Second, short",
        "{probed}"
    );
    // Refused by the CLI itself, before anything is sent.
    let output = cli.run(&["convert", b.to_str().unwrap(), "--channels", "3"], "");
    assert_eq!(code(&output), 2, "{}", says(&output));
    assert!(
        text(&output.stderr).contains("--channels: 1 (mono) or 2"),
        "{}",
        says(&output)
    );

    // The webhook settings: the secret, a default callback (checked), a new secret.
    let output = cli.run(&["webhook"], "");
    assert_eq!(code(&output), 0, "{}", says(&output));
    let shown = text(&output.stdout);
    let secret = shown
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("the secret")
        .to_owned();
    assert!(
        secret.starts_with("whsec_") && shown.contains("url: (none)"),
        "{shown}"
    );
    let output = cli.run(&["webhook", "--url", "https://hooks.example.com/mp3"], "");
    assert_eq!(code(&output), 0, "{}", says(&output));
    assert!(text(&output.stdout).contains("url: https://hooks.example.com/mp3"));
    let output = cli.run(&["webhook", "--url", "ftp://nope/"], "");
    assert_eq!(code(&output), 1, "{}", says(&output));
    assert!(
        text(&output.stderr).contains("url: an http:// or https:// URL"),
        "{}",
        says(&output)
    );
    let output = cli.run(&["webhook", "--rotate", "--no-url"], "");
    assert_eq!(code(&output), 0, "{}", says(&output));
    let shown = text(&output.stdout);
    assert!(
        !shown.contains(&secret) && shown.contains("url: (none)"),
        "{shown}"
    );
    assert!(shown.contains("previous secret signs too until"), "{shown}");

    // Unreachable: its own exit code.
    let output = cli.run(
        &[
            "--server",
            "http://127.0.0.1:9",
            "login",
            "x@example.com",
            "--password-stdin",
        ],
        "pw\n",
    );
    assert_eq!(code(&output), 4, "{}", says(&output));
    assert!(
        text(&output.stderr).contains("cannot reach http://127.0.0.1:9"),
        "{}",
        says(&output)
    );

    // Logging out ends the session on the server too.
    let token = cli.token();
    let output = cli.run(&["logout"], "");
    assert_eq!(code(&output), 0, "{}", says(&output));
    assert!(!cli.credentials().exists());
    let reply = send(
        "GET",
        &system.app.url("/jobs"),
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
}

fn an_upload_the_cli_was_killed_in_resumes_on_the_next_run(runtime: Runtime) {
    let system = System::start(runtime);
    let dir = TempDir::new("cli-resume");
    let video = dir.path().join("long.mp4");
    make_noisy_video(&video, 5);
    let bytes = std::fs::read(&video).unwrap();
    let piece = 1024 * 1024;
    assert!(
        bytes.len() > 2 * piece,
        "{} bytes: want several pieces",
        bytes.len()
    );

    // Through a proxy that holds the answer to the first piece: the server has it, the CLI
    // does not know yet when it is killed.
    let proxy = TcpProxy::start(system.app.base().trim_start_matches("http://"));
    proxy.hold_replies_to(&bytes[piece - 32..piece], Duration::from_secs(30));
    let cli = Cli::new(&format!("http://{}", proxy.address()));
    let output = cli.run(
        &["login", &system.email, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(code(&output), 0, "{}", says(&output));
    let out = dir.path().join("out");
    let args = [
        "convert",
        video.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--piece-mib",
        "1",
    ];
    let mut first = cli.command(&args).spawn().expect("running mp3");

    // Wait for the first piece to be stored, then kill the CLI.
    let state = cli.home.path().join("cache/mp3/uploads.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let upload = loop {
        assert!(
            Instant::now() < deadline,
            "the first piece never arrived\n{}",
            system.app.log()
        );
        let saved: Option<serde_json::Value> = std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let path = saved.and_then(|s| {
            s["uploads"]
                .as_object()?
                .values()
                .next()?
                .as_str()
                .map(str::to_owned)
        });
        if let Some(path) = path {
            let reply = send(
                "HEAD",
                &system.app.url(&path),
                &[
                    ("Authorization", &format!("Bearer {}", cli.token())),
                    ("Tus-Resumable", "1.0.0"),
                ],
                None,
            );
            if reply.header("upload-offset") == Some(&piece.to_string()) {
                break path;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    first.kill().expect("killing mp3");
    let _ = first.wait();

    proxy.hold_replies_to(b"\0never\0", Duration::ZERO);
    let output = cli.run(&args, "");
    assert_eq!(code(&output), 0, "{}\n{}", says(&output), system.app.log());
    assert!(
        text(&output.stderr).contains(&format!("long.mp4: resuming at {piece} bytes")),
        "{}",
        says(&output)
    );
    assert_mp3(&out.join("long.mp3"), 5.0);
    let listed = jobs(&cli);
    assert_eq!(listed.len(), 1, "one upload, one job: {listed:?}");
    assert_eq!(
        Some(listed[0]["job_id"].as_str().unwrap()),
        upload.strip_prefix("/uploads/")
    );
    let leftover: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        leftover["uploads"],
        serde_json::json!({}),
        "a finished upload is forgotten"
    );
}
