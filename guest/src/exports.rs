//! The world's exports: converts WIT values to calls of the Python driver
//! (`driver.py`) and its answers back to WIT values.

use crate::abi::Val;
use crate::py::{Obj, PyResult, call_driver};

/// Discriminants of the WIT enum `error-kind`, in declaration order.
const ERROR_KINDS: [&str; 3] = ["syntax", "exception", "exit"];

/// Runs the export `name`; returns its result value (`None` for no result).
pub fn call(name: &str, args: Vec<Val>) -> Option<Val> {
    // `prepare-snapshot` follows `load-function` in an instance that is only
    // snapshotted: the refresh belongs to the instances made from it.
    if name != "prepare-snapshot" && crate::wasi::take_restored() {
        // First call in an instance made from a pre-initialization snapshot:
        // the environment and the `random` seed were frozen in it.
        let environment = crate::wasi::host_environment();
        if let Err(message) =
            Obj::str_list(&environment).and_then(|env| call_driver("after_restore", &[env]))
        {
            panic!("refreshing the restored instance failed: {message}");
        }
    }
    let mut args = args.into_iter();
    match name {
        "execute" => {
            let code = string(args.next());
            let options = Options::from(args.next());
            let result = guarded(|| {
                let out = call_driver("execute", &[Obj::str(&code)?, options.to_py()?])?;
                outcome(&out, output_record)
            });
            // Nothing the call started may outlive it, whatever user code did
            // to the driver's own clean-up.
            crate::task::cancel_all();
            Some(result)
        }
        "snapshot-state" => Some(match snapshot_state() {
            Ok((data, skipped)) => Val::ok(Some(Val::Record(vec![
                Val::Bytes(data),
                Val::List(skipped.into_iter().map(Val::String).collect()),
            ]))),
            Err(message) => Val::err(Some(Val::String(message))),
        }),
        "restore-state" => {
            let data = match args.next() {
                Some(Val::Bytes(data)) => data,
                other => panic!("restore-state: expected bytes, found {other:?}"),
            };
            Some(unit_result(
                Obj::bytes(&data).and_then(|d| call_driver("restore_state", &[d])),
            ))
        }
        "clear-state" => {
            // Removing names from a dict cannot fail short of a driver bug.
            if let Err(message) = call_driver("clear_state", &[]) {
                panic!("clear_state failed: {message}");
            }
            None
        }
        "finalize-preinit" => {
            let modules = match args.next() {
                Some(Val::List(items)) => items
                    .into_iter()
                    .map(|v| string(Some(v)))
                    .collect::<Vec<_>>(),
                other => panic!("finalize-preinit: expected a list, found {other:?}"),
            };
            let result = crate::immortal::while_preparing(|| {
                Obj::str_list(&modules).and_then(|m| call_driver("preload", &[m]))
            });
            if result.is_ok() {
                crate::wasi::reset_for_snapshot();
            }
            Some(unit_result(result))
        }
        "load-function" => {
            let module = string(args.next());
            let source = string(args.next());
            let handler = string(args.next());
            let result = guarded(|| {
                let out = call_driver(
                    "load_function",
                    &[Obj::str(&module)?, Obj::str(&source)?, Obj::str(&handler)?],
                )?;
                outcome(&out, |_| Ok(None))
            });
            // `Case(0, _)` is `result::ok`.
            if matches!(result, Val::Case(0, _)) {
                crate::wasi::reset_for_snapshot();
            }
            Some(result)
        }
        "prepare-snapshot" => {
            let result = crate::immortal::while_preparing(|| call_driver("prepare_snapshot", &[]));
            // Whatever the collection's finalizers did to WASI state is not
            // frozen either.
            crate::wasi::reset_for_snapshot();
            Some(unit_result(result))
        }
        "call-handler" => {
            let event = string(args.next());
            let context = string(args.next());
            let options = Options::from(args.next());
            let result = guarded(|| {
                let out = call_driver(
                    "call_handler",
                    &[Obj::str(&event)?, Obj::str(&context)?, options.to_py()?],
                )?;
                outcome(&out, output_record)
            });
            crate::task::cancel_all();
            Some(result)
        }
        other => panic!("unknown export {other}"),
    }
}

