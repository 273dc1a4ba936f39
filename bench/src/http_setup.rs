//! `payu-bench http-setup`: prepares a running node for an HTTP load generator (bench/http/).
//! Through the public API only, it opens a settlement account and N customer accounts, then
//! funds each customer with a deposit from the settlement account. It prints one JSON line
//! with the ids (and, with `--env-file`, writes them as shell variables for the wrk script).
//!
//! The customers get contiguous ids on a node where nothing else opens accounts meanwhile; the
//! wrk script picks pairs from that range, so a gap is an error here rather than a stream of
//! 404s there.
//!
//! A small blocking HTTP/1.1 client with keep-alive does the requests, one connection per
//! thread: setup is not what is measured, and the bench crate stays free of an HTTP stack.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::report::{self, Latency};

/// The most customers one setup opens (the node's default `accounts_max` is 10 M).
pub const ACCOUNTS_MAX: u32 = 2_000_000;
pub const CONNECTIONS_MAX: u32 = 256;
/// The longest answer read, in bytes: setup answers are a few hundred bytes.
const RESPONSE_BYTES_MAX: u64 = 1 << 20;
const HEADER_LINES_MAX: usize = 64;
const TIMEOUT: Duration = Duration::from_secs(30);
/// A 503 (ring full, too many requests in flight) is retried after this, at most
/// `BUSY_RETRIES_MAX` times per request.
const BUSY_PAUSE: Duration = Duration::from_millis(10);
const BUSY_RETRIES_MAX: u32 = 500;
/// Customers open as tier 3 (business): its daily limit (10 billion IDR) never binds in a
/// benchmark of small transfers.
const CUSTOMER_TIER: u8 = 3;

#[derive(clap::Args, Clone, Debug)]
pub struct HttpSetupArgs {
    /// The node's base URL (plain http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token with the operator scope (`payu token --data-dir <dir>` mints one).
    #[arg(long, env = "PAYU_TOKEN")]
    pub token: String,
    /// Customer accounts to open and fund.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(2..=i64::from(ACCOUNTS_MAX)))]
    pub accounts: u32,
    /// Each customer's deposit in whole IDR.
    #[arg(long, default_value_t = 100_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000_000))]
    pub deposit_idr: u64,
    /// Connections (one thread each) the setup requests are spread over.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=i64::from(CONNECTIONS_MAX)))]
    pub connections: u32,
    /// Also write PAYU_SETTLEMENT_ACCOUNT, PAYU_FIRST_ACCOUNT and PAYU_ACCOUNTS here, one
    /// `NAME=value` line each, for `source` in a shell.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
}

