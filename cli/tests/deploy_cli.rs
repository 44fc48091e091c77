//! `eryx deploy` with `--module`, `--wheel` and `--requirements`: a zip
//! bundle of real PyPI wheels sent to a real gateway, then `eryx invoke`.

use std::process::{Command, Output};

use eryx_tests::TestGateway;

fn eryx(url: &str, dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eryx"))
        .current_dir(dir)
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

const MAIN: &str = r#"
import attr
import dateutil.parser
import tzhelp

@attr.s
class Seen:
    when = attr.ib()

def handler(event, context):
    when = dateutil.parser.isoparse(event["when"])
    return {"seen": repr(Seen(when.year)), "zone": tzhelp.ZONE}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_ships_modules_wheels_and_requirements_as_a_bundle() {
    let gw = TestGateway::start(eryx_gateway::Config::new()).await;
    let url = gw.url.clone();
    let attrs = eryx_tests::fetch_wheel(eryx_tests::ATTRS_WHEEL);
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.py"), MAIN).unwrap();
        std::fs::write(dir.path().join("tzhelp.py"), "ZONE = 'UTC'\n").unwrap();
        // python-dateutil pulls in six: pip resolves it.
        std::fs::write(
            dir.path().join("requirements.txt"),
            "python-dateutil==2.9.0.post0\n",
        )
        .unwrap();
        let deployed = stdout(&eryx(
            &url,
            dir.path(),
            &[
                "deploy",
                "dated",
                "main.py",
                "--module",
                "tzhelp.py",
                "--wheel",
                attrs.to_str().unwrap(),
                "--requirements",
                "requirements.txt",
                "--timeout-ms",
                "5000",
            ],
        ));
        assert!(
            deployed.starts_with("deployed dated version 1"),
            "{deployed}"
        );
        let out = stdout(&eryx(
            &url,
            dir.path(),
            &["invoke", "dated", r#"{"when": "2026-12-02T10:00:00"}"#],
        ));
        let out: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"seen": "Seen(when=2026)", "zone": "UTC"})
        );

        // A requirement with no pure-Python wheel fails before anything is sent.
        std::fs::write(dir.path().join("native.txt"), "markupsafe==3.0.2\n").unwrap();
        let failed = eryx(
            &url,
            dir.path(),
            &["deploy", "dated", "main.py", "--requirements", "native.txt"],
        );
        assert!(!failed.status.success());
        assert!(
            String::from_utf8_lossy(&failed.stderr).contains("native code"),
            "{}",
            String::from_utf8_lossy(&failed.stderr)
        );
    })
    .await
    .unwrap();
}
