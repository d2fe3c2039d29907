//! The device simulator: many devices in one process, each running
//! guardian's real reporting code (`guardian-report`: its own spool on disk,
//! its own NATS connection, its own reporter tasks), producing security
//! events at a set rate, for the fleet's scale and fault tests.
//!
//! Owns its devices' spool directories. May not take shortcuts the board
//! does not take: every record goes through a spool and a link.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use guardian_report::{Class, Fsync, LinkConfig, Reporter, Spool, SpoolConfig};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Devices.
    pub devices: usize,
    /// Events per second, all devices together.
    pub rate: u64,
    /// How long to produce.
    pub duration: Duration,
    /// Where the spools go (one directory per device).
    pub dir: PathBuf,
    /// NATS servers the devices report to.
    pub servers: Vec<String>,
    /// Device id prefix (ids are `<prefix>-<n>`).
    pub prefix: String,
}

/// What happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SimReport {
    /// Devices started.
    pub devices: usize,
    /// Devices connected when production ended.
    pub connected: usize,
    /// The others then, by state and last error (how many each).
    pub not_connected: std::collections::BTreeMap<String, usize>,
    /// Connections made after a device's first, all devices together.
    pub reconnects: u64,
    /// Batches sent again on a live connection because their
    /// acknowledgement was late, all devices together.
    pub resent: u64,
    /// Batches the stream was too busy to take (429), sent again after a
    /// pause, over every device.
    pub busy: u64,
    /// Times a device window was halved, over every device.
    pub window_cuts: u64,
    /// Events handed to the reporters.
    pub submitted: u64,
    /// Events the reporters' queues refused (counted, reported).
    pub queue_drops: u64,
    /// Records the stream acknowledged.
    pub acked: u64,
    /// Seconds producing.
    pub produce_secs: f64,
    /// Seconds from the start until every spool was empty (None: not
    /// within the wait).
    pub drained_secs: Option<f64>,
    /// Per device: (id, sequence numbers given).
    pub given: Vec<(String, u64)>,
}

/// Run the simulation; returns once every spool is empty or `drain_wait`
/// passed. Must run inside a multi-threaded tokio runtime.
pub async fn run(cfg: &SimConfig, drain_wait: Duration) -> std::io::Result<SimReport> {
    let mut devices = Vec::with_capacity(cfg.devices);
    for i in 0..cfg.devices {
        let id = format!("{}-{i:05}", cfg.prefix);
        let spool = Spool::open(SpoolConfig {
            dir: cfg.dir.join(&id),
            max_bytes: 16 << 20,
            segment_bytes: 256 << 10,
            fsync: Fsync::Interval(Duration::from_millis(200)),
        })
        .map_err(std::io::Error::other)?;
        let mut servers = cfg.servers.clone();
        if !servers.is_empty() {
            let k = servers.len();
            servers.rotate_left(i % k);
        }
        let mut link = LinkConfig::new(&id, servers);
        link.backoff_max = Duration::from_secs(2);
        let r = Reporter::start(spool, link).map_err(std::io::Error::other)?;
        devices.push((id, r));
        if i % 500 == 499 {
            // Spread the connection storm.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let start = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (cfg.rate as f64 * tick.as_secs_f64()).max(1.0);
    let mut owed = 0f64;
    let mut next = 0usize;
    let mut submitted = 0u64;
    let mut n = 0u64;
    let mut interval = tokio::time::interval(tick);
    while start.elapsed() < cfg.duration {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let (id, r) = &devices[next % devices.len()];
            next += 1;
            n += 1;
            let (class, verdict) = if n.is_multiple_of(10) {
                (Class::Alert, "deny")
            } else {
                (Class::Event, "allow")
            };
            let body = format!(
                r#"{{"time_ms":{},"event":"file_open","verdict":"{verdict}","mode":"enforce","hook":"lsm/file_open","pid":{},"comm":"inference","file":"/opt/models/model.onnx","device":"{id}","n":{n}}}"#,
                start.elapsed().as_millis(),
                1000 + n % 30000
            );
            r.submit(class, body.into_bytes());
            submitted += 1;
        }
    }
    let produce_secs = start.elapsed().as_secs_f64();
    let mut connected = 0;
    let mut not_connected = std::collections::BTreeMap::new();
    for (_, r) in &devices {
        let link = r.status().link;
        if link.state == guardian_report::reporter::LinkState::Connected {
            connected += 1;
        } else {
            let why = format!(
                "{:?}: {}",
                link.state,
                link.last_error.as_deref().unwrap_or("no error")
            );
            *not_connected.entry(why).or_insert(0) += 1;
        }
    }
    let deadline = Instant::now() + drain_wait;
    let drained_secs = loop {
        let waiting = devices.iter().filter(|(_, r)| !r.drained()).count();
        if waiting == 0 {
            break Some(start.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut report = SimReport {
        devices: devices.len(),
        connected,
        not_connected,
        reconnects: 0,
        resent: 0,
        busy: 0,
        window_cuts: 0,
        submitted,
        queue_drops: 0,
        acked: 0,
        produce_secs,
        drained_secs,
        given: Vec::with_capacity(devices.len()),
    };
    for (id, r) in devices {
        let st = r.status();
        report.queue_drops += st.link.queue_drops;
        report.acked += st.link.records_acked;
        report.reconnects += st.link.reconnects;
        report.resent += st.link.resent;
        report.busy += st.link.busy;
        report.window_cuts += st.link.window_cuts;
        report.given.push((id, st.spool.next_seq - 1));
        r.shutdown().await;
    }
    Ok(report)
}
