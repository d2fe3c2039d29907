//! The service's HTTP listener (`guardian-fleet serve --listen ADDR`): the
//! operator's read-only web page and `/metrics`.
//!
//! | path | what |
//! |---|---|
//! | `/` | the fleet: devices by trust state and silent, the newest alerts, one row per device |
//! | `/device/<id>` | one device: trust state, last verdict with its reasons, open findings, rounds, its recent alerts and records |
//! | `/metrics` | Prometheus' text format ([`crate::metrics`]) |
//! | `/healthz` | `ok` while the listener runs |
//!
//! The page is rendered on the server, HTML with inline CSS only: no
//! JavaScript, no font, script, stylesheet or image from elsewhere, so it
//! works offline; it reloads itself every 10 s and says when and by which
//! instance it was rendered. A trust state is always a word beside its
//! colour. What it shows comes from the devices (ids, event bodies) and
//! from evidence (verdict reasons): all of it is HTML-escaped, and the
//! `Content-Security-Policy` header forbids scripts besides.
//!
//! The server is by hand on tokio, small and bounded: GET and HEAD only
//! (anything else is `405`), one request per connection, its head at most
//! 8 KiB and 64 header lines read within 5 s, at most 32 requests at once
//! (more wait to be accepted), each answered within 15 s or `503`.
//!
//! Owns nothing; reads the key-value buckets and the alert and store
//! streams ([`crate::query`]). May not write anything, nor show a string
//! unescaped.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use async_nats::jetstream;
use guardian_report::wire::{WireRecord, valid_device_id};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    alerts::Alert,
    attest::{Attestation, TrustState},
    service::{Counters, DeviceState, ServiceError},
};

/// A request head larger than this is refused (`431`).
pub const MAX_HEAD: usize = 8 * 1024;
/// A request with more header lines than this is refused (`431`).
pub const MAX_HEADERS: usize = 64;
/// The whole head must arrive within this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// An answer not ready within this is a `503`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Writing the answer must finish within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once.
const MAX_CONCURRENT: usize = 32;
/// How far back the page reads alerts and records.
const LOOK_BACK: Duration = Duration::from_secs(24 * 3600);
/// Alerts on the fleet page.
const FLEET_ALERTS: usize = 20;
/// Alerts and records on a device's page.
const DEVICE_ITEMS: usize = 50;
/// The page reloads itself this often (seconds).
const REFRESH_SECS: u32 = 10;

/// What the listener serves from.
#[derive(Debug, Clone)]
pub struct Web {
    /// This instance's counters (for `/metrics`).
    pub counters: Arc<Counters>,
    /// The cluster.
    pub js: jetstream::Context,
    /// This instance's name (the page says who rendered it).
    pub instance: String,
    /// A device not heard from for this long is shown silent.
    pub silent_after: Duration,
}

/// A request the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// HEAD: the same answer without its body.
    pub head_only: bool,
    /// The path, without its query.
    pub path: String,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Its content type.
    pub content_type: &'static str,
    /// Its body.
    pub body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }

    fn html(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: "text/html; charset=utf-8",
            body,
        }
    }

    /// The bytes on the wire (without the body for HEAD).
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
             Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Read a request head: the request line and the header lines, up to the
/// empty line. An error is the answer to give.
pub fn parse_head(head: &[u8]) -> Result<Request, Response> {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Response::text(400, "bad request: the head does not end"))?;
    if end + 4 > MAX_HEAD {
        return Err(Response::text(
            431,
            &format!("the request head is over {MAX_HEAD} bytes"),
        ));
    }
    let text = std::str::from_utf8(&head[..end])
        .map_err(|_| Response::text(400, "bad request: the head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    if lines.count() > MAX_HEADERS {
        return Err(Response::text(
            431,
            &format!("more than {MAX_HEADERS} header lines"),
        ));
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::text(400, "bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Response::text(505, "HTTP/1.x only"));
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Err(Response::text(
                405,
                "read only: GET and HEAD are the only methods served",
            ));
        }
    };
    if !target.starts_with('/') {
        return Err(Response::text(400, "bad request target"));
    }
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok(Request { head_only, path })
}

/// Serve the page, `/metrics` and `/healthz` on `addr` until `stop` says
/// so.
pub async fn serve(
    addr: SocketAddr,
    web: Web,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let at = listener.local_addr()?;
    log::info!("the fleet page on http://{at}/, metrics on http://{at}/metrics");
    let web = Arc::new(web);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        // A slot first: past MAX_CONCURRENT, connections wait in the
        // kernel's backlog instead of in tasks.
        let slot = tokio::select! {
            _ = stop.changed() => return Ok(()),
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return Ok(()),
            },
        };
        let (s, _) = tokio::select! {
            _ = stop.changed() => return Ok(()),
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("web: accept: {e}");
                    continue;
                }
            },
        };
        let web = web.clone();
        tokio::spawn(async move {
            answer(s, &web).await;
            drop(slot);
        });
    }
}

