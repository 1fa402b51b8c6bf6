//! The `mp3` binary where no real server is needed: its usage errors, a missing login, an
//! unreachable server, a logout aimed at another server than the saved login's, each with its
//! exit code and one line saying why, and a download interrupted mid-way (a server in the test
//! that stalls). (The flows against the running system are in `tests/tests/cli.rs`, which runs
//! this same binary.)

use std::net::TcpListener;
use std::process::{Command, Output};

const MP3: &str = env!("CARGO_BIN_EXE_mp3");

/// Runs `mp3 args...` with a home of its own (no saved login), stdin closed.
fn mp3(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(MP3)
        .args(args)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("MP3_SERVER")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running mp3")
}

fn home(label: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("mp3-cli-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&path).unwrap();
    path
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An address nothing listens on.
fn closed_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn bad_usage_is_exit_code_2() {
    let home = home("usage");
    let version = mp3(&home, &["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("mp3 {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [
        &["convert"][..],
        &["convert", "a.mp4", "--piece-mib", "65"],
        &["convert", "a.mp4", "--piece-mib", "0"],
        &["convert", "a.mp4", "--bitrate", "100"],
        &["convert", "a.mp4", "--bitrate", "128", "--quality", "2"],
        &["convert", "a.mp4", "--start", "5", "--end", "1"],
        &["convert", "a.mp4", "--preset", "loud"],
        &["frobnicate"],
    ] {
        let output = mp3(&home, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).starts_with("error: "),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn without_a_login_is_exit_code_3_and_says_what_to_do() {
    let home = home("nologin");
    let server = closed_server();
    for args in [&["jobs"][..], &["download", "0123456789abcdef01234567"]] {
        let mut with_server = vec!["--server", server.as_str()];
        with_server.extend_from_slice(args);
        let output = mp3(&home, &with_server);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("not logged in: run `mp3 login` first"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn an_unreachable_server_is_exit_code_4() {
    let home = home("unreachable");
    let server = closed_server();
    let output = Command::new(MP3)
        .args([
            "--server",
            &server,
            "login",
            "someone@example.com",
            "--password-stdin",
        ])
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(b"a password\n")?;
            child.wait_with_output()
        })
        .expect("running mp3");
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("cannot reach {server}")),
        "{}",
        stderr(&output)
    );
    assert!(
        !home.join("config/mp3/credentials.json").exists(),
        "nothing saved"
    );
    std::fs::remove_dir_all(home).unwrap();
}

#[test]
fn logging_out_of_another_server_keeps_the_saved_login() {
    let home = home("logout-other");
    let (saved_server, other) = (closed_server(), closed_server());
    let credentials = home.join("config/mp3/credentials.json");
    std::fs::create_dir_all(credentials.parent().unwrap()).unwrap();
    let saved = format!(r#"{{"server":"{saved_server}","email":"a@example.com","token":"a.b.c"}}"#);
    std::fs::write(&credentials, &saved).unwrap();
    let output = mp3(&home, &["--server", &other, "logout"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!(
            "not logged in to {other} (the saved login, for {saved_server}, is kept)"
        )),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read_to_string(&credentials).unwrap(), saved);
    // With no login saved at all there is nothing to do.
    std::fs::remove_file(&credentials).unwrap();
    let output = mp3(&home, &["--server", &other, "logout"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stderr(&output).trim(), "not logged in");
    std::fs::remove_dir_all(home).unwrap();
}

/// A server that answers `GET /jobs/{id}` with a done job, then sends the first half of its MP3
/// and stalls; the number of downloads begun goes to `begun`.
fn stalling_server(id: &str, begun: std::sync::mpsc::Sender<()>) -> String {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let job = format!(
        r#"{{"job_id":"{id}","status":"done","filename":"clip.mp4","created_at":0,"download_url":"/download?fid={id}"}}"#
    );
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let mut stream = stream;
            if request_line.starts_with("GET /jobs/") {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    job.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(job.as_bytes()).unwrap();
            } else {
                let head =
                    "HTTP/1.1 200 OK\r\ncontent-type: audio/mpeg\r\ncontent-length: 200000\r\n\r\n";
                stream.write_all(head.as_bytes()).unwrap();
                stream.write_all(&[0xff; 100_000]).unwrap();
                stream.flush().unwrap();
                let _ = begun.send(());
                held.push(stream);
            }
        }
    });
    address
}

#[test]
fn an_interrupted_download_leaves_no_partial_file() {
    let home = home("interrupted");
    let out = home.join("out");
    let id = "0123456789abcdef01234567";
    let (begun, began) = std::sync::mpsc::channel();
    let server = stalling_server(id, begun);
    let credentials = home.join("config/mp3/credentials.json");
    std::fs::create_dir_all(credentials.parent().unwrap()).unwrap();
    std::fs::write(
        &credentials,
        format!(r#"{{"server":"{server}","email":"a@example.com","token":"a.b.c"}}"#),
    )
    .unwrap();
    let child = Command::new(MP3)
        .args(["download", id, "--out"])
        .arg(&out)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env_remove("MP3_SERVER")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running mp3");
    began
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the download to begin");
    let partial = || -> Vec<_> {
        std::fs::read_dir(&out)
            .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    // Half of the MP3 has been sent: wait until the client holds it in its partial file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while partial().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no partial file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let signal = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    let output = child.wait_with_output().unwrap();
    // It dies of the signal, as a shell expects (a loop of `mp3` runs stops on Ctrl-C).
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(output.status.signal(), Some(2), "{}", stderr(&output));
    assert_eq!(partial(), Vec::<std::ffi::OsString>::new(), "left behind");
    std::fs::remove_dir_all(home).unwrap();
}
