//! The `tasklane` binary: parses the command line and hands over to `tasklane_app::cli`.

/// mimalloc instead of glibc's malloc: allocation and freeing were ~18% of a request's
/// instructions (docs/PERFORMANCE.md has the measurement).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tasklane_app::cli::main(std::env::args().skip(1).collect())
}
