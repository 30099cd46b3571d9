//! Benchmarks (filled in by the benchmark work).

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Placeholder.
    Compare,
}

pub fn run(_cmd: BenchCommand) -> ExitCode {
    ExitCode::FAILURE
}
