//! The `mp3` binary where no server is needed: its usage errors, a missing login and an
//! unreachable server, each with its exit code and one line saying why. (The flows against the
//! running system are in `tests/tests/cli.rs`, which runs this same binary.)

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
