//! Files and the network: each instance's own in-memory `/tmp`, and HTTP to
//! a host the policy allows (here a tiny server on loopback, allowed
//! explicitly); every other host is refused, naming the policy.
//!
//! `cargo run -p eryx --example files_and_network`

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A one-route HTTP server on 127.0.0.1.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let body = r#"{"greeting": "hello from the host's network"}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });

    let policy = eryx::NetworkPolicy::new()
        // Loopback is a private address: allowed only when asked for by name.
        .allow_private(&format!("http://127.0.0.1:{port}"))?;
    let sandbox = eryx::Sandbox::builder()
        .with_network(policy)
        .with_filesystem_limits(eryx::FsLimits {
            max_bytes: 8 << 20,
            max_files: 1_000,
        })
        .build()?;
    let result = sandbox
        .execute(&format!(
            r#"
import json, os, sqlite3, urllib.request, urllib.error
with urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=5) as response:
    greeting = json.load(response)["greeting"]
db = sqlite3.connect("/tmp/notes.db")
db.execute("create table notes (text)")
db.execute("insert into notes values (?)", (greeting,))
db.commit()
stored = db.execute("select text from notes").fetchone()[0]
try:
    urllib.request.urlopen("http://example.com/", timeout=5)
except urllib.error.URLError as e:
    refused = str(e.reason)
print(stored)
print(refused)
os.listdir("/tmp")
"#
        ))
        .await?;
    print!("{}", result.stdout);
    assert!(result.stdout.starts_with("hello from the host's network\n"));
    assert!(result.stdout.contains("eryx network policy"));
    assert_eq!(result.result.as_deref(), Some("['notes.db']"));
    Ok(())
}
