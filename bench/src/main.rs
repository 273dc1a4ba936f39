//! `payu-bench`: PayU Core's in-process benchmarks (DESIGN.md §7, §8).
//!
//! Each subcommand prints one JSON object per scenario on stdout and progress on stderr, so
//! `payu-bench engine > results.jsonl` captures only the measurements. Subcommands for the
//! ring and the journal join `engine` here as those crates land.

mod engine;
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match &cli.command {
        BenchCommand::Engine(args) => engine::run(args, &mut out),
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
        let BenchCommand::Engine(args) = cli.command;
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
        let BenchCommand::Engine(args) = cli.command;
        assert_eq!(
            args.scenarios,
            [engine::Scenario::Batch, engine::Scenario::Bare]
        );
    }
}
