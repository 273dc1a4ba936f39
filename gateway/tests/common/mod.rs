//! Helpers shared by the node's process tests (crash, overload, shutdown): run the real `payu`
//! binary as a child on 127.0.0.1:0 with a temporary data directory, mint a token with
//! `payu token`, open and fund accounts through the API, read back the whole ledger (every
//! account's balance and history) and check it, and a seeded RNG.
//!
//! A [`Node`] SIGKILLs its child when dropped, so a failing test never leaves a node behind.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The longest a node may take from spawn to its "listening" line (journal replay included).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one HTTP request may take before the client gives up on it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a node may take to exit after SIGTERM or SIGKILL.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a bounded wait for a child's exit looks again.
const EXIT_POLL: Duration = Duration::from_millis(10);
/// The longest a started node may take until /readyz answers 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often /readyz is asked while waiting.
const READY_POLL: Duration = Duration::from_millis(20);
/// A read answered 503 READ_MODEL_BEHIND is retried (after its Retry-After) this often at most.
const READ_RETRIES_MAX: usize = 30;
/// The largest page of account history the node gives.
pub const HISTORY_PAGE: usize = payu_gateway::readmodel::HISTORY_PAGE_MAX;
/// Pages read per account at most, so a broken cursor cannot loop forever.
const HISTORY_PAGES_MAX: usize = 100_000;
/// Amounts on the wire have 4 decimal places: 1 unit = 0.0001 IDR.
pub const UNITS_PER_IDR: i128 = 10_000;

/// The seed from `PAYU_CRASH_SEED`, or the clock; the caller prints it.
pub fn seed() -> u64 {
    match std::env::var("PAYU_CRASH_SEED") {
        Ok(seed) => seed.parse().expect("PAYU_CRASH_SEED is a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64,
    }
}

/// SplitMix64: seeded, tiny, and good enough for choosing test inputs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high);
        low + self.below(high - low + 1)
    }
}

/// Flags for `payu serve` beyond the data directory and the listen address.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub accounts_max: u64,
    pub ring_size: Option<usize>,
    pub in_flight_max: Option<usize>,
    /// 0 = unlimited: these tests measure the node, not the per-client limiter.
    pub rate_limit: u32,
    /// `--snapshot-every` (records); `None`: the node's default.
    pub snapshot_every: Option<u64>,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            accounts_max: 10_000,
            ring_size: None,
            in_flight_max: None,
            rate_limit: 0,
            snapshot_every: None,
        }
    }
}

