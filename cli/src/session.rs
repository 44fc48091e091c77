//! `eryx session new|exec|show|rm` and `eryx repl`: clients of a gateway's
//! sessions API. A session's state lives in the gateway's store, so the REPL
//! may be closed and resumed (`--session ID`) through any replica.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::client::{Target, request, runtime, send};

/// `eryx session ...`.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session; prints its id.
    New {
        /// Run the session in this function's snapshot (its module's
        /// globals are the initial state).
        #[arg(long)]
        function: Option<String>,
        /// Seconds the session lives after its last use (default: the
        /// gateway's, 3600).
        #[arg(long)]
        ttl_s: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Run code in a session (`-` reads standard input); prints its output
    /// and the value of a final expression.
    Exec {
        /// The session's id.
        id: String,
        /// The code.
        code: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print a session's version, sizes and times as JSON.
    Show {
        /// The session's id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a session and its stored state.
    Rm {
        /// The session's id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Flags of `eryx repl`.
#[derive(Debug, Args)]
pub struct ReplArgs {
    /// Continue this session instead of creating one.
    #[arg(long)]
    session: Option<String>,
    /// Create the session in this function's snapshot.
    #[arg(long, conflicts_with = "session")]
    function: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// Runs an `eryx session` command.
pub fn run(command: SessionCommand) -> anyhow::Result<ExitCode> {
    let tokio = runtime()?;
    tokio.block_on(async {
        match command {
            SessionCommand::New {
                function,
                ttl_s,
                target,
            } => match create(&target, function, ttl_s).await? {
                Ok(id) => {
                    println!("{id}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            },
            SessionCommand::Exec { id, code, target } => {
                let code = if code == "-" {
                    std::io::read_to_string(std::io::stdin())?
                } else {
                    code
                };
                execute(&target, &id, &code).await
            }
            SessionCommand::Show { id, target } => {
                let show = request(&target, reqwest::Method::GET, &format!("/v1/sessions/{id}"));
                Ok(match send(show, &target).await? {
                    Ok(text) => {
                        let json: serde_json::Value = serde_json::from_str(&text)?;
                        println!("{}", serde_json::to_string_pretty(&json)?);
                        ExitCode::SUCCESS
                    }
                    Err(code) => code,
                })
            }
            SessionCommand::Rm { id, target } => {
                let rm = request(
                    &target,
                    reqwest::Method::DELETE,
                    &format!("/v1/sessions/{id}"),
                );
                Ok(match send(rm, &target).await? {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(code) => code,
                })
            }
        }
    })
}

/// Creates a session; its id, or the exit status after printing the error.
async fn create(
    target: &Target,
    function: Option<String>,
    ttl_s: Option<u64>,
) -> anyhow::Result<Result<String, ExitCode>> {
    let body = serde_json::json!({ "function": function, "ttl_s": ttl_s });
    let create = request(target, reqwest::Method::POST, "/v1/sessions").json(&body);
    Ok(match send(create, target).await? {
        Ok(text) => {
            let json: serde_json::Value = serde_json::from_str(&text)?;
            Ok(json["id"]
                .as_str()
                .context("no id in the answer")?
                .to_owned())
        }
        Err(code) => Err(code),
    })
}

/// Runs `code` in session `id` and prints what it did as Python's REPL
/// would: output, then the value's `repr`, or the traceback. Exit status 1
/// when it raised.
async fn execute(target: &Target, id: &str, code: &str) -> anyhow::Result<ExitCode> {
    let exec = request(
        target,
        reqwest::Method::POST,
        &format!("/v1/sessions/{id}/execute"),
    )
    .json(&serde_json::json!({ "code": code }));
    let text = match send(exec, target).await? {
        Ok(text) => text,
        Err(code) => return Ok(code),
    };
    let json: serde_json::Value = serde_json::from_str(&text)?;
    print!("{}", json["stdout"].as_str().unwrap_or(""));
    eprint!("{}", json["stderr"].as_str().unwrap_or(""));
    if let Some(result) = json["result"].as_str() {
        println!("{result}");
    }
    if let Some(skipped) = json["skipped"].as_array().filter(|s| !s.is_empty()) {
        let names: Vec<&str> = skipped.iter().filter_map(|s| s.as_str()).collect();
        eprintln!("eryx: not kept (cannot be pickled): {}", names.join(", "));
    }
    let _ = std::io::stdout().flush();
    let error = &json["error"];
    if error.is_null() {
        return Ok(ExitCode::SUCCESS);
    }
    match error["traceback"].as_str().filter(|t| !t.is_empty()) {
        Some(traceback) => eprint!("{traceback}"),
        None => eprintln!(
            "{}: {}",
            error["type"].as_str().unwrap_or("Error"),
            error["message"].as_str().unwrap_or("")
        ),
    }
    Ok(ExitCode::from(1))
}

/// Whether `source` is an unfinished block: a compound statement's header
/// (ending in `:`), an open bracket or string, or a line continuation. The
/// block then goes on until an empty line, as in Python's REPL.
fn incomplete(source: &str) -> bool {
    let mut depth = 0i32;
    let mut chars = source.chars().peekable();
    let mut quote: Option<(char, bool)> = None;
    // The last character of code (not of a comment, not blank).
    let mut last = None;
    while let Some(c) = chars.next() {
        match quote {
            Some((q, triple)) => match c {
                '\\' => {
                    chars.next();
                }
                c if c == q && !triple => quote = None,
                c if c == q && chars.next_if_eq(&q).is_some() && chars.next_if_eq(&q).is_some() => {
                    quote = None;
                }
                _ => {}
            },
            None => match c {
                '#' => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                    continue;
                }
                '\'' | '"' => {
                    let triple = chars.next_if_eq(&c).is_some();
                    if !(triple && chars.next_if_eq(&c).is_none()) {
                        // Not `''` (an empty string).
                        quote = Some((c, triple));
                    }
                }
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            },
        }
        if !c.is_whitespace() {
            last = Some(c);
        }
    }
    quote.is_some_and(|(_, triple)| triple) || depth > 0 || matches!(last, Some(':' | '\\'))
}

/// `eryx repl`: an interactive session with line editing and history.
pub fn repl(args: ReplArgs) -> anyhow::Result<ExitCode> {
    let tokio = runtime()?;
    let target = &args.target;
    let id = match args.session {
        Some(id) => id,
        None => match tokio.block_on(create(target, args.function, None))? {
            Ok(id) => id,
            Err(code) => return Ok(code),
        },
    };
    eprintln!(
        "eryx session {id} on {} (Python 3.14 in a fresh instance per input; Ctrl-D to leave)",
        target.url
    );
    let mut editor = rustyline::DefaultEditor::new()?;
    loop {
        let mut block = match editor.readline(">>> ") {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(error) => return Err(error.into()),
        };
        if block.trim().is_empty() {
            continue;
        }
        if incomplete(&block) {
            loop {
                match editor.readline("... ") {
                    Ok(line) if line.trim().is_empty() => break,
                    Ok(line) => {
                        block.push('\n');
                        block.push_str(&line);
                    }
                    Err(rustyline::error::ReadlineError::Interrupted) => {
                        block.clear();
                        break;
                    }
                    Err(rustyline::error::ReadlineError::Eof) => break,
                    Err(error) => return Err(error.into()),
                }
            }
        }
        if block.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(block.as_str());
        tokio.block_on(execute(target, &id, &block))?;
    }
    eprintln!("session {id} is kept; continue it with: eryx repl --session {id}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::incomplete;

    #[test]
    fn blocks_continue_until_closed_like_pythons_repl() {
        assert!(incomplete("def f(x):"));
        assert!(incomplete("for i in range(3):  # loop"));
        assert!(incomplete("x = [1,\n 2,"));
        assert!(incomplete("s = \"\"\"doc"));
        assert!(incomplete("y = 1 + \\"));
        assert!(!incomplete("x = 1"));
        assert!(!incomplete("print('a:')"));
        assert!(!incomplete("d = {'k': ':'}"));
        assert!(!incomplete("s = ''"));
        assert!(!incomplete("x = [1]  # a comment with ("));
    }
}
