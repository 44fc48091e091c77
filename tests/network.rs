//! Outbound HTTP through the host's network policy: real HTTP and HTTPS
//! servers on loopback, real CPython clients (`urllib.request`,
//! `http.client`, raw sockets) in real wasm instances.

use eryx::NetworkPolicy;
use eryx_tests::{WebServer, runtime};

fn sandbox(policy: NetworkPolicy) -> eryx::Sandbox {
    eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_network(policy)
        .build()
        .unwrap()
}

/// `code` in a fresh instance of `sandbox`; its result's repr.
async fn run(sandbox: &eryx::Sandbox, code: &str) -> String {
    let result = sandbox
        .execute(code)
        .await
        .unwrap_or_else(|e| panic!("{code}\n{e}"));
    result.result.unwrap_or_default()
}

/// Python that fetches `url` with urllib and returns the body, or the
/// exception's type and message.
fn fetch(url: &str) -> String {
    format!(
        r#"
import urllib.request, urllib.error
try:
    with urllib.request.urlopen({url:?}, timeout=5) as r:
        out = ("ok", r.status, r.read().decode())
except urllib.error.URLError as e:
    out = ("error", type(e.reason).__name__, str(e.reason))
except Exception as e:
    out = ("error", type(e).__name__, str(e))
out
"#
    )
}

#[tokio::test]
async fn by_default_every_connection_is_refused_naming_the_policy() {
    let server = WebServer::http().await;
    let sandbox = eryx_tests::sandbox();
    let out = run(&sandbox, &fetch(&format!("{}/hello", server.url))).await;
    assert!(out.contains("NetworkPolicyError"), "{out}");
    assert!(out.contains("network policy allows no host"), "{out}");
    let out = run(
        &sandbox,
        &format!("import socket, eryx\ntry:\n    socket.create_connection(('127.0.0.1', {}))\nexcept eryx.NetworkPolicyError as e:\n    out = isinstance(e, PermissionError), str(e)\nout", server.port),
    )
    .await;
    assert!(out.starts_with("(True, "), "{out}");
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_allowed_loopback_server_answers_through_urllib_and_http_client() {
    let server = WebServer::http().await;
    let policy = NetworkPolicy::new()
        .allow_private(&format!("http://127.0.0.1:{}", server.port))
        .unwrap();
    let sandbox = sandbox(policy);
    let out = run(&sandbox, &fetch(&format!("{}/hello", server.url))).await;
    assert_eq!(out, "('ok', 200, 'hello from the test server')");
    let out = run(
        &sandbox,
        &format!(
            r#"
import http.client, json
c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=5)
c.request("POST", "/echo", body=b"payload", headers={{"X-Test": "yes"}})
r = c.getresponse()
first = json.loads(r.read())
c.request("GET", "/hello")
second = c.getresponse().read().decode()
c.close()
first["method"], first["body"], first["headers"]["x-test"], second
"#,
            port = server.port
        ),
    )
    .await;
    assert_eq!(
        out,
        "('POST', 'payload', 'yes', 'hello from the test server')"
    );
}

#[tokio::test]
async fn https_is_verified_by_the_host_against_the_policys_roots() {
    let server = WebServer::https().await;
    let rule = format!("https://localhost:{}", server.port);
    // Trusted: the policy carries the server's self-signed certificate.
    let trusted = sandbox(
        NetworkPolicy::new()
            .allow_private(&rule)
            .unwrap()
            .with_root_certificate(server.cert_pem.as_ref().unwrap().as_bytes())
            .unwrap(),
    );
    let out = run(&trusted, &fetch(&format!("{}/hello", server.url))).await;
    assert_eq!(out, "('ok', 200, 'hello from the test server')");
    // Not trusted: an unverified context inside the sandbox does not help.
    let untrusted = sandbox(NetworkPolicy::new().allow_private(&rule).unwrap());
    let out = run(
        &untrusted,
        &format!(
            r#"
import ssl, urllib.request, urllib.error
try:
    urllib.request.urlopen({url:?}, context=ssl._create_unverified_context(), timeout=5)
    out = "fetched"
except urllib.error.URLError as e:
    out = type(e.reason).__name__, str(e.reason)
out
"#,
            url = format!("{}/hello", server.url)
        ),
    )
    .await;
    assert!(
        out.contains("SSLCertVerificationError") || out.contains("SSLError"),
        "{out}"
    );
    // An https-only rule refuses plain text on that port.
    let out = run(
        &trusted,
        &format!("import socket\ns = socket.create_connection(('localhost', {}))\ntry:\n    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nexcept PermissionError as e:\n    out = str(e)\nout", server.port),
    )
    .await;
    assert!(out.contains("https only"), "{out}");
}