/// A running `payu serve` child. Dropping it SIGKILLs and reaps the child.
pub struct Node {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The node's stderr (its log), appended to across restarts.
    pub log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Node {
    /// Spawns a node on `data_dir` and waits (bounded) for its "listening" line.
    pub fn start(data_dir: &Path, options: &NodeOptions) -> Node {
        match Node::try_start(data_dir, options) {
            Ok(node) => node,
            Err((status, log)) => {
                panic!("the node exited at start-up ({status}); log tail:\n{log}")
            }
        }
    }

    /// Like [`Node::start`], but a node that exits before listening is an `Err` with its exit
    /// status and log tail.
    pub fn try_start(data_dir: &Path, options: &NodeOptions) -> Result<Node, (ExitStatus, String)> {
        let log = log_path(data_dir);
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the node's log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_payu"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--accounts-max", &options.accounts_max.to_string()])
            .args(["--rate-limit", &options.rate_limit.to_string()]);
        if let Some(ring_size) = options.ring_size {
            command.args(["--ring-size", &ring_size.to_string()]);
        }
        if let Some(in_flight_max) = options.in_flight_max {
            command.args(["--in-flight-max", &in_flight_max.to_string()]);
        }
        if let Some(every) = options.snapshot_every {
            command.args(["--snapshot-every", &every.to_string()]);
        }
        let mut child = command
            .env("PAYU_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn payu serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let pid = child.id();
        // From here on the guard owns the child: any panic below kills it.
        let mut node = Node {
            child,
            pid,
            base: String::new(),
            log,
            exited: None,
        };
        let (sender, receiver) = mpsc::sync_channel::<String>(1);
        std::thread::Builder::new()
            .name(format!("payu-{pid}-stdout"))
            .spawn(move || {
                let mut sender = Some(sender);
                // Reads to the end, so the child never blocks on a full pipe.
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(address) = line.strip_prefix("payu listening on ")
                        && let Some(sender) = sender.take()
                    {
                        let _ = sender.send(address.trim().to_owned());
                    }
                }
            })
            .expect("spawn the stdout reader");
        match receiver.recv_timeout(START_TIMEOUT) {
            Ok(address) => node.base = address,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Its stdout closed without the line: it is exiting.
                match node.wait_exit(EXIT_TIMEOUT) {
                    Some(status) => return Err((status, node.log_tail())),
                    None => panic!("node {pid} closed stdout but did not exit"),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "node {pid} did not print its address within {START_TIMEOUT:?}; log tail:\n{}",
                node.log_tail()
            ),
        }
        Ok(node)
    }

    /// SIGKILLs the node and reaps it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            // SIGKILL on Unix. It fails only if the child was already reaped.
            let _ = self.child.kill();
            self.exited = Some(self.child.wait().expect("reap the node"));
        }
    }

    /// Sends SIGTERM (graceful: drain, flush, snapshot, exit 0).
    pub fn terminate(&self) {
        // Once reaped, the pid may name another process.
        assert!(self.exited.is_none(), "node {} already exited", self.pid);
        signal(self.pid, libc::SIGTERM);
    }

    /// Waits up to `timeout` for the node to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.exited.is_none() {
            match self.child.try_wait().expect("poll the node") {
                Some(status) => self.exited = Some(status),
                None if Instant::now() >= deadline => return None,
                None => std::thread::sleep(EXIT_POLL),
            }
        }
        self.exited
    }

    /// The node's resident memory, from /proc: (VmRSS, RssAnon) in KiB.
    pub fn rss_kib(&self) -> Option<(u64, u64)> {
        rss_kib(self.pid)
    }

    /// The last few KiB of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// An API client for this node.
    pub fn api(&self, token: &str) -> Api {
        Api::new(&self.base, token)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of a finished task; a task's panic is re-raised as is, so its message shows.
pub fn joined<T>(result: Result<T, tokio::task::JoinError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("a task was cancelled: {error}"),
    }
}

/// A process's resident memory, from /proc: (VmRSS, RssAnon) in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. Callers pass their
    // own child, not yet reaped (Node::terminate checks), so the pid names no other process.
    #[allow(unsafe_code)]
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(result, 0, "kill({pid}, {signal}) failed");
}

fn log_path(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "node".into());
    data_dir.with_file_name(format!("{name}.log"))
}

fn log_tail(path: &Path) -> String {
    const TAIL_BYTES: u64 = 8 << 10;
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log)");
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(TAIL_BYTES)));
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).into_owned()
}

