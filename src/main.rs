//! The `basic` command line. Subcommands live in `cli/`; all logic is in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
