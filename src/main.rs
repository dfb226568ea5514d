use std::io::IsTerminal;

use clap::Parser;
use fluss_tiering::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // `tier` also takes the Flink tiering job's spellings and a config file: rewritten into its own flags first.
    let rewritten = match fluss_tiering::cli::options::rewrite(std::env::args_os().collect()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", fluss_tiering::cli::describe(&e));
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(rewritten.args);
    // `demo` and `bench` print their own tables and summaries on stdout: their logs stay at warnings unless RUST_LOG
    // says otherwise. Colour only where a person reads it (a terminal), never in a file or a pipe.
    let default = match cli.command {
        Command::Demo(_) | Command::Bench(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    for note in &rewritten.notes {
        tracing::warn!("{note}");
    }
    match fluss_tiering::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", fluss_tiering::cli::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
