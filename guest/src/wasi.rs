//! WASI state that must not be frozen into a pre-initialization snapshot, and
//! libc symbols the wheel's `libc.so` lacks.

use std::sync::atomic::{AtomicBool, Ordering};

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
    /// WASI preview1: the size of the environment (count, bytes of strings).
    fn environ_sizes_get(count: *mut usize, buf_size: *mut usize) -> u16;
    /// WASI preview1: fills `environ` with pointers into `buf` ("KEY=VALUE\0").
    fn environ_get(environ: *mut *mut u8, buf: *mut u8) -> u16;
}

unsafe extern "C" {
    /// Exported by wasi-libc: forgets the preopened directories it found.
    fn __wasilibc_reset_preopens();
}

/// Set in the pre-initialized snapshot: the first call in an instance made
/// from it must refresh what the snapshot froze (see [`take_restored`]).
static RESTORED: AtomicBool = AtomicBool::new(false);

/// Whether this is the first call since the instance was restored from a
/// pre-initialization snapshot (true once, then false).
pub fn take_restored() -> bool {
    RESTORED.swap(false, Ordering::Relaxed)
}

/// The environment the host gives this instance, as `KEY=VALUE` strings, read
/// straight from WASI (libc's copy is the one frozen in the snapshot).
pub fn host_environment() -> Vec<String> {
    let (mut count, mut size) = (0usize, 0usize);
    // SAFETY: both out-pointers are valid for writes.
    if unsafe { environ_sizes_get(&mut count, &mut size) } != 0 {
        return Vec::new();
    }
    let mut pointers = vec![std::ptr::null_mut::<u8>(); count];
    let mut buf = vec![0u8; size];
    // SAFETY: `pointers` has room for `count` pointers and `buf` for `size`
    // bytes, the sizes WASI just reported.
    if unsafe { environ_get(pointers.as_mut_ptr(), buf.as_mut_ptr()) } != 0 {
        return Vec::new();
    }
    buf.split(|b| *b == 0)
        .take(count)
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect()
}

/// Drops the adapter's and libc's cached WASI descriptors, so an instance made
/// from a snapshot finds its own preopens instead of stale handles (without it
/// the restored instance traps "unknown handle index" on first file access).
pub fn reset_for_snapshot() {
    crate::task::reset_for_snapshot();
    // SAFETY: both functions only clear caches that are rebuilt on next use;
    // no descriptor from them is held across this call.
    unsafe {
        reset_adapter_state();
        __wasilibc_reset_preopens();
    }
    RESTORED.store(true, Ordering::Relaxed);
}
