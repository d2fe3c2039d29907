//! A NATS-protocol-aware TCP proxy on loopback, in front of a real
//! nats-server, for the faults a single healthy server never shows: a
//! publish the cluster loses (its stream leader changed under it) while the
//! connection stays alive, and a stream that acknowledges late while the
//! server still answers PINGs at once.
//!
//! It forwards whole protocol frames (a line, and for `PUB`/`HPUB`/`MSG`/
//! `HMSG` the payload the line announces), so it can leave one out or hold
//! one back without breaking the stream of frames around it.

#![allow(dead_code)]

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

#[derive(Default)]
struct Faults {
    /// Publishes to subjects under this prefix still to be left out.
    drop_publishes: AtomicU32,
    /// Messages to the client held back this long (zero: none).
    hold_messages: Mutex<Duration>,
    /// Acknowledgements still to be turned into `429 Too Many Requests`.
    busy_acks: AtomicU32,
}

/// The running proxy; it stops with the test's runtime.
pub struct Proxy {
    pub port: u16,
    prefix: String,
    faults: Arc<Faults>,
}

impl Proxy {
    /// Listen on a free loopback port and forward every connection to
    /// `upstream`. Faults apply to publishes on subjects starting with
    /// `prefix`.
    pub async fn start(upstream: u16, prefix: &str) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        let pfx = prefix.to_owned();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                tokio::spawn(pair(client, server, f.clone(), pfx.clone()));
            }
        });
        Proxy {
            port,
            prefix: prefix.to_owned(),
            faults,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Leave out the next `n` publishes under the prefix: the client has
    /// sent them, the server never sees them.
    pub fn drop_next_publishes(&self, n: u32) {
        self.faults.drop_publishes.store(n, Ordering::SeqCst);
    }

    /// Turn the next `n` acknowledgements (messages to the client's `_GR.`
    /// inbox) into JetStream's `429 Too Many Requests` status: the stream
    /// did not take the batch now.
    pub fn busy_next_acks(&self, n: u32) {
        self.faults.busy_acks.store(n, Ordering::SeqCst);
    }

    /// Hold every message to the client (acknowledgements among them) back
    /// by `d` from now on; PONGs and everything else pass at once.
    pub fn hold_messages(&self, d: Duration) {
        *self.faults.hold_messages.lock().unwrap() = d;
    }
}

/// One protocol frame from `r`: the line, with its payload when the line
/// announces one (the last field is its size). `None` at the end.
async fn frame(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<(String, Vec<u8>)> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).await.ok()? == 0 {
        return None;
    }
    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
    let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
    if matches!(verb.as_str(), "PUB" | "HPUB" | "MSG" | "HMSG") {
        let size: usize = text.rsplit(' ').next()?.parse().ok()?;
        let mut body = vec![0; size + 2];
        r.read_exact(&mut body).await.ok()?;
        line.extend_from_slice(&body);
    }
    Some((text, line))
}

async fn pair(client: TcpStream, server: TcpStream, faults: Arc<Faults>, prefix: String) {
    let (cr, mut cw) = client.into_split();
    let (sr, mut sw) = server.into_split();
    // Client to server: publishes under the prefix may be left out.
    let f = faults.clone();
    tokio::spawn(async move {
        let mut cr = BufReader::new(cr);
        while let Some((line, bytes)) = frame(&mut cr).await {
            let mut fields = line.split(' ');
            let verb = fields.next().unwrap_or("").to_ascii_uppercase();
            let subject = fields.next().unwrap_or("");
            if matches!(verb.as_str(), "PUB" | "HPUB")
                && subject.starts_with(&prefix)
                && f.drop_publishes
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                continue;
            }
            if sw.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    // Server to client: messages may be held back; the writer is one task
    // fed in the order frames are released.
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if cw.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut sr = BufReader::new(sr);
    while let Some((line, mut bytes)) = frame(&mut sr).await {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let fields: Vec<&str> = line.split(' ').collect();
        if matches!(verb.as_str(), "MSG" | "HMSG")
            && fields.get(1).is_some_and(|s| s.starts_with("_GR."))
            && faults
                .busy_acks
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            let hdr = "NATS/1.0 429 Too Many Requests\r\n\r\n";
            bytes = format!(
                "HMSG {} {} {} {}\r\n{hdr}\r\n",
                fields[1],
                fields[2],
                hdr.len(),
                hdr.len()
            )
            .into_bytes();
        }
        let hold = *faults.hold_messages.lock().unwrap();
        if matches!(verb.as_str(), "MSG" | "HMSG") && !hold.is_zero() {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                let _ = tx.send(bytes);
            });
        } else if tx.send(bytes).is_err() {
            return;
        }
    }
}
