//! The `framesrv` binary: parse the command line and hand over to [`framesrv::cli`].

/// mimalloc returns freed multi-megabyte frame buffers to the system promptly; with glibc's
/// per-thread arenas the daemon's resident memory drifted far above what it actually held.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    framesrv::cli::main()
}