#[tokio::test]
async fn redirects_names_and_mapped_addresses_into_private_ranges_are_refused() {
    let server = WebServer::http().await;
    // The server itself is allowed by its address; any other host is
    // allowed too, but only to public addresses.
    let policy = NetworkPolicy::new()
        .allow_private(&format!("http://127.0.0.1:{}", server.port))
        .unwrap()
        .allow(&format!("*:{}", server.port))
        .unwrap()
        .allow("*")
        .unwrap();
    let sandbox = sandbox(policy);
    let base = &server.url;
    let port = server.port;
    let cases = [
        // A redirect to a name that resolves to loopback.
        format!("{base}/redirect?to=http://localhost:{port}/hello"),
        // A redirect to the cloud metadata address.
        format!("{base}/redirect?to=http://169.254.169.254/latest/meta-data/"),
        // A name that resolves to loopback, directly.
        format!("http://localhost:{port}/hello"),
        // The server's own address, IPv6-mapped.
        format!("http://[::ffff:127.0.0.1]:{port}/hello"),
        format!("http://[::ffff:7f00:1]:{port}/hello"),
        // A private address that is not the allowed one.
        format!("http://10.0.0.1:{port}/hello"),
    ];
    for url in cases {
        let out = run(&sandbox, &fetch(&url)).await;
        assert!(
            out.starts_with("('error', 'NetworkPolicyError'") && out.contains("refuses"),
            "{url}: {out}"
        );
    }
    // The allowed address itself, and a redirect to it, work.
    let out = run(
        &sandbox,
        &fetch(&format!("{base}/redirect?to={base}/hello")),
    )
    .await;
    assert_eq!(out, "('ok', 200, 'hello from the test server')");
    // Not on the list at all: a port no rule names.
    let out = run(&sandbox, &fetch("http://127.0.0.1:1/")).await;
    assert!(
        out.contains("not in this sandbox's network allow-list"),
        "{out}"
    );
}

#[tokio::test]
async fn responses_over_the_cap_and_slow_servers_fail_and_the_sandbox_keeps_serving() {
    let server = WebServer::http().await;
    let policy = NetworkPolicy::new()
        .allow_private(&format!("http://127.0.0.1:{}", server.port))
        .unwrap()
        .with_max_received_bytes(256 << 10)
        .with_io_timeout(std::time::Duration::from_millis(500));
    let sandbox = sandbox(policy);
    let out = run(&sandbox, &fetch(&format!("{}/big?n=1000000", server.url))).await;
    assert!(
        out.contains("network limit") && out.contains("262144"),
        "{out}"
    );
    let out = run(&sandbox, &fetch(&format!("{}/big?n=100000", server.url))).await;
    assert!(out.starts_with("('ok', 200, 'xxxx"), "{out}");
    let started = std::time::Instant::now();
    let out = run(&sandbox, &fetch(&format!("{}/slow?ms=5000", server.url))).await;
    assert!(out.contains("timed out"), "{out}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    let out = run(&sandbox, &fetch(&format!("{}/hello", server.url))).await;
    assert_eq!(out, "('ok', 200, 'hello from the test server')");
}

#[tokio::test]
async fn requests_from_pypi_works_over_http_and_https_and_follows_the_policy() {
    let http = WebServer::http().await;
    let https = WebServer::https().await;
    let mut builder = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_network(
            NetworkPolicy::new()
                .allow_private(&format!("http://127.0.0.1:{}", http.port))
                .unwrap()
                .allow_private(&format!("https://localhost:{}", https.port))
                .unwrap()
                .with_root_certificate(https.cert_pem.as_ref().unwrap().as_bytes())
                .unwrap(),
        );
    for wheel in eryx_tests::REQUESTS_WHEELS {
        builder = builder.with_package(eryx_tests::fetch_wheel(wheel));
    }
    let sandbox = builder.build().unwrap();
    let out = run(
        &sandbox,
        &format!(
            r#"
import requests
s = requests.Session()
a = s.get("{http}/hello", timeout=5)
b = s.post("{http}/echo", json={{"k": [1, 2]}}, timeout=5).json()
c = requests.get("{https}/hello", timeout=5)
try:
    requests.get("http://localhost:{port}/hello", timeout=5)
    refused = "fetched"
except requests.exceptions.ConnectionError as e:
    refused = "network policy" in str(e)
(a.status_code, a.text, b["method"], b["body"], c.status_code, c.text, refused)
"#,
            http = http.url,
            https = https.url,
            port = http.port
        ),
    )
    .await;
    assert_eq!(
        out,
        "(200, 'hello from the test server', 'POST', '{\"k\": [1, 2]}', 200, 'hello from the test server', True)"
    );
}

#[tokio::test]
async fn tls_must_be_for_the_host_the_policy_allowed() {
    let server = WebServer::https().await;
    let sandbox = sandbox(
        NetworkPolicy::new()
            .allow_private(&format!("https://localhost:{}", server.port))
            .unwrap()
            .with_root_certificate(server.cert_pem.as_ref().unwrap().as_bytes())
            .unwrap(),
    );
    let out = run(
        &sandbox,
        &format!(
            r#"
import socket, ssl
s = socket.create_connection(("localhost", {port}))
try:
    ssl.create_default_context().wrap_socket(s, server_hostname="other.example")
    out = "wrapped"
except PermissionError as e:
    out = str(e)
out
"#,
            port = server.port
        ),
    )
    .await;
    assert!(
        out.contains("the server name must be the host connected to"),
        "{out}"
    );
}
