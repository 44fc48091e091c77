//! The CPython FFI: starting the interpreter, loading the driver module
//! (`driver.py`, as `_eryx`) and converting the few value shapes we exchange
//! with it. All `unsafe` that touches CPython lives here.
//!
//! The guest is single-threaded and holds the GIL from `Py_InitializeEx` on,
//! which every call below relies on.

use std::ffi::{CStr, CString, c_char};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3_ffi as ffi;

const DRIVER_SOURCE: &str = include_str!("driver.py");
/// The socket and ssl shims (`net.py`), loaded as `_eryx_net` before the
/// driver, which installs them.
const NET_SOURCE: &str = include_str!("net.py");

/// An owned (strong) reference to a Python object.
pub struct Obj(NonNull<ffi::PyObject>);

impl Drop for Obj {
    fn drop(&mut self) {
        // SAFETY: we own one reference, and hold the GIL.
        unsafe { ffi::Py_DecRef(self.0.as_ptr()) };
    }
}

/// A Python exception, described in one line (`Type: message`).
pub type PyResult<T> = Result<T, String>;

impl Obj {
    /// Takes ownership of a new reference; null means a Python error is set.
    fn new(ptr: *mut ffi::PyObject) -> PyResult<Obj> {
        NonNull::new(ptr).map(Obj).ok_or_else(take_error)
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::PyObject {
        self.0.as_ptr()
    }

    /// A `str`.
    pub fn str(text: &str) -> PyResult<Obj> {
        // SAFETY: pointer and length describe valid UTF-8 owned by `text`.
        Obj::new(unsafe {
            ffi::PyUnicode_FromStringAndSize(text.as_ptr().cast(), text.len() as ffi::Py_ssize_t)
        })
    }

    /// A `bytes`.
    pub fn bytes(data: &[u8]) -> PyResult<Obj> {
        // SAFETY: pointer and length describe bytes owned by `data`.
        Obj::new(unsafe {
            ffi::PyBytes_FromStringAndSize(data.as_ptr().cast(), data.len() as ffi::Py_ssize_t)
        })
    }

    /// An `int`.
    pub fn int(value: u64) -> PyResult<Obj> {
        // SAFETY: plain constructor.
        Obj::new(unsafe { ffi::PyLong_FromUnsignedLongLong(value) })
    }

    /// A `list` of `str`.
    pub fn str_list(items: &[String]) -> PyResult<Obj> {
        // SAFETY: a new list of the right length; `PyList_SetItem` steals the
        // reference we give it, and every slot is filled before use.
        unsafe {
            let list = Obj::new(ffi::PyList_New(items.len() as ffi::Py_ssize_t))?;
            for (i, item) in items.iter().enumerate() {
                let item = Obj::str(item)?;
                ffi::PyList_SetItem(list.as_ptr(), i as ffi::Py_ssize_t, item.into_raw());
            }
            Ok(list)
        }
    }

    /// `None`.
    pub fn none() -> Obj {
        // SAFETY: `None` is immortal; a new reference to it is always valid.
        Obj(NonNull::new(unsafe { ffi::Py_NewRef(ffi::Py_None()) }).expect("None"))
    }

    /// A `bool`.
    pub fn bool(value: bool) -> PyResult<Obj> {
        // SAFETY: plain constructor.
        Obj::new(unsafe { ffi::PyBool_FromLong(value.into()) })
    }

    /// A `tuple` of `items`.
    pub fn tuple(items: Vec<Obj>) -> PyResult<Obj> {
        // SAFETY: a new tuple of the right length; `PyTuple_SetItem` steals
        // the reference we give it, and every slot is filled before use.
        unsafe {
            let tuple = Obj::new(ffi::PyTuple_New(items.len() as ffi::Py_ssize_t))?;
            for (i, item) in items.into_iter().enumerate() {
                ffi::PyTuple_SetItem(tuple.as_ptr(), i as ffi::Py_ssize_t, item.into_raw());
            }
            Ok(tuple)
        }
    }

    /// A `list` of `items`.
    pub fn list(items: Vec<Obj>) -> PyResult<Obj> {
        // SAFETY: as `str_list`.
        unsafe {
            let list = Obj::new(ffi::PyList_New(items.len() as ffi::Py_ssize_t))?;
            for (i, item) in items.into_iter().enumerate() {
                ffi::PyList_SetItem(list.as_ptr(), i as ffi::Py_ssize_t, item.into_raw());
            }
            Ok(list)
        }
    }

    /// A new reference to a borrowed one.
    ///
    /// # Safety
    /// `ptr` must be a live object (e.g. an argument of a call in progress).
    unsafe fn borrowed(ptr: *mut ffi::PyObject) -> Obj {
        // SAFETY: guaranteed by the caller.
        Obj(NonNull::new(unsafe { ffi::Py_NewRef(ptr) }).expect("a live object"))
    }

    /// The value of an `int` that fits in 64 bits, unsigned.
    pub fn to_u64(&self) -> PyResult<u64> {
        // SAFETY: checks the type; `u64::MAX` with an error set on failure.
        let value = unsafe { ffi::PyLong_AsUnsignedLongLong(self.as_ptr()) };
        // SAFETY: only reads the error indicator.
        if value == u64::MAX && unsafe { !ffi::PyErr_Occurred().is_null() } {
            return Err(take_error());
        }
        Ok(value)
    }

    /// The truth value (`bool(self)`).
    pub fn truthy(&self) -> PyResult<bool> {
        // SAFETY: any object; -1 with an error set on failure.
        match unsafe { ffi::PyObject_IsTrue(self.as_ptr()) } {
            -1 => Err(take_error()),
            v => Ok(v == 1),
        }
    }

    fn into_raw(self) -> *mut ffi::PyObject {
        let ptr = self.0.as_ptr();
        std::mem::forget(self);
        ptr
    }

    /// Whether this is `None`.
    pub fn is_none(&self) -> bool {
        // SAFETY: identity comparison with the `None` singleton.
        unsafe { ffi::Py_IsNone(self.as_ptr()) != 0 }
    }

    /// Item `i` of a tuple or list (a new reference).
    pub fn item(&self, i: usize) -> PyResult<Obj> {
        // SAFETY: `PySequence_GetItem` checks the type and bounds and returns
        // a new reference or sets an error.
        Obj::new(unsafe { ffi::PySequence_GetItem(self.as_ptr(), i as ffi::Py_ssize_t) })
    }

    /// Length of a sequence.
    pub fn len(&self) -> PyResult<usize> {
        // SAFETY: checks the type; -1 with an error set on failure.
        let n = unsafe { ffi::PySequence_Size(self.as_ptr()) };
        if n < 0 {
            Err(take_error())
        } else {
            Ok(n as usize)
        }
    }

    /// The contents of a `str`, as UTF-8 (lone surrogates are an error).
    pub fn to_string(&self) -> PyResult<String> {
        let mut len: ffi::Py_ssize_t = 0;
        // SAFETY: returns a pointer into the str's cached UTF-8, valid while
        // the object lives (we copy it at once), or null with an error set.
        unsafe {
            let ptr = ffi::PyUnicode_AsUTF8AndSize(self.as_ptr(), &mut len);
            if ptr.is_null() {
                return Err(take_error());
            }
            let bytes = std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize);
            Ok(String::from_utf8_lossy(bytes).into_owned())
        }
    }

