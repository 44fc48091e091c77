//! The `eryx` command: a thin layer over the `eryx` and `eryx-preinit` crates.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Run Python in isolated WebAssembly instances of CPython 3.14.
#[derive(Parser)]
#[command(name = "eryx", version)]
struct Cli {
    /// Where downloaded, built and compiled artifacts are kept.
    #[arg(long, env = "ERYX_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
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
    /// Fetch CPython, build the guest, link and compile the component.
    Build,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("ERYX_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("eryx: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data_dir = cli.data_dir.unwrap_or_else(eryx_preinit::default_data_dir);
    let progress = Spinner::default();
    match cli.command {
        Command::Build => {
            let artifacts = eryx_preinit::ensure_component(&data_dir, &progress)?;
            let runtime = load_runtime(&data_dir, &artifacts, &progress)?;
            println!("component: {}", artifacts.component.display());
            println!("key: {}", artifacts.key);
            for (step, time) in &artifacts.timings {
                println!("{step}: {:.2} s", time.as_secs_f64());
            }
            let verb = if runtime.was_compiled() {
                "compile"
            } else {
                "load compiled"
            };
            println!("{verb}: {:.2} s", runtime.load_time().as_secs_f64());
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
            let artifacts = eryx_preinit::ensure_component(&data_dir, &progress)?;
            let runtime = load_runtime(&data_dir, &artifacts, &progress)?;
            let sandbox = eryx::Sandbox::builder(&runtime)
                .with_output_limit_bytes(output_limit_bytes)
                .build()?;
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(report(tokio.block_on(sandbox.execute(&code))))
        }
    }
}

fn load_runtime(
    data_dir: &std::path::Path,
    artifacts: &eryx_preinit::Artifacts,
    progress: &Spinner,
) -> anyhow::Result<eryx::Runtime> {
    let cache = data_dir.join("compiled");
    progress.quiet_step("loading the component (the first time compiles it: ~10 s)");
    let runtime = eryx::Runtime::builder()
        .with_component_file(&artifacts.component)
        .with_stdlib_dir(&artifacts.stdlib_dir)
        .with_cache_dir(cache)
        .build()?;
    if runtime.was_compiled() {
        eryx_preinit::Progress::done(
            progress,
            &format!(
                "compiled the component in {:.1} s",
                runtime.load_time().as_secs_f64()
            ),
        );
    } else {
        progress.clear();
    }
    Ok(runtime)
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

    /// A step that is usually quick: shown on a terminal only.
    fn quiet_step(&self, message: &str) {
        if std::io::stderr().is_terminal() {
            self.start(message);
        }
    }

    fn clear(&self) {
        if let Some(bar) = self.bar.lock().expect("spinner lock").take() {
            bar.finish_and_clear();
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
