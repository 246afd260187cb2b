//! What this machine needs to build the project and run its tests, checked the way the build
//! and the tests use it, with the exact command that installs what is missing.
//!
//! Each probe tests the thing that is loaded, not a neighbour of it. A machine that ships
//! `libclang-cpp.so.14` has no `libclang.so` for bindgen to open, and the RocksDB build then
//! fails ten minutes in; a `java` binary older than 17 cannot run Kafka 4. So the libclang probe
//! looks for the library bindgen opens and the compiler headers it parses with, the compiler
//! probes compile a file, the Java probe reads the version, the Python probe imports `venv` and
//! `ensurepip`.
//!
//! No dependencies: `.ci/run` builds and runs this crate on a machine that has only Rust, before
//! anything that compiles C or C++ starts.

mod probe;

pub use probe::{Check, Finding, Host, find_libclang};

use std::fmt::Write as _;

/// Every prerequisite, probed on `host`.
pub fn examine(host: &Host) -> Vec<Finding> {
    probe::all(host)
}

/// The Debian packages that would install what `findings` lack, each once, in order.
pub fn debian_packages(findings: &[Finding]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = Vec::new();
    for finding in findings.iter().filter(|f| f.missing()) {
        for package in finding.check.debian_packages {
            if !packages.contains(package) {
                packages.push(package);
            }
        }
    }
    packages
}

/// A table of the findings, then, when something is missing, the one command that installs it.
pub fn report(findings: &[Finding], root: bool) -> String {
    let mut out = String::new();
    let width = findings
        .iter()
        .map(|f| f.check.name.len())
        .max()
        .unwrap_or(0);
    for finding in findings {
        let (mark, detail) = match &finding.outcome {
            Ok(found) => ("found  ", found.as_str()),
            Err(why) => ("MISSING", why.as_str()),
        };
        let _ = writeln!(out, "  {mark}  {:width$}  {detail}", finding.check.name);
        if finding.missing() {
            let _ = writeln!(
                out,
                "           {:width$}  install: {}",
                "",
                finding.check.install(root)
            );
        }
    }
    let packages = debian_packages(findings);
    if !packages.is_empty() {
        let sudo = if root { "" } else { "sudo " };
        let _ = writeln!(
            out,
            "\nTo install everything missing (Debian, Ubuntu):\n  {sudo}apt-get update && {sudo}apt-get install -y --no-install-recommends {}",
            packages.join(" ")
        );
    }
    out
}

/// Whether every prerequisite was found.
pub fn all_found(findings: &[Finding]) -> bool {
    findings.iter().all(|f| !f.missing())
}