fn string(val: Option<Val>) -> String {
    match val {
        Some(Val::String(s)) => s,
        other => panic!("expected a string, found {other:?}"),
    }
}

fn unit_result(result: PyResult<Obj>) -> Val {
    match result {
        Ok(_) => Val::ok(None),
        Err(message) => Val::err(Some(Val::String(message))),
    }
}

/// An `execute-options` record.
struct Options {
    output_limit_bytes: u64,
    callbacks: bool,
    trace: bool,
}

impl Options {
    fn from(val: Option<Val>) -> Options {
        let flag = |v: &Val| matches!(v, Val::Bool(true) | Val::Int(1));
        match val {
            Some(Val::Record(fields)) => match fields.as_slice() {
                [Val::Int(limit), callbacks, trace] => Options {
                    output_limit_bytes: *limit as u64,
                    callbacks: flag(callbacks),
                    trace: flag(trace),
                },
                other => panic!("execute-options: unexpected fields {other:?}"),
            },
            other => panic!("expected execute-options, found {other:?}"),
        }
    }

    /// `(output_limit_bytes, callbacks, trace)` for the driver.
    fn to_py(&self) -> PyResult<Obj> {
        Obj::tuple(vec![
            Obj::int(self.output_limit_bytes)?,
            Obj::bool(self.callbacks)?,
            Obj::bool(self.trace)?,
        ])
    }
}

/// Runs a driver call whose failure means the driver itself broke (not the
/// user's code), and reports such a failure as an `execute-error` so the host
/// gets a typed error instead of a trap.
fn guarded(run: impl FnOnce() -> PyResult<Val>) -> Val {
    match run() {
        Ok(val) => val,
        Err(message) => Val::err(Some(Val::Record(vec![
            Val::Tag(1),
            Val::String("eryx.GuestError".to_owned()),
            Val::String(message.clone()),
            Val::String(message),
            Val::String(String::new()),
            Val::String(String::new()),
        ]))),
    }
}

/// The `execute-output` record of a driver's `("ok", stdout, stderr,
/// result_repr, result_json)` tuple.
fn output_record(out: &Obj) -> PyResult<Option<Val>> {
    let opt = |v: Option<String>| v.map_or_else(Val::none, |s| Val::some(Val::String(s)));
    Ok(Some(Val::Record(vec![
        Val::String(out.item(1)?.to_string()?),
        Val::String(out.item(2)?.to_string()?),
        opt(out.item(3)?.to_opt_string()?),
        opt(out.item(4)?.to_opt_string()?),
    ])))
}

/// Converts a driver outcome tuple to a WIT `result`: `ok` gives `on_ok`'s
/// payload, the other statuses an `execute-error` record from
/// `(kind, type_name, message, traceback, stdout, stderr)`.
fn outcome(out: &Obj, on_ok: impl FnOnce(&Obj) -> PyResult<Option<Val>>) -> PyResult<Val> {
    let status = out.item(0)?.to_string()?;
    if status == "ok" {
        return Ok(Val::ok(on_ok(out)?));
    }
    let kind = ERROR_KINDS
        .iter()
        .position(|k| *k == status)
        .ok_or_else(|| format!("driver returned unknown status {status:?}"))?;
    let mut fields = vec![Val::Tag(kind as u32)];
    for i in 1..6 {
        fields.push(Val::String(out.item(i)?.to_string()?));
    }
    Ok(Val::err(Some(Val::Record(fields))))
}

fn snapshot_state() -> PyResult<(Vec<u8>, Vec<String>)> {
    let out = call_driver("snapshot_state", &[])?;
    Ok((out.item(0)?.to_bytes()?, out.item(1)?.to_string_list()?))
}
