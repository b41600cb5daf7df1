//! The `apitrail` binary.

mod config;
mod demo;
mod export;
mod manage;
mod proxy;
mod serve;
mod signals;

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apitrail: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(cli.store, args).await,
            Command::Orgs { command } => manage::orgs(cli.store, command).await,
            Command::Keys { command } => manage::keys(cli.store, command).await,
            Command::Audit { command } => manage::audit(cli.store, command).await,
            Command::Proxy(args) => proxy::run(cli.store, *args).await,
            Command::Export(args) => export::run(cli.store, *args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apitrail: {e}");
            ExitCode::FAILURE
        }
    }
}
