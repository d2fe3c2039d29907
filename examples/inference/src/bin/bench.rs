//! `inference-bench`: predictions per second and latency percentiles of the
//! inference service, measured two ways on the same requests.
//!
//! - `in-process`: the service's per-request function
//!   ([`protocol::handle`]: parse, predict, serialise, log) called in a
//!   loop. The log goes to a sink, so this is the CPU cost of a request.
//! - `service`: the real `inference-service` binary, one request in flight
//!   at a time over its stdin/stdout pipes, its stderr log to /dev/null.
//!   This includes the syscalls and wake-ups a deployed service pays, and
//!   is the latency to compare with guardian attached and detached.
//! - `pipelined`: the same binary, but a writer thread sends every request
//!   at once while the reader takes the answers as they come: the service
//!   never waits for its client, so this is its throughput. Latency is not
//!   reported (it would be queueing time).
//!
//! `--label` and `--round` tag the `--json` lines, and `--summarize FILE`
//! reads such lines back and prints medians over rounds and the
//! labelled/unlabelled ratios: `docs/inference-overhead.md` uses them to
//! compare runs with and without guardian, alternated by a script.
//!
//! It is a binary rather than a `cargo bench` target so the aarch64 build
//! can be copied to a board or the qemu guest and run there as is. Requests
//! are generated from a fixed seed, so every run sends the same ones.

