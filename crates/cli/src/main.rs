//! `sluice`: the command line. Each subcommand lives in its own module; `main` only parses
//! the arguments, sets up logging and dispatches.

mod bench;
mod chat;
mod dev;
mod keys;
mod listen;
mod providers;
mod publish;
mod serve;
mod token;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Server-Sent Events hub and AI streaming gateway.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Serve(Box<serve::Args>),
    Listen(listen::Args),
    Publish(publish::Args),
    Chat(chat::Args),
    Token(token::Args),
    Bench(bench::Args),
    Keys(keys::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Listen(args) => listen::run(args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Chat(args) => chat::run(args).await,
        Command::Token(args) => Ok(token::run(args)),
        Command::Bench(args) => bench::run(args).await,
        Command::Keys(args) => keys::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("sluice: {error:#}");
            ExitCode::FAILURE
        }
    }
}
