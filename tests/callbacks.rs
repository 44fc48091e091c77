//! Host callbacks: Python awaits async Rust functions by name, several at
//! once, with arguments checked against each callback's JSON Schema.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use eryx::{CallbackError, DynamicCallback, Error, ResourceLimits, TypedCallback};
use eryx_tests::runtime;
use serde_json::json;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Echo {
    /// What to send back.
    message: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Sleep {
    /// Milliseconds to wait on the host.
    ms: u64,
    /// A tag returned with the answer.
    tag: String,
}

fn echo() -> impl eryx::Callback {
    TypedCallback::new("echo", "Returns its message.", |args: Echo| async move {
        Ok::<_, CallbackError>(args.message)
    })
}

fn host_sleep() -> impl eryx::Callback {
    TypedCallback::new(
        "host_sleep",
        "Waits `ms` milliseconds on the host, then returns `tag`.",
        |args: Sleep| async move {
            tokio::time::sleep(Duration::from_millis(args.ms)).await;
            Ok::<_, CallbackError>(args.tag)
        },
    )
}

fn fail() -> impl eryx::Callback {
    DynamicCallback::new(
        "fail",
        "Always fails.",
        json!({"type": "object", "properties": {}}),
        |_| async { Err(CallbackError::new("the database is on fire")) },
    )
}

fn sandbox() -> eryx::SandboxBuilder {
    eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_callback(echo())
        .with_callback(host_sleep())
        .with_callback(fail())
}

#[tokio::test]
async fn awaited_callback_returns_its_value() {
    let sandbox = sandbox().build().unwrap();
    let result = sandbox
        .execute("r = await echo(message='hi')\nr")
        .await
        .unwrap();
    assert_eq!(result.result.as_deref(), Some("'hi'"));
}

#[tokio::test]
async fn three_slow_callbacks_under_gather_run_concurrently_in_order() {
    let sandbox = sandbox().build().unwrap();
    let code = "import asyncio\n\
        r = await asyncio.gather(host_sleep(ms=200, tag='a'), host_sleep(ms=200, tag='b'), host_sleep(ms=200, tag='c'))\n\
        r";
    let start = Instant::now();
    let result = sandbox.execute(code).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(result.result.as_deref(), Some("['a', 'b', 'c']"));
    // Sequentially they take 600 ms; concurrently a little over 200 ms.
    assert!(
        elapsed < Duration::from_millis(450),
        "three 200 ms callbacks took {elapsed:?}"
    );
}

#[tokio::test]
async fn callback_in_a_loop_of_a_thousand_iterations() {
    let sandbox = sandbox().build().unwrap();
    let code = "n = 0\nfor i in range(1000):\n    n += len(await echo(message='x' * (i % 7)))\nn";
    let result = sandbox.execute(code).await.unwrap();
    let expected: usize = (0..1000).map(|i| i % 7).sum();
    assert_eq!(result.result, Some(expected.to_string()));
}

#[tokio::test]
async fn timers_and_callbacks_share_one_event_loop() {
    let sandbox = sandbox().build().unwrap();
    let code = r#"
import asyncio
order = []
async def tick():
    await asyncio.sleep(0.05)
    order.append('timer')
async def call():
    r = await host_sleep(ms=150, tag='callback')
    order.append(r)
t = asyncio.create_task(tick())
await asyncio.wait_for(call(), timeout=2)
await t
try:
    await asyncio.wait_for(host_sleep(ms=2000, tag='late'), timeout=0.1)
    order.append('no timeout')
except TimeoutError:
    order.append('wait_for timed out')
try:
    async with asyncio.timeout(0.1):
        await host_sleep(ms=2000, tag='late')
except TimeoutError:
    order.append('timeout block')
order
"#;
    let start = Instant::now();
    let result = sandbox.execute(code).await.unwrap();
    assert_eq!(
        result.result.as_deref(),
        Some("['timer', 'callback', 'wait_for timed out', 'timeout block']")
    );
    // The two 2 s callbacks were cancelled, not waited for.
    assert!(start.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn wrong_arguments_raise_type_error_before_the_host_is_called() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let sandbox = sandbox()
        .with_callback(TypedCallback::new(
            "counted",
            "Counts its calls.",
            move |args: Echo| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, CallbackError>(args.message) }
            },
        ))
        .build()
        .unwrap();
    let code = r#"
msgs = []
for call in (lambda: counted(), lambda: counted(message=3), lambda: counted('pos'), lambda: counted(message='ok', extra=1)):
    try:
        call()
    except TypeError as e:
        msgs.append(str(e))
msgs
"#;
    let result = sandbox.execute(code).await.unwrap();
    let text = result.result.unwrap();
    assert!(
        text.contains("missing required argument: 'message'"),
        "{text}"
    );
    assert!(text.contains("'message' must be string, not int"), "{text}");
    assert!(text.contains("keyword arguments only"), "{text}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn host_error_raises_a_python_exception_with_its_message() {
    let sandbox = sandbox().build().unwrap();
    let code = "import eryx\ntry:\n    await fail()\nexcept eryx.CallbackError as e:\n    r = (type(e).__name__, str(e))\nr";
    let result = sandbox.execute(code).await.unwrap();
    assert_eq!(
        result.result.as_deref(),
        Some("('CallbackError', 'the database is on fire')")
    );
    // Uncaught, it is a Python exception of the call.
    let Error::Exception(e) = sandbox.execute("await fail()").await.unwrap_err() else {
        panic!("expected an exception")
    };
    assert_eq!(e.type_name, "eryx.CallbackError");
    assert!(e.message.contains("on fire"));
}

#[tokio::test]
async fn list_callbacks_describes_names_descriptions_and_schemas() {
    let sandbox = sandbox().build().unwrap();
    let code = "[(c['name'], c['description'], sorted(c['parameters'].get('properties', {}))) for c in list_callbacks()]";
    let result = sandbox.execute(code).await.unwrap();
    assert_eq!(
        result.result.as_deref(),
        Some(
            "[('echo', 'Returns its message.', ['message']), ('host_sleep', 'Waits `ms` milliseconds on the host, then returns `tag`.', ['ms', 'tag']), ('fail', 'Always fails.', [])]"
        )
    );
}

#[tokio::test]
async fn callback_that_never_returns_hits_the_per_callback_timeout() {
    let sandbox = sandbox()
        .with_resource_limits(
            ResourceLimits::default().with_callback_timeout(Duration::from_millis(100)),
        )
        .build()
        .unwrap();
    let error = sandbox
        .execute("await host_sleep(ms=100000, tag='never')")
        .await
        .unwrap_err();
    let Error::CallbackTimeout { limit, error } = error else {
        panic!("expected a callback timeout, got {error:?}")
    };
    assert_eq!(limit, Duration::from_millis(100));
    assert!(error.message.contains("host_sleep"), "{}", error.message);
    // The sandbox is usable afterwards.
    let again = sandbox
        .execute("await echo(message='still here')")
        .await
        .unwrap();
    assert_eq!(again.result.as_deref(), Some("'still here'"));
}

#[tokio::test]
async fn invocations_past_the_limit_never_reach_the_host() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_callback(TypedCallback::new(
            "counted",
            "Counts.",
            move |args: Echo| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, CallbackError>(args.message) }
            },
        ))
        .with_resource_limits(ResourceLimits::default().with_max_callback_invocations(5))
        .build()
        .unwrap();
    let error = sandbox
        .execute("for i in range(10):\n    await counted(message=str(i))")
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::CallbackLimit { limit: 5, .. }),
        "{error:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    // Each call has its own count.
    let ok = sandbox
        .execute("await counted(message='fresh')")
        .await
        .unwrap();
    assert_eq!(ok.result.as_deref(), Some("'fresh'"));
}

