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
            ExitCode::FAILURE
        }
    }
}
