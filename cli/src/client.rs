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
    let body = serde_json::json!({
        "source": source,
        "handler": args.handler,
        "timeout_ms": args.timeout_ms,
        "memory_mb": args.memory_mb,
        "tmp_mb": args.tmp_mb,
        "allow_hosts": args.allow_hosts,
        "env": args.env.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    });
    runtime()?.block_on(async {
        let deploy = request(
            &args.target,
            reqwest::Method::PUT,
            &format!("/v1/functions/{}", args.name),
        )
        .json(&body);
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
