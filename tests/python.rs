//! Running Python: output, results, errors, async, the standard library.

use eryx::Error;
use eryx_tests::{run, run_err, sandbox};

#[tokio::test]
async fn hello_world() {
    let result = run("print('hello, world')").await;
    assert_eq!(result.stdout, "hello, world\n");
    assert_eq!(result.stderr, "");
    assert_eq!(result.result, None);
}

#[tokio::test]
async fn version_is_cpython_3_14() {
    let result =
        run("import sys, platform\nprint(platform.python_implementation(), sys.version_info[:2])")
            .await;
    assert_eq!(result.stdout, "CPython (3, 14)\n");
}

#[tokio::test]
async fn arithmetic_and_final_expression_value() {
    let result = run("x = 2 ** 100\ny = sum(range(10))\nx // 3, y").await;
    assert_eq!(
        result.result.as_deref(),
        Some("(422550200076076467165567735125, 45)")
    );
    assert_eq!(
        result.result_json.as_deref(),
        Some("[422550200076076467165567735125, 45]")
    );
    let result = run("7 / 2").await;
    assert_eq!(result.result.as_deref(), Some("3.5"));
    // A final expression that is None (like a call of print) gives no result.
    assert_eq!(run("print('x')").await.result, None);
}

#[tokio::test]
async fn stdout_and_stderr_interleaved_keep_their_order() {
    let code = "import sys\nfor i in range(5):\n    print('out', i)\n    print('err', i, file=sys.stderr)\nsys.stdout.write('end')";
    let result = run(code).await;
    assert_eq!(result.stdout, "out 0\nout 1\nout 2\nout 3\nout 4\nend");
    assert_eq!(result.stderr, "err 0\nerr 1\nerr 2\nerr 3\nerr 4\n");
}

#[tokio::test]
async fn syntax_error_is_a_compile_error_with_its_line() {
    let error = run_err("x = 1\ny = (2 +\nprint(x)\nz = ]\n").await;
    let Error::Compile(e) = error else {
        panic!("expected a compile error, got {error:?}")
    };
    assert_eq!(e.type_name, "SyntaxError");
    assert!(
        e.traceback.contains("File \"<exec>\", line 4"),
        "traceback: {}",
        e.traceback
    );
}

#[tokio::test]
async fn runtime_exception_traceback_points_at_user_lines() {
    let code = "def divide(a, b):\n    return a / b\n\nprint('before')\nvalue = divide(1, 0)\n";
    let error = run_err(code).await;
    let Error::Exception(e) = error else {
        panic!("expected an exception, got {error:?}")
    };
    assert_eq!(e.type_name, "ZeroDivisionError");
    assert_eq!(e.message, "division by zero");
    assert_eq!(e.stdout, "before\n");
    assert!(
        e.traceback
            .starts_with("Traceback (most recent call last):\n"),
        "{}",
        e.traceback
    );
    assert!(
        e.traceback.contains("File \"<exec>\", line 5, in <module>"),
        "{}",
        e.traceback
    );
    assert!(
        e.traceback.contains("File \"<exec>\", line 2, in divide"),
        "{}",
        e.traceback
    );
    assert!(
        e.traceback.contains("return a / b"),
        "source lines are shown: {}",
        e.traceback
    );
    assert!(
        !e.traceback.contains("eryx driver"),
        "driver frames are hidden: {}",
        e.traceback
    );
    assert!(
        e.traceback
            .ends_with("ZeroDivisionError: division by zero\n"),
        "{}",
        e.traceback
    );
}

#[tokio::test]
async fn exception_types_are_qualified_by_module() {
    let error = run_err("import json\njson.loads('{')").await;
    assert_eq!(
        error.python().unwrap().type_name,
        "json.decoder.JSONDecodeError"
    );
}

#[tokio::test]
async fn top_level_await() {
    let code = "import asyncio\nawait asyncio.sleep(0)\nprint('after sleep')\nawait asyncio.sleep(0.01)\n'done'";
    let result = run(code).await;
    assert_eq!(result.stdout, "after sleep\n");
    assert_eq!(result.result.as_deref(), Some("'done'"));
}

