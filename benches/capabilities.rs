//! What the sandbox's files and network cost, side by side in one run.
//! Figures are in `benches/README.md`.
//!
//! Groups:
//! - `files`: one execute that writes 1 MiB to `/tmp` and reads it back,
//!   next to the same bytes through `io.BytesIO`; 1,000 sqlite inserts in
//!   `:memory:` next to a database file in `/tmp`;
//! - `network`: 10 HTTP GETs to a loopback server through the host, on one
//!   keep-alive `http.client` connection and with a new `urllib` connection
//!   each (per-request cost = time / 10);
//! - `state`: a session's state snapshot with no files and with 1 MiB in
//!   `/tmp` (the tar the state carries).

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "common.rs"]
mod common;

const MIB: &str = "data = b'x' * (1 << 20)\n";

fn benches(c: &mut Criterion) {
    let setup = common::setup();
    // The server on its own runtime: on the benchmark's single thread it
    // would only run between the guest's host calls.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_runtime.block_on(eryx_tests::WebServer::http());
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(&setup.runtime)
        .with_network(
            eryx::NetworkPolicy::new()
                .allow_private(&format!("http://127.0.0.1:{}", server.port))
                .unwrap(),
        )
        .build()
        .unwrap();

    let mut group = c.benchmark_group("files");
    let files = format!(
        "{MIB}with open('/tmp/f', 'wb') as f:\n    f.write(data)\nassert open('/tmp/f', 'rb').read() == data"
    );
    let memory =
        format!("import io\n{MIB}b = io.BytesIO()\nb.write(data)\nassert b.getvalue() == data");
    group.bench_function("write_read_1mib/bytesio", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { sandbox.execute(&memory).await.unwrap() })
    });
    group.bench_function("write_read_1mib/tmp", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { sandbox.execute(&files).await.unwrap() })
    });
    let sqlite = |target: &str| {
        format!(
            "import sqlite3\ndb = sqlite3.connect({target:?})\ndb.execute('create table t (x)')\n\
             db.executemany('insert into t values (?)', [(i,) for i in range(1000)])\ndb.commit()\n\
             assert db.execute('select count(*) from t').fetchone()[0] == 1000"
        )
    };
    let (in_memory, on_file) = (sqlite(":memory:"), sqlite("/tmp/db.sqlite"));
    group.bench_function("sqlite_1000/memory", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { sandbox.execute(&in_memory).await.unwrap() })
    });
    group.bench_function("sqlite_1000/tmp_file", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { sandbox.execute(&on_file).await.unwrap() })
    });
    group.finish();

    let mut group = c.benchmark_group("network");
    let keep_alive = format!(
        "import http.client\nc = http.client.HTTPConnection('127.0.0.1', {})\n\
         for _ in range(10):\n    c.request('GET', '/hello')\n    assert c.getresponse().read()\nc.close()",
        server.port
    );
    let new_each = format!(
        "import urllib.request\nfor _ in range(10):\n    assert urllib.request.urlopen('{}/hello').read()",
        server.url
    );
    group.bench_function("get_10/keep_alive", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { sandbox.execute(&keep_alive).await.unwrap() })
    });
    group.bench_function("get_10/new_connection", |b| {
        b.to_async(&setup.tokio)
            .iter(|| async { sandbox.execute(&new_each).await.unwrap() })
    });
    group.finish();

    let mut group = c.benchmark_group("state");
    group.bench_function("snapshot/no_files", |b| {
        b.to_async(&setup.tokio).iter(|| async {
            let mut session = sandbox.session().await.unwrap();
            session.execute("x = list(range(1000))").await.unwrap();
            session.snapshot_state().await.unwrap()
        })
    });
    group.bench_function("snapshot/1mib_in_tmp", |b| {
        b.to_async(&setup.tokio).iter(|| async {
            let mut session = sandbox.session().await.unwrap();
            session
                .execute("x = list(range(1000))\nopen('/tmp/f', 'wb').write(b'x' * (1 << 20))")
                .await
                .unwrap();
            session.snapshot_state().await.unwrap()
        })
    });
    group.finish();
}

criterion_group!(capabilities, benches);
criterion_main!(capabilities);
