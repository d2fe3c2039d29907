//! An attack tool for the boot test: put a file as a group's value in the
//! policy bucket directly, skipping every check `guardian-fleet policy
//! publish` makes, as someone with write access to the broker (or a
//! replayed old message) would. Devices must refuse what it puts there
//! unless it is a newer set they would take anyway.
//!
//!     cargo run -p guardian-fleet --example replay_set -- NATS_URL GROUP FILE

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, group, file] = args.as_slice() else {
        eprintln!("usage: replay_set NATS_URL GROUP FILE");
        std::process::exit(2);
    };
    let bytes = std::fs::read(file).expect("reading the set");
    let client = async_nats::connect(url.as_str()).await.expect("connecting");
    let js = async_nats::jetstream::new(client);
    let kv = guardian_fleet::policy::bucket(&js, 1)
        .await
        .expect("the policy bucket");
    let revision = kv.put(group, bytes.into()).await.expect("putting");
    println!("put {file} as group {group}'s value, revision {revision}");
}