#[tokio::test]
async fn top_level_await_runs_tasks_concurrently() {
    let code = r#"
import asyncio, time
async def work(name, delay):
    await asyncio.sleep(delay)
    return name
start = time.monotonic()
names = await asyncio.gather(work("a", 0.05), work("b", 0.05), work("c", 0.05))
elapsed = time.monotonic() - start
print(names, elapsed < 0.14)
"#;
    assert_eq!(run(code).await.stdout, "['a', 'b', 'c'] True\n");
}

#[tokio::test]
async fn asyncio_run_in_plain_code() {
    let code = "import asyncio\nasync def main():\n    await asyncio.sleep(0)\n    return 42\nprint(asyncio.run(main()))";
    assert_eq!(run(code).await.stdout, "42\n");
}

#[tokio::test]
async fn system_exit_gives_its_status() {
    let error = run_err("print('bye')\nimport sys\nsys.exit(3)").await;
    let Error::Exit { code, stdout, .. } = error else {
        panic!("expected exit, got {error:?}")
    };
    assert_eq!(code, 3);
    assert_eq!(stdout, "bye\n");
}

#[tokio::test]
async fn executes_do_not_share_globals() {
    let sandbox = sandbox();
    sandbox
        .execute("secret = 41\nimport json\njson.secret = 1")
        .await
        .unwrap();
    let error = sandbox.execute("secret").await.unwrap_err();
    assert_eq!(error.python().unwrap().type_name, "NameError");
    let result = sandbox
        .execute("import json\nhasattr(json, 'secret')")
        .await
        .unwrap();
    assert_eq!(result.result.as_deref(), Some("False"));
}

#[tokio::test]
async fn ten_megabytes_of_output_are_capped_with_a_marker() {
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(eryx_tests::runtime())
        .with_output_limit_bytes(64 * 1024)
        .build()
        .unwrap();
    let code = "import sys\nchunk = 'x' * 1023 + '\\n'\nfor _ in range(10 * 1024):\n    sys.stdout.write(chunk)\nprint('done', file=sys.stderr)";
    let result = sandbox.execute(code).await.unwrap();
    assert!(result.stdout.starts_with(&"x".repeat(1023)));
    let marker = format!(
        "[eryx: output truncated, {} more bytes not shown]",
        10 * 1024 * 1024 - 64 * 1024
    );
    assert!(
        result.stdout.ends_with(&format!("\n{marker}\n")),
        "tail: {:?}",
        &result.stdout[result.stdout.len() - 200..]
    );
    assert!(result.stdout.len() < 64 * 1024 + 200);
    assert_eq!(result.stderr, "done\n");
    // The sandbox is unaffected.
    assert_eq!(
        sandbox.execute("1 + 1").await.unwrap().result.as_deref(),
        Some("2")
    );
}

#[tokio::test]
async fn default_output_limit_handles_ten_megabytes() {
    let result = run("print('y' * (10 * 1024 * 1024))").await;
    assert_eq!(
        result.stdout.len(),
        eryx::DEFAULT_OUTPUT_LIMIT_BYTES as usize
            + "\n[eryx: output truncated, 9437185 more bytes not shown]\n".len()
    );
}

