//! Where security events go: one JSON object per line, to standard output
//! or an append-only file, gathered per batch so that one `write` carries
//! many events and never half of one.

use std::{io::Write as _, path::Path};

use super::SecurityEvent;

/// Where events go: stdout or an append-only file.
///
/// Lines are collected and written together at [`Sink::flush`] (the daemon
/// flushes after each batch it takes from the ring buffer) or when 64 KiB
/// have gathered: one `write` for many events instead of one each. Every
/// `write` holds whole lines only, so a concurrent reader never sees half
/// an event. Write errors are returned with how many events they lost so
/// the caller counts them.
pub struct Sink {
    out: Out,
    buf: Vec<u8>,
    pending: u64,
}

enum Out {
    Stdout,
    File(std::fs::File),
}

/// Events that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{lost} event(s) lost: {source}")]
pub struct SinkError {
    /// How many events were in the failed write.
    pub lost: u64,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Gathered bytes that trigger a write without waiting for a flush.
const SINK_BATCH: usize = 64 * 1024;

impl Sink {
    /// `-` is standard output; anything else a file to append to.
    pub fn open(spec: &str) -> std::io::Result<Self> {
        let out = if spec == "-" {
            Out::Stdout
        } else {
            let path = Path::new(spec);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            Out::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        Ok(Self {
            out,
            buf: Vec::with_capacity(SINK_BATCH),
            pending: 0,
        })
    }

    /// Add one event as one line; writes the batch if it is large enough.
    /// Returns how many events were written by this call (0 while they
    /// gather).
    pub fn write(&mut self, ev: &SecurityEvent) -> Result<u64, SinkError> {
        let start = self.buf.len();
        if let Err(e) = serde_json::to_writer(&mut self.buf, ev) {
            self.buf.truncate(start);
            return Err(SinkError {
                lost: 1,
                source: std::io::Error::other(e),
            });
        }
        self.buf.push(b'\n');
        self.pending += 1;
        if self.buf.len() >= SINK_BATCH {
            self.flush()
        } else {
            Ok(0)
        }
    }

    /// Write what has gathered; returns how many events that was.
    pub fn flush(&mut self) -> Result<u64, SinkError> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        let result = match &mut self.out {
            Out::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&self.buf).and_then(|()| out.flush())
            }
            Out::File(f) => f.write_all(&self.buf),
        };
        let n = std::mem::take(&mut self.pending);
        self.buf.clear();
        result
            .map(|()| n)
            .map_err(|source| SinkError { lost: n, source })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::error!("{e}");
        }
    }
}
