//! The files `build.rs` packed into `OUT_DIR`, included in the binary.

/// The CPython-for-WASI distribution, a zstd-compressed tar (see
/// [`eryx_bundle::pack`]).
pub(crate) static DIST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/python-dist.tar.zst"));

/// sha256 (hex) of [`DIST`], computed at build time.
pub(crate) const DIST_SHA256: &str = env!("ERYX_BUNDLE_DIST_SHA256");

/// The guest library (`eryx_guest.wasm`, a position-independent wasm shared
/// library built for `wasm32-wasip1`).
pub(crate) static GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/eryx_guest.wasm"));

/// sha256 (hex) of [`GUEST`], computed at build time.
pub(crate) const GUEST_SHA256: &str = env!("ERYX_BUNDLE_GUEST_SHA256");
