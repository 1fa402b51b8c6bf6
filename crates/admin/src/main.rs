//! `mp3-admin`: operator tool for the auth database.
//!
//! - `mp3-admin migrate`: bring the schema of the `auth` database up to date (idempotent;
//!   creates the database if it is missing and the account may).
//! - `mp3-admin user add <email> [--admin]`: create the user, or reset its password and admin
//!   flag. The password is the first line of stdin when stdin is not a terminal, else prompted
//!   twice without echo.
//!
//! The database URL comes from `--database-url` or `MP3_DATABASE_URL`
//! (`mysql://user:pw@host:port/auth`). Results go to stdout, progress and errors to stderr;
//! any failure exits non-zero.

mod db;
mod migrate;
mod user;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mp3-admin",
    version,
    about = "Migrate the auth database and manage users"
)]
struct Cli {
    /// MySQL/MariaDB URL of the auth database, e.g. mysql://user:pw@127.0.0.1:3306/auth
    #[arg(long, env = "MP3_DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the schema migrations not yet applied (running it again changes nothing)
    Migrate,
    /// Manage users
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user, or reset the password and admin flag of an existing one
    Add {
        /// The user's email (their login name)
        email: String,
        /// Make the user an administrator (without it, an existing admin is demoted)
        #[arg(long)]
        admin: bool,
        /// Leave an existing user as it is (password, admin flag, tokens): create only
        #[arg(long)]
        if_missing: bool,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `context: cause: cause`, leaving out causes whose text an earlier message already shows
/// (the database driver's errors repeat their sources in their own messages).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(cli: Cli) -> Result<()> {
    let url = || {
        cli.database_url
            .clone()
            .context("no database URL: pass --database-url or set MP3_DATABASE_URL")
    };
    match &cli.command {
        Command::Migrate => {
            let mut conn = db::connect_or_create(&url()?).await?;
            let report = migrate::run(&mut conn).await?;
            conn.disconnect().await.ok();
            if report.applied.is_empty() {
                println!("schema is up to date (version {})", report.version);
            } else {
                for label in &report.applied {
                    println!("applied migration {label}");
                }
                println!("schema is at version {}", report.version);
            }
        }
        Command::User {
            command:
                UserCommand::Add {
                    email,
                    admin,
                    if_missing,
                },
        } => {
            user::check_email(email)?;
            let url = url()?;
            let password = user::read_password(email)?;
            let hash = mp3_auth::hash_password(&password).context("cannot hash the password")?;
            let mut conn = db::connect(&url).await?;
            let outcome = user::upsert(&mut conn, email, &hash, *admin, *if_missing).await?;
            conn.disconnect().await.ok();
            match outcome {
                user::Outcome::Created => println!("created user {email}"),
                user::Outcome::Updated => println!("updated user {email}"),
                user::Outcome::Kept => println!("user {email} exists; left as it is"),
            }
        }
    }
    Ok(())
}
