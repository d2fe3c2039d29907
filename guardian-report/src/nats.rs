//! The device's link to the fleet: just enough of the NATS client protocol
//! to publish into a JetStream stream and read the stream's
//! acknowledgement, and to hear the fleet's questions and answer them.
//!
//! Owns one connection. Why not a general client: the device needs a few
//! verbs (CONNECT, HPUB with a reply subject, SUB to its inbox and to its
//! question subject, PUB of an answer, PING/PONG), and needs to match each
//! acknowledgement to the spool records it covers;
//! a dependency the size of a full client would not earn its bytes on a
//! board (see `docs/fleet.md`, "The device link").
//!
//! Protocol reference: the NATS client protocol (`INFO`, `CONNECT`,
//! `HPUB`, `MSG`/`HMSG`, `PING`/`PONG`, `+OK`/`-ERR`), and JetStream's
//! publish acknowledgement (`{"stream":..,"seq":..,"duplicate":..}` or
//! `{"error":{..}}` on the reply subject; a `503` status header when no
//! stream listens).

use std::time::Duration;

use std::{path::PathBuf, sync::Arc};

use tokio::{
    io::{
        AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf,
        WriteHalf,
    },
    net::TcpStream,
    sync::mpsc,
};

/// TLS for the link: the CA that signs the servers' certificates, and this
/// device's own certificate and key (servers that verify clients map the
/// certificate to the device's permissions).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM: the CA certificate(s) to trust for the server.
    pub ca: PathBuf,
    /// PEM: this device's certificate (chain), if the server wants one.
    pub cert: Option<PathBuf>,
    /// PEM: its private key.
    pub key: Option<PathBuf>,
}

/// A prepared TLS client configuration.
#[derive(Clone)]
pub struct Tls(Arc<tokio_rustls::rustls::ClientConfig>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

/// TLS files that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {path}: {problem}")]
pub struct TlsError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: String,
}

impl Tls {
    /// Read the files and build the client configuration (TLS 1.3 only,
    /// ring).
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        use tokio_rustls::rustls;
        let bad = |path: &PathBuf, problem: String| TlsError {
            path: path.clone(),
            problem,
        };
        let mut roots = rustls::RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.ca)
            .map_err(|e| bad(&files.ca, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad(&files.ca, e.to_string()))?;
        if cas.is_empty() {
            return Err(bad(&files.ca, "no certificate in it".to_owned()));
        }
        for c in cas {
            roots.add(c).map_err(|e| bad(&files.ca, e.to_string()))?;
        }
        // ring, not aws-lc: it builds without cmake or a C++ toolchain, as a
        // Yocto cargo build of the agent needs. (rustls marks ring's
        // provider deprecated for lacking post-quantum key exchange.)
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&files.ca, e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| bad(cert, e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(cert, e.to_string()))?;
                if chain.is_empty() {
                    return Err(bad(cert, "no certificate in it".to_owned()));
                }
                let k = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, k)
                    .map_err(|e| bad(key, e.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(c), None) | (None, Some(c)) => {
                return Err(bad(
                    c,
                    "a client certificate needs its key, and a key its certificate".to_owned(),
                ));
            }
        };
        Ok(Tls(Arc::new(config)))
    }
}

/// The byte stream under the protocol: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
type BoxStream = Box<dyn Stream>;