/// Read one request from `s` and answer it.
async fn answer(mut s: tokio::net::TcpStream, web: &Web) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            if req.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(());
            }
            if req.len() > MAX_HEAD {
                return Err(Response::text(
                    431,
                    &format!("the request head is over {MAX_HEAD} bytes"),
                ));
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return Err(Response::text(400, "the request ended early")),
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
    };
    let (resp, head_only) = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Err(_) => (Response::text(408, "the request took too long"), false),
        Ok(Err(r)) => (r, false),
        Ok(Ok(())) => match parse_head(&req) {
            Err(r) => (r, false),
            Ok(r) => {
                let resp = tokio::time::timeout(ANSWER_TIMEOUT, route(web, &r.path))
                    .await
                    .unwrap_or_else(|_| {
                        Response::text(503, "the fleet's store did not answer in time")
                    });
                (resp, r.head_only)
            }
        },
    };
    let write = async {
        s.write_all(&resp.to_bytes(head_only)).await?;
        s.shutdown().await
    };
    if let Ok(Ok(())) = tokio::time::timeout(WRITE_TIMEOUT, write).await {
        // Closing with unread input would reset the connection and could
        // lose the answer (a refused oversized head): read what is left,
        // a little and briefly, until the client closes.
        let drain = async {
            let mut left = MAX_HEAD;
            while left > 0 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}

/// The answer for `path`.
async fn route(web: &Web, path: &str) -> Response {
    let now = crate::service::now_ms();
    match path {
        "/healthz" => Response::text(200, "ok"),
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: crate::metrics::render(&web.counters, Some(&web.js)).await,
        },
        "/" => match fleet_view(web).await {
            Ok(v) => Response::html(200, fleet_page(&v, now, &web.instance)),
            Err(e) => unavailable(&e, now, &web.instance),
        },
        _ => match path.strip_prefix("/device/") {
            Some(id) if !valid_device_id(id) => Response::html(
                400,
                message_page(
                    "Not a device id",
                    &format!("“{id}” is not a device id (letters, digits, - and _, at most 64)."),
                    now,
                    &web.instance,
                ),
            ),
            Some(id) => match device_view(web, id).await {
                Ok(Some(v)) => Response::html(200, device_page(&v, now, &web.instance)),
                Ok(None) => Response::html(
                    404,
                    message_page(
                        "No such device",
                        &format!(
                            "No device “{id}” in the fleet: it has never reported and has no attestation record."
                        ),
                        now,
                        &web.instance,
                    ),
                ),
                Err(e) => unavailable(&e, now, &web.instance),
            },
            None => Response::html(
                404,
                message_page(
                    "Not found",
                    &format!("Nothing at {path}."),
                    now,
                    &web.instance,
                ),
            ),
        },
    }
}

fn unavailable(e: &ServiceError, now: u64, instance: &str) -> Response {
    let mut why = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let _ = write!(why, ": {s}");
        src = s.source();
    }
    Response::html(
        503,
        message_page(
            "The fleet's store cannot be read",
            &format!("Reading the fleet failed ({why}); this page retries every {REFRESH_SECS} s."),
            now,
            instance,
        ),
    )
}

/// What the fleet page shows.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// Every device's state (`guardian_devices`).
    pub devices: Vec<DeviceState>,
    /// Every attestation record (`guardian_attest`).
    pub attestations: Vec<Attestation>,
    /// The newest alerts, newest first.
    pub alerts: Vec<Alert>,
    /// Alerts in the look-back window.
    pub alerts_total: usize,
    /// Each group's published policy set.
    pub policy_sets: BTreeMap<String, crate::policy::Published>,
    /// A device not heard from for this long is silent (ms).
    pub silent_after_ms: u64,
    /// What could not be read (the rest is still shown).
    pub notes: Vec<String>,
}

/// What a device's page shows.
#[derive(Debug)]
pub struct DeviceView {
    /// The device id.
    pub id: String,
    /// Its state, if it ever reported.
    pub state: Option<DeviceState>,
    /// Its attestation record, if any.
    pub attestation: Option<Attestation>,
    /// Its newest alerts, newest first.
    pub alerts: Vec<Alert>,
    /// Its newest records (epoch, record), newest first.
    pub records: Vec<(String, WireRecord)>,
    /// Each group's published policy set.
    pub policy_sets: BTreeMap<String, crate::policy::Published>,
    /// A device not heard from for this long is silent (ms).
    pub silent_after_ms: u64,
    /// What could not be read (the rest is still shown).
    pub notes: Vec<String>,
}

fn since() -> std::time::SystemTime {
    std::time::SystemTime::now()
        .checked_sub(LOOK_BACK)
        .unwrap_or(std::time::UNIX_EPOCH)
}

async fn fleet_view(web: &Web) -> Result<FleetView, ServiceError> {
    let js = &web.js;
    let (devices, attestations, alerts, sets) = tokio::join!(
        crate::query::devices(js),
        crate::query::attestations(js),
        crate::query::alerts(js, None, since()),
        crate::policy::published(js, &[]),
    );
    let mut v = FleetView {
        devices: devices?,
        silent_after_ms: web.silent_after.as_millis() as u64,
        ..Default::default()
    };
    match attestations {
        Ok(a) => v.attestations = a,
        Err(e) => v.notes.push(format!("attestation records unreadable: {e}")),
    }
    match sets {
        Ok(p) => v.policy_sets = p,
        Err(e) => v.notes.push(format!("policy sets unreadable: {e}")),
    }
    match alerts {
        Ok(mut a) => {
            v.alerts_total = a.len();
            a.reverse();
            a.truncate(FLEET_ALERTS);
            v.alerts = a;
        }
        Err(e) => v.notes.push(format!("alerts unreadable: {e}")),
    }
    Ok(v)
}

