//! `inference-bench`: predictions per second and latency percentiles of the
//! inference service, measured two ways on the same requests.
//!
//! - `in-process`: the service's per-request function
//!   ([`protocol::handle`]: parse, predict, serialise, log) called in a
//!   loop. The log goes to a sink, so this is the CPU cost of a request.
//! - `service`: the real `inference-service` binary, one request in flight
//!   at a time over its stdin/stdout pipes, its stderr log to /dev/null.
//!   This includes the syscalls and wake-ups a deployed service pays, and
//!   is the figure to compare with guardian attached and detached.
//!
//! It is a binary rather than a `cargo bench` target so the aarch64 build
//! can be copied to a board or the qemu guest and run there as is. Requests
//! are generated from a fixed seed, so every run sends the same ones.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use guardian_inference_demo::{
    DEFAULT_MODEL,
    model::{Classifier, LoadError},
    protocol::{self, Line, Summary},
};

/// Measure the inference service's prediction throughput and latency.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The ONNX model.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Measured requests per mode (after WARMUP unmeasured ones).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Unmeasured requests sent first, to fill caches and settle the clock.
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// The inference-service binary for --mode service (default: the one
    /// next to this binary).
    #[arg(long)]
    service: Option<PathBuf>,
    /// Print one JSON object per mode instead of a sentence.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    InProcess,
    Service,
    Both,
}

#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot find the inference-service binary next to this one: {0}")]
    NoService(io::Error),
    #[error("cannot start {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
    #[error("talking to the service: {0}")]
    Io(#[from] io::Error),
    #[error("request {n} was not answered with a prediction: {reply}")]
    BadReply { n: usize, reply: String },
    #[error("the service exited with {0}")]
    Exit(std::process::ExitStatus),
}

/// Throughput and latency of one run.
#[derive(serde::Serialize)]
struct Report {
    mode: &'static str,
    requests: usize,
    seconds: f64,
    predictions_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

impl Report {
    fn new(mode: &'static str, total: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        // Nanosecond resolution, printed as microseconds with 3 decimals.
        let us = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_nanos() as f64 / 1e3);
        let n = latencies.len();
        // Nearest-rank percentile: the smallest latency with at least p% of
        // the requests at or below it.
        let rank = |p: usize| latencies.get((n * p).div_ceil(100).saturating_sub(1));
        Self {
            mode,
            requests: n,
            seconds: total.as_secs_f64(),
            predictions_per_s: (n as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE)).round(),
            p50_us: us(rank(50)),
            p99_us: us(rank(99)),
            max_us: us(latencies.last()),
        }
    }
}

/// `count` request lines of 4 features in [-3, 3] with 2 decimals, from a
/// fixed xorshift seed.
fn requests(count: usize, features: usize) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..count)
        .map(|_| {
            let values: Vec<String> = (0..features)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let centi = (x % 601) as i64 - 300;
                    format!("{:.2}", centi as f64 / 100.0)
                })
                .collect();
            format!("[{}]", values.join(", "))
        })
        .collect()
}

fn in_process(classifier: &Classifier, warmup: &[String], measured: &[String]) -> Report {
    let mut out = Vec::with_capacity(256);
    let mut summary = Summary::default();
    let mut one = |n: usize, req: &String| {
        out.clear();
        let line = Line::Request(req.as_bytes().to_vec());
        // Writing to a Vec and a sink cannot fail.
        let _ = protocol::handle(
            classifier,
            n as u64,
            &line,
            &mut out,
            &mut io::sink(),
            &mut summary,
        );
    };
    for (n, req) in warmup.iter().enumerate() {
        one(n, req);
    }
    let mut latencies = Vec::with_capacity(measured.len());
    let start = Instant::now();
    for (n, req) in measured.iter().enumerate() {
        let t = Instant::now();
        one(n, req);
        latencies.push(t.elapsed());
    }
    Report::new("in-process", start.elapsed(), latencies)
}

fn service_binary(cli: &Cli) -> Result<PathBuf, BenchError> {
    if let Some(p) = &cli.service {
        return Ok(p.clone());
    }
    let me = std::env::current_exe().map_err(BenchError::NoService)?;
    Ok(me.with_file_name("inference-service"))
}

/// Ends the child if the bench stops early, so no service is left behind.
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn service(cli: &Cli, warmup: &[String], measured: &[String]) -> Result<Report, BenchError> {
    let path = service_binary(cli)?;
    let child = Command::new(&path)
        .arg("--model")
        .arg(&cli.model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            path: path.clone(),
            source,
        })?;
    let mut child = Reap(Some(child));
    let Some(running) = child.0.as_mut() else {
        return Err(BenchError::Io(io::Error::other("no child")));
    };
    let (Some(mut stdin), Some(stdout)) = (running.stdin.take(), running.stdout.take()) else {
        return Err(BenchError::Io(io::Error::other("no pipes to the service")));
    };
    let mut stdout = BufReader::new(stdout);
    let mut reply = String::new();
    let mut one = |n: usize, req: &String| -> Result<(), BenchError> {
        stdin.write_all(req.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        reply.clear();
        stdout.read_line(&mut reply)?;
        if !reply.starts_with("{\"class\":") {
            return Err(BenchError::BadReply {
                n,
                reply: reply.trim_end().to_string(),
            });
        }
        Ok(())
    };
    for (n, req) in warmup.iter().enumerate() {
        one(n, req)?;
    }
    let mut latencies = Vec::with_capacity(measured.len());
    let start = Instant::now();
    for (n, req) in measured.iter().enumerate() {
        let t = Instant::now();
        one(warmup.len() + n, req)?;
        latencies.push(t.elapsed());
    }
    let total = start.elapsed();
    drop(stdin);
    if let Some(mut c) = child.0.take() {
        let status = c.wait()?;
        if !status.success() {
            return Err(BenchError::Exit(status));
        }
    }
    Ok(Report::new("service", total, latencies))
}

fn print(report: &Report, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("inference-bench: {e}"),
        }
    } else {
        println!(
            "{:<10} {} requests in {:.2} s: {:.0} predictions/s, p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            report.mode,
            report.requests,
            report.seconds,
            report.predictions_per_s,
            report.p50_us,
            report.p99_us,
            report.max_us
        );
    }
}

fn run(cli: &Cli) -> Result<(), BenchError> {
    let classifier = Classifier::load(&cli.model)?;
    let all = requests(cli.warmup + cli.requests, classifier.features());
    let (warmup, measured) = all.split_at(cli.warmup);
    if cli.mode != Mode::Service {
        print(&in_process(&classifier, warmup, measured), cli.json);
    }
    if cli.mode != Mode::InProcess {
        print(&service(cli, warmup, measured)?, cli.json);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inference-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_fixed_and_in_range() {
        let a = requests(100, 4);
        assert_eq!(a, requests(100, 4));
        for r in &a {
            let v: Vec<f64> = serde_json::from_str(r).unwrap();
            assert_eq!(v.len(), 4);
            assert!(v.iter().all(|x| (-3.0..=3.0).contains(x)), "{r}");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let lat: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let r = Report::new("t", Duration::from_secs(1), lat);
        assert_eq!((r.p50_us, r.p99_us, r.max_us), (50.0, 99.0, 100.0));
        assert_eq!(r.predictions_per_s, 100.0);
    }
}
