//! The `tidelog` binary: parses the command line and runs it. All logic lives in the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tidelog_server::cli::Cli::parse();
    match tidelog_server::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidelog: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
