//! Helpers for the workers' command-line configuration (clap, every option also an environment
//! variable).

use clap::{CommandFactory, Parser};

/// Parses `args` ignoring the environment: for unit tests of defaults and validation, which
/// must not depend on the variables of the shell that runs them.
pub fn parse_ignoring_env<T: Parser>(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<T, clap::Error> {
    let command = T::command().mut_args(|arg| arg.env(None::<&str>));
    let matches = command.try_get_matches_from(args)?;
    T::from_arg_matches(&matches)
}

/// The environment variable of each option, sorted: what deployment manifests rely on.
pub fn env_names<T: CommandFactory>() -> Vec<String> {
    let mut names: Vec<String> = T::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