#[tokio::test]
async fn standard_library_modules_work() {
    let code = r#"
import json, re, datetime, decimal, fractions, collections, itertools, functools
import dataclasses, typing, hashlib, base64, math, random, statistics, textwrap
import pickle, asyncio, enum, string, struct, heapq, bisect

out = {}
out["json"] = json.loads(json.dumps({"a": [1, 2.5, None]}))
out["re"] = re.findall(r"\d+", "a1b22c333")
out["datetime"] = (datetime.date(2024, 2, 28) + datetime.timedelta(days=2)).isoformat()
decimal.getcontext().prec = 30
out["decimal"] = str(decimal.Decimal(1) / decimal.Decimal(7))
out["fractions"] = str(fractions.Fraction(1, 3) + fractions.Fraction(1, 6))
out["collections"] = collections.Counter("mississippi").most_common(2)
out["itertools"] = list(itertools.accumulate(itertools.islice(itertools.count(1), 5)))
out["functools"] = functools.reduce(lambda a, b: a * b, range(1, 11))

@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int
out["dataclasses"] = dataclasses.asdict(Point(1, 2))
out["typing"] = typing.get_type_hints(Point)["x"].__name__
out["hashlib"] = hashlib.sha256(b"abc").hexdigest()
out["base64"] = base64.b64encode(b"eryx").decode()
out["math"] = round(math.sqrt(2) * math.pi, 6)
out["random"] = random.Random(1234).random() == random.Random(1234).random() != random.Random(5).random()
out["random_range"] = all(0 <= random.random() < 1 for _ in range(100))
out["statistics"] = statistics.median([3, 1, 4, 1, 5, 9, 2])
out["textwrap"] = textwrap.wrap("the quick brown fox jumps", 10)
out["pickle"] = pickle.loads(pickle.dumps({"k": (1, 2)}))
async def twice(x):
    await asyncio.sleep(0)
    return x * 2
out["asyncio"] = asyncio.run(twice(21))
class Color(enum.Enum):
    RED = 1
out["enum"] = Color(1).name
out["string"] = string.Template("$who rocks").substitute(who="eryx")
out["struct"] = struct.unpack("<I", struct.pack("<I", 0xDEADBEEF))[0]
heap = [5, 1, 4]
heapq.heapify(heap)
out["heapq"] = heapq.nsmallest(2, heap)
out["bisect"] = bisect.bisect_left([1, 3, 5, 7], 5)
print(json.dumps(out, sort_keys=True))
"#;
    let result = run(code).await;
    let expected = concat!(
        r#"{"asyncio": 42, "base64": "ZXJ5eA==", "bisect": 2, "collections": [["i", 4], ["s", 4]], "#,
        r#""dataclasses": {"x": 1, "y": 2}, "datetime": "2024-03-01", "decimal": "0.142857142857142857142857142857", "#,
        r#""enum": "RED", "fractions": "1/2", "functools": 3628800, "hashlib": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "#,
        r#""heapq": [1, 4], "itertools": [1, 3, 6, 10, 15], "json": {"a": [1, 2.5, null]}, "math": 4.442883, "#,
        r#""pickle": {"k": [1, 2]}, "random": true, "random_range": true, "re": ["1", "22", "333"], "statistics": 3, "#,
        r#""string": "eryx rocks", "struct": 3735928559, "textwrap": ["the quick", "brown fox", "jumps"], "typing": "int"}"#,
        "\n"
    );
    assert_eq!(result.stdout, expected);
}

