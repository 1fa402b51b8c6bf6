//! Black-box tests of the `mp3-admin` binary against a real MariaDB/MySQL server.
//!
//! Each test creates a throwaway database through `MARIADB_ADMIN_URL` (an account that may
//! create and drop databases, as `scripts/dev-services env` prints) and drops it at the end.
//! Without `MARIADB_ADMIN_URL` they fail, saying how to start the services (`scripts/test` does).

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use mysql_async::prelude::Queryable as _;
use mysql_async::{Conn, Opts, OptsBuilder};

struct TestDb {
    name: String,
    /// URL of the throwaway database, for `--database-url`.
    url: String,
    admin: Opts,
}

impl TestDb {
    /// A fresh database name (not created yet: `migrate` creates it).
    fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin_url = std::env::var("MARIADB_ADMIN_URL").expect(
            "MARIADB_ADMIN_URL is not set: run `scripts/dev-services start` and \
             `eval \"$(scripts/dev-services env)\"` (scripts/test does both)",
        );
        let admin = Opts::from_url(&admin_url).expect("MARIADB_ADMIN_URL is a valid mysql:// URL");
        let name = format!(
            "mp3_admin_test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let url = format!(
            "mysql://{}:{}@{}:{}/{name}",
            admin.user().unwrap_or_default(),
            admin.pass().unwrap_or_default(),
            admin.ip_or_hostname(),
            admin.tcp_port()
        );
        Self { name, url, admin }
    }

    async fn conn(&self) -> Conn {
        let opts = OptsBuilder::from_opts(self.admin.clone()).db_name(Some(&self.name));
        Conn::new(opts).await.expect("connect to the test database")
    }

    async fn drop_db(self) {
        let mut conn = Conn::new(self.admin.clone())
            .await
            .expect("connect as admin");
        conn.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name))
            .await
            .expect("drop the test database");
        conn.disconnect().await.ok();
    }

    fn admin_cmd(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mp3-admin"))
            .args(args)
            .env("MP3_DATABASE_URL", &self.url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mp3-admin");
        // mp3-admin may refuse (bad email) and exit before reading stdin: a closed pipe is fine.
        match child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
        {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
            _ => {}
        }
        child.wait_with_output().expect("wait for mp3-admin")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn migrate_twice_then_user_add_twice() {
    let db = TestDb::new();

    let first = db.admin_cmd(&["migrate"], "");
    assert_ok(&first);
    assert_eq!(
        stdout(&first),
        "applied migration 0001_create_user\napplied migration 0002_add_user_admin\n\
         applied migration 0003_create_login_failure\napplied migration 0004_create_login_throttle\n\
         applied migration 0005_create_login_known\napplied migration 0006_add_user_token_generation\n\
         schema is at version 6\n"
    );
    let second = db.admin_cmd(&["migrate"], "");
    assert_ok(&second);
    assert_eq!(stdout(&second), "schema is up to date (version 6)\n");

    let mut conn = db.conn().await;
    let versions: Vec<u32> = conn
        .query("SELECT version FROM schema_migrations ORDER BY version")
        .await
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);

    let add = db.admin_cmd(&["user", "add", "alice@example.com"], "first password\n");
    assert_ok(&add);
    assert_eq!(stdout(&add), "created user alice@example.com\n");
    let row: Option<(u32, String, bool)> = conn
        .exec_first(
            "SELECT id, password, admin FROM user WHERE email = ?",
            ("alice@example.com",),
        )
        .await
        .unwrap();
    let (id, hash, admin) = row.expect("alice exists");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(mp3_auth::verify_password(&hash, "first password").unwrap());
    assert!(!admin);

    let reset = db.admin_cmd(
        &["user", "add", "alice@example.com", "--admin"],
        "second: pw\r\n",
    );
    assert_ok(&reset);
    assert_eq!(stdout(&reset), "updated user alice@example.com\n");
    let rows: Vec<(u32, String, bool)> = conn
        .exec(
            "SELECT id, password, admin FROM user WHERE email = ?",
            ("alice@example.com",),
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let (id2, hash2, admin2) = rows.into_iter().next().unwrap();
    assert_eq!(id2, id);
    assert!(mp3_auth::verify_password(&hash2, "second: pw").unwrap());
    assert!(!mp3_auth::verify_password(&hash2, "first password").unwrap());
    assert!(admin2);

    // --if-missing: an existing user keeps its password, admin flag and tokens.
    const GENERATION: &str = "SELECT token_generation FROM user WHERE email = 'alice@example.com'";
    let before: Option<u64> = conn.query_first(GENERATION).await.unwrap();
    let kept = db.admin_cmd(
        &["user", "add", "alice@example.com", "--if-missing"],
        "third\n",
    );
    assert_ok(&kept);
    assert_eq!(
        stdout(&kept),
        "user alice@example.com exists; left as it is\n"
    );
    let (hash3, admin3): (String, bool) = conn
        .exec_first(
            "SELECT password, admin FROM user WHERE email = ?",
            ("alice@example.com",),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((hash3, admin3), (hash2, true));
    let after: Option<u64> = conn.query_first(GENERATION).await.unwrap();
    assert_eq!(after, before);
    let fresh = db.admin_cmd(&["user", "add", "bob@example.com", "--if-missing"], "pw\n");
    assert_eq!(stdout(&fresh), "created user bob@example.com\n");

    conn.disconnect().await.ok();
    db.drop_db().await;
}

#[tokio::test(flavor = "current_thread")]
async fn adopts_a_seed_database() {
    let db = TestDb::new();
    let mut admin = Conn::new(db.admin.clone()).await.unwrap();
    admin
        .query_drop(format!("CREATE DATABASE `{}`", db.name))
        .await
        .unwrap();
    admin.disconnect().await.ok();
    let mut conn = db.conn().await;
    conn.query_drop(
        "CREATE TABLE user (id INT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(255) NOT NULL UNIQUE, password VARCHAR(255) NOT NULL)",
    )
    .await
    .unwrap();
    conn.query_drop("INSERT INTO user (email, password) VALUES ('old@example.com', 'x')")
        .await
        .unwrap();

    assert_ok(&db.admin_cmd(&["migrate"], ""));
    let admin_flag: Option<bool> = conn
        .query_first("SELECT admin FROM user WHERE email = 'old@example.com'")
        .await
        .unwrap();
    assert_eq!(admin_flag, Some(false));

    conn.disconnect().await.ok();
    db.drop_db().await;
}

#[tokio::test(flavor = "current_thread")]
async fn refusals_exit_non_zero_with_a_reason() {
    let db = TestDb::new();

    // Before migrate: the database does not even exist.
    let early = db.admin_cmd(&["user", "add", "a@example.com"], "pw\n");
    assert!(!early.status.success());
    assert!(
        stderr(&early).starts_with("error: cannot connect to"),
        "{}",
        stderr(&early)
    );

    assert_ok(&db.admin_cmd(&["migrate"], ""));
    for (args, stdin, reason) in [
        (
            &["user", "add", "a@example.com"][..],
            "\n",
            "error: the password must not be empty",
        ),
        (
            &["user", "add", "a@example.com"][..],
            "",
            "error: no password on stdin",
        ),
        (
            &["user", "add", "not-an-email"][..],
            "pw\n",
            "error: invalid email \"not-an-email\"",
        ),
    ] {
        let out = db.admin_cmd(args, stdin);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).starts_with(reason),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), "");
    }
    let mut conn = db.conn().await;
    let count: Option<u32> = conn.query_first("SELECT COUNT(*) FROM user").await.unwrap();
    assert_eq!(count, Some(0));

    conn.disconnect().await.ok();
    db.drop_db().await;
}
