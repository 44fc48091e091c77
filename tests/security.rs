//! Isolation: each test is named after the threat it stops.

use std::io::ErrorKind;
use std::net::TcpListener;

use eryx_tests::{run, run_err, sandbox};

#[tokio::test]
async fn host_file_read_etc_passwd() {
    // Caught inside Python: the sandbox reports the exception type.
    let code = "try:\n    open('/etc/passwd').read()\nexcept OSError as e:\n    print(type(e).__name__)\nelse:\n    print('READ')";
    let result = run(code).await;
    assert!(
        ["FileNotFoundError\n", "PermissionError\n"].contains(&result.stdout.as_str()),
        "stdout: {}",
        result.stdout
    );
    // Uncaught: a typed Python exception, and the host goes on serving.
    let error = run_err("open('/etc/passwd')").await;
    let e = error.python().expect("a Python exception");
    assert!(
        ["FileNotFoundError", "PermissionError"].contains(&e.type_name.as_str()),
        "{e}"
    );
    assert_eq!(
        run("'still serving'").await.result.as_deref(),
        Some("'still serving'")
    );
}

#[tokio::test]
async fn host_filesystem_listing() {
    // There is no root directory at all: only the `/python` preopen exists.
    let code = "import os\ntry:\n    print(sorted(os.listdir('/')))\nexcept OSError as e:\n    print(type(e).__name__)\nprint(os.path.exists('/etc'), os.path.exists('/python/os.py'))";
    let result = run(code).await;
    assert_eq!(result.stdout, "FileNotFoundError\nFalse True\n");
}

#[tokio::test]
async fn stdlib_tampering() {
    let code = "try:\n    open('/python/os.py', 'a').write('evil')\nexcept OSError as e:\n    print(type(e).__name__)";
    let result = run(code).await;
    // WASI reports a read-only preopen as EROFS or EPERM/EACCES.
    assert!(
        ["OSError\n", "PermissionError\n"].contains(&result.stdout.as_str()),
        "the write must fail: {}",
        result.stdout
    );
}

#[tokio::test]
async fn socket_bypass() {
    // A real listener on the host: the sandbox must not reach it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('CONNECTED')\nexcept Exception as e:\n    print('blocked', type(e).__name__)"
    );
    let result = run(&code).await;
    assert!(
        result.stdout.starts_with("blocked "),
        "stdout: {}",
        result.stdout
    );
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the sandbox reached the host listener: {other:?}"),
    }
    // Uncaught, it is an ordinary Python exception and the host is unaffected.
    let error = run_err(&format!(
        "import socket\nsocket.create_connection(('127.0.0.1', {port}))"
    ))
    .await;
    assert!(error.python().is_some(), "{error:?}");
    assert_eq!(run("1").await.result.as_deref(), Some("1"));
}

#[tokio::test]
async fn secrets_exfiltration_through_environment() {
    // SAFETY: this test process is single-purpose; nothing else reads the
    // environment concurrently while the variable is set.
    unsafe { std::env::set_var("ERYX_TEST_SECRET", "hunter2") };
    let result = run("import os\nprint(sorted(os.environ))").await;
    assert!(
        !result.stdout.contains("ERYX_TEST_SECRET"),
        "{}",
        result.stdout
    );
    // Only what the runtime sets for CPython itself; nothing of the host's.
    assert_eq!(
        result.stdout,
        "['PYTHONDONTWRITEBYTECODE', 'PYTHONHOME', 'PYTHONPATH', 'TMPDIR']\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sandboxes_are_isolated() {
    // Many instances from one pool at once: module state, globals and the
    // random generator are each instance's own.
    let sandbox = sandbox();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let sandbox = sandbox.clone();
            tokio::spawn(async move {
                let code = format!(
                    "import json, random\nassert not hasattr(json, 'mark')\njson.mark = {i}\nmark = {i}\nprint(random.random())\njson.mark, mark"
                );
                sandbox.execute(&code).await
            })
        })
        .collect();
    let mut draws = std::collections::HashSet::new();
    for (i, handle) in handles.into_iter().enumerate() {
        let result = handle.await.unwrap().unwrap();
        assert_eq!(result.result, Some(format!("({i}, {i})")));
        draws.insert(result.stdout);
    }
    assert_eq!(
        draws.len(),
        16,
        "random.random() repeated across instances: {draws:?}"
    );
}

#[tokio::test]
async fn stack_exhaustion_denial_of_service() {
    let sandbox = sandbox();
    // Runaway recursion under the default limit is an ordinary RecursionError.
    let error = sandbox
        .execute("def f(n):\n    return f(n + 1)\nf(0)")
        .await
        .unwrap_err();
    assert_eq!(
        error.python().map(|e| e.type_name.as_str()),
        Some("RecursionError")
    );
    // With the limit raised, a 20,000-frame traceback is built and freed
    // (recursing in C): the native stack is sized so CPython's own guard
    // decides, and the failure is a Python exception, not a trap.
    let code = "import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    if n > 20000:\n        raise ValueError\n    return f(n + 1)\nf(0)";
    let error = sandbox.execute(code).await.unwrap_err();
    assert!(
        matches!(
            error.python().map(|e| e.type_name.as_str()),
            Some("ValueError" | "RecursionError")
        ),
        "{error:?}"
    );
    // Past any stack: a million frames is a RecursionError or MemoryError
    // from CPython, or a trap that names its kind; the sandbox keeps serving.
    let code = "import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)";
    match sandbox.execute(code).await.unwrap_err() {
        eryx::Error::Trap(trap) => assert_eq!(trap.kind, eryx::TrapKind::StackOverflow, "{trap:?}"),
        error => assert!(
            matches!(
                error.python().map(|e| e.type_name.as_str()),
                Some("RecursionError" | "MemoryError")
            ),
            "{error:?}"
        ),
    }
    assert_eq!(
        sandbox.execute("'alive'").await.unwrap().result.as_deref(),
        Some("'alive'")
    );
}

#[tokio::test]
async fn memory_bomb() {
    // An instance cannot grow its memory past the engine's cap: the
    // allocation fails inside Python, and the sandbox keeps serving.
    let engine = eryx::Engine::new(
        eryx::EngineOptions::default()
            .with_pool_size(8)
            .with_max_memory_bytes(128 << 20),
    )
    .unwrap();
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(&eryx_tests::runtime_on(engine))
        .build()
        .unwrap();
    let error = sandbox
        .execute("hog = bytearray(512 * 1024 * 1024)")
        .await
        .unwrap_err();
    assert_eq!(
        error.python().map(|e| e.type_name.as_str()),
        Some("MemoryError"),
        "{error:?}"
    );
    let code = "chunks = []\ntry:\n    while True:\n        chunks.append(bytearray(16 * 1024 * 1024))\nexcept MemoryError:\n    print('capped at', len(chunks) * 16, 'MiB')";
    let result = sandbox.execute(code).await.unwrap();
    let mib: u32 = result
        .stdout
        .trim()
        .rsplit(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!((32..128).contains(&mib), "{}", result.stdout);
    assert_eq!(
        sandbox.execute("'alive'").await.unwrap().result.as_deref(),
        Some("'alive'")
    );
}
