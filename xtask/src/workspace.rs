//! Where things are: the workspace root, the cargo target directory and the built binaries.
//!
//! Found at run time, never from `env!("CARGO_MANIFEST_DIR")`: with a target directory shared
//! between checkouts (as `.ci/run` shares one), cargo may reuse an xtask compiled in another
//! checkout, and a path baked in at compile time would point there, or nowhere once it is gone.

use std::path::{Path, PathBuf};

use anyhow::Context;

#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    pub(crate) root: PathBuf,
    pub(crate) target: PathBuf,
}

impl Workspace {
    /// The workspace this process runs in: the one holding `CARGO_MANIFEST_DIR` (which
    /// `cargo run` sets at run time), else the nearest enclosing the current directory.
    pub(crate) fn locate() -> anyhow::Result<Self> {
        let start = match std::env::var_os("CARGO_MANIFEST_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::current_dir().context("reading the current directory")?,
        };
        let root = workspace_root(&start).with_context(|| {
            format!(
                "{} is not inside the project's workspace (no Cargo.toml with [workspace] above it)",
                start.display()
            )
        })?;
        Ok(Self::at(root))
    }

    fn at(root: PathBuf) -> Self {
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

/// The nearest directory at or above `start` whose `Cargo.toml` declares a `[workspace]`.
fn workspace_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        manifest
            .lines()
            .any(|line| line.trim() == "[workspace]")
            .then(|| dir.to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_workspace_is_found_from_inside_a_moved_tree() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path().join("moved-checkout");
        std::fs::create_dir_all(root.join("xtask/src")).unwrap();
        std::fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"xtask\"]\n",
        )
        .unwrap();
        std::fs::write(
            root.join("xtask/Cargo.toml"),
            "[package]\nname = \"xtask\"\n",
        )
        .unwrap();
        assert_eq!(workspace_root(&root.join("xtask")), Some(root.clone()));
        assert_eq!(workspace_root(&root.join("xtask/src")), Some(root.clone()));
        assert_eq!(workspace_root(tree.path()), None);
    }
}
