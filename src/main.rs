//! The `sd3lab` command line: parses flags, builds validated configs, calls the library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    // Must run before anything else: it may restart the process with faster BLAS kernels.
    sd3lab::runtime::blas::select_cpu_kernels();
    match cli::Cli::parse().run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", cli::error_text(&err));
            // A rank that failed because another one did says so in its status, so that a
            // launcher reports the rank that failed first.
            if cli::is_lost_peer(&err) {
                ExitCode::from(sd3lab::dist::group::EXIT_PEER_LOST as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
