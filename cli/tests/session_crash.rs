//! A gateway process killed with SIGKILL while clients write to their
//! sessions loses nothing it acknowledged and tears nothing: after a
//! restart on the same store every session is at the version its client
//! last saw acknowledged, or the one after (the write in flight when the
//! process died), with exactly the values written up to it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Clients writing at once, each to its own session.
const CLIENTS: usize = 20;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `eryx serve` on `port` over the store directory `store`, ready.
async fn serve(store: &std::path::Path, port: u16) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_eryx"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", store.to_str().unwrap()])
        .env("ERYX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200);
        if ready {
            return child;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "eryx serve exited before it was ready"
        );
        assert!(Instant::now() < deadline, "eryx serve never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn execute(client: &reqwest::Client, url: &str, id: &str, code: &str) -> Option<Value> {
    let response = client
        .post(format!("{url}/v1/sessions/{id}/execute"))
        .json(&json!({ "code": code }))
        .send()
        .await
        .ok()?;
    if response.status().as_u16() != 200 {
        return None;
    }
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_while_20_clients_write_keeps_every_acknowledged_version_untorn() {
    let store = tempfile::tempdir().unwrap();
    eryx_tests::seed_store(store.path());
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut gateway = serve(store.path(), port).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for _ in 0..CLIENTS {
        let id = eryx_tests::create_session(&client, &url).await;
        let defined = execute(&client, &url, &id, "log = []").await.unwrap();
        assert_eq!(defined["version"], 2);
        ids.push(id);
    }

    // Each client appends 0, 1, 2, ... and remembers the last append
    // acknowledged, with its version; the gateway dies mid-stream.
    let writers: Vec<_> = ids
        .iter()
        .cloned()
        .map(|id| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut acked: Option<(u64, u64)> = None;
                for n in 0u64.. {
                    // A payload of a few KB per entry, so states are not trivial.
                    let code = format!("log.append(({n}, 'x' * 2000))");
                    match execute(&client, &url, &id, &code).await {
                        Some(body) if body["saved"] == true => {
                            acked = Some((n, body["version"].as_u64().unwrap()));
                        }
                        _ => break,
                    }
                }
                (id, acked)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gateway.kill().unwrap(); // SIGKILL
    gateway.wait().unwrap();
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.push(writer.await.unwrap());
    }
    assert!(
        outcomes.iter().any(|(_, acked)| acked.is_some()),
        "no write was acknowledged before the kill"
    );

    let mut gateway = serve(store.path(), port).await;
    for (id, acked) in outcomes {
        let body = execute(
            &client,
            &url,
            &id,
            "[n for n, s in log if s == 'x' * 2000], len(log)",
        )
        .await
        .unwrap_or_else(|| panic!("session {id} unreadable after the restart"));
        let version = body["version"].as_u64().unwrap();
        // The version the client saw acknowledged, or the one after; the
        // read itself writes one more.
        let (last_n, acked_version) = acked.map_or((None, 2), |(n, v)| (Some(n), v));
        let stored_version = version - 1;
        assert!(
            stored_version == acked_version || stored_version == acked_version + 1,
            "session {id}: stored version {stored_version}, acknowledged {acked_version}"
        );
        let count = match last_n {
            Some(n) => n + 1 + (stored_version - acked_version),
            None => stored_version - 2,
        };
        let expected: Vec<u64> = (0..count).collect();
        assert_eq!(
            body["result"].as_str().unwrap(),
            format!("({expected:?}, {count})"),
            "session {id}: every entry intact, in order, none lost"
        );
    }
    let _ = gateway.kill();
    let _ = gateway.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_on_one_local_store_let_exactly_one_concurrent_write_win() {
    let store = tempfile::tempdir().unwrap();
    eryx_tests::seed_store(store.path());
    let (a_port, b_port) = (free_port(), free_port());
    let mut a = serve(store.path(), a_port).await;
    let mut b = serve(store.path(), b_port).await;
    let (a_url, b_url) = (
        format!("http://127.0.0.1:{a_port}"),
        format!("http://127.0.0.1:{b_port}"),
    );
    let client = reqwest::Client::new();
    let id = eryx_tests::create_session(&client, &a_url).await;
    // The local store's conditional put holds across processes (an flock
    // per object): of two writes based on one version, one is refused.
    for round in 0..3 {
        let write = |url: String, mark: &'static str| {
            let (client, id) = (client.clone(), id.clone());
            async move {
                let response = client
                    .post(format!("{url}/v1/sessions/{id}/execute"))
                    .json(
                        &json!({"code": format!("import time; time.sleep(0.5); mark = '{mark}'")}),
                    )
                    .send()
                    .await
                    .unwrap();
                response.status().as_u16()
            }
        };
        let (one, two) = tokio::join!(write(a_url.clone(), "a"), write(b_url.clone(), "b"));
        let mut statuses = [one, two];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "round {round}");
        let expected = if one == 200 { "'a'" } else { "'b'" };
        let read = execute(&client, &b_url, &id, "mark").await.unwrap();
        assert_eq!(read["result"], expected, "round {round}");
    }
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