async fn device_view(web: &Web, id: &str) -> Result<Option<DeviceView>, ServiceError> {
    let js = &web.js;
    let (state, attestation) = tokio::join!(
        one::<DeviceState>(js, crate::service::DEVICES_BUCKET, id),
        one::<Attestation>(js, crate::attest::ATTEST_BUCKET, id)
    );
    let state = state?;
    let mut notes = Vec::new();
    let attestation = attestation.unwrap_or_else(|e| {
        notes.push(format!("attestation record unreadable: {e}"));
        None
    });
    if state.is_none() && attestation.is_none() && notes.is_empty() {
        return Ok(None);
    }
    let (alerts, stored) = tokio::join!(
        crate::query::alerts(js, Some(id), since()),
        crate::query::events(js, id, since())
    );
    let mut alerts = alerts.unwrap_or_else(|e| {
        notes.push(format!("alerts unreadable: {e}"));
        Vec::new()
    });
    alerts.reverse();
    alerts.truncate(DEVICE_ITEMS);
    let stored = stored.unwrap_or_else(|e| {
        notes.push(format!("records unreadable: {e}"));
        Vec::new()
    });
    let records: Vec<(String, WireRecord)> = stored
        .into_iter()
        .rev()
        .flat_map(|s| {
            let epoch = s.epoch;
            s.records.into_iter().rev().map(move |r| (epoch.clone(), r))
        })
        .take(DEVICE_ITEMS)
        .collect();
    let policy_sets = crate::policy::published(js, &[]).await.unwrap_or_else(|e| {
        notes.push(format!("policy sets unreadable: {e}"));
        BTreeMap::new()
    });
    Ok(Some(DeviceView {
        id: id.to_owned(),
        state,
        attestation,
        alerts,
        records,
        policy_sets,
        silent_after_ms: web.silent_after.as_millis() as u64,
        notes,
    }))
}

/// The value under `key` in `bucket`, decoded (one that does not decode
/// is said and taken as absent).
async fn one<T: serde::de::DeserializeOwned>(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
) -> Result<Option<T>, ServiceError> {
    let err =
        |what: String| move |e: async_nats::Error| ServiceError::JetStream { what, source: e };
    let kv = js
        .get_key_value(bucket)
        .await
        .map_err(|e| err(format!("open bucket {bucket}"))(e.into()))?;
    let Some(v) = kv
        .get(key)
        .await
        .map_err(|e| err(format!("read {key} in {bucket}"))(e.into()))?
    else {
        return Ok(None);
    };
    match serde_json::from_slice(&v) {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            log::warn!("{key} in {bucket}: unreadable: {e}");
            Ok(None)
        }
    }
}

/// `s` HTML-escaped, for text and for quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{ms} ms"),
    }
}

