//! `payu-loadtest`: open-loop load against a PayU Core node, then an audit of its ledger.
//! Everything lives in the library (lib.rs) so tests drive the same code.

use std::process::ExitCode;

use clap::Parser;
use payu_loadtest::{EXIT_ERROR, Options, run};

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