    /// `None` or the contents of a `str`.
    pub fn to_opt_string(&self) -> PyResult<Option<String>> {
        if self.is_none() {
            Ok(None)
        } else {
            self.to_string().map(Some)
        }
    }

    /// The contents of a `bytes`.
    pub fn to_bytes(&self) -> PyResult<Vec<u8>> {
        let mut ptr: *mut c_char = std::ptr::null_mut();
        let mut len: ffi::Py_ssize_t = 0;
        // SAFETY: fills `ptr`/`len` with the bytes' internal buffer (valid
        // while the object lives; we copy it at once), or fails with an error.
        unsafe {
            if ffi::PyBytes_AsStringAndSize(self.as_ptr(), &mut ptr, &mut len) != 0 {
                return Err(take_error());
            }
            Ok(std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize).to_vec())
        }
    }

    /// A `list` of `str` as strings.
    pub fn to_string_list(&self) -> PyResult<Vec<String>> {
        (0..self.len()?)
            .map(|i| self.item(i)?.to_string())
            .collect()
    }
}

/// Takes the raised Python exception and describes it in one line.
fn take_error() -> String {
    // SAFETY: fetches (and clears) the current exception, a new reference or null.
    let exc = unsafe { ffi::PyErr_GetRaisedException() };
    let Some(exc) = NonNull::new(exc).map(Obj) else {
        return "unknown Python error (no exception set)".to_owned();
    };
    // SAFETY: every object has a type whose `tp_name` is a NUL-terminated
    // static string; `PyObject_Str` returns a new reference or null.
    let (type_name, text) = unsafe {
        let type_name = std::ffi::CStr::from_ptr((*ffi::Py_TYPE(exc.as_ptr())).tp_name);
        let text = NonNull::new(ffi::PyObject_Str(exc.as_ptr())).map(Obj);
        (type_name.to_string_lossy().into_owned(), text)
    };
    match text.map(|t| t.to_string()) {
        Some(Ok(text)) => format!("{type_name}: {text}"),
        _ => {
            // SAFETY: drop whatever error `str()` raised; we already have one to report.
            unsafe { ffi::PyErr_Clear() };
            type_name
        }
    }
}

