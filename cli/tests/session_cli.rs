//! `eryx session new|exec|show|rm` and `eryx repl` against a real gateway.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use eryx_tests::TestGateway;

fn eryx(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eryx"))
        .args(args)
        .args(["--url", url])
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_commands_create_run_show_and_remove_a_session() {
    let gw = TestGateway::start(eryx_gateway::Config::new()).await;
    let url = gw.url.clone();
    tokio::task::spawn_blocking(move || {
        let id = stdout(&eryx(&url, &["session", "new"])).trim().to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert_eq!(stdout(&eryx(&url, &["session", "exec", &id, "x = 41"])), "");
        assert_eq!(
            stdout(&eryx(
                &url,
                &["session", "exec", &id, "print('sum'); x + 1"]
            )),
            "sum\n42\n"
        );
        let raised = eryx(&url, &["session", "exec", &id, "1 / 0"]);
        assert_eq!(raised.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&raised.stderr).contains("ZeroDivisionError"));
        let shown: serde_json::Value =
            serde_json::from_str(&stdout(&eryx(&url, &["session", "show", &id]))).unwrap();
        assert_eq!(shown["version"], 3, "{shown}");
        stdout(&eryx(&url, &["session", "rm", &id]));
        let gone = eryx(&url, &["session", "show", &id]);
        assert_eq!(gone.status.code(), Some(1));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_runs_lines_and_blocks_and_keeps_its_session() {
    let gw = TestGateway::start(eryx_gateway::Config::new()).await;
    let url = gw.url.clone();
    tokio::task::spawn_blocking(move || {
        let mut repl = Command::new(env!("CARGO_BIN_EXE_eryx"))
            .args(["repl", "--url", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        repl.stdin
            .take()
            .unwrap()
            .write_all(b"x = 41\nx + 1\ndef f(v):\n    return v * 2\n\nf(x)\n'done'\n")
            .unwrap();
        let output = repl.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{err}");
        assert!(
            out.contains("42\n82\n'done'\n"),
            "stdout: {out}\nstderr: {err}"
        );
        // The session outlives the REPL, and the REPL says how to resume it.
        assert!(err.contains("eryx repl --session"), "{err}");
    })
    .await
    .unwrap();
}
