//! AWS test parts: a `moto_server` per test, SDK clients pointed at it, table and zone set-up, and a
//! fault-injecting HTTP proxy that answers a share of calls with AWS throttling errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir::aws::aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use weir::aws::aws_sdk_route53::config::Credentials;
use weir::aws::{aws_sdk_dynamodb, aws_sdk_route53};

use crate::{free_port, venv_bin, wait_for, Proc};

pub const REGION: &str = "eu-west-1";

/// A `moto_server` on 127.0.0.1, killed when dropped.
pub struct Moto {
    pub port: u16,
    pub proc: Proc,
}

/// moto deletes a weighted record set by its set identifier alone: every record of the zone with that
/// identifier goes (moto/route53/models.py, `delete_rrset_by_id`). Route53 deletes exactly the named
/// (name, type, set identifier). This makes moto do the same, for tests that delete one record of a
/// cluster and keep the others (adoption removes external-dns's TXT beside weir's new records).
const MOTO_EXACT_DELETES: &str = r#"
import sys
import moto.route53.models as m

class _NamedDelete(dict):
    # Hides SetIdentifier from moto's `in` test so that it takes delete_rrset (below) with the name.
    def __contains__(self, key):
        return key != "SetIdentifier" and dict.__contains__(self, key)

def _delete_rrset(self, rrset):
    sid = dict.get(rrset, "SetIdentifier")
    self.rrsets = [
        r for r in self.rrsets
        if not (r.name == rrset["Name"] and (rrset.get("Type") is None or r.type == rrset["Type"]) and r.set_identifier == sid)
    ]

_change = m.Route53Backend.change_resource_record_sets
def _change_exact(self, zoneid, change_list):
    for c in change_list:
        if c["Action"] == "DELETE":
            c["ResourceRecordSet"] = _NamedDelete(c["ResourceRecordSet"])
    return _change(self, zoneid, change_list)

m.FakeZone.delete_rrset = _delete_rrset
m.Route53Backend.change_resource_record_sets = _change_exact
from moto.server import main
sys.argv = ["moto_server"] + sys.argv[1:]
sys.exit(main())
"#;

impl Moto {
    pub fn start(log_dir: &Path) -> Moto {
        Self::spawn(Command::new(venv_bin("moto_server")), log_dir)
    }

    /// moto with Route53's exact DELETE of a weighted record set (see [`MOTO_EXACT_DELETES`]).
    pub fn start_exact_deletes(log_dir: &Path) -> Moto {
        let mut cmd = Command::new(venv_bin("python3"));
        cmd.args(["-c", MOTO_EXACT_DELETES]);
        Self::spawn(cmd, log_dir)
    }

