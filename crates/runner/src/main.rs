//! `spin-runner`: `spin up` and `spin build` for this project's machines, where the Spin CLI
//! cannot be installed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use spin_runner::engine::EngineOptions;
use spin_runner::server::shutdown_signal;
use spin_runner::{Runtime, RuntimeOptions, ServeOptions};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Run Spin 3 HTTP apps locally on wasmtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the app's HTTP triggers (like `spin up`).
    Up(Up),
    /// Run the components' build commands (like `spin build`).
    Build {
        /// The application manifest.
        #[arg(short = 'f', long = "from", default_value = "spin.toml")]
        manifest: PathBuf,
        /// Build only these components.
        #[arg(short = 'c', long = "component-id")]
        components: Vec<String>,
    },
}

#[derive(clap::Args)]
struct Up {
    /// The application manifest.
    #[arg(short = 'f', long = "from", default_value = "spin.toml")]
    manifest: PathBuf,
    /// Address to listen on; port 0 picks a free port (the address is printed).
    #[arg(long, default_value = "127.0.0.1:3000", env = "SPIN_HTTP_LISTEN_ADDR")]
    listen: SocketAddr,
    /// Set an application variable (`name=value`, `name=@file`, or `@file.json`/`@file.toml`);
    /// overrides SPIN_VARIABLE_* and defaults.
    #[arg(long = "variable")]
    variables: Vec<String>,
    /// Run the build commands first (like `spin up --build`).
    #[arg(long)]
    build: bool,
    /// Do not use wasmtime's on-disk compilation cache.
    #[arg(long)]
    no_cache: bool,
    /// Most linear memory one instance may grow to, in bytes (past it, memory.grow fails and
    /// the guest's allocation with it); unlimited by default. SpinKube's
    /// `invocationLimits.memory` sets SPIN_MAX_INSTANCE_MEMORY.
    #[arg(long, env = "SPIN_MAX_INSTANCE_MEMORY")]
    max_instance_memory: Option<usize>,
    /// Runtime config file (Spin's format; the runner implements `[key_value_store.<label>]`).
    #[arg(long, env = "RUNTIME_CONFIG_FILE")]
    runtime_config_file: Option<PathBuf>,
    /// Where the default key-value store lives (`sqlite_key_value.db`); default `.spin/` beside
    /// the manifest, as in Spin; an empty value keeps it in memory.
    #[arg(long, value_parser = clap::builder::OsStringValueParser::new())]
    state_dir: Option<std::ffi::OsString>,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// Seconds a connection gets to send a request's head (also how long an idle kept-alive
    /// connection stays open).
    #[arg(long, default_value_t = 30)]
    header_read_timeout: u64,
    /// Seconds a request body may pause before reading it fails.
    #[arg(long, default_value_t = 60)]
    body_idle_timeout: u64,
    /// Connections served at once; more wait until one closes.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build {
            manifest,
            components,
        } => spin_runner::build::build(&manifest, &components),
        Command::Up(up) => up_blocking(up),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn up_blocking(up: Up) -> Result<()> {
    if up.build {
        spin_runner::build::build(&up.manifest, &[])?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            let runtime = Runtime::load(RuntimeOptions {
                manifest: up.manifest,
                variables: up.variables,
                max_instance_memory: up.max_instance_memory,
                runtime_config: up.runtime_config_file,
                state_dir: up.state_dir.map(PathBuf::from),
                engine: EngineOptions {
                    cache: !up.no_cache,
                    ..EngineOptions::default()
                },
            })
            .await?;
            let listener = tokio::net::TcpListener::bind(up.listen)
                .await
                .with_context(|| format!("listening on {}", up.listen))?;
            let options = ServeOptions {
                shutdown_grace: Duration::from_secs(up.shutdown_grace),
                header_read_timeout: Duration::from_secs(up.header_read_timeout),
                body_idle_timeout: Duration::from_secs(up.body_idle_timeout),
                max_connections: up.max_connections,
            };
            spin_runner::serve(runtime, listener, options, shutdown_signal()).await
        })
}
