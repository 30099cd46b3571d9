//! `framesrv-bench compare` and `framesrv-bench load` (see the crate's docs).

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "framesrv-bench",
    version,
    about = "framesrv's benchmarks: the comparison harness and a load generator"
)]
struct Cli {
    #[command(subcommand)]
    command: framesrv_bench::BenchCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    framesrv::cli::init_tracing("warn", false);
    framesrv_bench::run(cli.command)
}
