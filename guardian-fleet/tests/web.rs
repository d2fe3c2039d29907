//! The operator's page, end to end and in a real browser: a nats-server
//! with JetStream, `guardian-fleet serve --listen`, devices reporting
//! through guardian's real reporter (one of them an alert whose body
//! carries `<script>alert(1)</script>`), and attestation records for a
//! trusted, an untrusted and an unreachable device written into
//! `guardian_attest` (the rounds that write them are tested elsewhere).
//! Then headless Chromium loads the page: the DOM must show the counts,
//! each device's state word, the failure reasons, and the script as text
//! with no `<script>` element; and a screenshot is written under target/
//! for a human to look at.
//!
//! The HTTP half (status codes, methods, `/metrics`) runs without a
//! browser. Chromium is `GUARDIAN_CHROMIUM`, else `chromium` (Debian;
//! `cross/setup.sh` installs it) or `chromium-browser` on PATH. Without
//! one the browser half fails when `GUARDIAN_REQUIRE_CHROMIUM=1` (test.sh
//! sets it) and otherwise says SKIPPED, loudly. nats-server comes from
//! `cross/setup.sh` (or `GUARDIAN_NATS_SERVER`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../guardian-report/tests/support/nats.rs"]
mod support;
use support::{free_port, start_server};

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use guardian_fleet::{
    attest::{
        ATTEST_BUCKET, Attestation, FailedCheck, LastVerdict, OpenFinding, Rounds, TrustState,
    },
    service,
};
use guardian_report::{Class, Fsync, LinkConfig, Reporter, Spool, SpoolConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request, one answer: (status, head, body).
async fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("the page did not answer within 20 s")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http(addr, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")).await;
    (status, body)
}

fn device(dir: &Path, id: &str, url: &str) -> Reporter {
    let spool = Spool::open(SpoolConfig {
        dir: dir.join(id),
        max_bytes: 8 << 20,
        segment_bytes: 1 << 20,
        fsync: Fsync::Interval(Duration::from_millis(50)),
    })
    .unwrap();
    let mut cfg = LinkConfig::new(id, vec![url.to_owned()]);
    cfg.backoff_max = Duration::from_millis(500);
    Reporter::start(spool, cfg).unwrap()
}

fn record(device: &str, trust: TrustState, now: u64) -> Attestation {
    let verdict = |trusted: bool, failures: Vec<FailedCheck>| LastVerdict {
        at_ms: now - 30_000,
        trusted,
        failures,
        passed: vec!["signature".into(), "nonce".into(), "pcrs".into()],
        warnings: if trusted {
            vec![]
        } else {
            vec!["the quote's clock went backwards once".into()]
        },
        tamper_attempts: vec![],
        manifests: vec!["models-2027-01".into()],
        boot_id: "6f1c2a".into(),
        policy_set: None,
    };
    let mut a = Attestation {
        device: device.into(),
        trust,
        since_ms: now - 120_000,
        verdict: None,
        unreachable: None,
        open_findings: vec![],
        verifier: serde_json::json!({}),
        next_due_ms: now + 60_000,
        claim: None,
        rounds: Rounds::default(),
        stale_at_ms: now + 90_000,
    };
    match trust {
        TrustState::Trusted => {
            a.verdict = Some(verdict(true, vec![]));
            a.rounds.verified = 4;
        }
        TrustState::Untrusted => {
            a.verdict = Some(verdict(
                false,
                vec![
                    FailedCheck {
                        check: "model".into(),
                        reason:
                            "the model's digest is not the manifest's <script>alert(2)</script>"
                                .into(),
                        finding: Some("finding-7".into()),
                    },
                    FailedCheck {
                        check: "reboot".into(),
                        reason: "rebooted with finding-7 open".into(),
                        finding: None,
                    },
                ],
            ));
            a.open_findings = vec![OpenFinding {
                id: "finding-7".into(),
                check: "model".into(),
                reason: "model digest mismatch".into(),
                since: "2027-01-15T08:00:00Z".into(),
            }];
            a.rounds = Rounds {
                verified: 3,
                failed: 1,
                unreachable: 0,
            };
        }
        TrustState::Unreachable => {
            a.verdict = Some(verdict(true, vec![]));
            a.unreachable = Some("no answer to the challenge within 10 s".into());
            a.rounds = Rounds {
                verified: 1,
                failed: 0,
                unreachable: 2,
            };
        }
        // Never stored: a stale record is a trusted one past its deadline.
        TrustState::Unknown | TrustState::Stale => {}
    }
    a
}

/// Chromium, if there is one: `GUARDIAN_CHROMIUM`, else on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GUARDIAN_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser"]
        .into_iter()
        .find_map(|name| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

/// Run headless Chromium with `args` (its own profile in `profile`);
/// its stdout.
async fn run_chromium(bin: &Path, profile: &Path, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium did not finish within 90 s")
    .unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The number in the fleet page's count box `key`.
fn count(dom: &str, key: &str) -> u64 {
    let at = dom
        .find(&format!("id=\"count-{key}\""))
        .unwrap_or_else(|| panic!("no count-{key} in {dom}"));
    let rest = &dom[at..];
    let n = &rest[rest.find("class=\"n\">").unwrap() + 10..];
    n[..n.find('<').unwrap()].parse().unwrap()
}

/// The fleet page's row for device `id`.
fn row<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("<tr id=\"dev-{id}\">"))
        .unwrap_or_else(|| panic!("no row for {id} in {dom}"));
    let rest = &dom[at..];
    &rest[..rest.find("</tr>").unwrap()]
}

/// A PNG `width` × `height` and not trivially small.
fn assert_png(path: &Path, width: u32, height: u32) {
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&png[12..16], b"IHDR");
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (width, height), "{}", path.display());
    assert!(
        png.len() > 20_000,
        "{} is only {} bytes: a blank page?",
        path.display(),
        png.len()
    );
}

