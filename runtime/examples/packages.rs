//! A pure-Python wheel from PyPI in the sandbox, preloaded into a snapshot
//! so its import is paid once.
//!
//! `cargo run -p eryx --example packages [path/to/package.whl]` (without an
//! argument it fetches `attrs` with pip).

use std::path::PathBuf;
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let wheel = match std::env::args().nth(1) {
        Some(path) => PathBuf::from(path),
        None => {
            let status = std::process::Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--only-binary=:all:",
                ])
                .arg("--dest")
                .arg(dir.path())
                .arg("attrs==25.3.0")
                .status()?;
            assert!(status.success(), "pip download failed");
            dir.path().join("attrs-25.3.0-py3-none-any.whl")
        }
    };
    let start = Instant::now();
    let sandbox = eryx::Sandbox::builder()
        .with_package(&wheel)
        .with_preload(["attrs"])
        .build()?;
    println!(
        "sandbox with a preloaded wheel ready in {:?}",
        start.elapsed()
    );
    let code = "import attrs\n@attrs.define\nclass Point:\n    x: int\n    y: int\nattrs.asdict(Point(1, 2))";
    let result = sandbox.execute(code).await?;
    println!("{}", result.result.as_deref().unwrap_or_default());
    assert_eq!(result.result.as_deref(), Some("{'x': 1, 'y': 2}"));
    Ok(())
}