    fn spawn(mut cmd: Command, log_dir: &Path) -> Moto {
        let port = free_port();
        let mut proc = Proc::spawn("moto", cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]), log_dir);
        // Ready when it answers HTTP, and it must be this process answering (not a stray server).
        wait_for("moto_server to answer", Duration::from_secs(60), || {
            assert!(proc.is_running(), "moto_server exited:\n{}", proc.log());
            let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            stream.write_all(b"GET /moto-api/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).ok()?;
            head.starts_with(b"HTTP/1.").then_some(())
        });
        Moto { port, proc }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The environment a weir process needs to reach `endpoint` with dummy credentials.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_REGION", REGION.to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}

/// SDK configuration for the test process itself (explicit, not from the environment, so that tests
/// running in parallel can each use their own moto).
pub async fn sdk(endpoint: &str) -> weir::aws::aws_config::SdkConfig {
    weir::aws::loader(Some(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await
}

pub async fn dynamodb(endpoint: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk(endpoint).await)
}

pub async fn route53(endpoint: &str) -> aws_sdk_route53::Client {
    aws_sdk_route53::Client::new(&sdk(endpoint).await)
}

/// Creates the weight table as the earlier controller's CloudFormation did: key `ClusterName` (S).
pub async fn create_table(client: &aws_sdk_dynamodb::Client, name: &str) {
    create_table_with(client, name, false).await
}

/// The weight table with a stream (`KEYS_ONLY`), which weir follows as a wake-up beside its poll.
pub async fn create_table_with_stream(client: &aws_sdk_dynamodb::Client, name: &str) {
    create_table_with(client, name, true).await
}

async fn create_table_with(client: &aws_sdk_dynamodb::Client, name: &str, stream: bool) {
    use aws_sdk_dynamodb::types::{StreamSpecification, StreamViewType};
    let spec = stream.then(|| {
        StreamSpecification::builder().stream_enabled(true).stream_view_type(StreamViewType::KeysOnly).build().unwrap()
    });
    client
        .create_table()
        .set_stream_specification(spec)
        .table_name(name)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("ClusterName")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("ClusterName").key_type(KeyType::Hash).build().unwrap())
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .expect("create table");
}

/// Creates a public hosted zone; returns its id without the `/hostedzone/` prefix.
pub async fn create_zone(client: &aws_sdk_route53::Client, name: &str) -> String {
    let out = client
        .create_hosted_zone()
        .name(name)
        .caller_reference(format!("test-{name}-{}", free_port()))
        .send()
        .await
        .expect("create hosted zone");
    out.hosted_zone().unwrap().id().trim_start_matches("/hostedzone/").to_string()
}

/// Writes weighted CNAME record sets of other owners (no ownership TXT) into a zone, in one batch:
/// `(name, set identifier, target)` each, weight 1, TTL 60.
pub async fn put_foreign_cnames(
    client: &aws_sdk_route53::Client,
    zone: &str,
    records: impl IntoIterator<Item = (String, String, String)>,
) {
    use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType};
    let changes: Vec<Change> = records
        .into_iter()
        .map(|(name, set_identifier, target)| {
            let rrs = ResourceRecordSet::builder()
                .name(name)
                .r#type(RrType::Cname)
                .set_identifier(set_identifier)
                .weight(1)
                .ttl(60)
                .resource_records(ResourceRecord::builder().value(target).build().unwrap())
                .build()
                .unwrap();
            Change::builder().action(ChangeAction::Upsert).resource_record_set(rrs).build().unwrap()
        })
        .collect();
    client
        .change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(ChangeBatch::builder().set_changes(Some(changes)).build().unwrap())
        .send()
        .await
        .expect("write foreign records");
}

/// Every record set of a zone, as weir models them (types weir does not manage are left out).
pub async fn zone_records(client: &aws_sdk_route53::Client, zone: &str) -> Vec<weir::dns::record::RecordSet> {
    let mut out = std::collections::BTreeMap::new();
    let mut start: Option<(String, aws_sdk_route53::types::RrType)> = None;
    for _ in 0..10_000 {
        let mut req = client.list_resource_record_sets().hosted_zone_id(zone).max_items(300);
        if let Some((name, rtype)) = &start {
            req = req.start_record_name(name).start_record_type(rtype.clone());
        }
        let resp = req.send().await.expect("list records");
        for rrs in resp.resource_record_sets() {
            if let Some(r) = weir::dns::route53::from_route53(rrs) {
                out.insert(r.key.clone(), r);
            }
        }
        let next = resp.next_record_name().map(|n| (n.to_string(), resp.next_record_type().unwrap().clone()));
        if !resp.is_truncated() || next == start {
            break;
        }
        start = next;
    }
    out.into_values().collect()
}