pub fn run(args: &HttpSetupArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    // Keys unique to this setup, so a second setup on the same node opens new accounts
    // instead of replaying the first one's answers.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    let started = Instant::now();
    let mut first = Client::connect(&target, &args.token)?;
    let settlement = first.open_account("settlement", 0, &format!("bench-{nonce}-settlement"))?;
    drop(first);
    eprintln!(
        "payu-bench http-setup: opening {} customer accounts",
        args.accounts
    );
    let opened = spread(args, &target, |client, index| {
        client.open_account(
            "customer",
            CUSTOMER_TIER,
            &format!("bench-{nonce}-open-{index}"),
        )
    })?;
    let mut ids: Vec<u64> = opened.values;
    eprintln!("payu-bench http-setup: funding them");
    let deposits = spread(args, &target, |client, index| {
        let body = json!({
            "settlement_account_id": settlement,
            "account_id": ids_at(&ids, index)?,
            "amount": {"value": args.deposit_idr.to_string(), "currency": "IDR"},
        });
        client.post_created(
            "/v1/deposits",
            &body,
            &format!("bench-{nonce}-deposit-{index}"),
        )?;
        Ok(0)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    ids.sort_unstable();
    let first_id = ids[0];
    let contiguous = ids
        .iter()
        .zip(first_id..)
        .all(|(id, expected)| *id == expected);
    ensure!(
        contiguous,
        "the customers' ids are not contiguous (another client opened accounts meanwhile?); \
         the wrk script needs a range: set up a fresh node"
    );
    let last_id = first_id + u64::from(args.accounts) - 1;
    if let Some(path) = &args.env_file {
        let text = format!(
            "PAYU_SETTLEMENT_ACCOUNT={settlement}\nPAYU_FIRST_ACCOUNT={first_id}\nPAYU_ACCOUNTS={}\n",
            args.accounts
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut latency = opened.latency;
    latency.add(&deposits.latency)?;
    let requests = 1 + 2 * u64::from(args.accounts);
    let line = json!({
        "scenario": "http_setup",
        "url": args.url,
        "settlement_account_id": settlement,
        "first_customer_id": first_id,
        "last_customer_id": last_id,
        "customers": args.accounts,
        "customer_tier": CUSTOMER_TIER,
        "deposit_idr": args.deposit_idr,
        "connections": args.connections,
        "requests": requests,
        "seconds": seconds,
        "requests_per_sec": requests as f64 / seconds,
        "transfers": 0,
        "transfers_per_sec": 0.0,
        "latency_sampling": "every setup request (account opening and deposit, each durable) timed \
            from writing the request to reading the whole answer, closed loop over the connections",
        "machine": report::machine(),
        "build": report::build(),
    });
    report::emit(out, &report::merge(line, latency.summary()))
}

fn ids_at(ids: &[u64], index: u32) -> anyhow::Result<u64> {
    ids.get(index as usize)
        .copied()
        .with_context(|| format!("no account for customer {index}"))
}

/// One setup thread's answers, (customer index, value), and its requests' latency.
type ThreadSpread = (Vec<(u32, u64)>, Latency);

/// What one phase produced: a value per customer index, and each request's latency.
struct Spread {
    values: Vec<u64>,
    latency: Latency,
}

/// Runs `request` for every customer index over `args.connections` threads, each with its own
/// keep-alive connection; thread t takes the indexes t, t + connections, …
fn spread(
    args: &HttpSetupArgs,
    target: &Target,
    request: impl Fn(&mut Client, u32) -> anyhow::Result<u64> + Sync,
) -> anyhow::Result<Spread> {
    let connections = args.connections.min(args.accounts);
    let results: Vec<anyhow::Result<ThreadSpread>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|worker| {
                let request = &request;
                scope.spawn(move || {
                    let mut client = Client::connect(target, &args.token)?;
                    let mut latency = Latency::new()?;
                    let mut values = Vec::new();
                    for index in (worker..args.accounts).step_by(connections as usize) {
                        let started = Instant::now();
                        values.push((index, request(&mut client, index)?));
                        latency.record(started.elapsed());
                    }
                    Ok((values, latency))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| match handle.join() {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("a setup thread panicked")),
            })
            .collect()
    });
    let mut values = vec![0; args.accounts as usize];
    let mut latency = Latency::new()?;
    for result in results {
        let (pairs, thread_latency) = result?;
        latency.add(&thread_latency)?;
        for (index, value) in pairs {
            values[index as usize] = value;
        }
    }
    Ok(Spread { values, latency })
}

/// Where the node listens.
struct Target {
    authority: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("only http:// URLs are supported: {url}"))?;
        let authority = rest.trim_end_matches('/');
        ensure!(
            !authority.is_empty() && !authority.contains('/'),
            "give the node's base URL, without a path: {url}"
        );
        Ok(Target {
            authority: authority.to_string(),
        })
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Client<'a> {
    target: &'a Target,
    token: &'a str,
    reader: BufReader<TcpStream>,
}

impl<'a> Client<'a> {
    fn connect(target: &'a Target, token: &'a str) -> anyhow::Result<Client<'a>> {
        let stream = TcpStream::connect(&target.authority)
            .with_context(|| format!("connecting to {}", target.authority))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            target,
            token,
            reader: BufReader::new(stream),
        })
    }

    fn open_account(&mut self, kind: &str, tier: u8, key: &str) -> anyhow::Result<u64> {
        let body = json!({"kind": kind, "tier": tier, "currency": "IDR"});
        let answer = self.post_created("/v1/accounts", &body, key)?;
        answer["id"]
            .as_u64()
            .with_context(|| format!("an account opening answered without an id: {answer}"))
    }

    /// POSTs `body` and expects 200 or 201; a 503 is retried with the same key.
    fn post_created(&mut self, path: &str, body: &Value, key: &str) -> anyhow::Result<Value> {
        let body = body.to_string();
        for _ in 0..BUSY_RETRIES_MAX {
            let (status, answer) = self.post(path, &body, key)?;
            match status {
                200 | 201 => {
                    return serde_json::from_slice(&answer)
                        .with_context(|| format!("{path} answered {status} with no JSON"));
                }
                503 => thread::sleep(BUSY_PAUSE),
                _ => bail!(
                    "{path} answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                ),
            }
        }
        bail!("{path} stayed busy (503) through {BUSY_RETRIES_MAX} tries")
    }

    fn post(&mut self, path: &str, body: &str, key: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nIdempotency-Key: {key}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.target.authority,
            self.token,
            body.len()
        );
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .context("sending a request")?;
        self.read_response()
    }

    fn read_response(&mut self) -> anyhow::Result<(u16, Vec<u8>)> {
        let status_line = self.read_line()?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("malformed status line {status_line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        for _ in 0..HEADER_LINES_MAX {
            let line = self.read_line()?;
            if line.is_empty() {
                let body = match (chunked, length) {
                    (true, _) => self.read_chunked()?,
                    (false, Some(length)) => self.read_exact(length)?,
                    (false, None) => bail!("an answer with neither a length nor chunks"),
                };
                return Ok((status, body));
            }
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.parse().context("Content-Length")?),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        bail!("an answer with more than {HEADER_LINES_MAX} header lines")
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let read = (&mut self.reader)
            .take(RESPONSE_BYTES_MAX)
            .read_line(&mut line)
            .context("reading an answer")?;
        ensure!(read > 0, "the node closed the connection");
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    fn read_exact(&mut self, length: u64) -> anyhow::Result<Vec<u8>> {
        ensure!(length <= RESPONSE_BYTES_MAX, "a {length}-byte answer");
        let mut body = vec![0; length as usize];
        self.reader
            .read_exact(&mut body)
            .context("reading an answer's body")?;
        Ok(body)
    }

    fn read_chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size_line = self.read_line()?;
            let size = u64::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("malformed chunk size {size_line:?}"))?;
            ensure!(
                body.len() as u64 + size <= RESPONSE_BYTES_MAX,
                "an answer over {RESPONSE_BYTES_MAX} bytes"
            );
            body.extend(self.read_exact(size)?);
            self.read_line()?; // the CRLF after the chunk (or the empty trailer)
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls_must_be_plain_http_base_urls() {
        // The client speaks plain HTTP/1.1 to host:port; anything else is refused up front.
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/")
                .expect("valid")
                .authority,
            "127.0.0.1:8080"
        );
        for bad in ["https://x:1", "http://", "http://x:1/v1", "x:1"] {
            assert!(Target::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn client_reads_length_and_chunked_answers_on_one_connection() {
        // Keep-alive: two requests on one connection, answered with Content-Length, then with
        // chunks; each answer's body comes back whole and nothing leaks into the next.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            let answers = [
                "HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\n{\"id\":7}",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"id\r\n4\r\n\":9}\r\n0\r\n\r\n",
            ];
            for answer in answers {
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).expect("request line");
                    if let Some(value) = line.strip_prefix("Content-Length: ") {
                        length = value.trim().parse().expect("length");
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("body");
                reader
                    .get_mut()
                    .write_all(answer.as_bytes())
                    .expect("answer");
            }
        });
        let target = Target::parse(&format!("http://{address}")).expect("target");
        let mut client = Client::connect(&target, "t").expect("connect");
        assert_eq!(client.open_account("customer", 3, "k1").expect("first"), 7);
        assert_eq!(client.open_account("customer", 3, "k2").expect("second"), 9);
        server.join().expect("server thread");
    }
}
