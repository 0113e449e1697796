use clap::Parser;

/// jemalloc rather than the system allocator: per-thread caches suit many small
/// request-scoped allocations, and its background thread returns freed memory (the hashing
/// threads' 19 MiB blocks) to the system, which glibc's malloc kept.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if let Err(error) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("ums: jemalloc background thread: {error}");
    }
    match ums::cli::run(ums::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ums: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
