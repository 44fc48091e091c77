//! Trust boundaries of the library: nothing the guest returns is trusted,
//! every call runs under its deadline, and a crash is reported for what it
//! is. Each test is named after the threat it stops.

use std::time::Duration;

use eryx_tests::{runtime, sandbox};

#[tokio::test]
async fn recursion_in_repr_eq_and_json_is_a_catchable_recursion_error() {
    // Deep C recursion (repr, ==, json.dumps of self-referencing structures)
    // must reach CPython's own stack guard before the wasm stack runs out.
    let code = r#"
import json
class R:
    def __repr__(self):
        return repr(self)
class E:
    def __eq__(self, other):
        return self == other
caught = []
for name, attempt in [
    ("repr", lambda: repr(R())),
    ("eq", lambda: E() == E()),
]:
    try:
        attempt()
    except RecursionError:
        caught.append(name)
nested = []
for _ in range(100_000):
    nested = [nested]
try:
    json.dumps(nested)
except RecursionError:
    caught.append("json")
try:
    repr(nested)
except RecursionError:
    caught.append("nested-repr")
d = {}
d["self"] = d
try:
    json.dumps(d)
except ValueError:
    caught.append("circular")
caught
"#;
    let result = sandbox().execute(code).await.expect("no trap");
    assert_eq!(
        result.result.as_deref(),
        Some("['repr', 'eq', 'json', 'nested-repr', 'circular']")
    );
}

#[tokio::test]
async fn trap_keeps_the_output_written_before_it_and_says_what_trapped() {
    // `os.abort()` executes `unreachable`: the instance dies, the host
    // reports the trap by its code and keeps what was printed before.
    let error = sandbox()
        .execute(
            "import os, sys\nprint('before the crash')\nsys.stderr.write('err too\\n')\nos.abort()",
        )
        .await
        .unwrap_err();
    let trap = error
        .trap()
        .unwrap_or_else(|| panic!("not a trap: {error:?}"));
    assert_eq!(trap.kind, eryx::TrapKind::Unreachable, "{trap:?}");
    assert_eq!(trap.stdout, "before the crash\n");
    assert_eq!(trap.stderr, "err too\n");
    assert_eq!(
        sandbox()
            .execute("'alive'")
            .await
            .unwrap()
            .result
            .as_deref(),
        Some("'alive'")
    );
}

#[tokio::test]
async fn os_exit_is_an_exit_not_a_host_failure() {
    // WASI 0.2's `exit` carries success or failure only: any status but 0
    // arrives as 1.
    let error = sandbox()
        .execute("import os\nprint('bye')\nos._exit(3)")
        .await
        .unwrap_err();
    let eryx::Error::Exit { code, stdout, .. } = error else {
        panic!("not an exit: {error:?}");
    };
    assert_eq!((code, stdout.as_str()), (1, "bye\n"));
}

#[tokio::test]
async fn output_written_past_the_cap_by_bypassing_sys_stdout_is_cut_on_the_host() {
    // User code can replace the guest's stream objects or write to the
    // descriptor directly; the cap is kept on the host all the same.
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_output_limit_bytes(1000)
        .build()
        .unwrap();
    let code = "import os, sys\ndata = memoryview(b'x' * 5_000_000)\nwhile data:\n    data = data[os.write(1, data):]\nsys.stdout = sys.__stdout__\nprint('y' * 5_000_000)\nsys.stdout.flush()";
    let result = sandbox.execute(code).await.unwrap();
    assert!(
        result.stdout.starts_with(&"x".repeat(1000)),
        "{}",
        &result.stdout[..50]
    );
    assert!(
        result.stdout.len() < 1200
            && result
                .stdout
                .contains("[eryx: output truncated, 9999001 more bytes not shown]"),
        "{}",
        &result.stdout[1000..]
    );
}

#[tokio::test]
async fn huge_exception_message_and_traceback_are_capped() {
    let code = "def deep(n):\n    if n == 0:\n        raise ValueError('m' * 20_000_000)\n    deep(n - 1)\ndeep(900)";
    let error = sandbox().execute(code).await.unwrap_err();
    let python = error.python().expect("a Python exception");
    assert_eq!(python.type_name, "ValueError");
    assert!(python.message.len() < 70_000, "{}", python.message.len());
    assert!(python.message.contains("[eryx: truncated,"));
    assert!(
        python.traceback.len() < 300_000,
        "{}",
        python.traceback.len()
    );
}

#[tokio::test]
async fn result_larger_than_the_result_limit_is_cut_and_its_json_dropped() {
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_result_limit_bytes(1000)
        .build()
        .unwrap();
    let result = sandbox.execute("'z' * 100_000").await.unwrap();
    let repr = result.result.unwrap();
    assert!(
        repr.len() < 1100 && repr.contains("[eryx: truncated,"),
        "{}",
        repr.len()
    );
    assert_eq!(result.result_json, None);
}

#[tokio::test]
async fn rebinding_json_dumps_cannot_pass_off_a_result_that_is_not_json() {
    // The guest driver serializes results with `json.dumps`; user code that
    // rebinds it makes the guest return whatever it likes.
    let mut session = sandbox().session().await.unwrap();
    let result = session
        .execute("import json\njson.dumps = lambda *a, **k: 'not json {'\n{'a': 1}")
        .await
        .unwrap();
    assert_eq!(result.result_json, None, "an unchecked result came through");
    assert_eq!(result.result.as_deref(), Some("{'a': 1}"));
}

#[tokio::test]
async fn nul_in_an_environment_value_is_refused_when_the_sandbox_is_built() {
    let error = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_env("TOKEN", "abc\0def")
        .build()
        .unwrap_err();
    assert!(matches!(error, eryx::Error::Config(_)), "{error:?}");
}

#[tokio::test]
async fn handler_without_a_timeout_sees_no_remaining_time_instead_of_a_type_error() {
    let sandbox = sandbox();
    let mut session = sandbox.session().await.unwrap();
    eryx_tests::load_function(
        &mut session,
        "clock",
        "def handler(event, context):\n    return [context.timeout_ms, context.remaining_time_ms()]\n",
    )
    .await;
    let context = eryx::HandlerContext {
        request_id: "r".into(),
        function_name: "clock".into(),
        function_version: 1,
    };
    let output = session.call_handler("null", &context).await.unwrap();
    assert_eq!(output.result_json, "[null, null]");
}

#[tokio::test]
async fn state_calls_after_a_timed_call_get_a_fresh_deadline() {
    // The previous call's deadline has passed when the state is snapshotted:
    // the snapshot must run under its own.
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut session = sandbox.session().await.unwrap();
    session.execute("x = list(range(1000))").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let snapshot = session
        .snapshot_state()
        .await
        .expect("snapshot after the deadline");
    session.clear_state().await.unwrap();
    session.restore_state(&snapshot).await.unwrap();
    let result = session.execute("len(x)").await.unwrap();
    assert_eq!(result.result.as_deref(), Some("1000"));
}
