//! The `tasklane` binary: parses the command line and hands over to `tasklane_app::cli`.

fn main() -> std::process::ExitCode {
    tasklane_app::cli::main(std::env::args().skip(1).collect())
}
