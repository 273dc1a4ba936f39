//! `payu-bench`: PayU Core's in-process benchmarks (DESIGN.md §7, §8).
//!
//! Each subcommand prints one JSON object per scenario on stdout and progress on stderr, so
//! `payu-bench engine > results.jsonl` captures only the measurements. A subcommand for the
//! ring joins `engine` and `journal` here when that crate lands.

mod engine;
mod history;
mod journal;
mod ledger_setup;
mod report;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "payu-bench",
    version,
    about = "PayU Core in-process benchmarks; one JSON line per scenario"
)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// The balance engine alone, in memory, on Zipf-skewed transfers.
    Engine(engine::EngineArgs),
    /// The journal alone with real flushes (group commit per batch size) against a bare
    /// fdatasync of the same bytes, then reopen, read and replay.
    Journal(journal::JournalArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match &cli.command {
        BenchCommand::Engine(args) => engine::run(args, &mut out),
        BenchCommand::Journal(args) => journal::run(args, &mut out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("payu-bench").chain(args.iter().copied()))
    }

    #[test]
    fn engine_defaults_match_the_documented_run() {
        // The defaults are the DESIGN.md §8 target run: 1M accounts, 10M transfers, s = 1.
        let cli = parse(&["engine"]).expect("defaults parse");
        let BenchCommand::Engine(args) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert_eq!(
            (args.accounts, args.transfers, args.batch_size),
            (1_000_000, 10_000_000, 8190)
        );
        assert_eq!(args.zipf_exponent, 1.0);
        assert_eq!(
            args.scenarios,
            [engine::Scenario::Single, engine::Scenario::Batch]
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        // Each of these would make the run meaningless or unbounded; clap must refuse them.
        for bad in [
            &["engine", "--batch-size", "8191"][..],
            &["engine", "--batch-size", "0"],
            &["engine", "--accounts", "1"],
            &["engine", "--transfers", "0"],
            &["engine", "--zipf-exponent", "-1"],
            &["engine", "--zipf-exponent", "NaN"],
            &["engine", "--scenarios", "single,nope"],
            &["engine", "--seed", "-3"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        let cli = parse(&["engine", "--scenarios", "batch,bare", "--seed", "9"]).expect("valid");
        let BenchCommand::Engine(args) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert_eq!(
            args.scenarios,
            [engine::Scenario::Batch, engine::Scenario::Bare]
        );
    }

    fn parse_journal(args: &[&str]) -> Result<journal::JournalArgs, clap::Error> {
        let cli = parse(&[&["journal"][..], args].concat())?;
        match cli.command {
            BenchCommand::Journal(args) => Ok(args),
            BenchCommand::Engine(_) => panic!("parsed as the engine subcommand"),
        }
    }

    #[test]
    fn journal_defaults_match_the_documented_run() {
        // The defaults are the brief's run: 2M records per batch size, 20k unbatched, four
        // batch sizes, 128 MiB segments, auto flush backend, a fresh removed directory.
        let args = parse_journal(&[]).expect("defaults parse");
        assert_eq!(
            (args.records, args.records_unbatched, args.segment_mib),
            (2_000_000, 20_000, 128)
        );
        assert_eq!(args.batch_sizes, [1, 64, 1024, 8192]);
        assert_eq!(args.flush_mode, journal::FlushModeArg::Auto);
        assert!(args.dir.is_none() && !args.keep);
        let settings = journal::Settings::from_args(&args);
        assert_eq!(settings.segment_bytes, 128 << 20);
    }

    #[test]
    fn bad_journal_arguments_are_refused() {
        // Unbounded, empty or unknown settings must not start a run.
        for bad in [
            &["--records", "0"][..],
            &["--records", "10000001"],
            &["--records-unbatched", "0"],
            &["--batch-sizes", "0"],
            &["--batch-sizes", "1,65537"],
            &["--flush-mode", "aio"],
            &["--segment-mib", "0"],
            &["--accounts", "1"],
        ] {
            assert!(parse_journal(bad).is_err(), "{bad:?} was accepted");
        }
        let args = parse_journal(&["--batch-sizes", "8192,1,64,64", "--flush-mode", "io-uring"])
            .expect("valid");
        assert_eq!(args.flush_mode, journal::FlushModeArg::IoUring);
        let settings = journal::Settings::from_args(&args);
        assert_eq!(settings.batch_sizes, [1, 64, 8192], "sorted and distinct");
    }
}
