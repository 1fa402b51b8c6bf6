//! Decides whether the Spin half of the black-box suites runs: with no Spin CLI to be found,
//! those tests are compiled as ignored, with the reason, so the summary says they were skipped.
//! In CI (`CI` set) Spin must be there: a missing one fails the build instead.

include!("src/spin_bin.rs");

fn main() {
    println!("cargo::rustc-check-cfg=cfg(spin_missing)");
    println!("cargo::rerun-if-env-changed=SPIN_BIN");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CI");
    match find_spin_bin() {
        Some(path) => {
            if !path.is_file() {
                panic!("SPIN_BIN={} is not a file", path.display());
            }
            println!("cargo::rerun-if-changed={}", path.display());
        }
        None if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") => {
            panic!(
                "CI must run the Spin half of the tests, but no Spin CLI was found: \
                 set SPIN_BIN or put spin on PATH (scripts/dev-services env does)"
            )
        }
        None => println!("cargo::rustc-cfg=spin_missing"),
    }
}
