use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match ums::cli::run(ums::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ums: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