/// A token with the operator, system and admin scopes, from `payu token`.
pub fn token(data_dir: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_payu"))
        .arg("token")
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run payu token");
    assert!(
        output.status.success(),
        "payu token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("the token is UTF-8")
        .trim()
        .to_owned()
}

/// Runs `payu journal verify` on a stopped node's data directory; returns (success, output).
pub fn journal_verify(data_dir: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_payu"))
        .args(["journal", "verify", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run payu journal verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// One HTTP answer, read whole.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    /// `Idempotent-Replayed: true`
    pub replayed: bool,
    pub retry_after: Option<String>,
    /// The JSON body (Null when it is not JSON).
    pub body: Value,
}

impl Answer {
    /// The problem's `code`, for error answers.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

/// A keep-alive HTTP client for one node, with a bearer token.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    token: String,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .build()
            .expect("build the HTTP client");
        Api {
            client,
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    /// POSTs a JSON body (already serialised); a transport error is returned, not a panic.
    pub async fn post_raw(
        &self,
        path: &str,
        idempotency_key: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        read_answer(request.send().await?).await
    }

    pub async fn post(
        &self,
        path: &str,
        idempotency_key: Option<&str>,
        body: &Value,
    ) -> Result<Answer, reqwest::Error> {
        let bytes = serde_json::to_vec(body).expect("serialise a request body");
        self.post_raw(path, idempotency_key, bytes).await
    }

    pub async fn try_get(&self, path: &str) -> Result<Answer, reqwest::Error> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        read_answer(response).await
    }

    /// GETs `path`; a transport error fails the test. A read model still catching up
    /// (503 READ_MODEL_BEHIND) is waited for as its Retry-After says, a bounded number of times.
    pub async fn get(&self, path: &str) -> Answer {
        for _ in 0..READ_RETRIES_MAX {
            let answer = self
                .try_get(path)
                .await
                .unwrap_or_else(|error| panic!("GET {path}: {}", error_chain(&error)));
            if answer.status != 503 || answer.code() != "READ_MODEL_BEHIND" {
                return answer;
            }
            let seconds = answer
                .retry_after
                .as_deref()
                .and_then(|text| text.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(seconds.clamp(1, 2))).await;
        }
        panic!("GET {path}: the read model stayed behind");
    }

    /// Waits (bounded) until /readyz answers 200: a restarted node serves once it is ready.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let answer = self.try_get("/readyz").await;
            if answer.as_ref().is_ok_and(|answer| answer.status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not ready within {READY_TIMEOUT:?}: {answer:?}",
                self.base
            );
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// GETs `path` and expects 200.
    pub async fn get_ok(&self, path: &str) -> Value {
        let answer = self.get(path).await;
        assert_eq!(answer.status, 200, "GET {path}: {answer:?}");
        answer.body
    }

    /// Opens an account and returns its id.
    pub async fn open_account(&self, kind: &str, owner_id: Option<String>, tier: u8) -> u64 {
        let mut body = json!({"kind": kind, "tier": tier});
        if let Some(owner_id) = owner_id {
            body["owner_id"] = json!(owner_id);
        }
        let answer = self
            .post("/v1/accounts", None, &body)
            .await
            .expect("open an account");
        assert_eq!(answer.status, 201, "open {kind} account: {answer:?}");
        answer.body["id"].as_u64().expect("an account id")
    }

    /// Opens a settlement account and `customers` customer accounts (each its own owner,
    /// `tier`), and deposits `each_units` into every customer account.
    pub async fn fund_ledger(&self, customers: usize, each_units: i128, tier: u8) -> Ledger {
        let settlement = self.open_account("settlement", None, 0).await;
        let mut ids = Vec::with_capacity(customers);
        for index in 0..customers {
            let owner = format!("00000000-0000-4000-8000-{:012x}", index + 1);
            ids.push(self.open_account("customer", Some(owner), tier).await);
        }
        for &account in &ids {
            let body = json!({
                "settlement_account_id": settlement,
                "account_id": account,
                "amount": money(each_units),
            });
            let key = format!("deposit-{account}");
            let answer = self
                .post("/v1/deposits", Some(&key), &body)
                .await
                .expect("deposit");
            assert_eq!(answer.status, 201, "deposit into {account}: {answer:?}");
        }
        Ledger {
            settlement,
            customers: ids,
            deposited_units: each_units * customers as i128,
        }
    }

    /// One account's whole history, newest first, following the cursor.
    pub async fn history(&self, account: u64) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<u64> = None;
        for _ in 0..HISTORY_PAGES_MAX {
            let path = match &cursor {
                None => format!("/v1/accounts/{account}/transactions?limit={HISTORY_PAGE}"),
                Some(cursor) => format!(
                    "/v1/accounts/{account}/transactions?limit={HISTORY_PAGE}&cursor={cursor}"
                ),
            };
            let page = self.get_ok(&path).await;
            let page_items = page["items"].as_array().expect("history items");
            assert!(page_items.len() <= HISTORY_PAGE, "page bound: {path}");
            items.extend(page_items.iter().cloned());
            match &page["next_cursor"] {
                Value::Null => return items,
                next => {
                    let next = next
                        .as_u64()
                        .unwrap_or_else(|| panic!("{path}: next_cursor {next}"));
                    cursor = Some(next);
                }
            }
        }
        panic!("account {account}: history longer than {HISTORY_PAGES_MAX} pages");
    }

    /// Every account's balance and every transaction touching them, read through the API.
    pub async fn read_ledger(&self, ledger: &Ledger) -> LedgerView {
        let mut view = LedgerView::default();
        for account in ledger.accounts() {
            let body = self.get_ok(&format!("/v1/accounts/{account}")).await;
            view.balances.insert(account, units_of(&body["balance"]));
            for item in self.history(account).await {
                let txn = Txn::from_json(&item);
                view.histories.entry(account).or_default().push(txn.id);
                view.txns.insert(txn.id, txn);
            }
        }
        view
    }
}

/// A transport error with its causes ("error sending request: …: connection reset").
pub fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// GETs an acknowledged transaction, which must exist (200). A 404 fails the test with a
/// diagnosis: the transaction is lost, or it appears a moment later, which means the node
/// answered a read before its read model had caught up with the durable journal (after a
/// restart: reads claimed to be current while the history was still being rebuilt).
pub async fn get_acknowledged(api: &Api, id: u64, context: &str) -> Value {
    let path = format!("/v1/transactions/{id}");
    let stored = api.get(&path).await;
    if stored.status == 404 {
        let diagnosis = match get_eventually_ok(api, &path).await {
            Some(waited) => format!(
                "it appeared {waited:?} later: the node answered a read before its read model \
                 had caught up with the durable journal (it should answer the transaction, or \
                 503 READ_MODEL_BEHIND while it rebuilds)"
            ),
            None => "it never appeared: it is lost".to_owned(),
        };
        panic!("{context}: acknowledged transaction {id} answered 404; {diagnosis}");
    }
    assert_eq!(
        stored.status, 200,
        "{context}: acknowledged transaction {id}: {stored:?}"
    );
    stored.body
}

/// How long [`get_eventually_ok`] keeps asking.
const EVENTUALLY_TIMEOUT: Duration = Duration::from_secs(10);
const EVENTUALLY_POLL: Duration = Duration::from_millis(50);

/// Diagnosis for a failed read: asks again (bounded) until `path` answers 200; returns how long
/// that took, or None if it never did.
pub async fn get_eventually_ok(api: &Api, path: &str) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < EVENTUALLY_TIMEOUT {
        if api.get(path).await.status == 200 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(EVENTUALLY_POLL).await;
    }
    None
}

async fn read_answer(response: reqwest::Response) -> Result<Answer, reqwest::Error> {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let retry_after = header("retry-after");
    let bytes = response.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        replayed,
        retry_after,
        body,
    })
}

