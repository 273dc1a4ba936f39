//! Start-up refusals of the real `payu` binary: tables sized up front that the system will not
//! map are an error with a message and exit status 1, never an allocation abort.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Api, Node, NodeOptions};

/// The address space the node may use in these tests (`ulimit -v`, KiB): a little under 8 GB,
/// room for the default tables but not for either bound below.
const ADDRESS_SPACE_KIB: u64 = 8_000_000;

/// A node that got past start-up despite the limit is killed after this many seconds.
const STARTED_KILL_AFTER_S: u64 = 60;

/// Runs `payu serve` with `config` under the address-space limit, until it exits.
fn serve_limited(dir: &Path, config: &str) -> Output {
    let config_path = dir.join("payu.toml");
    std::fs::write(&config_path, config).expect("write the config");
    // The limit applies to the shell, and so to the node it starts. A node that starts after
    // all is killed after a while (exit status 137), which fails the test instead of hanging it.
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {ADDRESS_SPACE_KIB} && \
             exec timeout --signal=KILL {STARTED_KILL_AFTER_S} \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_payu"))
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run payu serve")
}

fn assert_refused(output: &Output, wanted: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit status {:?}, stderr:\n{stderr}",
        output.status
    );
    for text in wanted {
        assert!(stderr.contains(text), "{text:?} missing from:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn ledger_tables_the_system_refuses_are_a_startup_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // 100M accounts at 96 bytes: about 9 GiB of accounts alone.
    let output = serve_limited(dir.path(), "[engine]\naccounts_max = 100000000\n");
    assert_refused(
        &output,
        &[
            "the ledger's tables need",
            "MiB of address space",
            "engine.accounts_max",
        ],
    );
}

/// The bounds a ledger was created with live in its snapshots and win over the configuration
/// at a restart, so the check must use the snapshot's bounds, not the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_tables_the_system_refuses_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    // Created without the limit, with room for 100M accounts: address space, not memory, but
    // the kernel's default overcommit refuses one mapping larger than RAM plus swap, so this
    // needs a machine with more than ~10 GB (these have 24 GiB).
    let mut node = Node::start(
        &data,
        &NodeOptions {
            accounts_max: 100_000_000,
            ..NodeOptions::default()
        },
    );
    let api = Api::new(&node.base, &common::token(&data));
    api.wait_ready().await;
    api.open_account("settlement", None, 0).await;
    node.terminate(); // a graceful stop takes a snapshot
    let status = node.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|status| status.success()),
        "{status:?}\n{}",
        node.log_tail()
    );
    // The configuration now asks for little; the snapshot's bounds still need ~9 GiB.
    let output = serve_limited(dir.path(), "[engine]\naccounts_max = 1000\n");
    assert_refused(
        &output,
        &[
            "sized by the bounds it was created with",
            "MiB of address space",
        ],
    );
}

#[test]
fn a_read_model_ring_the_system_refuses_is_a_startup_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    // 100M transactions at 112 bytes: about 10 GiB.
    let output = serve_limited(dir.path(), "[read_model]\ntransactions_max = 100000000\n");
    assert_refused(
        &output,
        &[
            "reserving the read model's ring of 100000000 transactions",
            "read_model.transactions_max",
        ],
    );
}
