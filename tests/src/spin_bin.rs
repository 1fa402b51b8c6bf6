// Included by tests/build.rs and tests/src/app.rs, so the build decides whether the Spin half
// runs by the same rule the harness then uses to find Spin.

/// The Spin CLI: `SPIN_BIN` if set (`scripts/dev-services env` sets it to the Spin it found or
/// unpacked), else a `spin` on PATH that is Spin 3 (Debian's `spin` package is another program,
/// and the components target Spin 3).
fn find_spin_bin() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("SPIN_BIN").filter(|p| !p.is_empty()) {
        return Some(std::path::PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("spin"))
        .find(|path| {
            path.is_file()
                && std::process::Command::new(path)
                    .arg("--version")
                    .output()
                    .is_ok_and(|out| out.stdout.starts_with(b"spin 3."))
        })
}
