//! The ADS server's bounds against the real `weir xds`, with a real gRPC client (Python grpcio and
//! Envoy's generated stubs, `python/ads_client.py`): streams per connection and in all, names per
//! subscription per type, names over 1 KiB, RESOURCE_EXHAUSTED naming the flag, the metric, a
//! refused stream's state dropped, the memory of a client that tries to subscribe millions of names,
//! and a proxyless gRPC client served next to all that.

mod xds_support;

use std::time::{Duration, Instant};

use integration_tests::{free_port, http_get, metric, wait_for};
use serde_json::{json, Value};
use xds_support::*;

/// `python/ads_client.py` on `weir xds`'s gRPC port.
struct Ads(PyDriver);

/// How a stream ended: its gRPC status code name and message.
#[derive(Debug)]
struct Ended {
    code: Option<String>,
    details: String,
}

impl Ended {
    fn of(v: &Value) -> Ended {
        Ended { code: v["code"].as_str().map(str::to_string), details: v["details"].as_str().unwrap_or("").into() }
    }

    /// RESOURCE_EXHAUSTED with `text` in the message.
    fn assert_exhausted(&self, text: &str) {
        assert_eq!(self.code.as_deref(), Some("RESOURCE_EXHAUSTED"), "{self:?}");
        assert!(self.details.contains(text), "the message says {text:?}: {self:?}");
    }
}

impl Ads {
    fn start(grpc_port: u16) -> Ads {
        Ads(PyDriver::start("ads_client.py", &[&format!("127.0.0.1:{grpc_port}")], &[]))
    }

    fn ask(&mut self, cmd: Value) -> Value {
        self.0.ask(cmd)
    }

    /// A new channel: its own HTTP/2 connection.
    fn channel(&mut self, name: &str) {
        assert_eq!(self.ask(json!({"channel": name}))["ok"], true);
    }

    /// Opens stream `name` on `channel` subscribing `n` cluster names from `from` on: Ok once its
    /// first response came, or how it ended.
    fn open(&mut self, name: &str, channel: &str, protocol: &str, from: u64, n: u64) -> Result<(), Ended> {
        self.open_with(name, json!({"open": name, "channel": channel, "protocol": protocol, "from": from, "names": n}))
    }

    fn open_with(&mut self, name: &str, cmd: Value) -> Result<(), Ended> {
        let v = self.ask(cmd);
        if v["response"] == true {
            return Ok(());
        }
        assert!(v["code"].is_string(), "stream {name}: neither a response nor an end in 20 s: {v}");
        Err(Ended::of(&v))
    }

    fn send(&mut self, name: &str, from: u64, n: u64) {
        assert_eq!(self.ask(json!({"send": name, "from": from, "names": n}))["sent"], true);
    }

    /// Reads stream `name` until it ends.
    fn end(&mut self, name: &str) -> Ended {
        Ended::of(&self.ask(json!({"end": name})))
    }

    fn close(&mut self, name: &str) {
        assert_eq!(self.ask(json!({"close": name}))["closed"], true);
    }
}

fn start(dir: &std::path::Path, backends: &[(&str, u16)], extra: &[&str]) -> Weir {
    let manifests = dir.join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("planners.yaml"), planner_manifests(backends, free_port())).unwrap();
    start_weir("weir-xds", dir, &manifests, &dir.join("state.db"), extra)
}

fn metrics(weir: &Weir) -> String {
    http_get(&format!("{}/metrics", weir.admin)).unwrap()
}

fn hits(weir: &Weir, limit: &str) -> f64 {
    metric(&metrics(weir), "weir_xds_limits_hit_total", &[("limit", limit)]).unwrap_or(-1.0)
}

/// Waits until weir holds `n` ADS streams (`weir_xds_connected_clients`).
fn wait_streams(weir: &Weir, n: f64) {
    wait_for(&format!("{n} open ADS streams"), Duration::from_secs(10), || {
        (metric(&metrics(weir), "weir_xds_connected_clients", &[]) == Some(n)).then_some(())
    });
}

