//! `payu-loadtest`: open-loop load against a PayU Core node, then an audit of its ledger.
//! Everything lives in the library (lib.rs) so tests drive the same code.

use std::process::ExitCode;

use clap::Parser;
use payu_loadtest::{EXIT_ERROR, Options, run};

/// As in the node: glibc malloc's free-list work was 7% of the tool's CPU at 40k/s, CPU that
/// on a shared box comes out of the node's budget.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let options = Options::parse();
    match run(options) {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("payu-loadtest: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
