//! `payu-bench`: PayU Core's in-process benchmarks (DESIGN.md §7, §8).
//!
//! Each subcommand prints one JSON object per scenario on stdout and progress on stderr, so
//! `payu-bench engine > results.jsonl` captures only the measurements. `http-setup` is the one
//! subcommand that measures nothing: it prepares a running node for an HTTP load generator.

mod engine;
mod fdatasync;
mod history;
mod http_setup;
mod journal;
mod ledger_setup;
mod pipeline;
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
    /// The node's write path in-process: ring, engine thread and journal with real group
    /// commits, driven by producer threads, against a bare fdatasync of the same bytes.
    Pipeline(pipeline::PipelineArgs),
    /// A bare pwrite + fdatasync loop of given sizes: the baseline beside the HTTP load.
    Fdatasync(fdatasync::FdatasyncArgs),
    /// Prepares a running node for the HTTP load in bench/http/: opens a settlement account
    /// and N funded customer accounts through the API and prints their ids (measures nothing).
    HttpSetup(http_setup::HttpSetupArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match &cli.command {
        BenchCommand::Engine(args) => engine::run(args, &mut out),
        BenchCommand::Journal(args) => journal::run(args, &mut out),
        BenchCommand::Pipeline(args) => pipeline::run(args, &mut out),
        BenchCommand::Fdatasync(args) => fdatasync::run(args, &mut out),
        BenchCommand::HttpSetup(args) => http_setup::run(args, &mut out),
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
            other => panic!("parsed as another subcommand: {other:?}"),
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

    fn parse_pipeline(args: &[&str]) -> Result<pipeline::PipelineArgs, clap::Error> {
        let cli = parse(&[&["pipeline"][..], args].concat())?;
        match cli.command {
            BenchCommand::Pipeline(args) => Ok(args),
            other => panic!("parsed as another subcommand: {other:?}"),
        }
    }

    #[test]
    fn pipeline_defaults_match_the_documented_run() {
        // The run: 1M funded accounts, 2M transfers, 2 producers with 4096 outstanding
        // each, the node's ring size, park, single transfers, auto flush backend.
        let args = parse_pipeline(&[]).expect("defaults parse");
        assert_eq!(
            (args.accounts, args.transfers, args.producers, args.window),
            (1_000_000, 2_000_000, 2, 4096)
        );
        assert_eq!(args.ring_size, 1 << 16);
        assert_eq!(args.wait.0, [payu_gateway::pipeline::WaitStrategy::Park]);
        assert_eq!(args.batch, None);
        assert_eq!(args.flush_mode, journal::FlushModeArg::Auto);
        let all = parse_pipeline(&["--wait", "all", "--batch", "8190"]).expect("valid");
        assert_eq!(all.wait.0.len(), 3);
        assert_eq!(all.batch, Some(8190));
    }

    #[test]
    fn bad_pipeline_arguments_are_refused() {
        // Unbounded, empty or unknown settings must not start a run.
        for bad in [
            &["--transfers", "0"][..],
            &["--transfers", "20000001"],
            &["--accounts", "1"],
            &["--producers", "0"],
            &["--producers", "17"],
            &["--window", "0"],
            &["--ring-size", "1"],
            &["--ring-size", "16777217"],
            &["--batch", "0"],
            &["--batch", "8191"],
            &["--wait", "busy"],
            &["--wait", "sleep:"],
        ] {
            assert!(parse_pipeline(bad).is_err(), "{bad:?} was accepted");
        }
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
