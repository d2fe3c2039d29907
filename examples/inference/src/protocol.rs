//! The line protocol: one request per line in, one JSON line out.
//!
//! ```text
//! stdin:  [2.53, -0.11, 1.8, -0.93]
//! stdout: {"class":0,"scores":[0.99,0.004,0.006]}
//! stdin:  [1, "x"]
//! stdout: {"error":"malformed request: ..."}
//! ```
//!
//! Every request line gets exactly one response line, in order, so a client
//! can pair them without ids; a bad request is answered with an error and
//! the service reads on. Each request is also logged on the log stream
//! (stderr in the service), which is what an operator watching the board
//! sees.

use std::{
    io::{self, BufRead, Write},
    time::{Duration, Instant},
};

use crate::model::{Classifier, PredictError, Prediction};

/// Longest request line accepted. A request is a handful of numbers; the
/// cap keeps a client that never sends a newline from growing the
/// service's memory without bound.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request that is not a prediction request.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    /// An empty (or blank) line.
    #[error("empty request: expected a JSON array of numbers")]
    Empty,
    /// Longer than [`MAX_REQUEST_BYTES`].
    #[error("request longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    /// Not UTF-8.
    #[error("request is not UTF-8")]
    NotUtf8,
    /// Not a JSON array of numbers.
    #[error("malformed request: expected a JSON array of numbers ({0})")]
    Json(String),
    /// Well-formed, but the model cannot take it.
    #[error("{0}")]
    Predict(#[from] PredictError),
}

/// One response line.
#[derive(Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Response {
    /// `{"class":N,"scores":[...]}`
    Prediction(Prediction),
    /// `{"error":"..."}`
    Error {
        /// What was wrong, in words.
        error: String,
    },
}

/// One line read from the client.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// A complete line, without its newline.
    Request(Vec<u8>),
    /// A line over [`MAX_REQUEST_BYTES`], already skipped to its end.
    TooLong,
}

/// Read the next line, or `None` at end of input. A final line without a
/// newline still counts as a request.
pub fn read_line(input: &mut impl BufRead) -> io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let limit = MAX_REQUEST_BYTES as u64 + 1;
    let n = io::Read::take(&mut *input, limit).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Some(Line::Request(buf)));
    }
    if buf.len() <= MAX_REQUEST_BYTES {
        // End of input without a newline.
        return Ok(Some(Line::Request(buf)));
    }
    // Discard the rest of the oversized line, in bounded reads.
    loop {
        buf.clear();
        let n = io::Read::take(&mut *input, limit).read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() == Some(&b'\n') {
            return Ok(Some(Line::TooLong));
        }
    }
}

/// Parse a request line into features.
pub fn parse_request(line: &[u8]) -> Result<Vec<f64>, RequestError> {
    let text = std::str::from_utf8(line).map_err(|_| RequestError::NotUtf8)?;
    if text.trim().is_empty() {
        return Err(RequestError::Empty);
    }
    serde_json::from_str::<Vec<f64>>(text).map_err(|e| RequestError::Json(e.to_string()))
}

/// Answer one line.
pub fn respond(classifier: &Classifier, line: &Line) -> Result<Prediction, RequestError> {
    match line {
        Line::TooLong => Err(RequestError::TooLong),
        Line::Request(bytes) => Ok(classifier.predict(&parse_request(bytes)?)?),
    }
}

/// Counts for the end-of-input log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Requests answered with a prediction.
    pub predictions: u64,
    /// Requests answered with an error.
    pub errors: u64,
}

/// Handle request number `n` (from 1): answer on `output` and log on `log`.
/// This is the whole per-request path of the service, and what the bench
/// measures. Failing to write the log is ignored: a closed stderr must not
/// stop predictions.
pub fn handle(
    classifier: &Classifier,
    n: u64,
    line: &Line,
    output: &mut impl Write,
    log: &mut impl Write,
    summary: &mut Summary,
) -> io::Result<()> {
    let start = Instant::now();
    let result = respond(classifier, line);
    let elapsed = start.elapsed();
    let response = match result {
        Ok(prediction) => {
            summary.predictions += 1;
            let _ = log_prediction(log, n, &prediction, elapsed);
            Response::Prediction(prediction)
        }
        Err(e) => {
            summary.errors += 1;
            let _ = writeln!(log, "{}: request {n}: error: {e}", tag());
            Response::Error {
                error: e.to_string(),
            }
        }
    };
    serde_json::to_writer(&mut *output, &response).map_err(io::Error::from)?;
    output.write_all(b"\n")?;
    output.flush()
}

