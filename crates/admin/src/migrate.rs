//! Schema migrations of the `auth` database.
//!
//! Numbered SQL files in `crates/admin/migrations/`, embedded at build time, applied once each in
//! order and recorded in `schema_migrations(version, applied_at)`. Runs on MariaDB and MySQL 8.
//! A named lock (`GET_LOCK`, one per database) keeps two concurrent runs from applying the same
//! file twice.
//!
//! Files hold plain SQL; statements end with `;` at the end of a line, lines starting with `--`
//! are comments. MySQL commits DDL implicitly, so a file should hold one DDL statement, or
//! statements that are each safe to repeat, in case a run dies halfway through it.

use anyhow::{bail, Context as _, Result};
use mysql_async::prelude::Queryable as _;
use mysql_async::Conn;

pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. Add new files at the end with the next number.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create_user",
        sql: include_str!("../migrations/0001_create_user.sql"),
    },
    Migration {
        version: 2,
        name: "add_user_admin",
        sql: include_str!("../migrations/0002_add_user_admin.sql"),
    },
    Migration {
        version: 3,
        name: "create_login_failure",
        sql: include_str!("../migrations/0003_create_login_failure.sql"),
    },
    Migration {
        version: 4,
        name: "create_login_throttle",
        sql: include_str!("../migrations/0004_create_login_throttle.sql"),
    },
    Migration {
        version: 5,
        name: "create_login_known",
        sql: include_str!("../migrations/0005_create_login_known.sql"),
    },
    Migration {
        version: 6,
        name: "add_user_token_generation",
        sql: include_str!("../migrations/0006_add_user_token_generation.sql"),
    },
];

const LOCK: &str = "mp3_admin_migrate";
const LOCK_WAIT_SECONDS: u32 = 60;

/// The statements of a migration file.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_owned();
            if !statement.is_empty() {
                out.push(statement);
            }
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

/// The outcome of a run: versions applied now, and the version the schema is at.
pub struct Report {
    pub applied: Vec<String>,
    pub version: u32,
}

/// Bring the schema up to date. Idempotent: a second run applies nothing.
pub async fn run(conn: &mut Conn) -> Result<Report> {
    let locked: Option<Option<i64>> = conn
        .query_first(format!(
            "SELECT GET_LOCK(CONCAT('{LOCK}.', DATABASE()), {LOCK_WAIT_SECONDS})"
        ))
        .await
        .context("cannot take the migration lock")?;
    if locked.flatten() != Some(1) {
        bail!("another migration of this database holds the lock; waited {LOCK_WAIT_SECONDS}s");
    }
    let result = apply_pending(conn).await;
    let released: Result<Option<Option<i64>>, _> = conn
        .query_first(format!(
            "SELECT RELEASE_LOCK(CONCAT('{LOCK}.', DATABASE()))"
        ))
        .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "could not release the migration lock");
    }
    result
}

async fn apply_pending(conn: &mut Conn) -> Result<Report> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INT UNSIGNED NOT NULL PRIMARY KEY,
            applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        ) ENGINE=InnoDB",
    )
    .await
    .context("cannot create table schema_migrations")?;
    let done: Vec<u32> = conn
        .query("SELECT version FROM schema_migrations ORDER BY version")
        .await
        .context("cannot read schema_migrations")?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(newer) = done.iter().find(|v| **v > known) {
        tracing::warn!(version = newer, known, "the database has a migration this tool does not know; is the tool older than the schema?");
    }

    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        let label = format!("{:04}_{}", m.version, m.name);
        for statement in statements(m.sql) {
            conn.query_drop(statement)
                .await
                .with_context(|| format!("migration {label} failed"))?;
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations (version) VALUES (?)",
            (m.version,),
        )
        .await
        .with_context(|| format!("migration {label} ran but could not be recorded"))?;
        tracing::debug!(migration = %label, "applied");
        applied.push(label);
    }
    let version = done
        .iter()
        .copied()
        .chain(MIGRATIONS.iter().map(|m| m.version))
        .max()
        .unwrap_or(0);
    Ok(Report { applied, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
            assert!(!statements(m.sql).is_empty(), "{} has no statement", m.name);
        }
    }

    #[test]
    fn splits_statements_and_skips_comments() {
        let sql = "-- comment\nCREATE TABLE a (\n  x INT\n);\n\n-- more\nALTER TABLE a ADD y INT;\nSELECT 1";
        assert_eq!(
            statements(sql),
            vec![
                "CREATE TABLE a (\n  x INT\n)",
                "ALTER TABLE a ADD y INT",
                "SELECT 1"
            ]
        );
    }

    #[test]
    fn no_mysql_incompatible_syntax() {
        for m in MIGRATIONS {
            assert!(
                !m.sql.to_uppercase().contains("ADD COLUMN IF NOT EXISTS"),
                "{}",
                m.name
            );
        }
    }
}
