//! `eryx deploy` and `eryx invoke`: thin HTTP clients of a gateway (and the
//! request helpers `eryx session` and `eryx repl` share).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

/// Where the gateway is and how to authenticate.
#[derive(Debug, Args)]
pub struct Target {
    /// The gateway's base URL.
    #[arg(long, env = "ERYX_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token (admin for deploy, admin or invoke for invoke and
    /// sessions).
    #[arg(long, env = "ERYX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Flags of `eryx deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Function name: 1 to 63 of a-z, 0-9 and -.
    name: String,
    /// The Python module to deploy.
    file: PathBuf,
    /// Handler function in the module.
    #[arg(long, default_value = "handler")]
    handler: String,
    /// Invocation timeout in ms (default: the gateway's).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Memory limit per instance in MiB (default: the gateway's).
    #[arg(long)]
    memory_mb: Option<u64>,
    /// In-memory /tmp and /work per instance in MiB (default: the gateway's).
    #[arg(long)]
    tmp_mb: Option<u64>,
    /// A host the handler may connect to, e.g. `api.example.com` or
    /// `https://api.example.com:8443` (repeatable; default: none).
    #[arg(long = "allow-host")]
    allow_hosts: Vec<String>,
    /// A pure-Python wheel (.whl) to ship with the function (repeatable);
    /// the deploy is then a zip bundle.
    #[arg(long = "wheel")]
    wheels: Vec<PathBuf>,
    /// A pip requirements file: its pure-Python wheels (and their
    /// dependencies) are downloaded with `python3 -m pip download` for
    /// CPython 3.14 and shipped with the function.
    #[arg(long)]
    requirements: Option<PathBuf>,
    /// Another module (a .py file) or package (a directory) to ship beside
    /// FILE (repeatable).
    #[arg(long = "module")]
    modules: Vec<PathBuf>,
    /// Environment variable for the handler, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    #[command(flatten)]
    target: Target,
}

/// Flags of `eryx invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// Function name.
    name: String,
    /// The event as JSON (`-` reads standard input; default `null`).
    event: Option<String>,
    /// Also print the handler's stdout and stderr (to stderr).
    #[arg(long)]
    output: bool,
    #[command(flatten)]
    target: Target,
}

/// Flags of `eryx probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The path to ask (`/healthz`: the process serves; `/readyz`: the base
    /// snapshot is loaded and requests are served).
    #[arg(long, default_value = "/healthz")]
    path: String,
    /// Milliseconds to wait for the answer's status (connecting included).
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    #[command(flatten)]
    target: Target,
}

/// `eryx probe`: exit 0 when the gateway answers `path` with a 2xx status,
/// 1 (with the reason on stderr) when it answers otherwise, is unreachable
/// or is slower than the timeout.
pub fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let timeout = std::time::Duration::from_millis(args.timeout_ms);
    runtime()?.block_on(async {
        let answer = request(&args.target, reqwest::Method::GET, &args.path)
            .timeout(timeout)
            .send()
            .await;
        Ok(match answer {
            Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
            Ok(response) => {
                eprintln!(
                    "eryx: {}{}: {}",
                    args.target.url,
                    args.path,
                    response.status()
                );
                ExitCode::from(1)
            }
            Err(error) => {
                eprintln!("eryx: {}{}: {error}", args.target.url, args.path);
                ExitCode::from(1)
            }
        })
    })
}

fn parse_env(entry: &str) -> Result<(String, String), String> {
    entry
        .split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{entry:?} is not KEY=VALUE"))
}

pub(crate) fn request(
    target: &Target,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", target.url.trim_end_matches('/'));
    let builder = reqwest::Client::new().request(method, url);
    match &target.token {
        Some(token) => builder.bearer_auth(token),
        None => builder,
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Prints an error response's message and traceback; returns exit status 1.
fn failed(status: reqwest::StatusCode, body: &str) -> ExitCode {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(json) => {
            let error = &json["error"];
            eprintln!(
                "eryx: {} ({}): {}",
                status,
                error["code"].as_str().unwrap_or("error"),
                error["message"].as_str().unwrap_or(body)
            );
            if let Some(traceback) = error["traceback"].as_str() {
                eprint!("{traceback}");
            }
        }
        Err(_) => eprintln!("eryx: {status}: {body}"),
    }
    ExitCode::from(1)
}

/// Sends `request`; returns the body of a success, or the exit status after
/// printing an error response.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    target: &Target,
) -> anyhow::Result<Result<String, ExitCode>> {
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", target.url))?;
    let status = response.status();
    let text = response.text().await?;
    Ok(if status.is_success() {
        Ok(text)
    } else {
        Err(failed(status, &text))
    })
}

