//! `framesrv-bench`: the comparison harness (`compare`) and the load generator (`load`), a
//! crate of their own so that what only they need (random numbers, progress bars, the PyAV
//! venv installer) is not part of the daemon.
//!
//! Every figure the harness prints is set against a reference measured in the same run on the
//! same clip, because these machines are shared and noisy: absolute numbers drift, ratios hold.

pub mod compare;
pub mod jobs;
pub mod load;

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Generate clips, start a real daemon, and measure framesrv against the decode limit,
    /// per-request `ffmpeg -ss`, and a PyAV reader.
    Compare(compare::CompareArgs),
    /// Load a running daemon with concurrent clients and report throughput and latency.
    Load(load::LoadArgs),
}

pub fn run(cmd: BenchCommand) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("framesrv-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cmd {
        BenchCommand::Compare(args) => compare::run(&runtime, &args),
        BenchCommand::Load(args) => runtime.block_on(load::run_load(&args)).map(|r| {
            r.print(&format!("load: {:?} x{} over {} videos", args.pattern, args.concurrency, args.videos.len()));
            if r.errors > 0 {
                eprintln!("framesrv-bench load: {} requests failed", r.errors);
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("framesrv-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
