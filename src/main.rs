//! `wincc-gateway`: see `wincc-gateway --help` and the README.

use clap::Parser;

fn main() -> std::process::ExitCode {
    wincc_gateway::cli::main(wincc_gateway::cli::Cli::parse())
}
