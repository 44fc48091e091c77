//! The module `_eryx_host`: what Python (the driver) calls on the host —
//! callbacks, the event loop's timer and waits, tracing — as thin wrappers
//! over the world's imports ([`crate::abi`]) and the task built-ins
//! ([`crate::task`]).

use crate::abi::{Val, call_import};
use crate::py::{Obj, PyResult, add_module};
use crate::task::{self, Finished};

/// Registers `_eryx_host` in `sys.modules`.
pub fn install() -> PyResult<()> {
    add_module(
        c"_eryx_host",
        &[
            (c"invoke", invoke),
            (c"sleep", sleep),
            (c"wait", wait),
            (c"cancel", cancel),
            (c"callbacks", callbacks),
            (c"trace", trace),
        ],
    )
}

fn arg(args: &[Obj], i: usize) -> PyResult<&Obj> {
    args.get(i)
        .ok_or_else(|| format!("missing argument {}", i + 1))
}

/// `(ok, text)` of an `invoke` result.
fn invoke_result(value: Option<Val>) -> PyResult<Obj> {
    match value {
        Some(Val::Case(discr, Some(payload))) => match *payload {
            Val::String(text) => Obj::tuple(vec![Obj::bool(discr == 0)?, Obj::str(&text)?]),
            other => Err(format!("invoke returned {other:?}")),
        },
        other => Err(format!("invoke returned {other:?}")),
    }
}

/// `invoke(name, arguments_json)` → `(True, (ok, text))` when the host
/// answered at once, else `(False, handle)`.
fn invoke(args: &[Obj]) -> PyResult<Obj> {
    let name = arg(args, 0)?.to_string()?;
    let json = arg(args, 1)?.to_string()?;
    match task::start("invoke", vec![Val::String(name), Val::String(json)]) {
        Ok(value) => Obj::tuple(vec![Obj::bool(true)?, invoke_result(value)?]),
        Err(handle) => Obj::tuple(vec![Obj::bool(false)?, Obj::int(handle.into())?]),
    }
}

/// `sleep(nanoseconds)` → the timer's handle, or `None` if it is over already.
fn sleep(args: &[Obj]) -> PyResult<Obj> {
    let nanoseconds = arg(args, 0)?.to_u64()?;
    match task::start("sleep", vec![Val::Int(nanoseconds as i64)]) {
        Ok(_) => Ok(Obj::none()),
        Err(handle) => Obj::int(handle.into()),
    }
}

/// `wait(block)` → `None` when nothing finished (only when polling), else
/// `(handle, result)`: `result` is `(ok, text)` for `invoke`, `None` for
/// `sleep` or a cancelled call.
fn wait(args: &[Obj]) -> PyResult<Obj> {
    let block = arg(args, 0)?.truthy()?;
    match task::wait(block) {
        Finished::Nothing => Ok(Obj::none()),
        Finished::Returned(handle, value) => {
            let result = match value {
                Some(value) => invoke_result(Some(value))?,
                None => Obj::none(),
            };
            Obj::tuple(vec![Obj::int(handle.into())?, result])
        }
    }
}

/// `cancel(handle)`: the host drops its side of the call.
fn cancel(args: &[Obj]) -> PyResult<Obj> {
    let handle = arg(args, 0)?.to_u64()?;
    task::cancel(u32::try_from(handle).map_err(|_| format!("bad handle {handle}"))?);
    Ok(Obj::none())
}

/// `callbacks()` → `[(name, description, parameters_schema_json)]`.
fn callbacks(_args: &[Obj]) -> PyResult<Obj> {
    let Some(Val::List(items)) = call_import("list-callbacks", Vec::new()) else {
        return Err("list-callbacks returned no list".to_owned());
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Val::Record(fields) = item else {
            return Err(format!("list-callbacks returned {item:?}"));
        };
        let strings = fields
            .into_iter()
            .map(|field| match field {
                Val::String(text) => Obj::str(&text),
                other => Err(format!("callback-info field {other:?}")),
            })
            .collect::<PyResult<Vec<_>>>()?;
        out.push(Obj::tuple(strings)?);
    }
    Obj::list(out)
}

/// `trace(events)` with `events` a list of `(kind, lineno, function,
/// detail)`, `kind` the index of a `trace-kind` case.
fn trace(args: &[Obj]) -> PyResult<Obj> {
    let events = arg(args, 0)?;
    let mut batch = Vec::with_capacity(events.len()?);
    for i in 0..events.len()? {
        let event = events.item(i)?;
        let kind = event.item(0)?.to_u64()?;
        let lineno = event.item(1)?.to_u64()?;
        batch.push(Val::Record(vec![
            Val::Tag(kind.min(3) as u32),
            Val::Int(lineno.min(u32::MAX.into()) as i64),
            Val::String(event.item(2)?.to_string()?),
            Val::String(event.item(3)?.to_string()?),
        ]));
    }
    call_import("report-trace", vec![Val::List(batch)]);
    Ok(Obj::none())
}
