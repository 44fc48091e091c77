//! Building the guest (`guest/`) for `wasm32-wasip1` as a position-independent
//! shared library that links against the wheel's `libpython3.14.so` and `libc.so`.
//!
//! The prebuilt `wasm32-wasip1` std is not position independent, so std is
//! rebuilt with `-Z build-std` (allowed on stable through `RUSTC_BOOTSTRAP=1`;
//! needs `rustup component add rust-src` and `rustup target add wasm32-wasip1`).
//! Flags from `../shared/notes/toolchain.md`, "Building the guest".

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, PythonDist, Result};

/// Name of the guest library inside the component; the `wit-dylib` bindings
/// name it as their interpreter.
pub const LIBRARY_NAME: &str = "liberyx_guest.so";

/// Builds the guest of the workspace at `workspace` with cargo (a no-op when
/// it is up to date) into `target_dir`, and returns the path of
/// `eryx_guest.wasm`. `ERYX_GUEST_WASM` may name a prebuilt guest instead.
/// Run from a build script: settings of the outer cargo that must not reach
/// the nested build (wrappers such as clippy's, flags) are removed.
///
/// # Errors
/// [`Error::GuestBuild`] with cargo's output when the build fails, and the
/// rustup commands to run when the target or `rust-src` is missing.
pub fn build(workspace: &Path, target_dir: &Path, dist: &PythonDist) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ERYX_GUEST_WASM") {
        return Ok(path.into());
    }
    let target_dir = target_dir.to_owned();
    std::fs::create_dir_all(&target_dir)?;
    let output = target_dir
        .join("wasm32-wasip1")
        .join("release")
        .join("eryx_guest.wasm");

    // pyo3-ffi cannot probe a wasm interpreter: describe CPython 3.14 for it.
    let pyo3_config = target_dir.join("pyo3-config.txt");
    std::fs::write(
        &pyo3_config,
        "implementation=CPython\nversion=3.14\nshared=true\nabi3=false\nlib_name=python3.14\n\
         pointer_width=32\nbuild_flags=\nsuppress_build_script_link_lines=false\n",
    )?;

    let rustflags = [
        "-C",
        "relocation-model=pic",
        "-C",
        "link-self-contained=no",
        "-C",
        "link-arg=-shared",
        "-C",
        &format!("link-arg=-L{}", dist.lib_dir().display()),
    ]
    .join("\x1f");

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let result = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "eryx-guest",
            "--target",
            "wasm32-wasip1",
        ])
        .args(["-Z", "build-std=std,panic_abort"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        // Its own cargo home: the outer cargo holds the shared package-cache
        // lock while build scripts run, so a nested build that must download
        // (the guest's and std's dependencies, on a fresh machine) would wait
        // for it for ever.
        .env("CARGO_HOME", target_dir.join("cargo-home"))
        .env("PYO3_CONFIG_FILE", &pyo3_config)
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .output()
        .map_err(|e| Error::GuestBuild(format!("could not run cargo: {e}")))?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        let hint = if stderr.contains("rust-src") || stderr.contains("wasm32-wasip1") {
            "\nhint: run `rustup target add wasm32-wasip1 && rustup component add rust-src`"
        } else {
            ""
        };
        return Err(Error::GuestBuild(format!("cargo failed:\n{stderr}{hint}")));
    }
    Ok(output)
}