use std::{
    io::{self, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio},
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
    /// A tag for the JSON lines, e.g. "off" or "on" (guardian detached or
    /// attached).
    #[arg(long, default_value = "")]
    label: String,
    /// A round number for the JSON lines.
    #[arg(long, default_value_t = 0)]
    round: u32,
    /// Measure nothing: read JSON lines written with --json --label
    /// (the rest of the file is skipped) and print, per mode, the median
    /// over rounds of each label, and the ratio of every other label to
    /// BASELINE.
    #[arg(long, value_name = "FILE")]
    summarize: Option<PathBuf>,
    /// The label the others are compared with in --summarize.
    #[arg(long, default_value = "off")]
    baseline: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    InProcess,
    Service,
    Pipelined,
    /// in-process and service
    Both,
    /// service and pipelined: everything that goes through the pipes
    Served,
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
#[derive(serde::Serialize, serde::Deserialize)]
struct Report {
    mode: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    round: u32,
    requests: usize,
    seconds: f64,
    predictions_per_s: f64,
    /// Absent for `pipelined`.
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    max_us: Option<f64>,
}

impl Report {
    /// Throughput only: requests answered in `total`.
    fn throughput(mode: &str, n: usize, total: Duration) -> Self {
        Self {
            mode: mode.to_owned(),
            label: String::new(),
            round: 0,
            requests: n,
            seconds: total.as_secs_f64(),
            predictions_per_s: (n as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE)).round(),
            p50_us: None,
            p99_us: None,
            max_us: None,
        }
    }

    fn new(mode: &str, total: Duration, mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        // Nanosecond resolution, printed as microseconds with 3 decimals.
        let us = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_nanos() as f64 / 1e3);
        let n = latencies.len();
        // Nearest-rank percentile: the smallest latency with at least p% of
        // the requests at or below it.
        let rank = |p: usize| latencies.get((n * p).div_ceil(100).saturating_sub(1));
        Self {
            p50_us: Some(us(rank(50))),
            p99_us: Some(us(rank(99))),
            max_us: Some(us(latencies.last())),
            ..Self::throughput(mode, n, total)
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

/// The running service and its pipes.
struct Served {
    child: Reap,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn spawn(cli: &Cli) -> Result<Served, BenchError> {
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
    let (Some(stdin), Some(stdout)) = (running.stdin.take(), running.stdout.take()) else {
        return Err(BenchError::Io(io::Error::other("no pipes to the service")));
    };
    Ok(Served {
        child,
        stdin,
        stdout: BufReader::new(stdout),
    })
}

/// Reads one answer; it must be a prediction.
fn answer(stdout: &mut impl io::BufRead, reply: &mut String, n: usize) -> Result<(), BenchError> {
    reply.clear();
    stdout.read_line(reply)?;
    if !reply.starts_with("{\"class\":") {
        return Err(BenchError::BadReply {
            n,
            reply: reply.trim_end().to_string(),
        });
    }
    Ok(())
}

/// Sends one request and waits for its answer.
fn round_trip(s: &mut Served, reply: &mut String, n: usize, req: &str) -> Result<(), BenchError> {
    s.stdin.write_all(req.as_bytes())?;
    s.stdin.write_all(b"\n")?;
    s.stdin.flush()?;
    answer(&mut s.stdout, reply, n)
}

/// Closes the service's stdin and checks that it exits 0.
fn finish(s: Served) -> Result<(), BenchError> {
    let Served {
        mut child, stdin, ..
    } = s;
    drop(stdin);
    if let Some(mut c) = child.0.take() {
        let status = c.wait()?;
        if !status.success() {
            return Err(BenchError::Exit(status));
        }
    }
    Ok(())
}

/// One request in flight: per-request round-trip latency.
fn service(cli: &Cli, warmup: &[String], measured: &[String]) -> Result<Report, BenchError> {
    let mut s = spawn(cli)?;
    let mut reply = String::new();
    for (n, req) in warmup.iter().enumerate() {
        round_trip(&mut s, &mut reply, n, req)?;
    }
    let mut latencies = Vec::with_capacity(measured.len());
    let start = Instant::now();
    for (n, req) in measured.iter().enumerate() {
        let t = Instant::now();
        round_trip(&mut s, &mut reply, warmup.len() + n, req)?;
        latencies.push(t.elapsed());
    }
    let total = start.elapsed();
    finish(s)?;
    Ok(Report::new("service", total, latencies))
}

/// Every request sent at once by a writer thread: throughput, from the
/// first request written to the last answer read.
fn pipelined(cli: &Cli, warmup: &[String], measured: &[String]) -> Result<Report, BenchError> {
    let mut s = spawn(cli)?;
    let mut reply = String::new();
    for (n, req) in warmup.iter().enumerate() {
        round_trip(&mut s, &mut reply, n, req)?;
    }
    // One buffer, written in pipe-sized pieces: the client's own syscalls
    // stay few, so what is measured is the service.
    let batch: Vec<u8> = measured
        .iter()
        .flat_map(|r| r.as_bytes().iter().chain(b"\n"))
        .copied()
        .collect();
    let Served {
        child,
        mut stdin,
        mut stdout,
    } = s;
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> io::Result<ChildStdin> {
        for chunk in batch.chunks(16 * 1024) {
            stdin.write_all(chunk)?;
        }
        stdin.flush()?;
        Ok(stdin)
    });
    let mut read = || -> Result<(), BenchError> {
        for n in 0..measured.len() {
            answer(&mut stdout, &mut reply, warmup.len() + n)?;
        }
        Ok(())
    };
    let result = read();
    let total = start.elapsed();
    let stdin = match writer.join() {
        Ok(w) => w?,
        Err(_) => {
            return Err(BenchError::Io(io::Error::other(
                "the writer thread panicked",
            )));
        }
    };
    result?;
    finish(Served {
        child,
        stdin,
        stdout,
    })?;
    Ok(Report::throughput("pipelined", measured.len(), total))
}

fn print(report: &Report, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("inference-bench: {e}"),
        }
    } else if let (Some(p50), Some(p99), Some(max)) = (report.p50_us, report.p99_us, report.max_us)
    {
        println!(
            "{:<10} {} requests in {:.2} s: {:.0} predictions/s, p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            report.mode, report.requests, report.seconds, report.predictions_per_s, p50, p99, max
        );
    } else {
        println!(
            "{:<10} {} requests in {:.2} s: {:.0} predictions/s",
            report.mode, report.requests, report.seconds, report.predictions_per_s
        );
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The medians and ratios printed by --summarize, as text lines.
fn summarize(reports: &[Report], baseline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut modes: Vec<&str> = reports.iter().map(|r| r.mode.as_str()).collect();
    modes.dedup();
    modes.sort_unstable();
    modes.dedup();
    let mut labels: Vec<&str> = reports.iter().map(|r| r.label.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    for mode in modes {
        let of = |label: &str| -> Vec<&Report> {
            reports
                .iter()
                .filter(|r| r.mode == mode && r.label == label)
                .collect()
        };
        let base = of(baseline);
        let med = |rs: &[&Report], f: fn(&Report) -> Option<f64>| {
            median(rs.iter().filter_map(|r| f(r)).collect())
        };
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        for label in &labels {
            let rs = of(label);
            if rs.is_empty() {
                continue;
            }
            let tput = med(&rs, |r| Some(r.predictions_per_s));
            let mut line = format!(
                "{mode:<10} {label:<4} rounds {:>2}: median {:.0} predictions/s, p50 {} us, p99 {} us",
                rs.len(),
                tput.unwrap_or(0.0),
                fmt(med(&rs, |r| r.p50_us)),
                fmt(med(&rs, |r| r.p99_us)),
            );
            if *label != baseline && !base.is_empty() {
                let bt = med(&base, |r| Some(r.predictions_per_s));
                // Each round's ratio to the baseline run of the same round.
                let per_round: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| {
                        base.iter()
                            .find(|b| b.round == r.round)
                            .map(|b| r.predictions_per_s / b.predictions_per_s)
                    })
                    .collect();
                let (lo, hi) = per_round
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                        (lo.min(x), hi.max(x))
                    });
                if let (Some(t), Some(b)) = (tput, bt) {
                    line.push_str(&format!(
                        "; throughput {label}/{baseline}: {:.3} (ratio of medians)",
                        t / b
                    ));
                }
                if let Some(m) = median(per_round.clone()) {
                    line.push_str(&format!(
                        ", {m:.3} (median of {} per-round ratios, range {lo:.3}-{hi:.3})",
                        per_round.len()
                    ));
                }
                if let (Some(p), Some(bp)) = (med(&rs, |r| r.p99_us), med(&base, |r| r.p99_us)) {
                    line.push_str(&format!("; p99 {label}/{baseline}: {:.3}", p / bp));
                }
            }
            out.push(line);
        }
    }
    out
}

