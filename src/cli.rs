//! The command line: `ums serve` (the default) and the operator commands. Data goes to
//! stdout; logs and progress to stderr.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::clock::Clock;
use crate::config::Config;
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
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exit non-zero naming the first tampered event.
    Verify {
        /// Check the archive files of this directory first.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Export the (filtered) trail as json (lines), csv or pdf.
    Export {
        #[arg(long, value_parser = ["json", "csv", "pdf"])]
        format: String,
        /// Write here instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long)]
        user_id: Option<i64>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        resource_type: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        to: Option<String>,
    },
    /// Move events older than the retention window to monthly archive files now.
    Archive {
        /// Default: UMS_AUDIT_ARCHIVE_DIR.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Default: UMS_AUDIT_RETENTION (90d).
        #[arg(long)]
        older_than: Option<String>,
    },
}

/// Export chunks to a file or stdout.
struct WriteSink(Box<dyn Write + Send>);

impl crate::audit::query::ChunkSink for WriteSink {
    async fn write(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.0.write_all(&bytes)?;
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Start signing with a new key; tokens of the old one stay valid until they expire.
    Rotate,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    crate::telemetry::init_logging(config.log_format);
    let clock = Clock::System;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            if config.secret_key.is_none() {
                tracing::warn!(
                    "UMS_SECRET_KEY is not set: signing keys and queued emails are stored \
                     unencrypted, and the audit chain is plain SHA-256, which anyone who can \
                     write to the database can recompute. Set it for any real deployment \
                     (UMS_ENV=production refuses to start without it)."
                );
            }
            Application::build(config, clock)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Migrate => {
            let store = Store::connect(&config).await?;
            let applied = crate::store::migrate(&store).await?;
            crate::audit::key_the_chain(&store).await?;
            let sealed = crate::audit::personal::reseal_existing(
                &store,
                config.audit_archive_dir.as_deref(),
                clock.now(),
            )
            .await
            .context("sealing the personal fields of the audit trail")?;
            if sealed > 0 {
                eprintln!("audit events whose personal fields were sealed: {sealed}");
            }
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
        Command::Audit { command } => audit(config, clock, command).await,
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

async fn audit(config: Config, clock: Clock, command: AuditCommand) -> anyhow::Result<()> {
    let store = Store::connect(&config).await?;
    crate::store::migrate(&store).await?;
    match command {
        AuditCommand::Verify { archive } => {
            let report = crate::audit::verify::verify(&store, archive.as_deref()).await?;
            match report.finding {
                None => {
                    println!("audit chain intact: {} events checked", report.checked);
                    Ok(())
                }
                Some(finding) => {
                    println!(
                        "audit chain broken after {} good events: {finding}",
                        report.checked
                    );
                    anyhow::bail!("tampering found: {finding}")
                }
            }
        }
        AuditCommand::Export {
            format,
            output,
            user_id,
            action,
            resource_type,
            from,
            to,
        } => {
            let format = crate::audit::export::ExportFormat::parse(&format)
                .ok_or_else(|| anyhow::anyhow!("--format must be json, csv or pdf"))?;
            let time = |value: Option<String>, name: &str| -> anyhow::Result<Option<i64>> {
                value
                    .map(|text| {
                        crate::clock::parse_time(&text)
                            .ok_or_else(|| anyhow::anyhow!("--{name} must be an RFC 3339 time"))
                    })
                    .transpose()
            };
            let filter = crate::audit::query::EventFilter {
                user_id,
                action,
                resource_type,
                from: time(from, "from")?,
                to: time(to, "to")?,
                ..Default::default()
            };
            let writer: Box<dyn Write + Send> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
            };
            let mut sink = WriteSink(writer);
            let exporter =
                crate::audit::export::Exporter::new(format, &filter.describe(), clock.now());
            let mut connection = store.reports().await?;
            let count = crate::audit::query::export(
                &mut connection,
                store.chain_key(),
                &filter,
                exporter,
                &mut sink,
            )
            .await?;
            sink.0.flush()?;
            eprintln!("exported {count} events");
            Ok(())
        }
        AuditCommand::Archive { dir, older_than } => {
            let directory = dir
                .or_else(|| config.audit_archive_dir.clone())
                .ok_or_else(|| anyhow::anyhow!("give --dir or set UMS_AUDIT_ARCHIVE_DIR"))?;
            let window = match older_than {
                Some(text) => crate::config::parse_duration(&text)
                    .ok_or_else(|| anyhow::anyhow!("--older-than must be a duration like 90d"))?,
                None => config.audit_retention,
            };
            let cutoff = clock.now() - window.as_millis() as i64;
            let report = crate::audit::archive::archive(&store, &directory, cutoff).await?;
            println!(
                "archived {} events into {} files",
                report.events,
                report.files.len()
            );
            Ok(())
        }
    }
}