/// What went wrong on the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The TCP connection failed or broke.
    #[error("{op} {server}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which server.
        server: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server said something this client does not accept.
    #[error("protocol error from {server}: {what}")]
    Protocol {
        /// Which server.
        server: String,
        /// What.
        what: String,
    },
    /// The server refused us (`-ERR`).
    #[error("{server} refused: {what}")]
    Refused {
        /// Which server.
        server: String,
        /// Its words.
        what: String,
    },
    /// No answer in time.
    #[error("no answer from {server} within {after:?} ({during})")]
    Timeout {
        /// Which server.
        server: String,
        /// How long we waited.
        after: Duration,
        /// During what.
        during: &'static str,
    },
    /// The server requires TLS and this link has none configured.
    #[error("{server} requires TLS; configure [report] tls_ca (and tls_cert/tls_key)")]
    TlsRequired {
        /// Which server.
        server: String,
    },
    /// TLS is configured but the server does not offer it.
    #[error("{server} does not offer TLS, and this link requires it")]
    TlsNotOffered {
        /// Which server.
        server: String,
    },
    /// The TLS handshake failed (certificate not trusted, name mismatch,
    /// client certificate refused).
    #[error("TLS handshake with {server}")]
    Handshake {
        /// Which server.
        server: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where acknowledgements come back: `_GR.<name>.<random>.<token>`.
pub const INBOX_PREFIX: &str = "_GR";

/// Credentials sent in `CONNECT` (per-device user and password: the
/// server's authorization limits what each may publish).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
}

/// A JetStream publish acknowledgement, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubAck {
    /// Stored (or a duplicate of a stored message, still stored once).
    Stored {
        /// Stream sequence.
        seq: u64,
        /// The stream dropped it as a duplicate of one already stored.
        duplicate: bool,
    },
    /// The stream refused it, or no stream listens.
    Refused(String),
    /// The stream did not take it now (`429 Too Many Requests`: its
    /// inbound queue is full); the same message may go again later.
    Busy(String),
}

/// Something the server sent us on our inbox.
#[derive(Debug)]
pub struct Reply {
    /// The token after the inbox prefix (what we put in the reply subject).
    pub token: String,
    /// The acknowledgement it carries.
    pub ack: PubAck,
    /// The reply's payload as it came (for JetStream API answers).
    pub payload: Vec<u8>,
}

/// A message on a subject this connection subscribed to with
/// [`Conn::subscribe`] (not its inbox): a question from the fleet.
#[derive(Debug)]
pub struct Message {
    /// The subject it came on.
    pub subject: String,
    /// Where the sender wants the answer, if anywhere.
    pub reply: Option<String>,
    /// The header block as it came (`NATS/1.0[ status]` and its lines),
    /// if the message had one ([`header_status`], [`header_value`]).
    pub headers: Option<Vec<u8>>,
    /// The payload (headers left out).
    pub payload: Vec<u8>,
}

/// The status of a header block's first line (`NATS/1.0 404 Message Not
/// Found` gives `(404, "Message Not Found")`), if it carries one.
pub fn header_status(headers: &[u8]) -> Option<(u16, String)> {
    let first = headers.split(|&b| b == b'\n').next()?;
    let first = String::from_utf8_lossy(first);
    let mut parts = first.trim_end().splitn(3, ' ');
    let _version = parts.next()?;
    let code = parts.next()?.parse().ok()?;
    Some((code, parts.next().unwrap_or("").to_owned()))
}

