//! WASI state that must not be frozen into a pre-initialization snapshot, and
//! libc symbols the wheel's `libc.so` lacks.

/// `struct __clockid` of wasi-libc: a clock id behind a pointer.
#[repr(C)]
pub struct ClockId {
    id: u32,
}

// Rust's std for wasip1 (its `libc` crate) refers to these two wasi-libc data
// symbols, which the wheel's wasip2 `libc.so` does not export; nothing in the
// guest uses these clocks. Values are the WASI clock ids
// (`../shared/notes/toolchain.md`, "Building the guest").
/// WASI `clockid::process_cputime_id`.
#[unsafe(no_mangle)]
pub static _CLOCK_PROCESS_CPUTIME_ID: ClockId = ClockId { id: 2 };
/// WASI `clockid::thread_cputime_id`.
#[unsafe(no_mangle)]
pub static _CLOCK_THREAD_CPUTIME_ID: ClockId = ClockId { id: 3 };

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    /// Exported by the preview1 reactor adapter: forgets its descriptor table.
    fn reset_adapter_state();
}

unsafe extern "C" {
    /// Exported by wasi-libc: forgets the preopened directories it found.
    fn __wasilibc_reset_preopens();
}

/// Drops the adapter's and libc's cached WASI descriptors, so an instance made
/// from a snapshot finds its own preopens instead of stale handles (without it
/// the restored instance traps "unknown handle index" on first file access).
pub fn reset_for_snapshot() {
    // SAFETY: both functions only clear caches that are rebuilt on next use;
    // no descriptor from them is held across this call.
    unsafe {
        reset_adapter_state();
        __wasilibc_reset_preopens();
    }
}