#[test]
fn streams_per_connection_in_all_and_names_per_type_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let blue = free_port();
    let _backends = start_backends(dir.path(), &[("blue", blue)]);
    let weir = start(
        dir.path(),
        &[("blue", blue)],
        &["--xds-max-streams-per-connection", "3", "--xds-max-streams", "5", "--xds-max-names-per-type", "100"],
    );
    // Every bound's counter is there from the start, at 0.
    for limit in ["streams", "streams_per_connection", "names_per_type", "name_length"] {
        assert_eq!(hits(&weir, limit), 0.0, "{limit}: {}", metrics(&weir));
    }
    let mut ads = Ads::start(weir.grpc_port);

    // Per connection: three streams on connection a are served, a fourth is refused.
    ads.channel("a");
    for s in ["a1", "a2", "a3"] {
        ads.open(s, "a", "delta", 0, 1).unwrap_or_else(|e| panic!("{s} is within the caps: {e:?}"));
    }
    ads.open("a4", "a", "delta", 0, 1).unwrap_err().assert_exhausted(
        "this connection already holds 3 ADS streams, weir xDS's cap per connection (--xds-max-streams-per-connection)",
    );
    assert_eq!(hits(&weir, "streams_per_connection"), 1.0);
    // In all: two more on connection b make five; a sixth, on a third connection, is refused.
    ads.channel("b");
    ads.open("b1", "b", "sotw", 0, 1).unwrap();
    ads.open("b2", "b", "delta", 0, 1).unwrap();
    ads.channel("c");
    ads.open("c1", "c", "delta", 0, 1)
        .unwrap_err()
        .assert_exhausted("holds 5 ADS streams, its cap (--xds-max-streams)");
    assert_eq!(hits(&weir, "streams"), 1.0);
    wait_streams(&weir, 5.0);
    // A closed stream gives its place back, to another connection too.
    ads.close("a1");
    wait_streams(&weir, 4.0);
    ads.open("c2", "c", "delta", 0, 1).expect("a freed slot is given back");
    for s in ["a2", "a3", "b1", "c2"] {
        ads.close(s);
    }
    wait_streams(&weir, 1.0);

    // Names per type: 101 at once (delta, SotW), or 60, then 40 more (100: still served), then 1
    // more, end the stream with the cap in the message.
    ads.channel("d");
    ads.open("d1", "d", "delta", 0, 101)
        .unwrap_err()
        .assert_exhausted("weir xDS: the cluster subscription of this stream would hold 101 names; at most 100 per type (--xds-max-names-per-type); the stream is closed");
    ads.open("d2", "d", "sotw", 0, 101).unwrap_err().assert_exhausted("would hold 101 names; at most 100 per type");
    ads.open("d3", "d", "delta", 0, 60).expect("60 names");
    ads.send("d3", 60, 40);
    ads.send("d3", 100, 1);
    ads.end("d3").assert_exhausted("would hold 101 names; at most 100 per type (--xds-max-names-per-type)");
    assert_eq!(hits(&weir, "names_per_type"), 3.0, "{}", metrics(&weir));
    // A name over 1 KiB.
    let long = json!({"open": "d4", "channel": "d", "protocol": "delta", "from": 0, "names": 1, "long": 1025});
    ads.open_with("d4", long).unwrap_err().assert_exhausted("1025 bytes; at most 1024");
    assert_eq!(hits(&weir, "name_length"), 1.0);
    assert!(weir.proc.log().contains("went past a bound"), "logged");

    // The refused streams' state is gone: only b2 is held (/config_dump lists every stream held).
    wait_streams(&weir, 1.0);
    let dump: Value = serde_json::from_str(&http_get(&format!("{}/config_dump", weir.admin)).unwrap()).unwrap();
    let clients = dump["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "only b2 is held: {clients:?}");
    assert_eq!(
        (clients[0]["node_id"].as_str(), clients[0]["delta"].as_bool()),
        (Some("caps"), Some(true)),
        "{clients:?}"
    );

    // A proxyless gRPC client is served next to b2 (two streams of five).
    let mut client = Client::start("xds:///shop", Some(&grpc_bootstrap(dir.path(), weir.grpc_port, "proxyless")));
    client.wait_ready();
    let t = client.call(100, None);
    assert_eq!(t.counts.get("blue"), Some(&100), "{t:?}");
    wait_streams(&weir, 2.0);
    let all = metrics(&weir);
    let hit = |limit| metric(&all, "weir_xds_limits_hit_total", &[("limit", limit)]);
    assert_eq!(
        (hit("streams_per_connection"), hit("streams"), hit("names_per_type"), hit("name_length")),
        (Some(1.0), Some(1.0), Some(3.0), Some(1.0)),
        "the proxyless client hit no bound: {all}"
    );
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// The audit's client: one delta stream subscribing 100,000 names per request, 80 times (8M names
/// took weir from 37 to 817 MB, kept after close). With the default caps the first request ends the
/// stream; three such clients one after the other leave weir's memory where it was.
#[test]
fn a_client_subscribing_millions_of_names_is_stopped_at_the_default_cap() {
    let dir = tempfile::tempdir().unwrap();
    let weir = start(dir.path(), &[("blue", free_port())], &[]);
    let pid = weir.proc.pid();
    let mut ads = Ads::start(weir.grpc_port);
    ads.channel("flood");
    let before = rss_mib(pid);
    let started = Instant::now();
    for round in 1..=3 {
        let v = ads.ask(json!({"flood": "flood", "requests": 80, "names": 100_000}));
        let ended = Ended::of(&v);
        ended.assert_exhausted(
            "the cluster subscription of this stream would hold 100000 names; at most 10000 per type (--xds-max-names-per-type)",
        );
        let made = v["made"].as_u64().unwrap();
        assert!(made < 80, "round {round}: the stream was ended before the client made all its requests ({made})");
        wait_streams(&weir, 0.0);
        let after = rss_mib(pid);
        eprintln!("round {round}: weir xds RSS {before:.1} MiB before, {after:.1} MiB after ({made} requests of 100,000 names made)");
        assert!(after - before < 64.0, "round {round}: RSS grew from {before:.1} to {after:.1} MiB");
    }
    eprintln!("three floods in {:?}", started.elapsed());
    assert_eq!(hits(&weir, "names_per_type"), 3.0);
}