/// The accounts a test opened: one settlement account and the customers it funded.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub settlement: u64,
    pub customers: Vec<u64>,
    /// What the deposits put into the customer accounts, in units.
    pub deposited_units: i128,
}

impl Ledger {
    pub fn accounts(&self) -> Vec<u64> {
        let mut accounts = vec![self.settlement];
        accounts.extend_from_slice(&self.customers);
        accounts
    }
}

/// One posting side as the wire shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Side {
    pub account: u64,
    pub balance_after: i128,
}

/// A transaction as the wire shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    pub id: u64,
    pub kind: String,
    pub seq: u64,
    pub amount: i128,
    pub debit: Side,
    pub credit: Side,
}

impl Txn {
    pub fn from_json(value: &Value) -> Txn {
        let side = |side: &Value| Side {
            account: side["account_id"].as_u64().expect("posting account_id"),
            balance_after: units_of(&side["balance_after"]),
        };
        let txn = Txn {
            id: value["id"].as_u64().expect("transaction id"),
            kind: value["kind"].as_str().expect("transaction kind").to_owned(),
            seq: value["seq"].as_u64().expect("transaction seq"),
            amount: units_of(&value["amount"]),
            debit: side(&value["debit"]),
            credit: side(&value["credit"]),
        };
        assert_eq!(units_of(&value["debit"]["amount"]), txn.amount, "{value}");
        assert_eq!(units_of(&value["credit"]["amount"]), txn.amount, "{value}");
        txn
    }
}

/// The ledger as read back: balances and every transaction of the test's accounts.
#[derive(Debug, Default)]
pub struct LedgerView {
    pub balances: BTreeMap<u64, i128>,
    pub txns: BTreeMap<u64, Txn>,
    /// Transaction ids per account, as its history listed them.
    pub histories: BTreeMap<u64, Vec<u64>>,
}

