//! A process's memory as Linux reports it, for tests and benchmarks that bound it.

/// A process's resident set (`VmRSS`) or its peak since start or the last [`reset_peak`]
/// (`VmHWM`), in MiB.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"));
    kib / 1024.0
}

/// Resets a process's peak resident set to its current one (Linux `clear_refs` 5), so the peak
/// read next belongs to what ran since, not to start-up (Cranelift compiling the components
/// when wasmtime's cache does not have them yet).
pub fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("resetting the peak RSS");
}