const SCRIPT: &str = "<script>alert(1)</script>";
const SCRIPT_AS_TEXT: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_fleet_in_headless_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = tmp.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n",
            tmp.path().join("js")
        ),
    )
    .unwrap();
    let _nats = Killed(start_server(&conf, port));
    let url = format!("nats://127.0.0.1:{port}");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = tmp.path().join("fleet.log");
    let _fleet = Killed(
        Command::new(env!("CARGO_BIN_EXE_guardian-fleet"))
            .args(["--nats", &url, "serve", "--instance", "fleet-web-test"])
            .args(["--listen", &addr.to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let js = jetstream::new(
        service::connect(std::slice::from_ref(&url), "web-test")
            .await
            .unwrap(),
    );
    // The service makes the bucket at start.
    let deadline = Instant::now() + Duration::from_secs(30);
    let attest = loop {
        if let Ok(kv) = js.get_key_value(ATTEST_BUCKET).await {
            break kv;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet never made {ATTEST_BUCKET}; its log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Devices report through the real reporter.
    let tamper = format!(
        r#"{{"event":"file_write_open","verdict":"deny","mode":"enforce","file":"/opt/models/{SCRIPT}","exe":"/tmp/evil"}}"#
    );
    let reporting = [
        "board-trusted",
        "board-untrusted",
        "board-unreachable",
        "board-unattested",
    ];
    let mut reporters = Vec::new();
    for id in reporting {
        let r = device(tmp.path(), id, &url);
        assert!(r.submit(Class::Status, br#"{"mode":"enforce"}"#.to_vec()));
        for n in 0..3 {
            let body = format!(r#"{{"event":"file_open","verdict":"allow","n":{n}}}"#);
            assert!(r.submit(Class::Event, body.into_bytes()));
        }
        if id == "board-untrusted" {
            assert!(r.submit(Class::Alert, tamper.clone().into_bytes()));
        }
        reporters.push(r);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in &reporters {
        while !r.drained() {
            assert!(Instant::now() < deadline, "not drained: {:?}", r.status());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for r in reporters {
        r.shutdown().await;
    }

    // Attestation records, as the rounds would leave them; one device is
    // enrolled and never reported.
    let now = service::now_ms();
    for (id, trust) in [
        ("board-trusted", TrustState::Trusted),
        ("board-untrusted", TrustState::Untrusted),
        ("board-unreachable", TrustState::Unreachable),
        ("board-enrolled", TrustState::Unknown),
    ] {
        let a = record(id, trust, now);
        attest
            .put(id, serde_json::to_vec(&a).unwrap().into())
            .await
            .unwrap();
    }

    // The page, once the device state and the alert are in.
    let deadline = Instant::now() + Duration::from_secs(60);
    let html = loop {
        let (status, body) = get(addr, "/").await;
        // Every record counted in its device's row (records, alerts).
        let counted = |id: &str, records: u32, alerts: u32| {
            body.find(&format!("<tr id=\"dev-{id}\">"))
                .is_some_and(|at| {
                    let r = &body[at..];
                    r[..r.find("</tr>").unwrap_or(r.len())].contains(&format!(
                        "<td class=\"n\">{records}</td><td class=\"n\">{alerts}</td>"
                    ))
                })
        };
        if status == 200
            && reporting.iter().all(|id| {
                if *id == "board-untrusted" {
                    counted(id, 5, 1)
                } else {
                    counted(id, 4, 0)
                }
            })
            && body.contains("tamper_attempt")
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed every device and the alert: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(!html.contains("<script"), "{html}");
    assert!(html.contains(SCRIPT_AS_TEXT), "{html}");

    // HTTP: read only, bounded, and what it says to a mistake.
    let (status, head, body) = http(
        addr,
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{head}");
    assert!(head.contains("\r\nAllow: GET, HEAD"), "{head}");
    assert!(body.contains("read only"), "{body}");
    let (status, head, body) = http(addr, "HEAD / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status, 200);
    assert!(
        body.is_empty() && head.contains("Content-Length: "),
        "{head}"
    );
    let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: 1\r\n".repeat(100));
    assert_eq!(http(addr, &many).await.0, 431);
    let big = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(10_000));
    assert_eq!(http(addr, &big).await.0, 431);
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
    let (status, body) = get(addr, "/device/no-such-board").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("No device “no-such-board” in the fleet"),
        "{body}"
    );
    let (status, body) = get(addr, "/device/a%3Cb%3E").await;
    assert_eq!(status, 400);
    assert!(body.contains("is not a device id"), "{body}");
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for (state, n) in [
        ("trusted", 1),
        ("untrusted", 1),
        ("unreachable", 1),
        ("unknown", 1),
    ] {
        assert!(
            metrics.contains(&format!(
                "\nguardian_fleet_devices{{state=\"{state}\"}} {n}\n"
            )),
            "{state}: {metrics}"
        );
    }

    // The browser.
    let Some(chromium) = chromium() else {
        if std::env::var("GUARDIAN_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
            panic!(
                "chromium NOT FOUND and GUARDIAN_REQUIRE_CHROMIUM=1: run cross/setup.sh \
                 (installs Debian's chromium) or set GUARDIAN_CHROMIUM"
            );
        }
        // Straight to the process's stderr: cargo test would hide an
        // eprintln! of a passing test.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n\x1b[1;33mSKIPPED: the fleet page's headless Chromium half did NOT run.\n  \
             Why: no chromium (GUARDIAN_CHROMIUM, chromium or chromium-browser on PATH).\n  \
             The HTTP half above ran. To run it: cross/setup.sh installs chromium; \
             GUARDIAN_REQUIRE_CHROMIUM=1 makes its absence a failure.\x1b[0m\n"
        );
        return;
    };
    let profile = tmp.path().join("chromium-profile");
    let base = format!("http://{addr}");
    let dom = run_chromium(&chromium, &profile, &["--dump-dom", &format!("{base}/")]).await;
    assert!(dom.contains("<h1>guardian fleet</h1>"), "{dom}");
    for (key, n) in [
        ("trusted", 1),
        ("untrusted", 1),
        ("unreachable", 1),
        ("unknown", 1),
        ("none", 1),
        ("silent", 0),
    ] {
        assert_eq!(count(&dom, key), n, "count of {key}");
    }
    for (id, word) in [
        ("board-trusted", "trusted"),
        ("board-untrusted", "untrusted"),
        ("board-unreachable", "unreachable"),
        ("board-unattested", "not attested"),
        ("board-enrolled", "unknown"),
    ] {
        let r = row(&dom, id);
        assert!(r.contains(&format!("\">{word}</span>")), "{id}: {r}");
        assert!(
            r.contains(&format!("<a href=\"/device/{id}\">{id}</a>")),
            "{r}"
        );
    }
    let r = row(&dom, "board-untrusted");
    assert!(r.contains("<td>model, reboot</td>"), "{r}");
    assert!(
        r.contains("<td class=\"n\">5</td><td class=\"n\">1</td><td class=\"n\">0</td>"),
        "{r}"
    );
    assert!(row(&dom, "board-enrolled").contains("never reported"));
    assert!(dom.contains("by instance <b>fleet-web-test</b>"), "{dom}");
    // The alert's text carries the script, as text.
    assert!(dom.contains(SCRIPT_AS_TEXT), "{dom}");
    assert!(
        !dom.contains("<script"),
        "a script element in the DOM: {dom}"
    );

    let dev = run_chromium(
        &chromium,
        &profile,
        &["--dump-dom", &format!("{base}/device/board-untrusted")],
    )
    .await;
    for text in [
        "<h1>board-untrusted <span class=\"st st-untrusted\">untrusted</span></h1>",
        "<td>model</td><td>the model's digest is not the manifest's &lt;script&gt;alert(2)&lt;/script&gt;</td><td>finding-7</td>",
        "<td>reboot</td><td>rebooted with finding-7 open</td>",
        "<td>finding-7</td><td>model</td><td>model digest mismatch</td><td>2027-01-15T08:00:00Z</td>",
        "3 verified, 1 failed, 0 unreachable",
        "the quote's clock went backwards once",
        "tamper_attempt",
        "/tmp/evil",
    ] {
        assert!(dev.contains(text), "{text} not in {dev}");
    }
    // The alert record's body, as escaped JSON text among the events.
    assert!(
        dev.contains(&format!("<code>{{\"event\":\"file_write_open\",\"verdict\":\"deny\",\"mode\":\"enforce\",\"file\":\"/opt/models/{SCRIPT_AS_TEXT}\"")),
        "{dev}"
    );
    assert!(
        !dev.contains("<script"),
        "a script element in the DOM: {dev}"
    );
    let unreachable = run_chromium(
        &chromium,
        &profile,
        &["--dump-dom", &format!("{base}/device/board-unreachable")],
    )
    .await;
    assert!(
        unreachable.contains("no answer to the challenge within 10 s"),
        "{unreachable}"
    );
    assert!(
        unreachable.contains("1 verified, 0 failed, 2 unreachable"),
        "{unreachable}"
    );

    // Screenshots, kept for a human.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-page");
    std::fs::create_dir_all(&shots).unwrap();
    for (name, path) in [
        ("fleet.png", "/"),
        ("device.png", "/device/board-untrusted"),
    ] {
        let png = shots.join(name);
        let _ = std::fs::remove_file(&png);
        run_chromium(
            &chromium,
            &profile,
            &[
                &format!("--screenshot={}", png.display()),
                "--window-size=1280,900",
                "--hide-scrollbars",
                &format!("{base}{path}"),
            ],
        )
        .await;
        assert_png(&png, 1280, 900);
        // Said even when the test passes (cargo test hides eprintln!).
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "the fleet page's screenshot ({path}): {}",
            png.display()
        );
    }
}
