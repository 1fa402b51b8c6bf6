//! SCRAM-SHA-256 against a real server: a private FerretDB started with its (experimental, in
//! v1.24) user authentication, `--test-enable-new-auth`, on a free port, stopped at the end.
//! The binary is the one `scripts/dev-services install` puts in `.dev/bin/`, or `FERRETDB_BIN`.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongo_wire::bson::doc;
use mongo_wire::bson::oid::ObjectId;
use mongo_wire::{Bucket, Error};

struct AuthFerret {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl AuthFerret {
    fn start() -> Self {
        let bin = std::env::var_os("FERRETDB_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.dev/bin/ferretdb")
            });
        assert!(
            bin.is_file(),
            "no FerretDB binary at {} (run scripts/dev-services install, or set FERRETDB_BIN)",
            bin.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("mongo-wire-auth-{}", ObjectId::new().to_hex()));
        std::fs::create_dir_all(dir.join("data")).expect("temp dir");
        let child = Command::new(&bin)
            .env("DO_NOT_TRACK", "1")
            .arg("--handler=sqlite")
            .arg(format!("--sqlite-url=file:{}/", dir.join("data").display()))
            .arg(format!("--state-dir={}", dir.display()))
            .arg(format!("--listen-addr=127.0.0.1:{port}"))
            .args(["--debug-addr=-", "--telemetry=disable", "--log-level=warn"])
            .args(["--test-enable-new-auth", "--setup-database=admin"])
            .args(["--setup-username=root", "--setup-password=root-pass"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start FerretDB");
        let server = AuthFerret { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "FerretDB did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn url(&self, userinfo: &str) -> String {
        format!(
            "mongodb://{userinfo}127.0.0.1:{}/?authSource=admin",
            self.port
        )
    }
}

impl Drop for AuthFerret {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn scram_sha_256_against_a_real_server() {
    let server = AuthFerret::start();

    let mut root = mongo_wire::connect(&server.url("root:root-pass@")).expect("root logs in");
    root.command(
        "admin",
        doc! {"createUser": "app", "pwd": "app pass,=%", "roles": [], "mechanisms": ["SCRAM-SHA-256"]},
    )
    .expect("createUser");

    // Percent-encoded password with the characters SCRAM and URIs care about.
    let mut app =
        mongo_wire::connect(&server.url("app:app%20pass%2C%3D%25@")).expect("app logs in");
    let status = app.command("admin", doc! {"connectionStatus": 1}).unwrap();
    let users = status
        .get_document("authInfo")
        .unwrap()
        .get_array("authenticatedUsers")
        .unwrap();
    assert_eq!(users.len(), 1, "{status}");
    let db = format!("mw_auth_{}", ObjectId::new().to_hex());
    let bucket = Bucket::new(&db);
    let id = bucket
        .upload(&mut app, &b"hello"[..], "h.txt", None, 100)
        .unwrap();
    assert_eq!(bucket.file_info(&mut app, id).unwrap().length, 5);
    app.drop_database(&db).unwrap();

    match mongo_wire::connect(&server.url("app:wrong@")) {
        Err(Error::Auth(msg)) => assert!(!msg.contains('\n')),
        Err(other) => panic!("expected an authentication error, got {other}"),
        Ok(_) => panic!("a wrong password was accepted"),
    }
    let mut anon = mongo_wire::connect(&server.url("")).expect("anonymous connection");
    let err = anon.command("x", doc! {"find": "y"}).unwrap_err();
    assert_eq!(err.code(), Some(13), "{err}");
}