fn run(cli: &Cli) -> Result<(), BenchError> {
    if let Some(path) = &cli.summarize {
        let text = std::fs::read_to_string(path)?;
        // Other lines (a script's notes, a service's log) are skipped.
        let reports: Vec<Report> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        for line in summarize(&reports, &cli.baseline) {
            println!("{line}");
        }
        return Ok(());
    }
    let classifier = Classifier::load(&cli.model)?;
    let all = requests(cli.warmup + cli.requests, classifier.features());
    let (warmup, measured) = all.split_at(cli.warmup);
    let tag = |mut r: Report| {
        r.label.clone_from(&cli.label);
        r.round = cli.round;
        r
    };
    if matches!(cli.mode, Mode::InProcess | Mode::Both) {
        print(&tag(in_process(&classifier, warmup, measured)), cli.json);
    }
    if matches!(cli.mode, Mode::Service | Mode::Both | Mode::Served) {
        print(&tag(service(cli, warmup, measured)?), cli.json);
    }
    if matches!(cli.mode, Mode::Pipelined | Mode::Served) {
        print(&tag(pipelined(cli, warmup, measured)?), cli.json);
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
        assert_eq!(
            (r.p50_us, r.p99_us, r.max_us),
            (Some(50.0), Some(99.0), Some(100.0))
        );
        assert_eq!(r.predictions_per_s, 100.0);
    }

    #[test]
    fn summary_pairs_rounds_and_takes_medians() {
        let mut lines = Vec::new();
        for (round, off, on) in [(1, 100.0, 99.0), (2, 200.0, 180.0), (3, 110.0, 110.0)] {
            for (label, t) in [("off", off), ("on", on)] {
                let mut r = Report::throughput("pipelined", 10, Duration::from_secs(1));
                r.predictions_per_s = t;
                r.label = label.to_owned();
                r.round = round;
                lines.push(r);
            }
        }
        let out = summarize(&lines, "off");
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            out[0].contains("off  rounds  3: median 110 predictions/s"),
            "{out:?}"
        );
        // medians 110 / 110; per-round ratios 0.99, 0.9, 1.0
        assert!(out[1].contains("throughput on/off: 1.000 (ratio of medians), 0.990 (median of 3 per-round ratios, range 0.900-1.000)"), "{out:?}");
    }

    #[test]
    fn summary_skips_other_lines() {
        let r: Result<Report, _> = serde_json::from_str("round 1 off");
        assert!(r.is_err());
    }
}