/// How long before (or after) `now` `ms` is, in words.
pub fn ago(now: u64, ms: u64) -> String {
    let s = now.abs_diff(ms) / 1000;
    let span = match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    };
    if ms > now {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// A time, shown as how long ago with the exact time beside it.
fn when(now: u64, ms: u64) -> String {
    if ms == 0 {
        return "never".to_owned();
    }
    format!(
        "<time title=\"{t}\">{}</time> <span class=\"dim\">({t})</span>",
        ago(now, ms),
        t = utc(ms)
    )
}

/// A trust state as the page shows it: colour and word. `None`: the device
/// has no attestation record.
fn badge(t: Option<TrustState>) -> String {
    let word = t.map(TrustState::as_str).unwrap_or("not attested");
    let class = t.map(TrustState::as_str).unwrap_or("none");
    format!("<span class=\"st st-{class}\">{word}</span>")
}

/// A link to a device's page (its id escaped; no link for an id that is
/// not one).
fn device_link(id: &str) -> String {
    if valid_device_id(id) {
        format!("<a href=\"/device/{0}\">{0}</a>", esc(id))
    } else {
        esc(id)
    }
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1.5em;color:#1b1f23;background:#fafbfc}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;margin:.3em 0}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4}td.n{text-align:right}
a{color:#0550ae}.dim{color:#6a737d;font-size:.9em}
code,pre{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-all}
.st{display:inline-block;padding:0 .5em;border-radius:.7em;font-weight:600;border:1px solid}
.st-trusted{background:#dafbe1;color:#116329;border-color:#4ac26b}
.st-untrusted{background:#ffebe9;color:#a40e26;border-color:#ff8182}
.st-unreachable{background:#fff8c5;color:#7d4e00;border-color:#d4a72c}
.st-stale{background:#fff1e5;color:#953800;border-color:#fb8f44}
.st-unknown{background:#eef1f4;color:#424a53;border-color:#8c959f}
.st-none{background:#fff;color:#57606a;border-color:#8c959f;border-style:dashed}
.silent{color:#a40e26;font-weight:600}
.warn{color:#a40e26;font-weight:600}
ul.counts{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.6em}
ul.counts li{background:#fff;border:1px solid #d0d7de;border-radius:.4em;padding:.4em .8em}
ul.counts .n{font-size:1.5em;font-weight:700;margin-right:.3em}
.note{background:#fff8c5;border:1px solid #d4a72c;padding:.4em .8em}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}dd{margin:0}
footer{margin-top:2em;color:#6a737d;font-size:.9em}
";

/// The page around `body`.
fn page(title: &str, body: &str, now: u64, instance: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n{body}\n\
         <footer id=\"rendered\">Rendered {} by instance <b>{}</b>; reloads every {REFRESH_SECS} s. Read only.</footer>\n\
         </body></html>\n",
        esc(title),
        utc(now),
        esc(instance)
    )
}

fn message_page(title: &str, text: &str, now: u64, instance: &str) -> String {
    page(
        title,
        &format!(
            "<p><a href=\"/\">← the fleet</a></p><h1>{}</h1><p id=\"message\">{}</p>",
            esc(title),
            esc(text)
        ),
        now,
        instance,
    )
}

fn notes(out: &mut String, notes: &[String]) {
    for n in notes {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", esc(n));
    }
}

/// The current epoch's records, alerts and drops.
fn counts(s: &DeviceState) -> (u64, u64, u64) {
    let epoch = s.summary.current_epoch.clone().unwrap_or_default();
    s.summary
        .epochs
        .get(&epoch)
        .map(|e| {
            (
                e.count(),
                e.by_class.get("alert").copied().unwrap_or(0),
                e.dropped(),
            )
        })
        .unwrap_or_default()
}

fn is_silent(s: &DeviceState, now: u64, silent_after_ms: u64) -> bool {
    now.saturating_sub(s.summary.last_seen_ms) > silent_after_ms
}

fn alerts_table(out: &mut String, alerts: &[Alert], now: u64, with_device: bool) {
    if alerts.is_empty() {
        out.push_str("<p class=\"dim\">none</p>\n");
        return;
    }
    out.push_str("<table class=\"alerts\"><tr><th>since</th>");
    if with_device {
        out.push_str("<th>device</th>");
    }
    out.push_str("<th>kind</th><th>what</th></tr>\n");
    for a in alerts {
        let _ = write!(out, "<tr><td>{}</td>", when(now, a.since_ms));
        if with_device {
            let _ = write!(out, "<td>{}</td>", device_link(&a.device));
        }
        let _ = writeln!(
            out,
            "<td>{}</td><td>{}</td></tr>",
            esc(&a.kind),
            esc(&a.what)
        );
    }
    out.push_str("</table>\n");
}

/// The fleet page.
pub fn fleet_page(v: &FleetView, now: u64, instance: &str) -> String {
    let mut rows: BTreeMap<&str, (Option<&DeviceState>, Option<&Attestation>)> = BTreeMap::new();
    for d in &v.devices {
        rows.entry(d.device.as_str()).or_default().0 = Some(d);
    }
    for a in &v.attestations {
        rows.entry(a.device.as_str()).or_default().1 = Some(a);
    }
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    let mut silent = 0;
    let drifting = v
        .attestations
        .iter()
        .filter(|a| crate::policy::device_drift(&v.policy_sets, a).is_drift())
        .count();
    for (d, a) in rows.values() {
        let key = a.map(|a| a.trust_now(now).as_str()).unwrap_or("none");
        *by_state.entry(key).or_default() += 1;
        if d.is_some_and(|d| is_silent(d, now, v.silent_after_ms)) {
            silent += 1;
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<h1>guardian fleet</h1><p class=\"dim\">{} devices: {} reporting, {} with an attestation record.</p>",
        rows.len(),
        v.devices.len(),
        v.attestations.len()
    );
    notes(&mut out, &v.notes);
    out.push_str("<ul class=\"counts\">\n");
    for (key, word) in [
        ("trusted", "trusted"),
        ("untrusted", "untrusted"),
        ("unreachable", "unreachable"),
        (
            "stale",
            "stale (no fresh verdict: no instance judged it in time)",
        ),
        ("unknown", "unknown (enrolled, not yet attested)"),
        ("none", "never attested"),
    ] {
        let _ = writeln!(
            out,
            "<li id=\"count-{key}\"><span class=\"n\">{}</span><span class=\"st st-{key}\">{word}</span></li>",
            by_state.get(key).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(
        out,
        "<li id=\"count-silent\"><span class=\"n\">{silent}</span><span class=\"silent\">silent</span> (no report for {} s)</li>\n</ul>",
        v.silent_after_ms / 1000
    );
    let _ = writeln!(
        out,
        "<h2>Policy sets</h2><p id=\"drift\"><span class=\"n\">{drifting}</span> device(s) not on their group's set (as their last verified quote shows).</p>"
    );
    if v.policy_sets.is_empty() {
        out.push_str("<p class=\"dim\">No policy set published.</p>\n");
    } else {
        out.push_str(
            "<table id=\"policy-sets\"><tr><th>group</th><th>version</th><th>sha256</th><th>created</th><th>policies</th></tr>\n",
        );
        for p in v.policy_sets.values() {
            let _ = writeln!(
                out,
                "<tr id=\"set-{}\"><td>{}</td><td class=\"n\">{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&p.group),
                esc(&p.group),
                p.version,
                esc(p.digest.get(..16).unwrap_or(&p.digest)),
                esc(&p.created),
                esc(&p.policies.join(", "))
            );
        }
        out.push_str("</table>\n");
        for p in v.policy_sets.values() {
            if let Some(w) = &p.warning {
                let _ = writeln!(
                    out,
                    "<p class=\"warn\" id=\"set-warning-{}\">group {}: {}</p>",
                    esc(&p.group),
                    esc(&p.group),
                    esc(w)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "<h2>Newest alerts <span class=\"dim\">({} of {} in the last 24 h)</span></h2>",
        v.alerts.len(),
        v.alerts_total
    );
    alerts_table(&mut out, &v.alerts, now, true);
    out.push_str(
        "<h2>Devices</h2>\n<table id=\"devices\"><tr><th>device</th><th>trust</th><th>since</th>\
         <th>last seen</th><th>last verdict</th><th>failed checks</th><th>open findings</th>\
         <th>policy set</th><th>records</th><th>alerts</th><th>dropped</th></tr>\n",
    );
    for (id, (d, a)) in &rows {
        let _ = write!(
            out,
            "<tr id=\"dev-{}\"><td>{}</td><td>{}</td><td>{}</td>",
            esc(id),
            device_link(id),
            badge(a.map(|a| a.trust_now(now))),
            a.map(|a| when(now, a.since_ms)).unwrap_or_default()
        );
        match d {
            Some(d) => {
                let _ = write!(out, "<td>{}", when(now, d.summary.last_seen_ms));
                if is_silent(d, now, v.silent_after_ms) {
                    out.push_str(" <span class=\"silent\">silent</span>");
                }
                out.push_str("</td>");
            }
            None => out.push_str("<td class=\"dim\">never reported</td>"),
        }
        let verdict = a.and_then(|a| a.verdict.as_ref());
        let _ = write!(
            out,
            "<td>{}</td><td>{}</td><td class=\"n\">{}</td>",
            verdict.map(|v| when(now, v.at_ms)).unwrap_or_default(),
            verdict
                .map(|v| v
                    .failures
                    .iter()
                    .map(|f| esc(&f.check))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            a.map(|a| a.open_findings.len()).unwrap_or(0)
        );
        let drift = a
            .map(|a| crate::policy::device_drift(&v.policy_sets, a))
            .unwrap_or(crate::policy::Drift::Unknown);
        let _ = write!(
            out,
            "<td class=\"policy policy-{}\">{}</td>",
            drift.word(),
            esc(&drift.describe())
        );
        match d {
            Some(d) => {
                let (records, alerts, dropped) = counts(d);
                let _ = writeln!(
                    out,
                    "<td class=\"n\">{records}</td><td class=\"n\">{alerts}</td><td class=\"n\">{dropped}</td></tr>"
                );
            }
            None => out.push_str("<td></td><td></td><td></td></tr>\n"),
        }
    }
    out.push_str("</table>\n");
    page("guardian fleet", &out, now, instance)
}

fn list(out: &mut String, title: &str, id: &str, items: &[String]) {
    let _ = write!(out, "<h3>{title}</h3>");
    if items.is_empty() {
        out.push_str("<p class=\"dim\">none</p>\n");
        return;
    }
    let _ = write!(out, "<ul id=\"{id}\">");
    for i in items {
        let _ = write!(out, "<li>{}</li>", esc(i));
    }
    out.push_str("</ul>\n");
}

/// A device's page.
pub fn device_page(v: &DeviceView, now: u64, instance: &str) -> String {
    let mut out = String::new();
    let a = v.attestation.as_ref();
    let _ = writeln!(
        out,
        "<p><a href=\"/\">← the fleet</a></p><h1>{} {}</h1>",
        esc(&v.id),
        badge(a.map(|a| a.trust_now(now)))
    );
    notes(&mut out, &v.notes);
    out.push_str("<dl id=\"facts\">");
    let mut fact = |k: &str, val: String| {
        let _ = write!(out, "<dt>{k}</dt><dd>{val}</dd>");
    };
    match a {
        Some(a) => {
            fact(
                "trust",
                format!(
                    "{} since {}",
                    badge(Some(a.trust_now(now))),
                    when(now, a.since_ms)
                ),
            );
            if let Some(why) = &a.unreachable {
                fact(
                    "unreachable",
                    format!("<span id=\"unreachable\">{}</span>", esc(why)),
                );
            }
            fact(
                "rounds",
                format!(
                    "<span id=\"rounds\">{} verified, {} failed, {} unreachable</span>",
                    a.rounds.verified, a.rounds.failed, a.rounds.unreachable
                ),
            );
            fact("next round due", when(now, a.next_due_ms));
            let drift = crate::policy::device_drift(&v.policy_sets, a);
            fact(
                "policy set",
                format!(
                    "<span id=\"policy-set\" class=\"policy-{}\">{}</span>",
                    drift.word(),
                    esc(&drift.describe())
                ),
            );
            if let Some(c) = &a.claim {
                fact(
                    "round in progress",
                    format!("by {} until {}", esc(&c.instance), utc(c.until_ms)),
                );
            }
        }
        None => fact("trust", format!("{} (no attestation record)", badge(None))),
    }
    match &v.state {
        Some(d) => {
            let silent = if is_silent(d, now, v.silent_after_ms) {
                " <span class=\"silent\">silent</span>"
            } else {
                ""
            };
            fact(
                "last seen",
                format!("{}{silent}", when(now, d.summary.last_seen_ms)),
            );
            fact(
                "batches",
                format!(
                    "{} ({} duplicate records)",
                    d.summary.batches, d.summary.duplicates
                ),
            );
        }
        None => fact("last seen", "never reported".to_owned()),
    }
    out.push_str("</dl>\n");

    out.push_str("<h2>Last verdict</h2>\n");
    match a.and_then(|a| a.verdict.as_ref()) {
        None => out.push_str("<p class=\"dim\">none yet</p>\n"),
        Some(vd) => {
            let _ = writeln!(
                out,
                "<p id=\"verdict\">{} at {}{}</p>",
                if vd.trusted {
                    "<span class=\"st st-trusted\">every check passed</span>"
                } else {
                    "<span class=\"st st-untrusted\">checks failed</span>"
                },
                when(now, vd.at_ms),
                if vd.boot_id.is_empty() {
                    String::new()
                } else {
                    format!(", boot <code>{}</code>", esc(&vd.boot_id))
                }
            );
            out.push_str("<h3>Failed checks</h3>");
            if vd.failures.is_empty() {
                out.push_str("<p class=\"dim\">none</p>\n");
            } else {
                out.push_str(
                    "<table id=\"failures\"><tr><th>check</th><th>reason</th><th>finding</th></tr>\n",
                );
                for f in &vd.failures {
                    let _ = writeln!(
                        out,
                        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&f.check),
                        esc(&f.reason),
                        esc(f.finding.as_deref().unwrap_or(""))
                    );
                }
                out.push_str("</table>\n");
            }
            list(&mut out, "Warnings", "warnings", &vd.warnings);
            list(&mut out, "Passed checks", "passed", &vd.passed);
            list(
                &mut out,
                "Tamper attempts this boot",
                "tamper",
                &vd.tamper_attempts,
            );
            list(&mut out, "Manifests in force", "manifests", &vd.manifests);
        }
    }

    out.push_str("<h2>Open findings</h2>\n");
    match a.map(|a| a.open_findings.as_slice()).unwrap_or_default() {
        [] => out.push_str("<p class=\"dim\">none</p>\n"),
        findings => {
            out.push_str(
                "<table id=\"findings\"><tr><th>id</th><th>check</th><th>reason</th><th>since</th></tr>\n",
            );
            for f in findings {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&f.id),
                    esc(&f.check),
                    esc(&f.reason),
                    esc(&f.since)
                );
            }
            out.push_str("</table>\n");
        }
    }

    if let Some(d) = &v.state {
        out.push_str(
            "<h2>Spool epochs</h2>\n<table id=\"epochs\"><tr><th>epoch</th><th>records</th>\
             <th>by class</th><th>dropped</th><th>unexplained</th></tr>\n",
        );
        for (epoch, e) in &d.summary.epochs {
            let current = d.summary.current_epoch.as_deref() == Some(epoch.as_str());
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(epoch),
                if current { " (current)" } else { "" },
                e.count(),
                esc(&e
                    .by_class
                    .iter()
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")),
                e.dropped(),
                e.unexplained()
            );
        }
        out.push_str("</table>\n");
    }

    let _ = writeln!(
        out,
        "<h2>Recent alerts <span class=\"dim\">(newest first, last 24 h, at most {DEVICE_ITEMS})</span></h2>"
    );
    alerts_table(&mut out, &v.alerts, now, false);

    let _ = writeln!(
        out,
        "<h2>Recent events <span class=\"dim\">(newest first, last 24 h, at most {DEVICE_ITEMS})</span></h2>"
    );
    if v.records.is_empty() {
        out.push_str("<p class=\"dim\">none</p>\n");
    } else {
        out.push_str(
            "<table id=\"events\"><tr><th>seq</th><th>device time</th><th>class</th><th>body</th></tr>\n",
        );
        for (epoch, r) in &v.records {
            let _ = writeln!(
                out,
                "<tr><td class=\"n\" title=\"epoch {}\">{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(epoch),
                r.seq,
                esc(&utc(r.time_ms)),
                esc(&r.class),
                esc(r.body.get())
            );
        }
        out.push_str("</table>\n");
    }
    page(&format!("{} · guardian fleet", v.id), &out, now, instance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attest::{FailedCheck, LastVerdict, OpenFinding, Rounds},
        store::{EpochSummary, Summary},
    };

    const NOW: u64 = 1_800_000_000_000;
    const SCRIPT: &str = "<script>alert(1)</script>";

    fn state(id: &str, last_seen_ms: u64) -> DeviceState {
        let mut e = EpochSummary::default();
        for s in 1..=7 {
            e.insert(s);
        }
        e.by_class.insert("alert".into(), 2);
        e.by_class.insert("event".into(), 5);
        e.queue_drops = 3;
        DeviceState {
            device: id.into(),
            store_seq: 1,
            summary: Summary {
                epochs: [("00000000000000aa".to_owned(), e)].into(),
                current_epoch: Some("00000000000000aa".into()),
                last_seen_ms,
                batches: 2,
                duplicates: 0,
            },
        }
    }

    fn attestation(id: &str, trust: TrustState) -> Attestation {
        Attestation {
            device: id.into(),
            trust,
            since_ms: NOW - 60_000,
            verdict: Some(LastVerdict {
                at_ms: NOW - 60_000,
                trusted: trust == TrustState::Trusted,
                failures: vec![FailedCheck {
                    check: "model".into(),
                    reason: format!("the model's digest is not the manifest's {SCRIPT}"),
                    finding: Some("f-1".into()),
                }],
                passed: vec!["signature".into(), "nonce".into()],
                warnings: vec![],
                tamper_attempts: vec![],
                manifests: vec![],
                boot_id: "b-1".into(),
                policy_set: None,
            }),
            unreachable: None,
            open_findings: vec![OpenFinding {
                id: "f-1".into(),
                check: "model".into(),
                reason: SCRIPT.into(),
                since: "2027-01-15T08:00:00Z".into(),
            }],
            verifier: serde_json::Value::Null,
            next_due_ms: NOW + 60_000,
            claim: None,
            rounds: Rounds {
                verified: 3,
                failed: 1,
                unreachable: 0,
            },
            stale_at_ms: NOW + 90_000,
        }
    }

    fn parse(head: &str) -> Result<Request, Response> {
        parse_head(head.as_bytes())
    }

    #[test]
    fn only_get_and_head_are_served() {
        assert_eq!(
            parse("GET /device/a-1?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap(),
            Request {
                head_only: false,
                path: "/device/a-1".into()
            }
        );
        assert!(parse("HEAD / HTTP/1.0\r\n\r\n").unwrap().head_only);
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
            let r = parse(&format!("{m} / HTTP/1.1\r\n\r\n")).unwrap_err();
            assert_eq!(r.status, 405, "{m}");
            let wire = String::from_utf8(r.to_bytes(false)).unwrap();
            assert!(
                wire.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
                "{wire}"
            );
            assert!(wire.contains("\r\nAllow: GET, HEAD\r\n"), "{wire}");
        }
        assert_eq!(parse("GET / SPDY/3\r\n\r\n").unwrap_err().status, 505);
        assert_eq!(parse("GET  / HTTP/1.1\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(
            parse("GET http://x/ HTTP/1.1\r\n\r\n").unwrap_err().status,
            400
        );
        assert_eq!(parse("GET / HTTP/1.1\r\n").unwrap_err().status, 400);
        // What follows the head (a body) is not read.
        let mut post = b"POST / HTTP/1.1\r\n\r\n".to_vec();
        post.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(parse_head(&post).unwrap_err().status, 405);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&long).unwrap_err().status, 431);
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X-A: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse(&many).unwrap_err().status, 431);
        let enough = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: 1\r\n".repeat(MAX_HEADERS));
        assert!(parse(&enough).is_ok());
    }

    #[test]
    fn head_gets_the_headers_without_the_body() {
        let r = Response::html(200, "<p>x</p>".into());
        let full = String::from_utf8(r.to_bytes(false)).unwrap();
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(full.ends_with("\r\n\r\n<p>x</p>"));
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 8\r\n"));
        assert!(full.contains("Content-Security-Policy: default-src 'none';"));
    }

    #[test]
    fn everything_shown_is_escaped() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let mut bad = attestation("evil\"><script>", TrustState::Untrusted);
        bad.unreachable = Some(SCRIPT.into());
        let v = FleetView {
            devices: vec![state("board-1", NOW - 5_000)],
            attestations: vec![attestation("board-1", TrustState::Untrusted), bad],
            alerts: vec![Alert {
                device: "board-1".into(),
                kind: "tamper_attempt".into(),
                what: format!("file_open deny of {SCRIPT}"),
                since_ms: NOW - 1000,
                epoch: None,
                seq: None,
                evidence: serde_json::Value::Null,
            }],
            alerts_total: 1,
            policy_sets: BTreeMap::new(),
            silent_after_ms: 300_000,
            notes: vec![SCRIPT.into()],
        };
        let html = fleet_page(&v, NOW, "fleet-<1>");
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("fleet-&lt;1&gt;"));
        // An id that is not a device id is shown, not linked.
        assert!(!html.contains("href=\"/device/evil"));
        let records = vec![(
            "00000000000000aa".to_owned(),
            WireRecord {
                seq: 9,
                time_ms: NOW,
                class: "alert".into(),
                body: serde_json::value::RawValue::from_string(format!(
                    "{{\"file\":\"{SCRIPT}\"}}"
                ))
                .unwrap(),
            },
        )];
        let d = DeviceView {
            id: "board-1".into(),
            state: Some(state("board-1", NOW - 5_000)),
            attestation: Some(attestation("board-1", TrustState::Untrusted)),
            alerts: v.alerts.clone(),
            records,
            policy_sets: BTreeMap::new(),
            silent_after_ms: 300_000,
            notes: vec![],
        };
        let html = device_page(&d, NOW, "fleet-1");
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("{&quot;file&quot;:&quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;}")
        );
        assert!(html.contains("the model&#39;s digest is not the manifest&#39;s &lt;script&gt;"));
    }

    #[test]
    fn the_fleet_page_shows_each_groups_set_and_who_drifts() {
        use guardian_attest::attest::PolicySetInForce;
        let on = |id: &str, version: u64, digest: &str| {
            let mut a = attestation(id, TrustState::Trusted);
            if let Some(v) = a.verdict.as_mut() {
                v.policy_set = Some(PolicySetInForce {
                    group: "cameras".into(),
                    version,
                    sha256: digest.into(),
                    floor: version,
                });
            }
            a
        };
        let mut sets = BTreeMap::new();
        sets.insert(
            "cameras".to_owned(),
            crate::policy::Published {
                group: "cameras".into(),
                version: 3,
                digest: "c3".repeat(32),
                signer: String::new(),
                created: "2026-12-05T10:00:00Z".into(),
                policies: vec!["allowlist".into(), "no-writers".into()],
                revision: 4,
                warning: Some(format!("rolled back {SCRIPT}")),
            },
        );
        let v = FleetView {
            attestations: vec![
                on("board-a", 3, &"c3".repeat(32)),
                on("board-b", 2, &"c2".repeat(32)),
                attestation("board-c", TrustState::Trusted),
            ],
            policy_sets: sets.clone(),
            silent_after_ms: 300_000,
            ..Default::default()
        };
        let html = fleet_page(&v, NOW, "fleet-1");
        assert!(
            html.contains("<p id=\"drift\"><span class=\"n\">1</span>"),
            "{html}"
        );
        assert!(html.contains("<tr id=\"set-cameras\"><td>cameras</td><td class=\"n\">3</td>"));
        assert!(html.contains("allowlist, no-writers"));
        assert!(
            html.contains("<p class=\"warn\" id=\"set-warning-cameras\">group cameras: rolled back &lt;script&gt;"),
            "{html}"
        );
        assert!(row_of(&html, "board-a").contains("policy-current\">cameras v3</td>"));
        assert!(
            row_of(&html, "board-b").contains("policy-drift\">cameras v2 DRIFT (group at v3)</td>"),
            "{}",
            row_of(&html, "board-b")
        );
        assert!(row_of(&html, "board-c").contains("policy-unknown\">-</td>"));
        let d = DeviceView {
            id: "board-b".into(),
            state: None,
            attestation: Some(on("board-b", 2, &"c2".repeat(32))),
            alerts: vec![],
            records: vec![],
            policy_sets: sets,
            silent_after_ms: 300_000,
            notes: vec![],
        };
        let html = device_page(&d, NOW, "fleet-1");
        assert!(html.contains("<span id=\"policy-set\" class=\"policy-drift\">cameras v2 DRIFT (group at v3)</span>"), "{html}");
    }

    fn row_of(html: &str, id: &str) -> String {
        let start = html.find(&format!("<tr id=\"dev-{id}\">")).unwrap();
        html[start..start + html[start..].find("</tr>").unwrap()].to_owned()
    }

    #[test]
    fn the_fleet_page_counts_and_shows_a_device_in_either_bucket() {
        let mut unreachable = attestation("board-c", TrustState::Unreachable);
        unreachable.unreachable = Some("no answer in 10 s".into());
        // Trusted once, but its next round is overdue past the deadline
        // (the instance that claimed it died): shown stale, not trusted.
        let mut stale = attestation("board-f", TrustState::Trusted);
        stale.stale_at_ms = NOW - 1;
        let v = FleetView {
            devices: vec![
                state("board-a", NOW - 5_000),
                state("board-b", NOW - 5_000),
                state("board-d", NOW - 600_000),
            ],
            attestations: vec![
                attestation("board-a", TrustState::Trusted),
                attestation("board-b", TrustState::Untrusted),
                unreachable,
                attestation("board-e", TrustState::Unknown),
                stale,
            ],
            silent_after_ms: 300_000,
            ..Default::default()
        };
        let html = fleet_page(&v, NOW, "fleet-1");
        assert!(row_of(&html, "board-f").contains(">stale</span>"));
        assert!(!row_of(&html, "board-f").contains(">trusted</span>"));
        for (key, n) in [
            ("trusted", 1),
            ("untrusted", 1),
            ("unreachable", 1),
            ("stale", 1),
            ("unknown", 1),
            ("none", 1),
            ("silent", 1),
        ] {
            assert!(
                html.contains(&format!(
                    "<li id=\"count-{key}\"><span class=\"n\">{n}</span>"
                )),
                "{key}: {html}"
            );
        }
        let row = |id: &str| {
            let start = html.find(&format!("<tr id=\"dev-{id}\">")).unwrap();
            html[start..start + html[start..].find("</tr>").unwrap()].to_owned()
        };
        assert!(row("board-a").contains(">trusted</span>"));
        assert!(
            row("board-b").contains(">untrusted</span>")
                && row("board-b").contains("<td>model</td>")
        );
        assert!(
            row("board-c").contains(">unreachable</span>")
                && row("board-c").contains("never reported")
        );
        assert!(
            row("board-d").contains(">not attested</span>") && row("board-d").contains("silent")
        );
        assert!(row("board-e").contains(">unknown</span>"));
        // records, alerts, dropped of the current epoch
        assert!(
            row("board-a")
                .ends_with("<td class=\"n\">7</td><td class=\"n\">2</td><td class=\"n\">3</td>"),
            "{}",
            row("board-a")
        );
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        assert!(html.contains("by instance <b>fleet-1</b>"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "an external asset"
        );
    }

    #[test]
    fn times_read_as_utc_and_as_how_long_ago() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20 UTC");
        assert_eq!(ago(100_000, 95_000), "5 s ago");
        assert_eq!(ago(10_000_000, 10_000_000 - 600_000), "10 min ago");
        assert_eq!(ago(1_000, 61_000), "in 60 s");
        assert_eq!(ago(3 * 86_400_000, 0), "3 days ago");
    }
}
