// Included by tests/build.rs and tests/src/app.rs, so the build decides whether the Spin half
// runs by the same rule the harness then uses to find Spin.

/// The Spin CLI: `SPIN_BIN` if set (`scripts/dev-services env` sets it to the Spin it found or
/// unpacked), else `spin` on PATH.
fn find_spin_bin() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("SPIN_BIN").filter(|p| !p.is_empty()) {
        return Some(std::path::PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("spin"))
        .find(|path| path.is_file())
}
