//! The `framesrv` binary: parse the command line and hand over to [`framesrv::cli`].

fn main() -> std::process::ExitCode {
    framesrv::cli::main()
}
