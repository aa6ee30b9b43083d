//! `carebell`: parse the command line, load and validate settings (exit 64 when they are
//! wrong, before binding anything), run.

use carebell_server::cli::{self, Cli, Command, Outcome};
use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // A gateway holds one file per tablet: take the whole allowance the system grants.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Commands that need no configuration are allowed without one.
    let settings = match &cli.command {
        Command::DevCert { .. }
        | Command::Config {
            command: cli::ConfigCommand::Defaults,
        } => carebell_server::settings::Settings::defaults(),
        Command::Serve | Command::Config { .. } => cli::load_settings(&cli),
        Command::Migrate | Command::Admin { .. } | Command::Demo { .. } => {
            cli::load_settings_without_tls(&cli)
        }
    };
    let settings = match settings {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("carebell: {error}");
            std::process::exit(cli::EXIT_BAD_CONFIG);
        }
    };
    match cli::run(cli, settings).await {
        Ok(Outcome::Done) | Ok(Outcome::Demo(_)) => {}
        Ok(Outcome::Printed(text)) => println!("{text}"),
        Err(error) if error.is::<cli::ConfigInvalid>() => {
            eprintln!("carebell: {}", render(&error));
            std::process::exit(cli::EXIT_BAD_CONFIG);
        }
        Err(error) => {
            eprintln!("carebell: {}", render(&error));
            std::process::exit(1);
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text its parent already
/// quoted (sqlx and others repeat their source in their own message).
fn render(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