/// The value of header `name` (case-insensitive, as NATS compares them)
/// in a header block.
pub fn header_value(headers: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(headers)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

/// The largest message this client reads: a policy set at its limit
/// (8 MiB, `guardian_attest::policy_set::MAX_SET_BYTES`) with the headers
/// a key-value read puts around it.
pub const MAX_MESSAGE: usize = (8 << 20) + (64 << 10);

/// What the reader task passes on.
#[derive(Debug)]
pub enum Incoming {
    /// An acknowledgement on our inbox.
    Reply(Reply),
    /// A message on another subscription.
    Message(Message),
    /// The server pinged: answer with [`Conn::pong`].
    Ping,
    /// The server answered our [`Conn::ping`]: the connection is alive and
    /// the server has read everything sent before that PING.
    Pong,
}

/// A connection: the writer half here, the reader in a task that sends
/// replies and errors on a channel.
pub struct Conn {
    server: String,
    writer: WriteHalf<BoxStream>,
    inbox: String,
    max_payload: usize,
    /// The reader task: it holds the read half, so it ends with the
    /// connection (a dropped `Conn` must not leave its socket, and its
    /// subscriptions, open behind it).
    reader: tokio::task::JoinHandle<()>,
    /// Replies (and the reason the reader stopped, last).
    pub replies: mpsc::Receiver<Result<Incoming, LinkError>>,
}

fn io<'a>(op: &'static str, server: &'a str) -> impl FnOnce(std::io::Error) -> LinkError + 'a {
    move |source| LinkError::Io {
        op,
        server: server.to_owned(),
        source,
    }
}

/// `nats://host:port` or `host:port` to `host:port`.
pub fn host_port(server: &str) -> &str {
    server.strip_prefix("nats://").unwrap_or(server)
}

fn random_token() -> String {
    let mut b = [0u8; 12];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("server", &self.server)
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    /// Connect, say who we are, and wait for the server's PONG.
    pub async fn connect(
        server: &str,
        name: &str,
        creds: &Credentials,
        timeout: Duration,
    ) -> Result<Conn, LinkError> {
        Self::connect_tls(server, name, creds, None, timeout).await
    }

    /// [`Conn::connect`], over TLS when `tls` is given (required then: a
    /// server that does not offer it is refused).
    pub async fn connect_tls(
        server: &str,
        name: &str,
        creds: &Credentials,
        tls: Option<&Tls>,
        timeout: Duration,
    ) -> Result<Conn, LinkError> {
        let fut = Self::connect_inner(server, name, creds, tls);
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| LinkError::Timeout {
                server: server.to_owned(),
                after: timeout,
                during: "connect",
            })?
    }

    async fn connect_inner(
        server: &str,
        name: &str,
        creds: &Credentials,
        tls: Option<&Tls>,
    ) -> Result<Conn, LinkError> {
        let hp = host_port(server);
        let mut stream = TcpStream::connect(hp)
            .await
            .map_err(io("connect to", server))?;
        stream
            .set_nodelay(true)
            .map_err(io("set TCP_NODELAY on", server))?;
        // The server speaks first, in clear: one INFO line. Read it byte by
        // byte so nothing after it is buffered away from the TLS layer.
        let mut raw = Vec::with_capacity(512);
        loop {
            let mut b = [0u8; 1];
            stream
                .read_exact(&mut b)
                .await
                .map_err(io("read INFO from", server))?;
            raw.push(b[0]);
            if b[0] == b'\n' || raw.len() > 64 * 1024 {
                break;
            }
        }
        let mut line = String::from_utf8_lossy(&raw).into_owned();
        let Some(info) = line.strip_prefix("INFO ") else {
            return Err(LinkError::Protocol {
                server: server.to_owned(),
                what: format!("expected INFO, got {:?}", line.trim_end()),
            });
        };
        let info: serde_json::Value =
            serde_json::from_str(info.trim_end()).map_err(|e| LinkError::Protocol {
                server: server.to_owned(),
                what: format!("INFO is not JSON: {e}"),
            })?;
        // The server's limit on one message (1 MiB unless configured).
        let max_payload = info
            .get("max_payload")
            .and_then(|v| v.as_u64())
            .map_or(1 << 20, |v| v as usize);
        let offers_tls = info.get("tls_required").and_then(|v| v.as_bool()) == Some(true)
            || info.get("tls_available").and_then(|v| v.as_bool()) == Some(true);
        let stream: BoxStream = match tls {
            None if info.get("tls_required").and_then(|v| v.as_bool()) == Some(true) => {
                return Err(LinkError::TlsRequired {
                    server: server.to_owned(),
                });
            }
            None => Box::new(stream),
            Some(_) if !offers_tls => {
                return Err(LinkError::TlsNotOffered {
                    server: server.to_owned(),
                });
            }
            Some(t) => {
                let host = hp.rsplit_once(':').map(|(h, _)| h).unwrap_or(hp);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name =
                    rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                        LinkError::Protocol {
                            server: server.to_owned(),
                            what: format!("not a TLS server name: {e}"),
                        }
                    })?;
                let tls_stream = tokio_rustls::TlsConnector::from(t.0.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|source| LinkError::Handshake {
                        server: server.to_owned(),
                        source,
                    })?;
                Box::new(tls_stream)
            }
        };
        let (read, mut writer) = tokio::io::split(stream);
        let mut reader = BufReader::new(read);
        if info.get("headers").and_then(|v| v.as_bool()) != Some(true) {
            return Err(LinkError::Protocol {
                server: server.to_owned(),
                what: "server does not support headers (needs nats-server 2.2 or later)".to_owned(),
            });
        }
        let mut connect = serde_json::json!({
            "verbose": false, "pedantic": false, "headers": true, "no_responders": true,
            "lang": "guardian-report", "version": env!("CARGO_PKG_VERSION"), "protocol": 1,
            "name": name, "tls_required": tls.is_some(),
        });
        if let Some(u) = &creds.user {
            connect["user"] = u.clone().into();
        }
        if let Some(p) = &creds.password {
            connect["pass"] = p.clone().into();
        }
        // The inbox names the connection: a broker with per-device
        // permissions lets each device subscribe to `_GR.<its name>.>`
        // only, so no device reads another's acknowledgements.
        let inbox = format!("{INBOX_PREFIX}.{name}.{}", random_token());
        let hello = format!("CONNECT {connect}\r\nPING\r\nSUB {inbox}.* 1\r\n");
        writer
            .write_all(hello.as_bytes())
            .await
            .map_err(io("send CONNECT to", server))?;
        // Until the PONG, an -ERR is the answer to our CONNECT (bad
        // credentials, say).
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .await
                .map_err(io("read from", server))?;
            if n == 0 {
                return Err(LinkError::Refused {
                    server: server.to_owned(),
                    what: "closed the connection after CONNECT".to_owned(),
                });
            }
            let l = line.trim_end();
            if l == "PONG" {
                break;
            } else if let Some(e) = l.strip_prefix("-ERR ") {
                return Err(LinkError::Refused {
                    server: server.to_owned(),
                    what: e.trim_matches('\'').to_owned(),
                });
            } else if l == "PING" {
                writer
                    .write_all(b"PONG\r\n")
                    .await
                    .map_err(io("write to", server))?;
            }
        }
        let (tx, replies) = mpsc::channel(1024);
        let prefix = format!("{inbox}.");
        let srv = server.to_owned();
        let reader = tokio::spawn(read_loop(reader, srv, prefix, tx));
        Ok(Conn {
            reader,
            server: server.to_owned(),
            writer,
            inbox,
            max_payload,
            replies,
        })
    }

    /// The largest message the server takes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Subscribe to `subject`; its messages come as [`Incoming::Message`].
    /// (A broker with per-device permissions decides what a device may
    /// subscribe to; the fleet asks each device on a subject naming it.)
    pub async fn subscribe(&mut self, subject: &str, sid: u32) -> Result<(), LinkError> {
        self.writer
            .write_all(format!("SUB {subject} {sid}\r\n").as_bytes())
            .await
            .map_err(io("subscribe on", &self.server))
    }

    /// Publish `payload` on `subject` without a reply subject (an answer
    /// to a question; core NATS, not a stream).
    pub async fn publish_plain(&mut self, subject: &str, payload: &[u8]) -> Result<(), LinkError> {
        let mut buf = Vec::with_capacity(payload.len() + subject.len() + 32);
        buf.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
        buf.extend_from_slice(payload);
        buf.extend_from_slice(b"\r\n");
        self.writer
            .write_all(&buf)
            .await
            .map_err(io("publish to", &self.server))
    }

    /// Publish `payload` on `subject` asking for the answer on `reply`
    /// (core NATS: a JetStream API request such as a direct get).
    pub async fn request(
        &mut self,
        subject: &str,
        reply: &str,
        payload: &[u8],
    ) -> Result<(), LinkError> {
        let mut buf = Vec::with_capacity(payload.len() + subject.len() + reply.len() + 32);
        buf.extend_from_slice(format!("PUB {subject} {reply} {}\r\n", payload.len()).as_bytes());
        buf.extend_from_slice(payload);
        buf.extend_from_slice(b"\r\n");
        self.writer
            .write_all(&buf)
            .await
            .map_err(io("publish to", &self.server))
    }

    /// The server this connection goes to.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Publish `payload` on `subject` with a message id; the stream's
    /// acknowledgement comes back as a [`Reply`] whose token is `token`.
    pub async fn publish(
        &mut self,
        subject: &str,
        msg_id: &str,
        token: &str,
        payload: &[u8],
    ) -> Result<(), LinkError> {
        let headers = format!("NATS/1.0\r\nNats-Msg-Id: {msg_id}\r\n\r\n");
        let total = headers.len() + payload.len();
        let mut buf = Vec::with_capacity(total + 128);
        buf.extend_from_slice(
            format!(
                "HPUB {subject} {}.{token} {} {total}\r\n",
                self.inbox,
                headers.len()
            )
            .as_bytes(),
        );
        buf.extend_from_slice(headers.as_bytes());
        buf.extend_from_slice(payload);
        buf.extend_from_slice(b"\r\n");
        self.writer
            .write_all(&buf)
            .await
            .map_err(io("publish to", &self.server))
    }

    /// Ask the server whether the connection is alive: its PONG comes back
    /// as [`Incoming::Pong`], after the server has processed everything
    /// sent before.
    pub async fn ping(&mut self) -> Result<(), LinkError> {
        self.writer
            .write_all(b"PING\r\n")
            .await
            .map_err(io("ping", &self.server))
    }

    /// Answer the server's PING.
    pub async fn pong(&mut self) -> Result<(), LinkError> {
        self.writer
            .write_all(b"PONG\r\n")
            .await
            .map_err(io("answer PING of", &self.server))
    }
}

