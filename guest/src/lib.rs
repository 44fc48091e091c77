//! The eryx guest: CPython 3.14 behind the `eryx:sandbox` world.
//!
//! Built for `wasm32-wasip1` as a position-independent shared library (see
//! `preinit/src/guest.rs`) and linked with `libpython3.14.so` into the
//! component. [`abi`] implements the `wit_dylib.h` interpreter ABI that the
//! generated bindings call; [`exports`] maps each export onto the Python
//! driver (`driver.py`) through the FFI in [`py`].
//!
//! On any other target the crate is empty, so workspace-wide builds skip it.
#![cfg(target_os = "wasi")]
#![allow(missing_docs, clippy::missing_safety_doc)]

pub mod abi;
mod exports;
mod host;
mod immortal;
mod py;
mod task;
mod wasi;
