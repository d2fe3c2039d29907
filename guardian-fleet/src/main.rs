//! `guardian-fleet`: parse the command line, install the logger, dispatch,
//! map errors to an exit code. The work is in the library.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use guardian_fleet::{query, service};

/// guardian's fleet service: stores every device's reports exactly once on
/// NATS JetStream and shows the fleet.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// NATS servers (any node of the cluster; comma-separated or repeated).
    #[arg(
        long,
        env = "GUARDIAN_FLEET_NATS",
        default_value = "nats://127.0.0.1:4222",
        value_delimiter = ',',
        global = true
    )]
    nats: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service: consume the ingest stream (shared with any other
    /// instance), store each record once, keep device state.
    Serve {
        /// Replicas for the streams and bucket it creates (3 for a
        /// three-node cluster, 1 for a lab).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// A batch not acknowledged by an instance in this time goes to
        /// another instance (how fast a dead instance's work is taken over).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ack_wait: Duration,
        /// This instance's name in logs and in the server's connection list.
        #[arg(long, default_value = "fleet-1")]
        instance: String,
        /// How long stored records are kept.
        #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
        retention: Duration,
        /// A device that has not reported for this long is a `silent`
        /// alert (devices send a status summary every
        /// `[report] status_interval_secs`).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        silent_after: Duration,
        /// Also POST every alert, as JSON, to this http:// URL (retried
        /// until it answers 2xx; shared by every instance).
        #[arg(long)]
        webhook: Option<String>,
        /// Serve the operator's read-only web page on http://ADDR/ (the
        /// fleet, and each device on /device/ID) and Prometheus metrics on
        /// http://ADDR/metrics (for example 127.0.0.1:9464).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        attest: Box<AttestArgs>,
        #[command(flatten)]
        enrol: Box<EnrolArgs>,
    },
    /// Enrolled devices: the AK the fleet trusts for each.
    Enrol {
        #[command(subcommand)]
        cmd: EnrolCmd,
    },
    /// Acknowledge a device's open finding (or `all`): the operator has
    /// looked at it; the next round no longer fails on it.
    Ack {
        /// The device id.
        device: String,
        /// The finding's id (as `guardian-fleet device` shows it), or `all`.
        finding: String,
    },
    /// A lab in one command: a single nats-server (JetStream, MQTT listener)
    /// in DIR and the service beside it, until Ctrl-C. Not for production
    /// (one node, no TLS): see docs/fleet.md for a three-node cluster.
    Lab {
        /// The lab's directory (config, JetStream store, server log).
        #[arg(long, default_value = "guardian-fleet-lab")]
        dir: std::path::PathBuf,
        /// NATS client port.
        #[arg(long, default_value_t = 4222)]
        port: u16,
        /// MQTT listener port.
        #[arg(long, default_value_t = 1883)]
        mqtt_port: u16,
        /// Monitoring port.
        #[arg(long, default_value_t = 8222)]
        http_port: u16,
        /// The nats-server binary (2.10 or later).
        #[arg(long, default_value = "nats-server")]
        nats_server: std::path::PathBuf,
        /// Serve the operator's page and /metrics on http://ADDR/.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        attest: Box<AttestArgs>,
        #[command(flatten)]
        enrol: Box<EnrolArgs>,
    },
    /// Simulate devices (each running guardian's real reporter: its own
    /// spool, its own connection), producing events at RATE for DURATION;
    /// then audit the store: every record once, and the latency.
    Simulate {
        /// Devices.
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Events per second, all devices together.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// How long to produce.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Where the devices' spools go.
        #[arg(long, default_value = "guardian-sim")]
        dir: std::path::PathBuf,
        /// Device id prefix.
        #[arg(long, default_value = "sim")]
        prefix: String,
        /// How long to wait for the spools to drain after producing.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        drain_wait: Duration,
    },
    /// Policy sets for device groups: publish a signed set (made with
    /// `guardian policy pack`), list what is published and who drifts.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Every device: last seen, records, alerts, drops, duplicates, and
    /// the policy set its last verified quote shows in force (DRIFT when
    /// not its group's published set).
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Alerts (tamper attempts, the guard, drops, silence), oldest first.
    Alerts {
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
        /// How far back (e.g. 10m, 2h, 7days).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One device: its state, its alerts and its records of the last
    /// `--since`.
    Device {
        /// The device id.
        device: String,
        /// How far back for alerts and records.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One device's stored records.
    Events {
        /// The device id.
        #[arg(long)]
        device: String,
        /// How far back (e.g. 10m, 2h, 7days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        since: Duration,
        /// JSON lines (one record each) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Attestation over the link (`serve`).
#[derive(clap::Args)]
struct AttestArgs {
    /// Attest every enrolled device this often (a fresh nonce, a quote by
    /// its TPM, the verdict); `0s` turns attestation off on this instance.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    attest_every: Duration,
    /// A device that has not answered a challenge in this time is
    /// `unreachable` (never `trusted`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    answer_timeout: Duration,
    /// Challenges in flight at once on this instance.
    #[arg(long, default_value_t = 64)]
    attest_concurrency: usize,
    /// PCRs every quote must cover, exactly (repeat; default: 14, where
    /// guardian measures).
    #[arg(long = "pcr")]
    pcrs: Vec<u32>,
    /// A public key manifests must be signed by (PEM; repeat).
    #[arg(long = "manifest-key")]
    manifest_keys: Vec<std::path::PathBuf>,
    /// A golden manifest every device must run (pinned: an older serial
    /// fails).
    #[arg(long)]
    golden_manifest: Option<std::path::PathBuf>,
    /// Fail a device on which no guard ran this boot.
    #[arg(long)]
    require_guard: bool,
}

impl AttestArgs {
    fn config(self) -> anyhow::Result<Option<guardian_fleet::attest::AttestConfig>> {
        if self.attest_every.is_zero() {
            return Ok(None);
        }
        let manifest_keys = guardian_attest::signing::TrustedKey::load_all(&self.manifest_keys)
            .context("loading --manifest-key")?;
        let golden = match &self.golden_manifest {
            Some(p) => Some(
                std::fs::read(p)
                    .with_context(|| format!("reading --golden-manifest {}", p.display()))?,
            ),
            None => None,
        };
        let pcrs = if self.pcrs.is_empty() {
            vec![guardian_attest::manifest::DEFAULT_PCR]
        } else {
            self.pcrs
        };
        for p in &pcrs {
            guardian_attest::manifest::check_pcr(*p)
                .map_err(|m| anyhow::anyhow!("--pcr {p}: {m}"))?;
        }
        if manifest_keys.is_empty() {
            log::warn!(
                "attestation: no --manifest-key given: every device with a signed manifest fails the manifest check"
            );
        }
        Ok(Some(guardian_fleet::attest::AttestConfig {
            every: self.attest_every,
            answer_timeout: self.answer_timeout,
            concurrency: self.attest_concurrency,
            pcrs,
            manifest_keys,
            golden,
            require_guard: self.require_guard,
        }))
    }
}

/// Enrolment over the link (`serve`).
#[derive(clap::Args)]
struct EnrolArgs {
    /// A manufacturer CA certificate (PEM; roots and intermediates; repeat):
    /// with at least one, this instance enrols the devices that report and
    /// are not enrolled (EK certificate chain, credential activation).
    #[arg(long = "ek-ca")]
    ek_cas: Vec<std::path::PathBuf>,
    /// Enrol without an operator's approval a device whose EK certificate
    /// was issued by exactly this name (RFC 4514, as `enrol pending`
    /// shows it; repeat).
    #[arg(long = "enrol-issuer")]
    issuers: Vec<String>,
    /// Enrol without an operator's approval the EK certificates whose
    /// serial numbers (hex, one per line) this file lists.
    #[arg(long = "enrol-serials")]
    serials: Option<std::path::PathBuf>,
}

impl EnrolArgs {
    fn config(
        self,
        answer_timeout: Duration,
    ) -> anyhow::Result<Option<guardian_fleet::enrol::EnrolConfig>> {
        if self.ek_cas.is_empty() {
            if !self.issuers.is_empty() || self.serials.is_some() {
                anyhow::bail!("--enrol-issuer and --enrol-serials need --ek-ca");
            }
            return Ok(None);
        }
        let cas = guardian_attest::enrol::load_ca_certs(&self.ek_cas).context("loading --ek-ca")?;
        let serials = match &self.serials {
            Some(p) => guardian_fleet::enrol::Preauthorised::read_serials(p)?,
            None => Default::default(),
        };
        Ok(Some(guardian_fleet::enrol::EnrolConfig {
            cas,
            preauthorised: guardian_fleet::enrol::Preauthorised {
                issuers: self.issuers.into_iter().collect(),
                serials,
            },
            answer_timeout,
        }))
    }
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Publish FILE, a signed policy set, as GROUP's set: checked first
    /// as a device would (signature by a --policy-key, the document, the
    /// group, a version above the one published), then stored in the
    /// replicated bucket the devices read. Devices online take it at once;
    /// the others when they return.
    Publish {
        /// The group the set is for (must be the one the set names).
        #[arg(long)]
        group: String,
        /// A public key policy sets are signed by (PEM; repeat): the
        /// fleet's copy of the devices' `[policy] trusted_keys`.
        #[arg(long = "policy-key", required = true)]
        policy_keys: Vec<std::path::PathBuf>,
        /// Replicas of the policy bucket, when this makes it (3 for a
        /// three-node cluster).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// The signed set (`guardian policy pack -o FILE`).
        file: std::path::PathBuf,
    },
    /// Every group's published set, and each attested device's set in
    /// force against it.
    List {
        /// Verify each published set with these keys (PEM; repeat);
        /// without, the sets are shown as stored, not vouched for.
        #[arg(long = "policy-key")]
        policy_keys: Vec<std::path::PathBuf>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum EnrolCmd {
    /// Trust the AK of an enrolment record made on files (`guardian enrol
    /// finish` writes one) for DEVICE; attestation starts at the next
    /// round.
    Import {
        /// The device id (as it reports).
        device: String,
        /// The enrolment record (JSON).
        file: std::path::PathBuf,
    },
    /// Every enrolled device and how its AK came to be trusted.
    List,
    /// Devices that report and are not enrolled: waiting for approval,
    /// refused (why), unreachable.
    Pending,
    /// Let DEVICE (waiting for approval) be enrolled at the next round;
    /// its EK chain and credential activation are still checked.
    Approve {
        /// The device id.
        device: String,
    },
    /// Forget a device's enrolment (its attestation stops; it is enrolled
    /// again only once approved).
    Remove {
        /// The device id.
        device: String,
    },
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("guardian-fleet: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guardian-fleet: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve {
            replicas,
            ack_wait,
            instance,
            retention,
            silent_after,
            webhook,
            listen,
            attest,
            enrol,
        } => {
            let mut cfg = service::ServiceConfig::new(cli.nats);
            cfg.enrol = enrol.config(attest.answer_timeout)?.map(Arc::new);
            cfg.attest = attest.config()?.map(Arc::new);
            cfg.replicas = replicas;
            cfg.ack_wait = ack_wait;
            cfg.retention = retention;
            cfg.silent_after = silent_after;
            cfg.webhook = webhook;
            cfg.listen = listen;
            let counters = Arc::new(service::Counters::default());
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            service::serve(cfg, &instance, counters, shutdown)
                .await
                .context("serving")?;
        }
        Cmd::Lab {
            dir,
            port,
            mqtt_port,
            http_port,
            nats_server,
            listen,
            attest,
            enrol,
        } => {
            let lab = guardian_fleet::lab::Lab {
                dir,
                port,
                mqtt_port,
                http_port,
            };
            let mut child = lab
                .start(&nats_server)
                .context("starting the lab's nats-server")?;
            let url = format!("nats://127.0.0.1:{port}");
            eprintln!(
                "guardian-fleet lab: NATS {url} (MQTT 127.0.0.1:{mqtt_port}, monitoring http://127.0.0.1:{http_port}), \
                 state in {}; devices: [report] servers = [\"{url}\"]; see the fleet with: guardian-fleet --nats {url} status",
                lab.dir.display()
            );
            let mut cfg = service::ServiceConfig::new(vec![url]);
            cfg.listen = listen;
            cfg.enrol = enrol.config(attest.answer_timeout)?.map(Arc::new);
            cfg.attest = attest.config()?.map(Arc::new);
            let counters = Arc::new(service::Counters::default());
            // Ctrl-C or SIGTERM: the lab's nats-server goes with it.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            let shutdown = async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            };
            let result = service::serve(cfg, "lab", counters, shutdown).await;
            let _ = child.kill();
            let _ = child.wait();
            result.context("serving")?;
        }
        Cmd::Simulate {
            devices,
            rate,
            duration,
            dir,
            prefix,
            drain_wait,
        } => {
            let cfg = guardian_fleet::sim::SimConfig {
                devices,
                rate,
                duration,
                dir,
                servers: cli.nats.clone(),
                prefix: prefix.clone(),
            };
            let report = guardian_fleet::sim::run(&cfg, drain_wait)
                .await
                .context("simulating")?;
            // The fleet stores asynchronously: wait until the store holds
            // what the devices gave (or a minute passes).
            let client = service::connect(&cli.nats, "guardian-fleet simulate").await?;
            let js = async_nats::jetstream::new(client);
            let want: u64 = report.given.iter().map(|g| g.1).sum();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let audit = loop {
                let a = query::audit(&js).await?;
                let have: u64 = report
                    .given
                    .iter()
                    .map(|(id, _)| a.stored.get(id).map(|s| s.len() as u64).unwrap_or(0))
                    .sum();
                if have >= want || std::time::Instant::now() > deadline {
                    break a;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            let mut missing = 0u64;
            for (id, n) in &report.given {
                let got = audit.stored.get(id).map(|s| s.len() as u64).unwrap_or(0);
                missing += n.saturating_sub(got);
            }
            let mut lat = audit.latency_ms.clone();
            lat.sort_unstable();
            let pct = |p: f64| {
                lat.get(((lat.len() as f64 - 1.0) * p) as usize)
                    .copied()
                    .unwrap_or(0)
            };
            let out = serde_json::json!({
                "devices": report.devices, "connected_at_end": report.connected,
                "not_connected_at_end": report.not_connected, "reconnects": report.reconnects,
                "resent": report.resent,
                "busy": report.busy,
                "window_cuts": report.window_cuts,
                "submitted": report.submitted, "queue_drops": report.queue_drops,
                "acked_by_stream": report.acked, "produce_secs": report.produce_secs,
                "drained_secs": report.drained_secs,
                "ingest_rate_per_s": report.drained_secs.map(|d| report.acked as f64 / d),
                "given": want, "stored": want - missing, "missing": missing, "stored_twice": audit.doubled,
                "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": lat.last().copied().unwrap_or(0)},
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            if missing > 0 || audit.doubled > 0 {
                anyhow::bail!(
                    "{missing} record(s) missing and {} stored twice",
                    audit.doubled
                );
            }
        }
        Cmd::Enrol { cmd } => {
            let client = service::connect(&cli.nats, "guardian-fleet enrol").await?;
            let js = async_nats::jetstream::new(client);
            match cmd {
                EnrolCmd::Import { device, file } => {
                    let e = guardian_fleet::attest::import_enrolment(&js, &device, &file).await?;
                    println!(
                        "enrolled {device}: AK {} ({})",
                        e.ak_name,
                        if e.insecure_tofu {
                            "INSECURE: trusted on first use".to_owned()
                        } else {
                            format!("EK certified by {}", e.ek_issuer.as_deref().unwrap_or("?"))
                        }
                    );
                }
                EnrolCmd::List => {
                    for (device, e) in guardian_fleet::attest::enrolled(&js).await? {
                        println!(
                            "{device:<24} AK {}  {}  enrolled {}",
                            e.ak_name,
                            if e.insecure_tofu {
                                "INSECURE trust on first use".to_owned()
                            } else {
                                format!("EK issuer {}", e.ek_issuer.as_deref().unwrap_or("?"))
                            },
                            e.enrolled_at
                        );
                    }
                }
                EnrolCmd::Pending => {
                    for p in guardian_fleet::enrol::pending(&js).await? {
                        println!(
                            "{:<24} {:<11} EK issuer {:?} serial {} — {}",
                            p.device,
                            p.state,
                            p.ek_issuer,
                            if p.ek_serial.is_empty() {
                                "?"
                            } else {
                                &p.ek_serial
                            },
                            p.reason
                        );
                    }
                }
                EnrolCmd::Approve { device } => {
                    let by = std::env::var("USER").unwrap_or_else(|_| "the operator".to_owned());
                    guardian_fleet::enrol::approve(&js, &device, &by).await?;
                    println!("{device}: approved; enrolled at the next round");
                }
                EnrolCmd::Remove { device } => {
                    let by = std::env::var("USER").unwrap_or_else(|_| "the operator".to_owned());
                    guardian_fleet::enrol::remove(&js, &device, &by).await?;
                    println!(
                        "{device}: enrolment removed; attestation stops; it is enrolled again only once approved"
                    );
                }
            }
        }
        Cmd::Ack { device, finding } => {
            let client = service::connect(&cli.nats, "guardian-fleet ack").await?;
            let js = async_nats::jetstream::new(client);
            let n = guardian_fleet::attest::acknowledge(&js, &device, &finding).await?;
            println!("{device}: {n} finding(s) acknowledged");
        }
        Cmd::Policy { cmd } => {
            let client = service::connect(&cli.nats, "guardian-fleet policy").await?;
            let js = async_nats::jetstream::new(client);
            match cmd {
                PolicyCmd::Publish {
                    group,
                    policy_keys,
                    replicas,
                    file,
                } => {
                    let keys = guardian_attest::signing::TrustedKey::load_all(&policy_keys)
                        .context("loading --policy-key")?;
                    let bytes = std::fs::read(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let kv = guardian_fleet::policy::bucket(&js, replicas).await?;
                    let p = guardian_fleet::policy::publish(
                        &kv,
                        &group,
                        &file.display().to_string(),
                        &bytes,
                        &keys,
                    )
                    .await?;
                    println!(
                        "published group {} version {} sha256 {} signed by {} ({} policies: {}), revision {}",
                        p.group,
                        p.version,
                        p.digest,
                        p.signer,
                        p.policies.len(),
                        p.policies.join(", "),
                        p.revision
                    );
                }
                PolicyCmd::List { policy_keys, json } => {
                    let keys = guardian_attest::signing::TrustedKey::load_all(&policy_keys)
                        .context("loading --policy-key")?;
                    let sets = guardian_fleet::policy::published(&js, &keys).await?;
                    let drift = drift_by_device(&js).await?;
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&serde_json::json!({
                                "groups": sets, "devices": drift,
                            }))?
                        );
                    } else {
                        for p in sets.values() {
                            println!(
                                "group {:<16} version {:<5} sha256 {}  {}  created {}  policies: {}",
                                p.group,
                                p.version,
                                p.digest,
                                if p.signer.is_empty() {
                                    "signature not checked (no --policy-key)".to_owned()
                                } else {
                                    format!("signed by {}", p.signer)
                                },
                                p.created,
                                p.policies.join(", ")
                            );
                            if let Some(w) = &p.warning {
                                println!("  WARNING: {w}");
                            }
                        }
                        if sets.is_empty() {
                            println!("no policy set published");
                        }
                        for (device, d) in &drift {
                            println!("  {device:<24} {:<11} {}", d.word(), d.describe());
                        }
                    }
                }
            }
        }
        Cmd::Status { json } => {
            let client = service::connect(&cli.nats, "guardian-fleet status").await?;
            let js = async_nats::jetstream::new(client);
            let devices = query::devices(&js).await?;
            let drift = drift_by_device(&js).await?;
            if json {
                let mut list = Vec::with_capacity(devices.len());
                for d in &devices {
                    let mut v = serde_json::to_value(d)?;
                    if let (Some(o), Some(p)) = (v.as_object_mut(), drift.get(&d.device)) {
                        o.insert("policy_set".into(), serde_json::to_value(p)?);
                    }
                    list.push(v);
                }
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!(
                    "{}",
                    guardian_fleet::query::table(&devices, &drift, now_ms())
                );
            }
        }
        Cmd::Alerts {
            device,
            since,
            json,
        } => {
            let client = service::connect(&cli.nats, "guardian-fleet alerts").await?;
            let js = async_nats::jetstream::new(client);
            let from = std::time::SystemTime::now() - since;
            for a in query::alerts(&js, device.as_deref(), from).await? {
                if json {
                    println!("{}", serde_json::to_string(&a)?);
                } else {
                    println!(
                        "{:>14}  {:<24} {:<15} {}",
                        a.since_ms, a.device, a.kind, a.what
                    );
                }
            }
        }
        Cmd::Device {
            device,
            since,
            json,
        } => {
            let client = service::connect(&cli.nats, "guardian-fleet device").await?;
            let js = async_nats::jetstream::new(client);
            let from = std::time::SystemTime::now() - since;
            let state = query::devices(&js)
                .await?
                .into_iter()
                .find(|d| d.device == device);
            let alerts = query::alerts(&js, Some(&device), from).await?;
            let stored = query::events(&js, &device, from).await?;
            let attestation = query::attestations(&js)
                .await?
                .into_iter()
                .find(|a| a.device == device);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "state": state,
                        "attestation": attestation,
                        "alerts": alerts,
                        "records": stored.iter().flat_map(|s| &s.records).collect::<Vec<_>>(),
                    }))?
                );
            } else {
                print!(
                    "{}",
                    guardian_fleet::attest::render(attestation.as_ref(), now_ms())
                );
                print!(
                    "{}",
                    query::device_report(state.as_ref(), &alerts, &stored, now_ms())
                );
            }
        }
        Cmd::Events {
            device,
            since,
            json,
        } => {
            let client = service::connect(&cli.nats, "guardian-fleet events").await?;
            let js = async_nats::jetstream::new(client);
            let from = std::time::SystemTime::now() - since;
            for stored in query::events(&js, &device, from).await? {
                for r in &stored.records {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"device": stored.device, "epoch": stored.epoch, "seq": r.seq,
                                "time_ms": r.time_ms, "class": r.class, "body": r.body})
                        );
                    } else {
                        println!(
                            "{:>8}  {:<11}  {}  {}",
                            r.seq,
                            r.class,
                            r.time_ms,
                            r.body.get()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Every attested device's policy set against its group's published one.
async fn drift_by_device(
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<std::collections::BTreeMap<String, guardian_fleet::policy::Drift>> {
    let sets = guardian_fleet::policy::published(js, &[]).await?;
    let attestations = match query::attestations(js).await {
        Ok(a) => a,
        Err(e) => {
            // No attestation yet (or unreadable): no device's set is known.
            log::warn!("policy sets in force unknown: {e}");
            Vec::new()
        }
    };
    Ok(attestations
        .iter()
        .map(|a| {
            (
                a.device.clone(),
                guardian_fleet::policy::device_drift(&sets, a),
            )
        })
        .collect())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
