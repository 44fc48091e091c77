//! A replica needs only the `eryx` binary and the store: with no cargo, pip
//! or Python on `PATH`, `eryx run` and `eryx serve` still work (the guest and
//! CPython for WASI are embedded in the binary at build time).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `eryx` command with an empty `PATH`, on the default data directory
/// (so it shares the base artifact the other tests use).
fn eryx() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eryx"));
    command
        .env("PATH", "")
        .env_remove("ERYX_WHEEL")
        .env_remove("CARGO");
    command
}

#[test]
fn eryx_run_needs_no_cargo_or_pip_on_path() {
    let output = eryx().args(["run", "-c", "print('hi')"]).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hi\n");
}

/// `GET path` over a plain TCP connection; returns the status code.
fn get(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.get(9..12)?.parse().ok()
}

#[test]
fn eryx_serve_needs_no_cargo_or_pip_on_path() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = tempfile_dir();
    let mut child = eryx()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--store", store.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let ready = loop {
        match get(port, "/readyz") {
            Some(200) => break true,
            _ if Instant::now() > deadline => break false,
            _ => {
                if child.try_wait().unwrap().is_some() {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let listed = get(port, "/v1/functions");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&store);
    assert!(ready, "eryx serve did not become ready without a toolchain");
    assert_eq!(listed, Some(200));
}

/// A fresh directory under the system temporary directory.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("eryx-no-toolchain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
