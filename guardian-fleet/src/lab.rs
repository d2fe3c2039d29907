//! Starting the fleet in one command for a lab, and the NATS configuration
//! for one: a single nats-server with JetStream and its MQTT listener, and
//! the fleet service beside it. Also writes the per-device authorization
//! block a production cluster uses (see docs/fleet.md).
//!
//! Owns the lab's directory (its config, the JetStream store, the server's
//! log). May not be used for production: one node, no TLS, no replicas.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Ports and places of a lab.
#[derive(Debug, Clone)]
pub struct Lab {
    /// The lab's directory.
    pub dir: PathBuf,
    /// The NATS client port (devices and the fleet).
    pub port: u16,
    /// The MQTT listener's port.
    pub mqtt_port: u16,
    /// The server's monitoring port (`/varz`, `/jsz`).
    pub http_port: u16,
}

/// Why the lab did not start.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A file of the lab could not be written.
    #[error("write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// nats-server could not be started.
    #[error("start {program} (install nats-server 2.10 or later, or give --nats-server)")]
    Spawn {
        /// What was run.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// nats-server did not listen in time (its log says why).
    #[error("nats-server did not listen on 127.0.0.1:{port} within 10 s; see {log}")]
    NotListening {
        /// The port.
        port: u16,
        /// Its log.
        log: PathBuf,
    },
}

impl Lab {
    /// The nats-server configuration of the lab.
    pub fn config(&self) -> String {
        format!(
            "# guardian-fleet lab: one node, JetStream, MQTT listener. Not for production.\n\
             server_name: guardian-lab\n\
             listen: 127.0.0.1:{port}\n\
             http: 127.0.0.1:{http}\n\
             jetstream {{ store_dir: {store:?} }}\n\
             mqtt {{ listen: 127.0.0.1:{mqtt} }}\n\
             # A pushed policy set travels in one message.\n\
             max_payload: {max_payload}\n",
            max_payload = guardian_attest::policy_set::MAX_SET_BYTES,
            port = self.port,
            http = self.http_port,
            mqtt = self.mqtt_port,
            store = self.dir.join("jetstream"),
        )
    }

    /// Write the config and start nats-server; returns the child (the
    /// caller kills it when done).
    pub fn start(&self, nats_server: &Path) -> Result<Child, LabError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| LabError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let conf = self.dir.join("nats.conf");
        std::fs::write(&conf, self.config()).map_err(|source| LabError::Write {
            path: conf.clone(),
            source,
        })?;
        let log = self.dir.join("nats.log");
        let child = Command::new(nats_server)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn {
                program: nats_server.to_owned(),
                source,
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(LabError::NotListening {
                    port: self.port,
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child)
    }
}

/// What one device may do on the cluster: publish its own ingest and
/// answer subjects, ask the servers for a policy set (a direct get on the
/// policy bucket: sets are signed, and reading another group's harms
/// nothing), and read its own acknowledgements (its inbox), the questions
/// asked of it, the policy bucket's subjects and the answers to its own
/// direct gets.
pub fn device_permissions(id: &str) -> String {
    format!(
        "{{ publish: {{ allow: [\"guardian.in.{id}\", \"{answer}.{id}.>\", \"$JS.API.DIRECT.GET.KV_{bucket}.>\"] }}, \
         subscribe: {{ allow: [\"{inbox}.{id}.>\", \"{ask}.{id}\", \"$KV.{bucket}.>\", \"{answers}.{id}.>\"] }} }}",
        inbox = guardian_report::nats::INBOX_PREFIX,
        answers = guardian_report::wire::INBOX_PREFIX,
        ask = guardian_report::wire::ASK_PREFIX,
        answer = guardian_report::wire::ANSWER_PREFIX,
        bucket = crate::policy::POLICY_BUCKET,
    )
}

/// The authorization block for a production cluster: the fleet service may
/// do anything; each device may publish only on its own ingest subject and
/// its own answer subjects, and read only its own acknowledgements and the
/// questions asked of it (so no device hears another's challenge or answers
/// for it). Passwords are bcrypt hashes
/// (`nats server passwd` makes them).
pub fn authorization(fleet_user: (&str, &str), devices: &[(&str, &str)]) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    out.push_str(&format!(
        "    {{ user: {:?}, password: {:?} }}\n",
        fleet_user.0, fleet_user.1
    ));
    for (id, hash) in devices {
        out.push_str(&format!(
            "    {{ user: {id:?}, password: {hash:?}, permissions: {} }}\n",
            device_permissions(id)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

/// The production cluster's users when devices authenticate by client
/// certificate (`tls { verify_and_map: true }`): each device's user is its
/// certificate's subject, `CN=<device id>` (nats-server takes the subject
/// as RFC 2253 writes it), with the same permissions as in
/// [`authorization`]: publish on its own ingest and answer subjects, read
/// its own acknowledgements and questions. The fleet authenticates with its own certificate,
/// whose subject is `fleet_subject`.
pub fn authorization_by_certificate(fleet_subject: &str, devices: &[&str]) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    out.push_str(&format!("    {{ user: {fleet_subject:?} }}\n"));
    for id in devices {
        out.push_str(&format!(
            "    {{ user: \"CN={id}\", permissions: {} }}\n",
            device_permissions(id)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}