/// Parse a JetStream publish acknowledgement.
pub fn parse_ack(headers: Option<&[u8]>, payload: &[u8]) -> PubAck {
    if let Some(h) = headers {
        // "NATS/1.0 503" and the like: a status, not an ack.
        let first = h.split(|&b| b == b'\n').next().unwrap_or_default();
        let first = String::from_utf8_lossy(first);
        let mut parts = first.trim_end().splitn(3, ' ');
        let _ = parts.next();
        if let Some(code) = parts.next() {
            let text = parts.next().unwrap_or("");
            let said = format!("status {code} {text}").trim_end().to_owned();
            return match code {
                "503" => PubAck::Refused(
                    "no stream listens on the subject (503 no responders)".to_owned(),
                ),
                "429" => PubAck::Busy(said),
                _ => PubAck::Refused(said),
            };
        }
    }
    let v: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return PubAck::Refused(format!("acknowledgement is not JSON: {e}")),
    };
    if let Some(err) = v.get("error") {
        return PubAck::Refused(
            err.get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("stream error")
                .to_owned(),
        );
    }
    match v.get("seq").and_then(|s| s.as_u64()) {
        Some(seq) => PubAck::Stored {
            seq,
            duplicate: v.get("duplicate").and_then(|d| d.as_bool()) == Some(true),
        },
        None => PubAck::Refused(format!("acknowledgement without a sequence: {v}")),
    }
}

