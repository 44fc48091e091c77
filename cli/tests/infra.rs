//! `infra/`: the manifests are checked the way CI can without a cluster or a
//! container engine, and the compose topology runs as local processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn infra() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra")
}

fn check(root: &Path) -> Output {
    Command::new("python3")
        .arg(infra().join("scripts/check.py"))
        .arg("--root")
        .arg(root)
        .args(["--eryx", env!("CARGO_BIN_EXE_eryx")])
        .output()
        .expect("running infra/scripts/check.py (./setup.sh installs its tools)")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Copies `from` into `to`, recursively, leaving out `secrets` directories.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "secrets" {
                copy_tree(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn infra_manifests_pass_lint_kubernetes_schema_compose_schema_and_hadolint() {
    let output = check(&infra());
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn infra_check_rejects_a_misspelled_field_an_unknown_variable_and_a_short_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&infra(), dir.path());
    let edit = |file: &str, from: &str, to: &str| {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    edit(
        "kubernetes/deployment.yaml",
        "readOnlyRootFilesystem",
        "readOnlyRootFileSystem",
    );
    edit(
        "kubernetes/configmap.yaml",
        "ERYX_MAX_CONCURRENCY",
        "ERYX_MAX_CONCURENCY",
    );
    edit(
        "kubernetes/deployment.yaml",
        "terminationGracePeriodSeconds: 45",
        "terminationGracePeriodSeconds: 30",
    );
    let output = check(dir.path());
    let text = text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("'readOnlyRootFileSystem' was unexpected"),
        "{text}"
    );
    assert!(
        text.contains("sets ERYX_MAX_CONCURENCY, which eryx does not read"),
        "{text}"
    );
    assert!(text.contains("terminationGracePeriodSeconds 30"), "{text}");
}

#[test]
fn local_topology_two_replicas_share_functions_and_sessions_through_one_bucket() {
    let output = Command::new("bash")
        .arg(infra().join("scripts/local-topology.sh"))
        .arg(env!("CARGO_BIN_EXE_eryx"))
        .output()
        .unwrap();
    let text = text(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("went a -> b -> a: counter + 1 = 42"),
        "{text}"
    );
}
