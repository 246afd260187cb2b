//! `doctor`: prints each prerequisite as found or missing, with the command that installs it;
//! exits 1 when something is missing.
//!
//! `doctor --debian-packages` prints only the Debian packages that would install what is
//! missing, on one line (empty when nothing is), for scripts such as `.ci/run`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let host = doctor::Host::this_machine();
    let findings = doctor::examine(&host);
    match std::env::args().nth(1).as_deref() {
        Some("--debian-packages") => {
            println!("{}", doctor::debian_packages(&findings).join(" "));
            ExitCode::SUCCESS
        }
        None => {
            print!("{}", doctor::report(&findings, host.is_root()));
            if doctor::all_found(&findings) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(other) => {
            eprintln!("doctor: unknown argument {other:?} (usage: doctor [--debian-packages])");
            ExitCode::from(2)
        }
    }
}