/// Serve requests from `input` until it ends.
pub fn serve(
    classifier: &Classifier,
    input: &mut impl BufRead,
    output: &mut impl Write,
    log: &mut impl Write,
) -> io::Result<Summary> {
    let mut summary = Summary::default();
    let mut n = 0;
    while let Some(line) = read_line(input)? {
        n += 1;
        handle(classifier, n, &line, output, log, &mut summary)?;
    }
    Ok(summary)
}

/// `inference-service[pid]`: the process name and id, so log lines can be
/// matched with guardian's events, which carry the pid.
pub fn tag() -> String {
    format!("inference-service[{}]", std::process::id())
}

fn log_prediction(
    log: &mut impl Write,
    n: u64,
    p: &Prediction,
    elapsed: Duration,
) -> io::Result<()> {
    write!(log, "{}: request {n}: class {} scores [", tag(), p.class)?;
    for (i, s) in p.scores.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        write!(log, "{sep}{s:.4}")?;
    }
    writeln!(log, "] in {} us", elapsed.as_micros())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn classifier() -> Classifier {
        Classifier::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("model/classifier.onnx"))
            .unwrap()
    }

    fn lines(input: &[u8]) -> Vec<Line> {
        let mut r = input;
        let mut out = Vec::new();
        while let Some(l) = read_line(&mut r).unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn splits_lines_and_caps_their_length() {
        let mut input = b"[1]\r\n\n".to_vec();
        input.extend(vec![b' '; MAX_REQUEST_BYTES + 10]);
        input.extend(b"\n[2]");
        assert_eq!(
            lines(&input),
            vec![
                Line::Request(b"[1]".to_vec()),
                Line::Request(Vec::new()),
                Line::TooLong,
                Line::Request(b"[2]".to_vec()),
            ]
        );
        // Exactly at the cap is still a request.
        let mut at_cap = vec![b' '; MAX_REQUEST_BYTES];
        at_cap.push(b'\n');
        assert_eq!(
            lines(&at_cap),
            vec![Line::Request(vec![b' '; MAX_REQUEST_BYTES])]
        );
    }

    #[test]
    fn parses_requests() {
        assert_eq!(parse_request(b" [1, -2.5e0, 3] "), Ok(vec![1.0, -2.5, 3.0]));
        assert_eq!(parse_request(b"  "), Err(RequestError::Empty));
        assert_eq!(parse_request(b"[1, \xff]"), Err(RequestError::NotUtf8));
        for bad in [
            &b"[1, \"a\"]"[..],
            b"{\"a\":1}",
            b"[1,",
            b"1",
            b"[1e999]",
            b"[null]",
        ] {
            assert!(
                matches!(parse_request(bad), Err(RequestError::Json(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn every_line_gets_one_response_in_order() {
        let c = classifier();
        let input = b"[2.53, -0.11, 1.8, -0.93]\nnot json\n[1, 2]\n\n[-0.68, -1.91, -1.01, 0.65]";
        let mut out = Vec::new();
        let mut log = Vec::new();
        let summary = serve(&c, &mut &input[..], &mut out, &mut log).unwrap();
        assert_eq!(
            summary,
            Summary {
                predictions: 2,
                errors: 3
            }
        );
        let out = String::from_utf8(out).unwrap();
        let replies: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(replies.len(), 5, "{out}");
        assert_eq!(replies[0]["class"], 0);
        assert!(
            replies[1]["error"]
                .as_str()
                .unwrap()
                .starts_with("malformed request")
        );
        assert_eq!(replies[2]["error"], "expected 4 features, got 2");
        assert!(
            replies[3]["error"]
                .as_str()
                .unwrap()
                .starts_with("empty request")
        );
        assert_eq!(replies[4]["class"], 2);
        let log = String::from_utf8(log).unwrap();
        assert_eq!(log.lines().count(), 5, "{log}");
        assert!(log.contains("request 1: class 0 scores ["), "{log}");
        assert!(
            log.contains("request 3: error: expected 4 features, got 2"),
            "{log}"
        );
    }
}
