//! The Python environment of the interoperability tests: a virtualenv with Confluent's own
//! client (`confluent-kafka` with its Avro and schema registry support), installed from PyPI.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::workspace::Workspace;

/// Creates (or reuses) the virtualenv and returns its `python`.
pub(crate) fn interop_python(ws: &Workspace) -> anyhow::Result<PathBuf> {
    let requirements = ws.root.join("interop/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = ws.cache_dir().join("interop-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("installed-requirements.txt");
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    eprintln!("creating the interop virtualenv in {} ...", venv.display());
    let host_python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&host_python)
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .with_context(|| format!("running {host_python} -m venv"))?;
    anyhow::ensure!(status.success(), "could not create a virtualenv ({status})");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "pip could not install {}",
        requirements.display()
    );
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}
