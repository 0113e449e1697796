//! The command line: `ums serve` (the default) and the operator commands. Data goes to
//! stdout; logs and progress to stderr.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::clock::Clock;
use crate::config::{Config, LogFormat};
use crate::startup::Application;
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "ums",
    version,
    about = "UMS: the user management service of the lab portal"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Create a system administrator; the password is read from stdin or prompted for.
    CreateAdmin {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
    },
    /// Import users of the Flask original (JSON array or CSV with a header row).
    ImportUsers { file: PathBuf },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Start signing with a new key; tokens of the old one stay valid until they expire.
    Rotate,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    init_logging(config.log_format);
    let clock = Clock::System;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            Application::build(config, clock)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Migrate => {
            let store = Store::connect(&config).await?;
            let applied = crate::store::migrate(&store).await?;
            eprintln!(
                "migrations applied: {applied:?}; schema at version {}",
                crate::store::SCHEMA_VERSION
            );
            Ok(())
        }
        Command::CreateAdmin { username, email } => {
            let password = read_password()?;
            let state = crate::startup::prepare(config, clock).await?;
            let outcome = crate::users::service::ensure_admin(
                &state.store,
                &state.hasher,
                state.config.password_min_length,
                &username,
                &email,
                &password,
                state.now(),
            )
            .await?;
            match outcome {
                crate::users::service::AdminOutcome::Created(id) => {
                    println!("created admin {username} (id {id})")
                }
                crate::users::service::AdminOutcome::AlreadyExists(id) => {
                    anyhow::bail!("a user named {username} already exists (id {id})")
                }
            }
            Ok(())
        }
        Command::ImportUsers { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let users = crate::users::service::parse_import(&text)?;
            let store = Store::connect(&config).await?;
            crate::store::migrate(&store).await?;
            let report =
                crate::users::service::import_users(&store, users, clock.now(), |done, total| {
                    if done % 500 == 0 || done == total {
                        eprintln!("checked {done}/{total}");
                    }
                })
                .await?;
            println!(
                "imported {} users; skipped {} that already exist",
                report.imported, report.skipped_existing
            );
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Rotate,
        } => {
            let state = crate::startup::prepare(config, clock).await?;
            let kid = crate::auth::tokens::rotate(
                &state.store,
                state.config.jwt_algorithm,
                state.config.secret_key.as_ref(),
                state.now(),
            )
            .await?;
            println!("new signing key {kid}");
            Ok(())
        }
    }
}

fn read_password() -> anyhow::Result<SecretString> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        eprint!("Password: ");
        std::io::stderr().flush()?;
        rpassword::read_password().context("reading the password")?
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        anyhow::bail!("no password given");
    }
    Ok(SecretString::from(password))
}

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
