//! `cargo bench --bench engine`: the engine alone, in-process, against the ffmpeg CLI's decode
//! limit and a PyAV reader measured in the same run: index build time per minute of video,
//! sequential frames/s, median cold random access for GOP 50 and GOP 250, and the backward step
//! inside a GOP. `framesrv-bench compare` runs the same and then the daemon over gRPC.

use clap::Parser;
use framesrv_bench::compare::{run, CompareArgs};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    compare: CompareArgs,
    /// cargo bench passes --bench; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let mut args = Args::parse();
    args.compare.engine_only = true;
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = run(&runtime, &args.compare) {
        eprintln!("engine bench: {e}");
        std::process::exit(1);
    }
}
