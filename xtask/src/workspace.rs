//! Where things are: the workspace root, the cargo target directory and the built binaries.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    pub(crate) root: PathBuf,
    pub(crate) target: PathBuf,
}

impl Workspace {
    pub(crate) fn locate() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { root.join(t) })
            .unwrap_or_else(|| root.join("target"));
        Self { root, target }
    }

    /// A binary of the workspace, built by `cargo build` in the dev profile.
    pub(crate) fn binary(&self, name: &str) -> PathBuf {
        self.target.join("debug").join(name)
    }

    /// Scratch space of the xtask itself (caches that survive between runs).
    pub(crate) fn cache_dir(&self) -> PathBuf {
        self.target.join("xtask")
    }

    /// Runs `cargo` with `args` in the workspace root, failing on a non-zero exit.
    pub(crate) fn cargo(&self, args: &[&str]) -> anyhow::Result<()> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(args)
            .current_dir(&self.root)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "cargo {} failed ({status})",
            args.join(" ")
        );
        Ok(())
    }
}
