//! Makes the objects alive before a snapshot immortal (CPython's
//! `_Py_SetImmortal`, PEP 683), so instances made from the snapshot take and
//! drop references to them without writing to the pages they live on.
//!
//! Only while a snapshot is being prepared ([`preparing`]): user code can reach
//! `_eryx_host.immortalize`, and pinning its own objects would only waste its
//! instance's memory, but there is no reason to let it.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3_ffi as ffi;

use crate::py::{Obj, PyResult};

unsafe extern "C" {
    /// `_Py_SetImmortal(PyObject *)` (`Objects/object.c`): untracks a
    /// collected object and pins its reference count. Not in the limited or
    /// unstable API, but exported by the wheel's `libpython3.14.so`; CPython
    /// uses it for interned strings.
    fn _Py_SetImmortal(op: *mut ffi::PyObject);
    /// `PyUnstable_IsImmortal(PyObject *)` (3.14 unstable API): 1 if immortal.
    fn PyUnstable_IsImmortal(op: *mut ffi::PyObject) -> c_int;
}

/// Set while the driver prepares a snapshot (`finalize-preinit`,
/// `prepare-snapshot`).
static PREPARING: AtomicBool = AtomicBool::new(false);

/// Runs `f` with [`preparing`] true.
pub fn while_preparing<T>(f: impl FnOnce() -> T) -> T {
    PREPARING.store(true, Ordering::Relaxed);
    let out = f();
    PREPARING.store(false, Ordering::Relaxed);
    out
}

/// Whether a snapshot is being prepared.
pub fn preparing() -> bool {
    PREPARING.load(Ordering::Relaxed)
}

/// Code-object attributes that hold objects of their own (stored members,
/// not computed): code objects have no `tp_traverse`.
const CODE_MEMBERS: [&std::ffi::CStr; 4] = [
    c"co_consts",
    c"co_names",
    c"co_linetable",
    c"co_exceptiontable",
];

/// Makes every object in `roots` (a list, e.g. `gc.get_objects()`) and every
/// object reachable from them immortal: through `tp_traverse`, the keys of
/// dicts (which a dict's traversal skips when they are strings) and the
/// members of code objects. Objects immortal already, such as a base
/// snapshot's under a function's, are not walked again. Returns how many
/// objects were made immortal. The collector is disabled meanwhile, so no
/// finalizer runs and no object is freed during the walk; the walk itself
/// allocates only its stack (4 bytes per pending reference), outside Python's
/// heap. Fails when `roots` is not a list.
pub fn immortalize_reachable(roots: &Obj) -> PyResult<usize> {
    let roots = roots.as_ptr();
    // SAFETY: a type check, then plain C API calls on a live list (we hold a
    // reference to it; the driver's call holds the GIL); items are borrowed
    // from it and stay alive while it does.
    let mut stack: Vec<*mut ffi::PyObject> = unsafe {
        if ffi::PyList_Check(roots) == 0 {
            return Err("immortalize takes a list".to_owned());
        }
        let n = ffi::PyList_Size(roots).max(0);
        (0..n).map(|i| ffi::PyList_GetItem(roots, i)).collect()
    };
    // SAFETY: toggles the collector; returns whether it was enabled.
    let was_enabled = unsafe { ffi::PyGC_Disable() } != 0;
    let mut count = 0;
    while let Some(op) = stack.pop() {
        // SAFETY: every pointer on the stack came from a live container
        // (the root list, a traversal, a dict or a code object that holds a
        // reference to it); nothing is freed during the walk (no Python code
        // runs and the collector is off), so it is still live.
        unsafe {
            if op.is_null() || PyUnstable_IsImmortal(op) != 0 {
                continue;
            }
            _Py_SetImmortal(op);
            count += 1;
            let ty = ffi::Py_TYPE(op);
            if ffi::PyType_HasFeature(ty, ffi::Py_TPFLAGS_HAVE_GC) != 0
                && let Some(traverse) = (*ty).tp_traverse
            {
                traverse(op, push, (&raw mut stack).cast::<c_void>());
            }
            if ffi::PyDict_Check(op) != 0 {
                let mut position: ffi::Py_ssize_t = 0;
                let mut key = std::ptr::null_mut();
                let mut value = std::ptr::null_mut();
                while ffi::PyDict_Next(op, &mut position, &mut key, &mut value) != 0 {
                    stack.push(key);
                }
            }
            if ffi::PyCode_Check(op) != 0 {
                for member in CODE_MEMBERS {
                    let held = ffi::PyObject_GetAttrString(op, member.as_ptr());
                    if held.is_null() {
                        ffi::PyErr_Clear();
                        continue;
                    }
                    // The code object keeps its own reference.
                    ffi::Py_DecRef(held);
                    stack.push(held);
                }
            }
        }
    }
    if was_enabled {
        // SAFETY: re-enables the collector disabled above.
        unsafe { ffi::PyGC_Enable() };
    }
    Ok(count)
}

/// `visitproc` for `tp_traverse`: pushes each referent on the walk's stack.
///
/// # Safety
/// `arg` is the `Vec` that [`immortalize_reachable`] passed to `tp_traverse`.
unsafe extern "C" fn push(op: *mut ffi::PyObject, arg: *mut c_void) -> c_int {
    // SAFETY: see the function's contract; the Vec outlives the traversal.
    let stack = unsafe { &mut *arg.cast::<Vec<*mut ffi::PyObject>>() };
    stack.push(op);
    0
}