#[tokio::test]
async fn callbacks_work_in_a_session_across_executes() {
    let sandbox = sandbox().build().unwrap();
    let mut session = sandbox.session().await.unwrap();
    session
        .execute("first = await echo(message='one')")
        .await
        .unwrap();
    let result = session
        .execute("second = await echo(message=first + ' two')\nsecond")
        .await
        .unwrap();
    assert_eq!(result.result.as_deref(), Some("'one two'"));
}

#[tokio::test]
async fn async_handler_awaits_callbacks_with_gather() {
    let source = "import asyncio\n\
        async def handler(event, context):\n    \
            tags = await asyncio.gather(*(host_sleep(ms=100, tag=t) for t in event['tags']))\n    \
            return {'tags': tags, 'echo': await echo(message=context.function_name)}\n";
    let sandbox = sandbox().build().unwrap();
    let mut session = sandbox.session().await.unwrap();
    eryx_tests::load_function(&mut session, "fan", source).await;
    let context = eryx::HandlerContext {
        request_id: "r1".into(),
        function_name: "fan".into(),
        function_version: 1,
    };
    let start = Instant::now();
    let out = session
        .call_handler(r#"{"tags": ["x", "y", "z", "w"]}"#, &context)
        .await
        .unwrap();
    assert!(start.elapsed() < Duration::from_millis(350));
    let value: serde_json::Value = serde_json::from_str(&out.result_json).unwrap();
    assert_eq!(value, json!({"tags": ["x", "y", "z", "w"], "echo": "fan"}));
}

#[tokio::test]
async fn fuel_limit_stops_a_busy_loop_and_the_sandbox_stays_usable() {
    let engine = eryx::Engine::new(
        eryx::EngineOptions::default()
            .with_pool_size(16)
            .with_fuel_metering(true),
    )
    .unwrap();
    let metered = eryx_tests::runtime_on(engine);
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(&metered)
        .with_resource_limits(ResourceLimits::default().with_fuel(50_000_000))
        .build()
        .unwrap();
    let error = sandbox.execute("while True:\n    pass").await.unwrap_err();
    assert!(
        matches!(error, Error::FuelExhausted { fuel: 50_000_000 }),
        "{error:?}"
    );
    // Small work fits in the same budget, in the next (fresh) instance.
    let ok = sandbox.execute("sum(range(1000))").await.unwrap();
    assert_eq!(ok.result.as_deref(), Some("499500"));
    // A fuel limit on an engine without metering is a configuration error.
    let refused = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_resource_limits(ResourceLimits::default().with_fuel(1))
        .build()
        .unwrap_err();
    assert!(matches!(refused, Error::Config(_)), "{refused:?}");
}

#[tokio::test]
async fn the_host_checks_arguments_again_when_user_code_skips_the_guest_check() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_callback(DynamicCallback::new(
            "raw",
            "Counts.",
            json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": false}),
            move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok(json!(null)) }
            },
        ))
        .build()
        .unwrap();
    // Straight to the host, past the Python-side check.
    let code = "import _eryx_host\n[_eryx_host.invoke('raw', a) for a in ('{}', '{\"n\": \"x\"}', '{\"n\": 1, \"m\": 2}', '[1]')]";
    let result = sandbox.execute(code).await.unwrap();
    let text = result.result.unwrap();
    assert_eq!(text.matches("invalid-arguments").count(), 4, "{text}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_raised_callback_timeout_is_not_taken_for_a_real_one() {
    let sandbox = sandbox()
        .with_resource_limits(
            ResourceLimits::default().with_callback_timeout(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    let error = sandbox
        .execute("import eryx\nraise eryx.CallbackTimeout('made up')")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Exception(_)), "{error:?}");
}

#[tokio::test]
async fn callbacks_in_flight_when_a_call_ends_are_cancelled_even_if_the_driver_is_patched() {
    let finished = Arc::new(AtomicU32::new(0));
    let flag = finished.clone();
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_callback(TypedCallback::new(
            "slow",
            "Sets a flag after ms.",
            move |args: Sleep| {
                let flag = flag.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(args.ms)).await;
                    flag.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, CallbackError>(args.tag)
                }
            },
        ))
        .build()
        .unwrap();
    let mut session = sandbox.session().await.unwrap();
    // The driver's own clean-up is disabled, and the task is never awaited.
    let code = "import _eryx, asyncio\n_eryx._end_host_calls = lambda: None\nt = asyncio.get_running_loop().create_task(slow(ms=200, tag='late'))\nawait asyncio.sleep(0.01)";
    session.execute(code).await.unwrap();
    // The next call in the same instance runs long enough for the first
    // callback to have finished, had it not been cancelled.
    session
        .execute("import time\ntime.sleep(0.4)")
        .await
        .unwrap();
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the callback outlived its call"
    );
}
