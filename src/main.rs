//! Thin entry point: everything lives in the library; this maps it to an exit code.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(rcptsync::cli::main())
}
