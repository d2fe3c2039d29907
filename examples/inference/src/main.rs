//! `inference-service`: serves the classifier over stdin/stdout.
//!
//! Loads the model once at start (a missing or bad model is one line on
//! stderr naming the file, and exit 1), then answers requests until stdin
//! ends. See the crate docs for the protocol.

use std::{
    io::{BufWriter, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use clap::Parser;
use guardian_inference_demo::{DEFAULT_MODEL, model::Classifier, protocol};

/// Serve an ONNX classifier: one JSON array of floats per line on stdin,
/// one JSON answer per line on stdout, {"class":N,"scores":[...]} or
/// {"error":"..."}. Each request is logged on stderr.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The ONNX model, opened read-only once at start.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Send a one-line JSON summary (predictions, errors, model digest) to
    /// this TCP collector when the input ends, e.g. a fleet metrics
    /// endpoint. The connection is made at start; if it fails, serving
    /// goes on and the failure is logged.
    #[arg(long, value_name = "ADDR:PORT")]
    report_to: Option<std::net::SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tag = protocol::tag();
    let classifier = match Classifier::load(&cli.model) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{tag}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "{tag}: loaded {} ({} bytes, sha256 {}): {} features, {} classes; reading requests from stdin",
        classifier.path().display(),
        classifier.size(),
        classifier.sha256_hex(),
        classifier.features(),
        classifier.classes(),
    );
    let mut report = cli.report_to.and_then(|addr| {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)) {
            Ok(s) => {
                eprintln!("{tag}: reporting to {addr}");
                Some(s)
            }
            Err(e) => {
                eprintln!("{tag}: cannot report to {addr}: {e}; serving without reporting");
                None
            }
        }
    });
    let mut input = std::io::stdin().lock();
    // Responses are flushed one by one (protocol::handle); the buffer only
    // turns each response into a single write.
    let mut output = BufWriter::new(std::io::stdout().lock());
    let mut log = std::io::stderr().lock();
    match protocol::serve(&classifier, &mut input, &mut output, &mut log) {
        Ok(s) => {
            let _ = writeln!(
                log,
                "{tag}: end of input after {} predictions and {} errors",
                s.predictions, s.errors
            );
            if let Some(r) = report.as_mut() {
                let line = format!(
                    "{{\"predictions\":{},\"errors\":{},\"model_sha256\":\"{}\"}}\n",
                    s.predictions,
                    s.errors,
                    classifier.sha256_hex()
                );
                if let Err(e) = r.write_all(line.as_bytes()) {
                    let _ = writeln!(log, "{tag}: report not sent: {e}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(log, "{tag}: cannot serve: {e}");
            ExitCode::FAILURE
        }
    }
}
