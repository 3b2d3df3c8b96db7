//! `sluice`: the command line. Each subcommand lives in its own module; `main` only parses
//! the arguments and dispatches.

mod listen;

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
    Listen(listen::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Listen(args) => listen::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("sluice: {error:#}");
            ExitCode::FAILURE
        }
    }
}