/// `eryx deploy NAME FILE`.
pub fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let source = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut settings = serde_json::json!({
        "handler": args.handler,
        "timeout_ms": args.timeout_ms,
        "memory_mb": args.memory_mb,
        "tmp_mb": args.tmp_mb,
        "allow_hosts": args.allow_hosts,
        "env": args.env.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    });
    let bundled =
        !args.wheels.is_empty() || args.requirements.is_some() || !args.modules.is_empty();
    let zip = if bundled {
        let mut wheels = args.wheels.clone();
        let downloads = tempfile::tempdir()?;
        if let Some(requirements) = &args.requirements {
            wheels.extend(download_requirements(requirements, downloads.path())?);
        }
        settings
            .as_object_mut()
            .expect("an object")
            .retain(|_, v| !v.is_null());
        Some(bundle(&source, &settings, &args.modules, &wheels)?)
    } else {
        settings["source"] = source.into();
        None
    };
    runtime()?.block_on(async {
        let deploy = request(
            &args.target,
            reqwest::Method::PUT,
            &format!("/v1/functions/{}", args.name),
        );
        let deploy = match zip {
            Some(zip) => deploy.header("content-type", "application/zip").body(zip),
            None => deploy.json(&settings),
        };
        let text = match send(deploy, &args.target).await? {
            Ok(text) => text,
            Err(code) => return Ok(code),
        };
        let json: serde_json::Value = serde_json::from_str(&text)?;
        println!(
            "deployed {} version {} ({} ms{})",
            json["function"]["name"].as_str().unwrap_or("?"),
            json["function"]["version"],
            json["timings_ms"]["total_ms"],
            if json["cached"] == true {
                ", snapshot reused"
            } else {
                ""
            }
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// Downloads the wheels `requirements` names (with their dependencies) into
/// `dir` with pip, pure-Python ones only (`--platform any`, CPython 3.14);
/// returns their paths.
fn download_requirements(
    requirements: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let status = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args([
            "--only-binary=:all:",
            "--platform",
            "any",
            "--implementation",
            "py",
        ])
        .args(["--python-version", "3.14", "--dest"])
        .arg(dir)
        .arg("--requirement")
        .arg(requirements)
        .status()
        .context("running `python3 -m pip download` (pip is needed for --requirements)")?;
    if !status.success() {
        bail!(
            "pip could not download pure-Python wheels for {} (a package without a py3-none-any wheel has native code, which the sandbox cannot run)",
            requirements.display()
        );
    }
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    wheels.sort();
    Ok(wheels)
}

/// A deploy bundle: `source` as `main.py`, `modules` (files, or package
/// directories with their `.py` and data files) beside it, `wheels` under
/// `wheels/`, and `settings` as `eryx.json`.
fn bundle(
    source: &str,
    settings: &serde_json::Value,
    modules: &[PathBuf],
    wheels: &[PathBuf],
) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    let add = |zip: &mut zip::ZipWriter<_>, name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        zip.start_file(name, options)?;
        zip.write_all(bytes)?;
        Ok(())
    };
    add(&mut zip, "main.py", source.as_bytes())?;
    add(
        &mut zip,
        "eryx.json",
        serde_json::to_string(settings)?.as_bytes(),
    )?;
    for module in modules {
        let base = module
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let mut pending = vec![module.clone()];
        while let Some(path) = pending.pop() {
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "__pycache__") {
                    continue;
                }
                for entry in std::fs::read_dir(&path)? {
                    pending.push(entry?.path());
                }
                continue;
            }
            let name = path
                .strip_prefix(&base)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            add(&mut zip, &name, &bytes)?;
        }
    }
    for wheel in wheels {
        let file = wheel
            .file_name()
            .with_context(|| format!("{} has no file name", wheel.display()))?
            .to_string_lossy();
        let bytes =
            std::fs::read(wheel).with_context(|| format!("cannot read {}", wheel.display()))?;
        add(&mut zip, &format!("wheels/{file}"), &bytes)?;
    }
    Ok(zip.finish()?.into_inner())
}

/// `eryx invoke NAME [EVENT]`.
pub fn invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let event = match args.event.as_deref() {
        None => "null".to_owned(),
        Some("-") => std::io::read_to_string(std::io::stdin())?,
        Some(event) => event.to_owned(),
    };
    if serde_json::from_str::<serde_json::Value>(&event).is_err() {
        bail!("the event is not valid JSON: {event}");
    }
    runtime()?.block_on(async {
        let mut builder = request(
            &args.target,
            reqwest::Method::POST,
            &format!("/v1/functions/{}/invoke", args.name),
        )
        .header("content-type", "application/json")
        .body(event);
        if args.output {
            builder = builder.header(eryx_gateway::INCLUDE_OUTPUT, "true");
        }
        let text = match send(builder, &args.target).await? {
            Ok(text) => text,
            Err(code) => return Ok(code),
        };
        if args.output {
            let json: serde_json::Value = serde_json::from_str(&text)?;
            eprint!("{}", json["stdout"].as_str().unwrap_or(""));
            eprint!("{}", json["stderr"].as_str().unwrap_or(""));
            println!("{}", json["result"]);
        } else {
            println!("{text}");
        }
        Ok(ExitCode::SUCCESS)
    })
}
