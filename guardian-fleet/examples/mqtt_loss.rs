//! Measures what DESIGN.md's device link (MQTT 3.1.1, QoS 1, into NATS's
//! MQTT listener) loses when the node leading the JetStream stream dies:
//! records the broker acknowledged (PUBACK) that the stream never stored.
//! The same run over the NATS link (`guardian-report`, which waits for the
//! stream's own acknowledgement) is `tests/cluster.rs`; this is the
//! measurement behind docs/fleet.md's choice of the NATS link.
//!
//!   cargo run --release -p guardian-fleet --example mqtt_loss [RUNS] [MESSAGES]
//!
//! Three nats-server nodes on loopback, each with JetStream and an MQTT
//! listener; a stream (R3) capturing `guardian.mqtt.>`; an MQTT client on
//! one node publishes MESSAGES QoS 1 messages (a sequence number each) to
//! `guardian/mqtt/dev`; a third of the way in, the stream leader's node is
//! killed (SIGKILL, never the client's node); then every PUBACKed sequence
//! number is looked for in the stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../guardian-report/tests/support/nats.rs"]
mod support;
use support::{free_port, nats_server};

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use futures_util::StreamExt;

fn remaining_len(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![kind];
    remaining_len(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn str16(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Publish `n` QoS 1 messages; returns the sequence numbers PUBACKed.
/// `at_third` runs once, a third of the way in.
fn mqtt_publish(port: u16, n: u32, mut at_third: impl FnMut()) -> BTreeSet<u32> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut body = Vec::new();
    str16(b"MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    str16(b"guardian-mqtt-loss", &mut body);
    s.write_all(&packet(0x10, &body)).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK");
    let mut reader = s.try_clone().unwrap();
    let acks = std::thread::spawn(move || {
        let mut acked = BTreeSet::new();
        let mut b = [0u8; 4];
        reader
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        while reader.read_exact(&mut b).is_ok() {
            if b[0] == 0x40 {
                acked.insert(u32::from(u16::from_be_bytes([b[2], b[3]])));
            }
        }
        acked
    });
    for seq in 1..=n {
        let mut body = Vec::new();
        str16(b"guardian/mqtt/dev", &mut body);
        // The packet id is the sequence number (n < 65,536).
        body.extend_from_slice(&(seq as u16).to_be_bytes());
        body.extend_from_slice(seq.to_string().as_bytes());
        if s.write_all(&packet(0x32, &body)).is_err() {
            break;
        }
        if seq == n / 3 {
            at_third();
        }
        if seq % 50 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let _ = s.shutdown(std::net::Shutdown::Both);
    acks.join().unwrap()
}

struct Node(Child, String, u16, u16);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let n: u32 = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000)
        .min(65_000);
    let mut total_lost = 0usize;
    let mut total_acked = 0usize;
    for run in 1..=runs {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut nodes = Vec::new();
        for (i, (p, c, m)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c, _))| format!("nats-route://127.0.0.1:{c}"))
                .collect();
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{p}\njetstream {{ store_dir: {:?} }}\n\
                     mqtt {{ listen: 127.0.0.1:{m}, stream_replicas: 3 }}\n\
                     cluster {{ name: mqtt-loss, listen: 127.0.0.1:{c}, routes: [{}] }}\n",
                    dir.path().join(&name),
                    routes.join(", ")
                ),
            )
            .unwrap();
            let child = Command::new(nats_server())
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            nodes.push(Node(child, name, *p, *m));
        }
        for nd in &nodes {
            while TcpStream::connect(("127.0.0.1", nd.2)).is_err() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let urls: Vec<String> = nodes
            .iter()
            .map(|nd| format!("nats://127.0.0.1:{}", nd.2))
            .collect();
        let client = guardian_fleet::service::connect(&urls, "mqtt-loss")
            .await
            .unwrap();
        let js = jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match js
                .get_or_create_stream(jetstream::stream::Config {
                    name: "MQTT_LOSS".into(),
                    subjects: vec!["guardian.mqtt.>".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await
            {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "stream: {e}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        };
        let mut info = stream.clone();
        let leader = info
            .info()
            .await
            .unwrap()
            .cluster
            .clone()
            .unwrap()
            .leader
            .unwrap();
        let li = nodes.iter().position(|nd| nd.1 == leader).unwrap();
        // The client goes to a node that is not the leader.
        let ci = (li + 1) % 3;
        let mqtt_port = nodes[ci].3;
        let mut victim = Some(nodes.remove(li));
        let acked = tokio::task::spawn_blocking(move || {
            mqtt_publish(mqtt_port, n, || {
                if let Some(mut v) = victim.take() {
                    v.0.kill().unwrap();
                    v.0.wait().unwrap();
                }
            })
        })
        .await
        .unwrap();
        // What the stream holds (after the survivors settle).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let consumer = loop {
            match stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
                .await
            {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        let mut msgs = consumer.messages().await.unwrap();
        let mut stored = BTreeSet::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(3), msgs.next()).await
        {
            if let Ok(seq) = std::str::from_utf8(&m.payload).unwrap_or("").parse::<u32>() {
                stored.insert(seq);
            }
        }
        // Cross-check the count against the stream's own state.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let in_stream = info.info().await.map(|i| i.state.messages).unwrap_or(0);
        let lost: Vec<u32> = acked
            .iter()
            .filter(|s| !stored.contains(s))
            .copied()
            .collect();
        println!(
            "run {run}: {} published, {} PUBACKed, {} stored ({} by the stream's count), {} PUBACKed but not stored (first {:?})",
            n,
            acked.len(),
            stored.len(),
            in_stream,
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        total_lost += lost.len();
        total_acked += acked.len();
        for mut nd in nodes {
            let _ = nd.0.kill();
            let _ = nd.0.wait();
        }
    }
    println!("total: {total_acked} PUBACKed, {total_lost} of them not in the stream");
}