#[tokio::test]
async fn zoneinfo_converts_new_york_to_tokyo_with_the_bundled_tz_database() {
    let result = run(r#"
from datetime import datetime
from zoneinfo import ZoneInfo, available_timezones
ny = datetime(2026, 7, 1, 9, 30, tzinfo=ZoneInfo("America/New_York"))
tokyo = ny.astimezone(ZoneInfo("Asia/Tokyo"))
winter = datetime(2026, 1, 15, 12, 0, tzinfo=ZoneInfo("America/New_York")).utcoffset().total_seconds() / 3600
tokyo.isoformat(), winter, len(available_timezones()) > 400
"#)
    .await;
    assert_eq!(
        result.result.as_deref(),
        Some("('2026-07-01T22:30:00+09:00', -5.0, True)")
    );
}

#[tokio::test]
async fn pbkdf2_hmac_matches_the_rfc_6070_and_rfc_7914_vectors() {
    // RFC 6070 (PBKDF2-HMAC-SHA1), all six vectors, and RFC 7914 section 11
    // (PBKDF2-HMAC-SHA256).
    let result = run(r#"
import hashlib
vectors = [
    ("sha1", b"password", b"salt", 1, 20, "0c60c80f961f0e71f3a9b524af6012062fe037a6"),
    ("sha1", b"password", b"salt", 2, 20, "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"),
    ("sha1", b"password", b"salt", 4096, 20, "4b007901b765489abead49d926f721d065a429c1"),
    ("sha1", b"password", b"salt", 16777216, 20, "eefe3d61cd4da4e4e9945b3d6ba2158c2634e984"),
    ("sha1", b"passwordPASSWORDpassword", b"saltSALTsaltSALTsaltSALTsaltSALTsalt", 4096, 25,
     "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038"),
    ("sha1", b"pass\0word", b"sa\0lt", 4096, 16, "56fa6aa75548099dcc37d7f03425e0c3"),
    ("sha256", b"passwd", b"salt", 1, 64,
     "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"),
]
wrong = [v for v in vectors if hashlib.pbkdf2_hmac(v[0], v[1], v[2], v[3], v[4]).hex() != v[5]]
errors = []
for call in (lambda: hashlib.pbkdf2_hmac("sha1", b"p", b"s", 0),
             lambda: hashlib.pbkdf2_hmac("whirlpool", b"p", b"s", 1)):
    try:
        call()
    except ValueError as e:
        errors.append(str(e))
wrong, len(hashlib.pbkdf2_hmac("sha512", b"p", b"s", 10)), errors
"#)
    .await;
    assert_eq!(
        result.result.as_deref(),
        Some(
            "([], 64, ['iteration value must be greater than 0.', 'unsupported hash type whirlpool'])"
        )
    );
}

#[tokio::test]
async fn sysconfig_config_args_parse_with_shlex() {
    let result = run(r#"
import shlex, sysconfig
shlex.split(sysconfig.get_config_var("CONFIG_ARGS"))
"#)
    .await;
    assert_eq!(
        result.result.as_deref(),
        Some("['-C', '--host=wasm32-unknown-wasip2', '--build=x86_64-pc-linux-gnu']")
    );
}

// --- What the pre-initialization snapshot holds ------------------------------

#[tokio::test]
async fn a_fresh_instance_holds_nothing_of_the_snapshots_warm_up_and_its_objects_are_immortal() {
    // The snapshot runs the driver's call paths before it is taken (programs
    // that define `values` and `fails`) and makes every object then alive
    // immortal; objects user code makes are counted and freed as usual.
    let code = "before = sorted(k for k in globals() if not k.startswith('__'))\n\
        import sys, json, weakref\n\
        class Box: pass\n\
        freed = []\n\
        box = Box()\n\
        weakref.finalize(box, freed.append, 'box')\n\
        del box\n\
        (before, sys._is_immortal(json.dumps), sys._is_immortal(json.__dict__), \
        sys._is_immortal(Box), sys._is_immortal(freed), freed)";
    let result = run(code).await;
    assert_eq!(
        result.result.as_deref(),
        Some("([], True, True, False, False, ['box'])")
    );
}

#[tokio::test]
async fn a_function_loaded_into_a_live_session_is_not_made_immortal() {
    // Only a snapshot's objects are made immortal (they are never freed): a
    // session that loads a function keeps counting and freeing its objects,
    // including the globals of earlier executes. Its calls start in `/work`.
    let source = "import os, sys\nos.chdir('/tmp')\nCACHE = {'hits': 0}\n\
        def handler(event, context):\n    \
            import __main__\n    \
            return {'cwd': os.getcwd(), 'cache': sys._is_immortal(CACHE), \
            'earlier': sys._is_immortal(__main__.EARLIER)}\n";
    let mut session = sandbox().session().await.unwrap();
    session
        .execute("EARLIER = ['from an execute']")
        .await
        .unwrap();
    eryx_tests::load_function(&mut session, "live", source).await;
    let context = eryx::HandlerContext {
        request_id: "r1".into(),
        function_name: "live".into(),
        function_version: 1,
    };
    let out = session.call_handler("{}", &context).await.unwrap();
    let value: serde_json::Value = serde_json::from_str(&out.result_json).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"cwd": "/work", "cache": false, "earlier": false})
    );
}

#[tokio::test]
async fn an_instance_sees_exactly_its_own_environment_whatever_the_snapshot_froze() {
    // The snapshot froze the base environment: an instance given more has it
    // refreshed, one given the same keeps it as it is; neither sees the other's.
    let code = "import os\nsorted(os.environ.items())";
    let base = serde_json::json!([
        ["PYTHONDONTWRITEBYTECODE", "1"],
        ["PYTHONHOME", "/python"],
        ["PYTHONPATH", "/python"],
        ["TMPDIR", "/tmp"],
    ]);
    let mut greeted = base.as_array().unwrap().clone();
    greeted.insert(0, serde_json::json!(["GREETING", "hi"]));
    let with_greeting = eryx::Sandbox::builder()
        .with_runtime(eryx_tests::runtime())
        .with_env("GREETING", "hi")
        .build()
        .unwrap();
    let plain = sandbox();
    let json = |result: eryx::ExecuteResult| -> serde_json::Value {
        serde_json::from_str(result.result_json.as_deref().unwrap()).unwrap()
    };
    // Each call is a fresh instance of the same snapshot, in either order.
    assert_eq!(json(plain.execute(code).await.unwrap()), base);
    let changed = with_greeting.execute(code).await.unwrap();
    assert_eq!(json(changed), serde_json::Value::Array(greeted));
    assert_eq!(json(plain.execute(code).await.unwrap()), base);
}
