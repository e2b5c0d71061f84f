//! Thin entry point: everything lives in the library; this maps it to an exit code.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(rcptsync::cli::main())
}

// A million small strings are allocated and freed per run; mimalloc handles that
// pattern markedly faster than the system allocator (see benches/spine.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