impl LedgerView {
    /// Checks what must hold at every moment: each account's postings chain from 0 to its
    /// balance (no half-applied movement), no account lists a transaction twice, the sum over
    /// all accounts is zero, and the customers hold exactly what was deposited.
    pub fn check(&self, ledger: &Ledger, context: &str) {
        for (&account, &balance) in &self.balances {
            let ids = self.histories.get(&account).cloned().unwrap_or_default();
            let mut sorted: Vec<&Txn> = ids.iter().map(|id| &self.txns[id]).collect();
            sorted.sort_by_key(|txn| (txn.seq, txn.id));
            sorted.dedup_by_key(|txn| txn.id);
            assert_eq!(
                sorted.len(),
                ids.len(),
                "{context}: account {account} lists a txn twice"
            );
            let mut running = 0i128;
            for txn in sorted {
                if txn.debit.account == account {
                    running -= txn.amount;
                    assert_eq!(
                        running, txn.debit.balance_after,
                        "{context}: account {account}'s history does not chain at {txn:?}"
                    );
                }
                if txn.credit.account == account {
                    running += txn.amount;
                    assert_eq!(
                        running, txn.credit.balance_after,
                        "{context}: account {account}'s history does not chain at {txn:?}"
                    );
                }
            }
            assert_eq!(
                running,
                balance,
                "{context}: account {account}'s history ({} transactions) does not add up to its \
                 balance (a history missing its newest transactions while the balance is \
                 current means the read model answered before it had caught up)",
                ids.len()
            );
        }
        let total: i128 = self.balances.values().sum();
        assert_eq!(total, 0, "{context}: the sum over all accounts");
        let customers: i128 = ledger.customers.iter().map(|id| self.balances[id]).sum();
        assert_eq!(
            customers, ledger.deposited_units,
            "{context}: the customers' sum is what was deposited"
        );
    }

    /// Checks that `other` (read later) shows exactly this ledger; names the first difference
    /// rather than printing both.
    pub fn assert_same(&self, other: &LedgerView, context: &str) {
        assert_eq!(self.balances, other.balances, "{context}: balances");
        let difference = self
            .txns
            .iter()
            .zip(other.txns.iter())
            .find(|(mine, theirs)| mine != theirs);
        assert!(
            difference.is_none() && self.txns.len() == other.txns.len(),
            "{context}: {} transactions before, {} now; first difference: {difference:?}",
            self.txns.len(),
            other.txns.len()
        );
    }

    /// Transfers by amount (every test transfer has a unique amount); fails if any amount was
    /// applied more than once.
    pub fn transfers_by_amount(&self, context: &str) -> BTreeMap<i128, &Txn> {
        let mut by_amount: BTreeMap<i128, &Txn> = BTreeMap::new();
        for txn in self.txns.values().filter(|txn| txn.kind == "transfer") {
            if let Some(earlier) = by_amount.insert(txn.amount, txn) {
                panic!("{context}: a transfer applied twice: {earlier:?} and {txn:?}");
            }
        }
        by_amount
    }
}

/// `{"value": "…", "currency": "IDR"}` for an amount in units.
pub fn money(units: i128) -> Value {
    json!({"value": units_text(units), "currency": "IDR"})
}

/// Units as an exact decimal string with 4 places: 12345 → "1.2345".
pub fn units_text(units: i128) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let magnitude = units.unsigned_abs();
    let scale = UNITS_PER_IDR as u128;
    format!("{sign}{}.{:04}", magnitude / scale, magnitude % scale)
}

/// The units of a wire amount `{"value": "-12.5", …}` (an exact decimal string).
pub fn units_of(money: &Value) -> i128 {
    let text = money["value"]
        .as_str()
        .unwrap_or_else(|| panic!("an amount: {money}"));
    assert_eq!(money["currency"], "IDR", "{money}");
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(fraction.len() <= 4, "at most 4 decimals: {text}");
    let whole: i128 = whole
        .parse()
        .unwrap_or_else(|_| panic!("an amount: {text}"));
    let fraction: i128 = match fraction.is_empty() {
        true => 0,
        false => format!("{fraction:0<4}")
            .parse()
            .unwrap_or_else(|_| panic!("an amount: {text}")),
    };
    let units = whole * UNITS_PER_IDR + fraction;
    if negative { -units } else { units }
}
