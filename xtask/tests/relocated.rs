//! A build must not remember where its sources were: the xtask built from this checkout, run
//! from a copy of the tree, works on the copy (a target directory shared between checkouts
//! reuses builds exactly like this).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn copy_tree(from: &Path, to: &Path) {
    // The files the xtask reads at run time; the rest of the tree does not matter here.
    for file in [
        "Cargo.toml",
        "interop/requirements.txt",
        "docker-compose.yml",
    ] {
        let target = to.join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(file), target).unwrap();
    }
    std::fs::create_dir_all(to.join("xtask/src")).unwrap();
}

#[test]
fn the_xtask_works_on_the_tree_it_runs_in_not_the_one_it_was_built_in() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let checkout = Path::new(&manifest_dir).parent().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("moved-checkout");
    copy_tree(checkout, &copy);

    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("doctor")
        .current_dir(copy.join("xtask"))
        // As if run directly, not by `cargo run` in this checkout.
        .env_remove("CARGO_MANIFEST_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let workspace = stdout
        .lines()
        .find_map(|l| l.strip_prefix("workspace: "))
        .unwrap_or_else(|| panic!("no workspace line in:\n{stdout}"));
    assert_eq!(
        Path::new(workspace).canonicalize().unwrap(),
        copy.canonicalize().unwrap(),
        "the xtask used the tree it was built in"
    );
}