/// A Rust function Python can call: positional arguments in, a new object
/// (or an error message, raised as `RuntimeError`) out.
pub type HostFn = fn(&[Obj]) -> PyResult<Obj>;

const CAPSULE_NAME: &std::ffi::CStr = c"eryx.host_fn";

/// The one C entry point of every [`HostFn`]: `slf` is a capsule holding the
/// Rust function (see [`add_module`]).
unsafe extern "C" fn trampoline(
    slf: *mut ffi::PyObject,
    args: *mut *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: `slf` is the capsule `add_module` made for this function, named
    // `CAPSULE_NAME`, holding a `HostFn` pointer.
    let pointer = unsafe { ffi::PyCapsule_GetPointer(slf, CAPSULE_NAME.as_ptr()) };
    if pointer.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the capsule holds a `HostFn` cast to a data pointer (same size).
    let function: HostFn = unsafe { std::mem::transmute::<*mut std::ffi::c_void, HostFn>(pointer) };
    // SAFETY: METH_FASTCALL passes `nargs` live borrowed arguments at `args`.
    let args: Vec<Obj> = (0..nargs.max(0) as usize)
        .map(|i| unsafe { Obj::borrowed(*args.add(i)) })
        .collect();
    match function(&args) {
        Ok(value) => value.into_raw(),
        Err(message) => {
            let message = CString::new(message.replace('\0', " ")).expect("no NUL left");
            // SAFETY: sets the error indicator; null tells Python it is set.
            unsafe { ffi::PyErr_SetString(ffi::PyExc_RuntimeError, message.as_ptr()) };
            std::ptr::null_mut()
        }
    }
}

