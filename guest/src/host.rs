//! The module `_eryx_host`: what Python (the driver) calls on the host —
//! callbacks, the event loop's timer and waits, tracing — as thin wrappers
//! over the world's imports ([`crate::abi`]) and the task built-ins
//! ([`crate::task`]).

use crate::abi::{Val, call_import};
use crate::immortal;
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
            (c"net_connect", net_connect),
            (c"net_start_tls", net_start_tls),
            (c"net_send", net_send),
            (c"net_recv", net_recv),
            (c"net_readable", net_readable),
            (c"net_close", net_close),
            (c"pbkdf2_hmac", pbkdf2_hmac),
            (c"immortalize", immortalize),
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

/// `(True, value)` or `(False, "kind: message")` of a `net-*` result, the
/// value converted by `ok`.
fn net_result(value: Option<Val>, ok: impl FnOnce(Val) -> PyResult<Obj>) -> PyResult<Obj> {
    match value {
        Some(Val::Case(0, Some(payload))) => Obj::tuple(vec![Obj::bool(true)?, ok(*payload)?]),
        Some(Val::Case(1, Some(payload))) => match *payload {
            Val::String(text) => Obj::tuple(vec![Obj::bool(false)?, Obj::str(&text)?]),
            other => Err(format!("net error {other:?}")),
        },
        other => Err(format!("net call returned {other:?}")),
    }
}

fn u32_arg(args: &[Obj], i: usize) -> PyResult<u32> {
    let value = arg(args, i)?.to_u64()?;
    u32::try_from(value).map_err(|_| format!("argument {} is out of range", i + 1))
}

fn int_val(value: Val) -> PyResult<Obj> {
    match value {
        Val::Int(n) => Obj::int(n as u64),
        other => Err(format!("expected an integer, got {other:?}")),
    }
}

/// `net_connect(host, port, timeout_ms)` → `(ok, connection or error)`.
fn net_connect(args: &[Obj]) -> PyResult<Obj> {
    let host = arg(args, 0)?.to_string()?;
    let port =
        u16::try_from(arg(args, 1)?.to_u64()?).map_err(|_| "port out of range".to_owned())?;
    let timeout = u32_arg(args, 2)?;
    let result = call_import(
        "net-connect",
        vec![
            Val::String(host),
            Val::Int(port.into()),
            Val::Int(timeout.into()),
        ],
    );
    net_result(result, int_val)
}

/// `net_start_tls(connection, server_name, alpn, timeout_ms)` → `(ok,
/// protocol or error)`.
fn net_start_tls(args: &[Obj]) -> PyResult<Obj> {
    let connection = u32_arg(args, 0)?;
    let server_name = arg(args, 1)?.to_string()?;
    let protocols = arg(args, 2)?;
    let mut alpn = Vec::new();
    for i in 0..protocols.len()? {
        alpn.push(Val::String(protocols.item(i)?.to_string()?));
    }
    let timeout = u32_arg(args, 3)?;
    let result = call_import(
        "net-start-tls",
        vec![
            Val::Int(connection.into()),
            Val::String(server_name),
            Val::List(alpn),
            Val::Int(timeout.into()),
        ],
    );
    net_result(result, |value| match value {
        Val::String(text) => Obj::str(&text),
        other => Err(format!("expected a string, got {other:?}")),
    })
}

/// `net_send(connection, data, timeout_ms)` → `(ok, bytes written or error)`.
fn net_send(args: &[Obj]) -> PyResult<Obj> {
    let connection = u32_arg(args, 0)?;
    let data = arg(args, 1)?.to_bytes()?;
    let timeout = u32_arg(args, 2)?;
    let result = call_import(
        "net-send",
        vec![
            Val::Int(connection.into()),
            Val::Bytes(data),
            Val::Int(timeout.into()),
        ],
    );
    net_result(result, int_val)
}

/// `net_recv(connection, max_bytes, timeout_ms)` → `(ok, bytes or error)`;
/// `b""` is the end of the stream.
fn net_recv(args: &[Obj]) -> PyResult<Obj> {
    let connection = u32_arg(args, 0)?;
    let max_bytes = u32_arg(args, 1)?;
    let timeout = u32_arg(args, 2)?;
    let result = call_import(
        "net-recv",
        vec![
            Val::Int(connection.into()),
            Val::Int(max_bytes.into()),
            Val::Int(timeout.into()),
        ],
    );
    net_result(result, |value| match value {
        Val::Bytes(data) => Obj::bytes(&data),
        Val::List(items) if items.is_empty() => Obj::bytes(&[]),
        other => Err(format!("expected bytes, got {other:?}")),
    })
}

/// `net_close(connection)`.
fn net_close(args: &[Obj]) -> PyResult<Obj> {
    let connection = u32_arg(args, 0)?;
    call_import("net-close", vec![Val::Int(connection.into())]);
    Ok(Obj::none())
}

/// `net_readable(connection, timeout_ms)` → `bool`.
fn net_readable(args: &[Obj]) -> PyResult<Obj> {
    let connection = u32_arg(args, 0)?;
    let timeout = u32_arg(args, 1)?;
    match call_import(
        "net-readable",
        vec![Val::Int(connection.into()), Val::Int(timeout.into())],
    ) {
        Some(Val::Bool(ready)) => Obj::bool(ready),
        other => Err(format!("net-readable returned {other:?}")),
    }
}

/// `pbkdf2_hmac(hash_name, password, salt, iterations, dklen)` → the derived
/// key (RFC 8018 PBKDF2 with HMAC over `md5`, `sha1`, `sha224`, `sha256`,
/// `sha384` or `sha512`). The driver checks the arguments as CPython does.
fn pbkdf2_hmac(args: &[Obj]) -> PyResult<Obj> {
    let name = arg(args, 0)?.to_string()?;
    let password = arg(args, 1)?.to_bytes()?;
    let salt = arg(args, 2)?.to_bytes()?;
    let rounds = u32_arg(args, 3)?;
    let length =
        usize::try_from(arg(args, 4)?.to_u64()?).map_err(|_| "dklen is too large".to_owned())?;
    let mut key = vec![0u8; length];
    let derive = match name.as_str() {
        "md5" => pbkdf2::pbkdf2::<hmac::Hmac<md5::Md5>>,
        "sha1" => pbkdf2::pbkdf2::<hmac::Hmac<sha1::Sha1>>,
        "sha224" => pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha224>>,
        "sha256" => pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha256>>,
        "sha384" => pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha384>>,
        "sha512" => pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha512>>,
        other => return Err(format!("unsupported hash type {other}")),
    };
    derive(&password, &salt, rounds, &mut key).map_err(|e| e.to_string())?;
    Obj::bytes(&key)
}

/// `immortalize(roots)` → how many: makes the objects of the list `roots`
/// and everything they reach immortal (see
/// [`immortal::immortalize_reachable`]). Refused unless a snapshot is being
/// prepared.
fn immortalize(args: &[Obj]) -> PyResult<Obj> {
    if !immortal::preparing() {
        return Err("immortalize is only for preparing a snapshot".to_owned());
    }
    let count = immortal::immortalize_reachable(arg(args, 0)?)?;
    Obj::int(count as u64)
}
