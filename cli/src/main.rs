//! The `eryx` command: a thin layer over the `eryx` and `eryx-preinit` crates.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

mod client;
mod serve;
mod session;

/// Run Python in isolated WebAssembly instances of CPython 3.14.
#[derive(Parser)]
#[command(name = "eryx", version)]
struct Cli {
    /// Where downloaded, built and compiled artifacts are kept.
    #[arg(long, env = "ERYX_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Artifact store: a directory, or s3://bucket/prefix (configured by the
    /// AWS_* variables). Default: DATA_DIR/store.
    #[arg(long, env = "ERYX_STORE", global = true)]
    store: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Python file (or `-c CODE`) in a fresh sandbox, like `python3`.
    Run {
        /// The Python file to run.
        #[arg(required_unless_present = "code", conflicts_with = "code")]
        file: Option<PathBuf>,
        /// Program passed in as a string.
        #[arg(short = 'c', long = "code")]
        code: Option<String>,
        /// Bytes kept of each of stdout and stderr; more is cut with a marker.
        #[arg(long, env = "ERYX_OUTPUT_LIMIT_BYTES", default_value_t = eryx::DEFAULT_OUTPUT_LIMIT_BYTES)]
        output_limit_bytes: u32,
    },
    /// Build the base artifact: fetch CPython, build the guest, link,
    /// pre-initialize, precompile, and publish it to the store.
    Build {
        /// Print the artifact's manifest and what was done as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the gateway: deploy Python functions over HTTP and run every
    /// invocation in a fresh instance.
    Serve(Box<serve::ServeArgs>),
    /// Deploy a Python file to a gateway as function NAME.
    Deploy(client::DeployArgs),
    /// Invoke function NAME on a gateway with a JSON event; prints the result.
    Invoke(client::InvokeArgs),
    /// Create, use, show and delete stateful sessions on a gateway.
    #[command(subcommand)]
    Session(session::SessionCommand),
    /// Ask a gateway's health endpoint whether it answers (exit 0 on a 2xx
    /// answer, 1 otherwise): a container's HEALTHCHECK needs no curl.
    Probe(client::ProbeArgs),
    /// An interactive Python REPL whose state is a gateway's session (kept in
    /// its store: leave and resume with --session).
    Repl(session::ReplArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("ERYX_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let outcome = match cli.command {
        Command::Serve(args) => {
            if args.log_format == serve::LogFormat::Json {
                tracing_subscriber::fmt()
                    .json()
                    .with_env_filter(filter())
                    .with_writer(std::io::stderr)
                    .init();
            } else {
                tracing_subscriber::fmt()
                    .with_env_filter(filter())
                    .with_writer(std::io::stderr)
                    .init();
            }
            serve::run(*args, cli.data_dir, cli.store)
        }
        Command::Deploy(args) => client::deploy(args),
        Command::Invoke(args) => client::invoke(args),
        Command::Probe(args) => client::probe(args),
        Command::Session(command) => session::run(command),
        Command::Repl(args) => session::repl(args),
        command => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_env("ERYX_LOG"))
                .with_writer(std::io::stderr)
                .init();
            run(Cli { command, ..cli })
        }
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("eryx: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = cli.data_dir.unwrap_or_else(eryx_preinit::default_data_dir);
    let location = cli
        .store
        .unwrap_or_else(|| eryx_preinit::default_store_location(&data_dir));
    let key = eryx_preinit::signing_key(&data_dir)?;
    let store =
        eryx_preinit::ArtifactStore::open(&location, &eryx_preinit::cache_dir(&data_dir), &key)?;
    let progress = Spinner::default();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let engine = eryx::Engine::new(eryx::EngineOptions::default())?;
    let load = || {
        tokio.block_on(eryx_preinit::ensure_runtime(
            &data_dir, &store, &engine, &progress,
        ))
    };
    match cli.command {
        Command::Build { json } => {
            let (_runtime, report) = load()?;
            if json {
                let out = serde_json::json!({
                    "manifest": report.manifest,
                    "origin": format!("{:?}", report.origin).to_lowercase(),
                    "rejected": report.rejected,
                    "load_ms": report.load_time.as_secs_f64() * 1e3,
                    "store": store.location(),
                    "path": store.cache_path(&report.manifest),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let manifest = &report.manifest;
                println!(
                    "artifact {} ({:.1} MB, {:?})",
                    manifest.key,
                    manifest.size as f64 / 1e6,
                    report.origin
                );
                println!("store    {}", store.location());
                for (step, ms) in &manifest.timings_ms {
                    println!("{step:<14} {ms} ms");
                }
                println!("load_ms        {:.1}", report.load_time.as_secs_f64() * 1e3);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            file,
            code,
            output_limit_bytes,
        } => {
            let code = match (file, code) {
                (_, Some(code)) => code,
                (Some(file), None) => std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?,
                (None, None) => bail!("give a FILE or -c CODE"),
            };
            let (runtime, _report) = load()?;
            let sandbox = eryx::Sandbox::builder()
                .with_runtime(&runtime)
                .with_output_limit_bytes(output_limit_bytes)
                .build()?;
            Ok(report(tokio.block_on(sandbox.execute(&code))))
        }
        Command::Serve(_)
        | Command::Deploy(_)
        | Command::Invoke(_)
        | Command::Probe(_)
        | Command::Session(_)
        | Command::Repl(_) => {
            unreachable!("handled in main")
        }
    }
}

/// Prints a run's output as `python3` would and picks the exit status.
fn report(outcome: eryx::Result<eryx::ExecuteResult>) -> ExitCode {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let status = match outcome {
        Ok(result) => {
            let _ = stdout.write_all(result.stdout.as_bytes());
            let _ = stderr.write_all(result.stderr.as_bytes());
            0
        }
        Err(eryx::Error::Exit {
            code,
            message,
            stdout: out,
            stderr: err,
        }) => {
            let _ = stdout.write_all(out.as_bytes());
            let _ = stderr.write_all(err.as_bytes());
            if let Some(message) = message {
                let _ = writeln!(stderr, "{message}");
            }
            code
        }
        Err(eryx::Error::Exception(e) | eryx::Error::Compile(e)) => {
            let _ = stdout.write_all(e.stdout.as_bytes());
            let _ = stderr.write_all(e.stderr.as_bytes());
            let _ = stderr.write_all(e.traceback.as_bytes());
            1
        }
        Err(other) => {
            let _ = writeln!(stderr, "eryx: {other}");
            2
        }
    };
    let _ = stdout.flush();
    ExitCode::from(u8::try_from(status & 0xff).unwrap_or(1))
}

/// Shows long steps as a spinner on a terminal, as plain lines otherwise.
#[derive(Default)]
struct Spinner {
    bar: Mutex<Option<ProgressBar>>,
}

impl Spinner {
    fn start(&self, message: &str) {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
        );
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Some(old) = self.bar.lock().expect("spinner lock").replace(bar) {
            old.finish_and_clear();
        }
    }
}

impl eryx_preinit::Progress for Spinner {
    fn step(&self, message: &str) {
        if std::io::stderr().is_terminal() {
            self.start(message);
        } else {
            eprintln!("eryx: {message} ...");
        }
    }

    fn done(&self, message: &str) {
        match self.bar.lock().expect("spinner lock").take() {
            Some(bar) => bar.finish_with_message(message.to_owned()),
            None => eprintln!("eryx: {message}"),
        }
    }
}
