"""The Python half of the eryx guest, loaded as the module `_eryx`.

The Rust guest (guest/src/exports.rs) calls the functions below for the WIT
exports of `eryx:sandbox` and converts their plain return values (tuples of
str, bytes, None) to WIT values. User code runs as the body of `__main__`, or,
in an instance with a loaded function, in that function's module: its globals
are then the ones `execute` sees and the state snapshots hold.
"""

import ast
import os
import sys
import types

import _eryx_host as _host
import _eryx_net

# Sockets and TLS through the host, before anything imports `http.client`.
_eryx_net.install()


_PBKDF2_DIGESTS = {"md5": 16, "sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64}


def _pbkdf2_hmac(hash_name, password, salt, iterations, dklen=None):
    """`hashlib.pbkdf2_hmac`, computed by the guest's Rust (this CPython has
    no OpenSSL, and CPython has no pure-Python fallback since 3.12)."""
    if not isinstance(hash_name, str):
        raise TypeError(f"pbkdf2_hmac() argument 'hash_name' must be str, not {type(hash_name).__name__}")
    name = hash_name.lower().replace("-", "")
    if name not in _PBKDF2_DIGESTS:
        raise ValueError(f"unsupported hash type {hash_name}")
    password = bytes(memoryview(password))
    salt = bytes(memoryview(salt))
    iterations = iterations.__index__()
    if iterations < 1:
        raise ValueError("iteration value must be greater than 0.")
    if iterations > 0xFFFFFFFF:
        raise OverflowError("iteration value is too great.")
    if dklen is None:
        dklen = _PBKDF2_DIGESTS[name]
    dklen = dklen.__index__()
    if dklen < 1:
        raise ValueError("key length must be greater than 0.")
    if dklen > 0xFFFFFFFF:
        raise OverflowError("key length is too great.")
    return _host.pbkdf2_hmac(name, password, salt, iterations, dklen)


def _install_pbkdf2():
    import hashlib

    if not hasattr(hashlib, "pbkdf2_hmac"):
        hashlib.pbkdf2_hmac = _pbkdf2_hmac
        if "pbkdf2_hmac" not in hashlib.__all__:
            hashlib.__all__ = (*hashlib.__all__, "pbkdf2_hmac")


_install_pbkdf2()

# Bound once, so user code that rebinds `os.write` cannot divert output.
_os_write = os.write

FILENAME = "<exec>"
# Files of user code: tracebacks start at their first frame.
_USER_FILES = {FILENAME}
_RESULT = "__eryx_result__"
_MAIN = sys.modules["__main__"]
_CO_COROUTINE = 0x80

# Where user code runs and whose globals are the state: `__main__`, or the
# loaded function's module (see `load_function`).
_NAMESPACE = _MAIN.__dict__
_NAMESPACE_NAME = "__main__"
# The function module's values at import. They exist in every instance of its
# snapshot, so they are pickled by reference; functions and classes defined
# later (by `execute` in a session) are pickled by value. Kept alive so their
# ids stay theirs.
_ORIGINALS = ()
_ORIGINAL_IDS = frozenset()


class _Capture:
    """A text stream that writes through to a WASI descriptor (1 or 2).

    The host keeps what reaches the descriptor up to the call's output limit
    (user code cannot lift a cap kept there), and what was written before a
    trap is not lost with the instance. `limit` is kept for the driver's
    callers; the host does the capping.
    """

    encoding = "utf-8"
    errors = "backslashreplace"
    newlines = None

    def __init__(self, name, limit, fd=None):
        self.name = name
        self._fd = fd if fd is not None else (2 if "err" in name else 1)

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        data = memoryview(s.encode("utf-8", "backslashreplace"))
        while data:
            data = data[_os_write(self._fd, data):]
        return len(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass

    def isatty(self):
        return False

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    @property
    def closed(self):
        return False

    def fileno(self):
        import io

        raise io.UnsupportedOperation("fileno")

    def getvalue(self):
        # Everything went to the descriptor; the host returns it.
        return ""


class _Selector:
    """Stands in for a selector: WASI gives Python no sockets or pipes to wait on,
    so the event loop waits for its timers and for host callbacks in flight.

    With no callback in flight a wait is `time.sleep`. With callbacks in flight
    the instance blocks on its waitable set (`_eryx_host.wait`): the host runs
    every pending callback meanwhile, and a host timer (`_eryx_host.sleep`)
    joins the set so the loop's own timers still fire on time."""

    def select(self, timeout):
        if not _FUTURES:
            _cancel_timer()
            if timeout is None:
                raise RuntimeError("the event loop has nothing left to wait for (deadlock)")
            if timeout > 0:
                import time

                time.sleep(timeout)
            return []
        # Block until something finishes, unless the loop's next timer is due
        # now (or its host timer could not be armed): then only poll.
        block = timeout is None or (timeout > 0 and _arm_timer(timeout))
        _drain(_host.wait(block))
        return []

    def close(self):
        pass


# Host calls in flight: subtask handle -> the asyncio future awaiting it.
_FUTURES = {}
# The host timer in flight: (handle, deadline on time.monotonic()), or None.
_TIMER = None
# How much later than asked an existing host timer may fire and still be reused.
_TIMER_SLACK = 0.0005


def _arm_timer(timeout):
    """Makes sure a host timer fires within `timeout` seconds; False if the
    time is already up."""
    global _TIMER
    import time

    deadline = time.monotonic() + timeout
    if _TIMER is not None:
        if _TIMER[1] <= deadline + _TIMER_SLACK:
            return True
        _cancel_timer()
    handle = _host.sleep(max(0, int(timeout * 1e9)))
    if handle is None:
        return False
    _TIMER = (handle, deadline)
    return True


def _cancel_timer():
    global _TIMER
    if _TIMER is not None:
        _host.cancel(_TIMER[0])
        _TIMER = None


def _drain(event):
    """Settles the future of each finished host call: `event` first, then any
    others that finished meanwhile."""
    global _TIMER
    while event is not None:
        handle, result = event
        if _TIMER is not None and _TIMER[0] == handle:
            _TIMER = None
        else:
            future = _FUTURES.pop(handle, None)
            if future is not None and not future.done():
                future.set_result(result)
        event = _host.wait(False)


def _end_host_calls():
    """At the end of a call: forgets its host calls (the Rust guest cancels
    every one still in flight once the driver returns)."""
    global _TIMER
    _FUTURES.clear()
    _TIMER = None


def _install_event_loop(asyncio):
    """Makes our event loop asyncio's default. The default Unix loop needs
    `socket.socketpair()`, which WASI does not offer, so `asyncio.run` and
    `asyncio.new_event_loop` would fail without this. Uses the private
    policy hooks of CPython 3.14 (the public ones are deprecated), which is
    safe because the interpreter is pinned."""
    events = asyncio.events

    class WasiEventLoop(asyncio.BaseEventLoop):
        """An asyncio event loop for WASI: timers and callbacks, no I/O selector."""

        def __init__(self):
            super().__init__()
            self._selector = _Selector()

        def _process_events(self, event_list):
            pass

        def _write_to_self(self):
            pass

    class WasiEventLoopPolicy(events._BaseDefaultEventLoopPolicy):
        _loop_factory = WasiEventLoop

    events._set_event_loop_policy(WasiEventLoopPolicy())


class _AsyncioHook:
    """An import hook that installs our event loop when asyncio is first
    imported, so programs that never use asyncio do not pay for importing it."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "asyncio":
            return None
        sys.meta_path.remove(_AsyncioHook)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader:
    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        self._inner.exec_module(module)
        _install_event_loop(module)


if "asyncio" in sys.modules:
    _install_event_loop(sys.modules["asyncio"])
else:
    sys.meta_path.insert(0, _AsyncioHook)


# --- Host callbacks ------------------------------------------------------------
#
# Each callback the host offers is an async function in `builtins` under its
# name (`await get_time()`, `await echo(message="hi")`), also in the module
# `eryx` with `list_callbacks()` and the exception types below. Arguments are
# keyword arguments, checked against the callback's JSON Schema before the
# host is called (a `TypeError` when one is missing, unknown or of the wrong
# type); the host checks them again.


class CallbackError(Exception):
    """A host callback failed; the message is the host's."""


class CallbackTimeout(CallbackError, TimeoutError):
    """A host callback ran past the sandbox's per-callback timeout."""


class CallbackLimitExceeded(CallbackError):
    """This call made more callback invocations than the sandbox allows."""


_ERRORS = {
    "failed": CallbackError,
    "timeout": CallbackTimeout,
    "limit": CallbackLimitExceeded,
    "invalid-arguments": TypeError,
    "not-found": NameError,
}

_JSON_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


def _type_ok(value, schema):
    """Whether `value` has a type `schema` allows (the host checks the same
    rules again; a `TypedCallback` also deserializes into its type)."""
    if not isinstance(schema, dict):
        return True
    allowed = schema.get("type")
    if allowed is None:
        return True
    if isinstance(allowed, str):
        allowed = [allowed]
    for name in allowed:
        types_ = _JSON_TYPES.get(name)
        if types_ is None:
            return True
        if isinstance(value, bool) and name in ("integer", "number"):
            continue
        if isinstance(value, types_):
            return True
    return False


class Callback:
    """A host callback: calling it with keyword arguments returns a coroutine."""

    def __init__(self, name, description, schema):
        self.__name__ = self.__qualname__ = name
        self.__doc__ = description
        self.description = description
        self.schema = schema

    def _check(self, args, kwargs):
        name = self.__name__
        if args:
            raise TypeError(f"{name}() takes keyword arguments only ({len(args)} positional given)")
        schema = self.schema if isinstance(self.schema, dict) else {}
        properties = schema.get("properties") or {}
        for key in schema.get("required") or ():
            if key not in kwargs:
                raise TypeError(f"{name}() missing required argument: {key!r}")
        for key, value in kwargs.items():
            if key not in properties:
                if schema.get("additionalProperties") is False:
                    raise TypeError(f"{name}() got an unexpected keyword argument {key!r}")
                continue
            if not _type_ok(value, properties[key]):
                wanted = properties[key].get("type")
                raise TypeError(f"{name}() argument {key!r} must be {wanted}, not {type(value).__name__}")

    def __call__(self, *args, **kwargs):
        self._check(args, kwargs)
        import json

        try:
            arguments = json.dumps(kwargs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{self.__name__}() arguments must be JSON serializable: {exc}") from None
        return _invoke(self.__name__, arguments)

    def __repr__(self):
        return f"<host callback {self.__name__}>"


def _decode(result):
    import json

    ok, text = result
    if ok:
        return json.loads(text)
    try:
        error = json.loads(text)
        kind, message = error["kind"], error["message"]
    except Exception:
        kind, message = "failed", text
    raise _ERRORS.get(kind, CallbackError)(message)


async def _invoke(name, arguments):
    import asyncio

    loop = asyncio.get_running_loop()
    done, value = _host.invoke(name, arguments)
    if done:
        return _decode(value)
    future = loop.create_future()
    _FUTURES[value] = future
    try:
        result = await future
    except asyncio.CancelledError:
        # Only if the handle is still this call's: a finished call's handle
        # may already belong to another call.
        if _FUTURES.get(value) is future:
            del _FUTURES[value]
            _host.cancel(value)
        raise
    return _decode(result)


_CALLBACKS = {}
_CALLBACKS_LOADED = False


def list_callbacks():
    """The host callbacks this sandbox offers: a list of dicts with `name`,
    `description` and `parameters` (the JSON Schema of the arguments)."""
    return [
        {"name": cb.__name__, "description": cb.description, "parameters": cb.schema}
        for cb in _CALLBACKS.values()
    ]


def _load_callbacks(offered):
    """Installs the host's callbacks once per instance (asked for only when
    the host says it has some)."""
    global _CALLBACKS_LOADED
    if not offered or _CALLBACKS_LOADED:
        return
    import builtins
    import json

    _CALLBACKS_LOADED = True
    for name, description, schema_json in _host.callbacks():
        try:
            schema = json.loads(schema_json)
        except ValueError:
            schema = {}
        callback = Callback(name, description, schema)
        _CALLBACKS[name] = callback
        setattr(builtins, name, callback)
        setattr(_EXPORTED, name, callback)


def _make_module():
    module = types.ModuleType("eryx", "The sandbox's host interface: callbacks and their errors.")
    for obj in (CallbackError, CallbackTimeout, CallbackLimitExceeded, _eryx_net.NetworkPolicyError):
        obj.__module__ = "eryx"
        setattr(module, obj.__name__, obj)
    module.list_callbacks = list_callbacks
    module.Callback = Callback
    sys.modules["eryx"] = module
    import builtins

    builtins.list_callbacks = list_callbacks
    return module


_EXPORTED = _make_module()


# --- Tracing ------------------------------------------------------------------
#
# With a trace handler on the host, `sys.settrace` reports call, line, return
# and exception events of user code only (frames of files in `_USER_FILES`),
# batched: one host call per `_TRACE_BATCH` events and at the end.

_TRACE_KINDS = {"line": 0, "call": 1, "return": 2, "exception": 3}
_TRACE_BATCH = 256
_TRACE_EVENTS = []


def _flush_trace():
    if _TRACE_EVENTS:
        batch = list(_TRACE_EVENTS)
        _TRACE_EVENTS.clear()
        _host.trace(batch)


def _local_tracer(frame, event, arg):
    kind = _TRACE_KINDS.get(event)
    if kind is not None:
        detail = ""
        if kind == 3:
            detail = getattr(arg[0], "__qualname__", "")
        _TRACE_EVENTS.append((kind, frame.f_lineno, frame.f_code.co_name, detail))
        if len(_TRACE_EVENTS) >= _TRACE_BATCH:
            _flush_trace()
    return _local_tracer


def _global_tracer(frame, event, arg):
    if frame.f_code.co_filename not in _USER_FILES:
        return None
    return _local_tracer(frame, event, arg)


class _Call:
    """What every call of user code sets up and tears down: callbacks,
    tracing, captured streams, host calls in flight."""

    def __init__(self, options):
        limit, callbacks, trace = options
        self.out = _Capture("<stdout>", limit)
        self.err = _Capture("<stderr>", limit)
        self.trace = trace
        _load_callbacks(callbacks)

    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.out, self.err
        if self.trace:
            sys.settrace(_global_tracer)
        return self

    def __exit__(self, *exc):
        if self.trace:
            sys.settrace(None)
            _flush_trace()
        _end_host_calls()
        sys.stdout, sys.stderr = self.saved
        return False


def _type_name(exc):
    cls = type(exc)
    if cls.__module__ in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _format_exception(exc):
    """The traceback from the first frame of user code on (driver frames hidden)."""
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename not in _USER_FILES:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _compile(code):
    tree = ast.parse(code, FILENAME, "exec")
    has_result = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    if has_result:
        last = tree.body[-1]
        target = ast.copy_location(ast.Name(id=_RESULT, ctx=ast.Store()), last)
        tree.body[-1] = ast.copy_location(ast.Assign(targets=[target], value=last.value), last)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    return compile(tree, FILENAME, "exec", flags=flags, dont_inherit=True), has_result


def _result_values(value):
    if value is None:
        return None, None
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not lose the run
        text = f"<repr failed: {_type_name(exc)}: {exc}>"
    try:
        import json

        as_json = json.dumps(value)
    except Exception:
        as_json = None
    return text, as_json


def execute(code, options):
    """Runs `code` in `__main__`; `options` is (output limit, whether the
    host offers callbacks, whether it wants tracing events).

    Returns ("ok", stdout, stderr, result_repr, result_json) or
    (kind, type_name, message, traceback, stdout, stderr) with kind one of
    "syntax", "exception", "exit".
    """
    import linecache

    linecache.cache[FILENAME] = (len(code), None, code.splitlines(True), FILENAME)
    with _Call(options) as call:
        out, err = call.out, call.err
        try:
            codeobj, has_result = _compile(code)
        except SyntaxError as exc:
            import traceback

            text = "".join(traceback.format_exception_only(type(exc), exc))
            return ("syntax", _type_name(exc), str(exc), text, out.getvalue(), err.getvalue())
        try:
            value = eval(codeobj, _NAMESPACE)
            if codeobj.co_flags & _CO_COROUTINE:
                import asyncio

                asyncio.run(value)
            value = _NAMESPACE.pop(_RESULT, None) if has_result else None
            result_repr, result_json = _result_values(value)
        except SystemExit as exc:
            code_ = exc.code
            message = "0" if code_ is None else str(code_)
            return ("exit", "SystemExit", message, "", out.getvalue(), err.getvalue())
        except BaseException as exc:
            text = _format_exception(exc)
            return ("exception", _type_name(exc), str(exc), text, out.getvalue(), err.getvalue())
        return ("ok", out.getvalue(), err.getvalue(), result_repr, result_json)


# --- State snapshots --------------------------------------------------------
#
# Functions and classes defined in user code live in `__main__` (or in a
# function's module, after its import), which a new instance does not have, so
# they are pickled by value: code objects through
# `marshal` (same CPython build on both sides), classes as a skeleton plus
# their attributes (so methods that refer back to their class, e.g. through
# `super()`, pickle without recursion). Modules are pickled by name.


def _user_names():
    return [k for k in _NAMESPACE if not (k.startswith("__") and k.endswith("__"))]


_EMPTY_CELL = ("eryx-empty-cell",)


def _function_skeleton(code, name, qualname, ncells):
    import marshal

    cells = tuple(types.CellType() for _ in range(ncells)) or None
    fn = types.FunctionType(marshal.loads(code), _NAMESPACE, name, None, cells)
    fn.__qualname__ = qualname
    return fn


def _set_function_state(fn, state):
    defaults, kwdefaults, cell_values, attrs, doc = state
    fn.__defaults__ = defaults
    fn.__kwdefaults__ = kwdefaults
    fn.__doc__ = doc
    fn.__dict__.update(attrs)
    for cell, value in zip(fn.__closure__ or (), cell_values):
        if value is not _EMPTY_CELL:
            cell.cell_contents = value
    return fn


def _class_skeleton(meta, name, bases, qualname):
    cls = meta(name, bases, {"__module__": _NAMESPACE_NAME})
    cls.__qualname__ = qualname
    return cls


def _set_class_state(cls, attrs):
    for key, value in attrs.items():
        setattr(cls, key, value)
    return cls


def _cell_value(cell):
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY_CELL


def _defined_by_user(obj):
    """Whether a function or class was defined by user code in the namespace
    (so a new instance lacks it), not imported with a function's module."""
    return obj.__module__ == _NAMESPACE_NAME and id(obj) not in _ORIGINAL_IDS


class _Pickler:
    @staticmethod
    def make(file):
        import pickle

        class Pickler(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, types.ModuleType):
                    import importlib

                    return importlib.import_module, (obj.__name__,)
                if isinstance(obj, types.FunctionType) and _defined_by_user(obj):
                    import marshal

                    closure = obj.__closure__ or ()
                    args = (marshal.dumps(obj.__code__), obj.__name__, obj.__qualname__, len(closure))
                    state = (
                        obj.__defaults__,
                        obj.__kwdefaults__,
                        tuple(_cell_value(c) for c in closure),
                        dict(obj.__dict__),
                        obj.__doc__,
                    )
                    return _function_skeleton, args, state, None, None, _set_function_state
                if isinstance(obj, type) and _defined_by_user(obj):
                    attrs = {
                        k: v
                        for k, v in obj.__dict__.items()
                        if k not in ("__dict__", "__weakref__", "__module__", "__qualname__")
                        and not isinstance(v, (types.MemberDescriptorType, types.GetSetDescriptorType))
                    }
                    args = (type(obj), obj.__name__, obj.__bases__, obj.__qualname__)
                    return _class_skeleton, args, attrs, None, None, _set_class_state
                return NotImplemented

        return Pickler(file, protocol=5)


def _dumps(value):
    import io

    buf = io.BytesIO()
    _Pickler.make(buf).dump(value)
    return buf.getvalue()


def snapshot_state():
    """Returns (pickle of the user's globals, names left out as unpicklable)."""
    state = {k: _NAMESPACE[k] for k in _user_names()}
    skipped = []
    try:
        data = _dumps(state)
    except Exception:
        for key in list(state):
            try:
                _dumps(state[key])
            except Exception:
                skipped.append(key)
                del state[key]
        data = _dumps(state)
    return data, skipped


def restore_state(data):
    """Unpickles a snapshot into the namespace (same names are replaced)."""
    import pickle

    state = pickle.loads(data)
    if not isinstance(state, dict):
        raise TypeError("a state snapshot must hold a dict of globals")
    _NAMESPACE.update(state)


def clear_state():
    """Removes every user global from the namespace."""
    for key in _user_names():
        del _NAMESPACE[key]


def preload(modules):
    """Imports `modules` so a pre-initialization snapshot contains them."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    _warm_up()
    prepare_snapshot()


# What `_warm_up` runs: output through the captured streams, a final
# expression (its `repr` and JSON), and an exception with its traceback.
_WARM_UP_PROGRAMS = (
    "print('', end='')\n",
    "values = [n * 2 for n in range(8)]\n{'total': sum(values), 'last': values[-1]}\n",
    "def fails():\n    raise ValueError('warm-up')\nfails()\n",
)
_WARM_UP_EVENT = '{"name": "warm-up", "items": [1, 2.5, "x", null, true]}'
_WARM_UP_CONTEXT = '{"request_id": "", "function_name": "", "function_version": 0, "timeout_ms": 1000}'


def _warm_up():
    """Runs the call paths of `execute` and `call_handler` a few times, in a
    scratch namespace, before the snapshot is taken: what CPython does on the
    first run of code — the specializing interpreter rewriting the bytecode of
    the driver's functions, type attribute caches filling, modules imported on
    first use (`traceback`) — is then done once in the snapshot instead of in
    every instance made from it. Nothing reaches the host: the programs write
    no bytes, and nothing they define is kept."""
    import linecache

    global _NAMESPACE, _HANDLER
    saved = _NAMESPACE, _HANDLER
    options = (0, False, False)
    try:
        # CPython specializes an instruction after it has run a few times.
        for _ in range(4):
            for program in _WARM_UP_PROGRAMS:
                _NAMESPACE = {"__name__": "__main__"}
                execute(program, options)
            _HANDLER = lambda event, context: {"event": event, "left": context.remaining_time_ms()}
            call_handler(_WARM_UP_EVENT, _WARM_UP_CONTEXT, options)
    finally:
        _NAMESPACE, _HANDLER = saved
        linecache.cache.pop(FILENAME, None)


# The environment as `KEY=VALUE` strings when `reset_for_snapshot` re-armed
# `after_restore` (set by `_arm_restore`): an instance whose host gives the
# same needs no refresh.
_SNAPSHOT_ENVIRON = None


def _arm_restore():
    """What the next `after_restore` starts from, set at the end of `preload`
    and `load_function` (after which the host snapshots the instance, or a
    live session calls on): every call then starts in the host's writable,
    in-memory working directory (`/work`, `/tmp` beside it; libc keeps the
    directory as a path, so it survives a snapshot), the host's paths
    (`ERYX_PATHS`) are on `sys.path` even if an import removed one, and the
    environment is recorded for comparison."""
    global _SNAPSHOT_ENVIRON
    try:
        os.chdir("/work")
    except OSError:
        pass
    _apply_paths()
    _SNAPSHOT_ENVIRON = [f"{key}={value}" for key, value in os.environ.items()]


def prepare_snapshot():
    """Readies the instance for a snapshot (the base's in `preload`, a
    function's from the host's `prepare-snapshot`). Garbage is collected, then
    every object alive, and what it reaches, is made immortal (the guest's
    `immortal` module walks them): instances made from the snapshot take and
    drop references to them without writing to them, so the pages they live
    on are not copied (PEP 683 gives the same reason: sharing objects between
    processes without copy-on-write). They are never freed, which is why live
    sessions never do this. What the collector still tracks then moves to its
    permanent generation, so collections in the instances never visit it."""
    import gc

    gc.collect()
    _host.immortalize(gc.get_objects())
    gc.freeze()
    # Last: a finalizer run by the collection may have changed the environment.
    _arm_restore()


def after_restore(environment):
    """Refreshes, in an instance made from a pre-initialization snapshot, what
    the snapshot froze: the environment (`KEY=VALUE` strings from the host;
    nothing to do when they are the ones `_arm_restore` recorded) and the seed
    of `random`'s global generator, so instances do not share it. The working
    directory (`/work`) was set by `_arm_restore`."""
    if environment != _SNAPSHOT_ENVIRON:
        _refresh_environ(environment)
    if "random" in sys.modules:
        # 256 bits from the host's CSPRNG (`seed()` reads 2,496 bytes, which
        # cost ≈4× as much here); the generator is not cryptographic either way.
        sys.modules["random"].seed(int.from_bytes(os.urandom(32), "little"))


def _refresh_environ(environment):
    """Makes `os.environ` hold exactly `environment` (`KEY=VALUE` strings),
    changing only what differs, and applies its `ERYX_PATHS`."""
    fresh = {}
    for entry in environment:
        key, _, value = entry.partition("=")
        fresh[key] = value
    for key in [key for key in os.environ if key not in fresh]:
        del os.environ[key]
    for key, value in fresh.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    _apply_paths()


def _apply_paths():
    """Puts the host's mounted libraries and packages (`ERYX_PATHS`, in
    order) on `sys.path`, before the standard library."""
    paths = [p for p in os.environ.get("ERYX_PATHS", "").split(":") if p]
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


_apply_paths()


# --- Functions (the gateway) -------------------------------------------------
#
# A function's module is imported once, before a per-function snapshot is
# taken; every instance made from that snapshot then calls its handler once.

_HANDLER = None


def _outcome_error(kind, exc, out, err):
    if kind == "syntax":
        import traceback

        text = "".join(traceback.format_exception_only(type(exc), exc))
    else:
        text = _format_exception(exc)
    return (kind, _type_name(exc), str(exc), text, out.getvalue(), err.getvalue())


def _exit_error(exc, out, err):
    code_ = exc.code
    message = "0" if code_ is None else str(code_)
    return ("exit", "SystemExit", message, "", out.getvalue(), err.getvalue())


def load_function(module_name, source, handler_name):
    """Imports `source` as module `module_name` and keeps its `handler_name`.

    Returns ("ok", stdout, stderr, None, None) or an error tuple as `execute`.
    """
    import linecache

    global _HANDLER, _NAMESPACE, _NAMESPACE_NAME, _ORIGINALS, _ORIGINAL_IDS
    filename = f"{module_name}.py"
    out = _Capture("<stdout>", 64 * 1024)
    err = _Capture("<stderr>", 64 * 1024)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    _USER_FILES.add(filename)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        try:
            codeobj = compile(source, filename, "exec", dont_inherit=True)
        except SyntaxError as exc:
            return _outcome_error("syntax", exc, out, err)
        module = types.ModuleType(module_name)
        module.__file__ = filename
        sys.modules[module_name] = module
        try:
            exec(codeobj, module.__dict__)
        except SystemExit as exc:
            del sys.modules[module_name]
            return _exit_error(exc, out, err)
        except BaseException as exc:
            del sys.modules[module_name]
            return _outcome_error("exception", exc, out, err)
        handler = module.__dict__.get(handler_name)
        if not callable(handler):
            found = "not defined" if handler is None else f"a {type(handler).__name__}"
            message = f"{filename} must define a function {handler_name}(event, context); {handler_name} is {found}"
            return ("exception", "eryx.HandlerNotFound", message, "", out.getvalue(), err.getvalue())
        _HANDLER = handler
        _NAMESPACE = module.__dict__
        _NAMESPACE_NAME = module_name
        _ORIGINALS = tuple(module.__dict__.values())
        _ORIGINAL_IDS = frozenset(map(id, _ORIGINALS))
        _arm_restore()
        return ("ok", out.getvalue(), err.getvalue(), None, None)
    finally:
        sys.stdout, sys.stderr = saved


class Context:
    """The `context` argument of a handler: who is calling, and how much time is left."""

    def __init__(self, fields):
        import time

        self.request_id = fields["request_id"]
        self.function_name = fields["function_name"]
        self.function_version = fields["function_version"]
        self.timeout_ms = fields["timeout_ms"]
        self._deadline = None if self.timeout_ms is None else time.monotonic() + self.timeout_ms / 1000

    def remaining_time_ms(self):
        """Milliseconds left before this call is stopped; None without a timeout."""
        import time

        if self._deadline is None:
            return None
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    # The name AWS Lambda's Python runtime uses, for handlers written for it.
    get_remaining_time_in_millis = remaining_time_ms

    def __repr__(self):
        return (
            f"Context(request_id={self.request_id!r}, function_name={self.function_name!r}, "
            f"function_version={self.function_version!r}, timeout_ms={self.timeout_ms!r})"
        )


def call_handler(event_json, context_json, options):
    """Calls the loaded handler with the decoded event and a `Context`;
    `options` as for `execute`.

    Returns ("ok", stdout, stderr, None, result_json) or an error tuple as `execute`.
    """
    import json

    with _Call(options) as call:
        out, err = call.out, call.err
        if _HANDLER is None:
            return ("exception", "eryx.NoHandler", "no function is loaded in this instance", "", "", "")
        try:
            event = json.loads(event_json)
            context = Context(json.loads(context_json))
            value = _HANDLER(event, context)
            if type(value).__name__ == "coroutine":
                import asyncio

                value = asyncio.run(value)
            try:
                result = json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"the handler's return value is not JSON serializable: {exc}") from None
        except SystemExit as exc:
            return _exit_error(exc, out, err)
        except BaseException as exc:
            return _outcome_error("exception", exc, out, err)
        return ("ok", out.getvalue(), err.getvalue(), None, result)