/// Creates the module `name` in `sys.modules` with `functions`, each a
/// [`HostFn`] behind the shared trampoline.
pub fn add_module(
    name: &std::ffi::CStr,
    functions: &[(&'static std::ffi::CStr, HostFn)],
) -> PyResult<()> {
    // SAFETY: plain constructors and dict/attribute setters on live objects;
    // each PyMethodDef is leaked, so it outlives the function objects that
    // point to it (they live as long as the module, i.e. the instance).
    unsafe {
        let module = Obj::new(ffi::PyModule_New(name.as_ptr()))?;
        for (fn_name, function) in functions {
            let def = Box::leak(Box::new(ffi::PyMethodDef {
                ml_name: fn_name.as_ptr(),
                ml_meth: ffi::PyMethodDefPointer {
                    PyCFunctionFast: trampoline,
                },
                ml_flags: ffi::METH_FASTCALL,
                ml_doc: std::ptr::null(),
            }));
            let capsule = Obj::new(ffi::PyCapsule_New(
                *function as *mut std::ffi::c_void,
                CAPSULE_NAME.as_ptr(),
                None,
            ))?;
            let callable = Obj::new(ffi::PyCFunction_NewEx(
                def,
                capsule.as_ptr(),
                std::ptr::null_mut(),
            ))?;
            if ffi::PyObject_SetAttrString(module.as_ptr(), fn_name.as_ptr(), callable.as_ptr())
                != 0
            {
                return Err(take_error());
            }
        }
        if ffi::PyDict_SetItemString(
            ffi::PyImport_GetModuleDict(),
            name.as_ptr(),
            module.as_ptr(),
        ) != 0
        {
            return Err(take_error());
        }
    }
    Ok(())
}

/// The driver module `_eryx`, loaded once.
static DRIVER: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// Starts CPython (reading `PYTHONHOME`/`PYTHONPATH` from the WASI
/// environment the host gives us) and loads the driver, once.
pub fn initialize() -> PyResult<()> {
    if !DRIVER.load(Ordering::Acquire).is_null() {
        return Ok(());
    }
    // SAFETY: called on the only thread; initializes the interpreter once
    // (without signal handlers, which WASI does not have).
    unsafe {
        if ffi::Py_IsInitialized() == 0 {
            ffi::Py_InitializeEx(0);
        }
    }
    crate::host::install()?;
    exec_module(c"_eryx_net", NET_SOURCE, c"<eryx net>")?;
    let module = exec_module(c"_eryx", DRIVER_SOURCE, c"<eryx driver>")?;
    DRIVER.store(module.into_raw(), Ordering::Release);
    Ok(())
}

/// Compiles `source` and runs it as module `name` (put in `sys.modules`).
fn exec_module(name: &CStr, source: &str, filename: &CStr) -> PyResult<Obj> {
    let source = CString::new(source).expect("embedded Python has no NUL byte");
    // SAFETY: compile and execute the source as module `name`; both calls
    // take valid C strings and return new references or null with an error.
    unsafe {
        let code = Obj::new(ffi::Py_CompileStringExFlags(
            source.as_ptr(),
            filename.as_ptr(),
            ffi::Py_file_input,
            std::ptr::null_mut(),
            -1,
        ))?;
        Obj::new(ffi::PyImport_ExecCodeModuleEx(
            name.as_ptr(),
            code.as_ptr(),
            filename.as_ptr(),
        ))
    }
}

/// Calls `_eryx.<name>(*args)` and returns its result.
pub fn call_driver(name: &str, args: &[Obj]) -> PyResult<Obj> {
    initialize()?;
    let driver = DRIVER.load(Ordering::Acquire);
    let name = CString::new(name).expect("driver function names have no NUL byte");
    // SAFETY: `driver` is the live module (we keep its reference forever);
    // the tuple is filled completely (`PyTuple_SetItem` steals a new
    // reference per slot) before the call, which returns a new reference.
    unsafe {
        let func = Obj::new(ffi::PyObject_GetAttrString(driver, name.as_ptr()))?;
        let tuple = Obj::new(ffi::PyTuple_New(args.len() as ffi::Py_ssize_t))?;
        for (i, arg) in args.iter().enumerate() {
            ffi::Py_IncRef(arg.as_ptr());
            ffi::PyTuple_SetItem(tuple.as_ptr(), i as ffi::Py_ssize_t, arg.as_ptr());
        }
        Obj::new(ffi::PyObject_Call(
            func.as_ptr(),
            tuple.as_ptr(),
            std::ptr::null_mut(),
        ))
    }
}
