//! The `miwv` binary: the command line run by [`miwv::cli::main`], in a process whose OpenMP
//! threads wait as the engine expects.

use std::process::ExitCode;

fn main() -> ExitCode {
    with_openmp_wait_policy();
    ExitCode::from(miwv::cli::main(std::env::args_os()))
}

/// Starts the process again with [`miwv::engine::OPENMP_WAIT`] set, unless the user chose how
/// OpenMP threads wait. libgomp reads its settings once, when it is loaded, before `main`
/// runs, so setting the variable here would be too late; `exec` keeps the process id, the
/// arguments and everything else.
#[cfg(unix)]
fn with_openmp_wait_policy() {
    use miwv::engine::{OPENMP_WAIT, OPENMP_WAIT_VARIABLES};
    use std::os::unix::process::CommandExt;
    if OPENMP_WAIT_VARIABLES
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(OPENMP_WAIT.0, OPENMP_WAIT.1)
        .exec();
    // `exec` returns only when it failed: run on with OpenMP's own defaults.
    eprintln!(
        "miwv: warning: could not restart with {}={}: {error}",
        OPENMP_WAIT.0, OPENMP_WAIT.1
    );
}

#[cfg(not(unix))]
fn with_openmp_wait_policy() {}