/// A DynamoDB item's attribute as text (`N:50`, `S:abc`, `-` when missing), for assertions.
pub async fn item_attr(client: &aws_sdk_dynamodb::Client, table: &str, cluster: &str, attr: &str) -> String {
    use aws_sdk_dynamodb::types::AttributeValue;
    let out = client
        .get_item()
        .table_name(table)
        .key("ClusterName", AttributeValue::S(cluster.to_string()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item");
    match out.item.as_ref().and_then(|i| i.get(attr)) {
        None => "-".into(),
        Some(AttributeValue::N(n)) => format!("N:{n}"),
        Some(AttributeValue::S(s)) => format!("S:{s}"),
        Some(other) => format!("{other:?}"),
    }
}

/// An HTTP/1.1 proxy in front of moto that answers a share of requests with AWS throttling errors:
/// Route53 `Throttling` (and `PriorRequestNotComplete` for record changes), DynamoDB
/// `ThrottlingException`. Deterministic: request `n` is refused when `(n × 37) mod 100 < percent`.
/// It can also hold record changes after the first few (to kill weir in the middle of an apply).
pub struct FaultProxy {
    pub port: u16,
    pub state: Arc<ProxyState>,
}

#[derive(Default)]
pub struct ProxyState {
    pub percent: AtomicU64,
    pub faults: AtomicU64,
    pub forwarded: AtomicU64,
    /// Route53 record changes forwarded.
    pub changes: AtomicU64,
    /// Record changes after this many are held, then dropped unanswered on release.
    pub hold_changes_after: AtomicU64,
    pub held: AtomicU64,
    pub released: AtomicBool,
    stop: AtomicBool,
    counter: AtomicU64,
}

impl FaultProxy {
    pub fn start(upstream_port: u16, percent: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState { hold_changes_after: AtomicU64::new(u64::MAX), ..Default::default() });
        state.percent.store(percent, Ordering::SeqCst);
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve_connection(conn, upstream_port, &st);
                });
            }
        });
        FaultProxy { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn faults(&self) -> u64 {
        self.state.faults.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.released.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

struct Request {
    head: String,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(Some(Request { head, body }))
}

fn is_record_change(req: &Request) -> bool {
    req.head.starts_with("POST ") && req.head.lines().next().is_some_and(|l| l.contains("/rrset"))
}

fn serve_connection(conn: TcpStream, upstream_port: u16, st: &ProxyState) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader)? {
        let n = st.counter.fetch_add(1, Ordering::SeqCst);
        if (n * 37) % 100 < st.percent.load(Ordering::SeqCst) {
            st.faults.fetch_add(1, Ordering::SeqCst);
            writer.write_all(&throttle_response(&req, n))?;
            continue;
        }
        if is_record_change(&req) {
            let k = st.changes.fetch_add(1, Ordering::SeqCst);
            if k >= st.hold_changes_after.load(Ordering::SeqCst) {
                st.held.fetch_add(1, Ordering::SeqCst);
                while !st.released.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                // Dropped unanswered: the change never reached Route53.
                return Ok(());
            }
        }
        st.forwarded.fetch_add(1, Ordering::SeqCst);
        // One upstream connection per request, closed by the upstream: the whole response is what it
        // sends before closing. The client sees `Connection: close` and reconnects.
        let mut head: String = req
            .head
            .lines()
            .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        head.push_str("Connection: close\r\n\r\n");
        let mut up = TcpStream::connect(("127.0.0.1", upstream_port))?;
        up.write_all(head.as_bytes())?;
        up.write_all(&req.body)?;
        let mut resp = Vec::new();
        up.read_to_end(&mut resp)?;
        writer.write_all(&resp)?;
        return Ok(());
    }
    Ok(())
}

fn throttle_response(req: &Request, n: u64) -> Vec<u8> {
    let dynamodb = req.head.to_ascii_lowercase().contains("x-amz-target: dynamodb_");
    let (content_type, body) = if dynamodb {
        (
            "application/x-amz-json-1.0",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#.to_string(),
        )
    } else {
        let code = if is_record_change(req) && n.is_multiple_of(2) { "PriorRequestNotComplete" } else { "Throttling" };
        (
            "text/xml",
            format!(
                "<?xml version=\"1.0\"?>\n<ErrorResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>Rate exceeded</Message></Error><RequestId>fault-{n}</RequestId></ErrorResponse>"
            ),
        )
    };
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nx-amzn-RequestId: fault-{n}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
