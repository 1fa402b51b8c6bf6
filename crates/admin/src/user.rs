//! `user add`: create or reset a user.

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context as _, Result};
use mysql_async::prelude::Queryable as _;
use mysql_async::Conn;

use crate::db::{server_code, ER_NO_SUCH_TABLE};

/// Accept `local@domain` with both parts non-empty, at most 254 characters, no whitespace,
/// control characters, or colon (HTTP Basic splits at the first colon, so such an email could
/// never log in).
pub fn check_email(email: &str) -> Result<()> {
    let bad = |why: &str| anyhow::anyhow!("invalid email {email:?}: {why}");
    if email.is_empty() {
        return Err(bad("empty"));
    }
    if email.chars().count() > 254 {
        return Err(bad("longer than 254 characters"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains whitespace or control characters"));
    }
    if email.contains(':') {
        return Err(bad(
            "contains ':', which HTTP Basic authentication cannot carry",
        ));
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
                return Err(bad("malformed domain"));
            }
            Ok(())
        }
        _ => Err(bad("expected exactly one '@' with text on both sides")),
    }
}

/// The password: first line of stdin when stdin is not a terminal (trailing newline removed),
/// otherwise prompted twice on the terminal without echo.
pub fn read_password(email: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {email}: "))
            .context("cannot read the password from the terminal")?;
        let second = rpassword::prompt_password("Repeat password: ")
            .context("cannot read the password from the terminal")?;
        if first != second {
            bail!("the passwords do not match");
        }
        first
    } else {
        let mut line = String::new();
        let n = stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        if n == 0 {
            bail!("no password on stdin (send it as the first line)");
        }
        first_line(&line).to_owned()
    };
    if password.is_empty() {
        bail!("the password must not be empty");
    }
    Ok(password)
}

fn first_line(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

pub enum Outcome {
    Created,
    Updated,
    /// It existed, and was left as it was (`keep_existing`).
    Kept,
}

/// Insert the user, or reset the password and admin flag of an existing one, which also
/// revokes every token issued to it before (its token generation moves on). A new user's
/// generation starts at the current time: tokens of an earlier user of the same email (deleted
/// since) stay refused.
/// With `keep_existing`, an existing user is left untouched (password, admin flag, tokens).
pub async fn upsert(
    conn: &mut Conn,
    email: &str,
    password_hash: &str,
    admin: bool,
    keep_existing: bool,
) -> Result<Outcome> {
    // Affected rows: 1 for an insert, 2 for an update (0 if nothing changed, impossible here:
    // every hash has a fresh salt), 0 for an insert ignored. VALUES() works on MariaDB and
    // MySQL 8 alike.
    let statement = if keep_existing {
        "INSERT IGNORE INTO user (email, password, admin, token_generation) \
         VALUES (?, ?, ?, UNIX_TIMESTAMP())"
    } else {
        "INSERT INTO user (email, password, admin, token_generation) \
         VALUES (?, ?, ?, UNIX_TIMESTAMP()) \
         ON DUPLICATE KEY UPDATE password = VALUES(password), admin = VALUES(admin), \
         token_generation = token_generation + 1"
    };
    let result = conn
        .exec_drop(statement, (email, password_hash, admin))
        .await;
    match result {
        Ok(()) => {}
        Err(e) if server_code(&e) == Some(ER_NO_SUCH_TABLE) => {
            return Err(e).context("table user does not exist; run `mp3-admin migrate` first")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot save user {email}")),
    }
    Ok(match conn.affected_rows() {
        1 => Outcome::Created,
        0 if keep_existing => Outcome::Kept,
        _ => Outcome::Updated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in [
            "a@example.com",
            "first.last+tag@sub.example.org",
            "a@localhost",
            "é@exämple.de",
        ] {
            assert!(check_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@@b",
            "a@b@c",
            "a b@c.d",
            "a:b@c.d",
            "a@.c",
            "a@c.",
            "a@c..d",
            "a\n@c.d",
        ] {
            let err = check_email(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid email"), "{bad:?}: {err}");
        }
        assert!(check_email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn first_line_strips_one_newline() {
        assert_eq!(first_line("pw\n"), "pw");
        assert_eq!(first_line("pw\r\n"), "pw");
        assert_eq!(first_line("pw"), "pw");
        assert_eq!(first_line(" pw \n"), " pw ");
        assert_eq!(first_line("\n"), "");
    }
}