async fn read_loop(
    mut reader: BufReader<ReadHalf<BoxStream>>,
    server: String,
    prefix: String,
    tx: mpsc::Sender<Result<Incoming, LinkError>>,
) {
    let err = loop {
        match read_one(&mut reader, &server, &prefix).await {
            Ok(Some(incoming)) => {
                if tx.send(Ok(incoming)).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => break e,
        }
    };
    let _ = tx.send(Err(err)).await;
}

/// Read one protocol line (and its payload). `Ok(None)` for lines that need
/// nothing from the caller.
async fn read_one(
    reader: &mut BufReader<ReadHalf<BoxStream>>,
    server: &str,
    prefix: &str,
) -> Result<Option<Incoming>, LinkError> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .await
        .map_err(io("read from", server))?;
    if n == 0 {
        return Err(LinkError::Io {
            op: "read from",
            server: server.to_owned(),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        });
    }
    let l = line.trim_end();
    let proto = |what: String| LinkError::Protocol {
        server: server.to_owned(),
        what,
    };
    let mut words = l.split_ascii_whitespace();
    match words.next() {
        Some("PING") => Ok(Some(Incoming::Ping)),
        Some("PONG") => Ok(Some(Incoming::Pong)),
        Some("+OK") | Some("INFO") => Ok(None),
        Some("-ERR") => Err(LinkError::Refused {
            server: server.to_owned(),
            what: l.trim_start_matches("-ERR ").trim_matches('\'').to_owned(),
        }),
        Some(verb @ ("MSG" | "HMSG")) => {
            let args: Vec<&str> = words.collect();
            // MSG <subject> <sid> [reply] <size>;
            // HMSG <subject> <sid> [reply] <header size> <total size>.
            let (subject, reply, sizes) = match (verb, args.len()) {
                ("MSG", 3) => (args[0], None, (0usize, args[2])),
                ("MSG", 4) => (args[0], Some(args[2]), (0, args[3])),
                ("HMSG", 4) => (
                    args[0],
                    None,
                    (parse_size(args[2]).map_err(proto)?, args[3]),
                ),
                ("HMSG", 5) => (
                    args[0],
                    Some(args[2]),
                    (parse_size(args[3]).map_err(proto)?, args[4]),
                ),
                _ => return Err(proto(format!("malformed {verb} line {l:?}"))),
            };
            let total = parse_size(sizes.1).map_err(proto)?;
            if sizes.0 > total || total > MAX_MESSAGE {
                return Err(proto(format!("implausible sizes in {l:?}")));
            }
            let mut body = vec![0u8; total + 2];
            reader
                .read_exact(&mut body)
                .await
                .map_err(io("read a message from", server))?;
            body.truncate(total);
            let (headers, payload) = body.split_at(sizes.0);
            let Some(token) = subject.strip_prefix(prefix) else {
                return Ok(Some(Incoming::Message(Message {
                    subject: subject.to_owned(),
                    reply: reply.map(str::to_owned),
                    headers: (sizes.0 > 0).then(|| headers.to_vec()),
                    payload: payload.to_vec(),
                })));
            };
            let headers = (sizes.0 > 0).then_some(headers);
            Ok(Some(Incoming::Reply(Reply {
                token: token.to_owned(),
                ack: parse_ack(headers, payload),
                payload: payload.to_vec(),
            })))
        }
        _ => Err(proto(format!("unexpected line {l:?}"))),
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| format!("bad size {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_parse() {
        assert_eq!(
            parse_ack(None, br#"{"stream":"S","seq":7}"#),
            PubAck::Stored {
                seq: 7,
                duplicate: false
            }
        );
        assert_eq!(
            parse_ack(None, br#"{"stream":"S","seq":7,"duplicate":true}"#),
            PubAck::Stored {
                seq: 7,
                duplicate: true
            }
        );
        assert_eq!(
            parse_ack(
                None,
                br#"{"error":{"code":503,"description":"stream full"}}"#
            ),
            PubAck::Refused("stream full".to_owned())
        );
        assert!(
            matches!(parse_ack(Some(b"NATS/1.0 503\r\n\r\n"), b""), PubAck::Refused(m) if m.contains("no stream"))
        );
        assert!(matches!(parse_ack(None, b"garbage"), PubAck::Refused(_)));
        assert!(matches!(
            parse_ack(Some(b"NATS/1.0 429 Too Many Requests\r\n\r\n"), b""),
            PubAck::Busy(m) if m == "status 429 Too Many Requests"
        ));
    }

    #[test]
    fn header_blocks_give_their_status_and_values() {
        let h = b"NATS/1.0 404 Message Not Found\r\n\r\n";
        assert_eq!(
            header_status(h),
            Some((404, "Message Not Found".to_owned()))
        );
        assert_eq!(header_value(h, "KV-Operation"), None);
        let h = b"NATS/1.0\r\nKV-Operation: DEL\r\nNats-Subject: $KV.b.k\r\n\r\n";
        assert_eq!(header_status(h), None);
        assert_eq!(header_value(h, "kv-operation").as_deref(), Some("DEL"));
        assert_eq!(header_value(h, "Nats-Subject").as_deref(), Some("$KV.b.k"));
    }
}
