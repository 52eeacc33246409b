//! A small HTTP server speaking the Prometheus query API (`GET /api/v1/query`), for ramp gates: it
//! answers with the value the test sets, no data, a 400, or drops the connection (unreachable); over
//! plain HTTP or HTTPS with a self-signed certificate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq)]
pub enum GateMode {
    Value(f64),
    NoData,
    /// What Prometheus answers to a query it cannot parse.
    BadQuery,
    /// Accepts and closes without an answer.
    Down,
}

pub struct GateServer {
    pub port: u16,
    mode: Arc<Mutex<GateMode>>,
    queries: Arc<Mutex<Vec<String>>>,
    /// The self-signed certificate (PEM) of an HTTPS gate: the CA file a client must trust.
    pub ca_pem: Option<String>,
}

/// Reads one request from `stream` and answers it as `mode` says.
fn serve_one<S: Read + Write>(stream: S, mode: &Mutex<GateMode>, queries: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
            break;
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
    queries.lock().unwrap().push(target.clone());
    let mode = mode.lock().unwrap().clone();
    let (status, body) = match mode {
        GateMode::Down => return,
        _ if !target.starts_with("/api/v1/query?") => (404, r#"{"status":"error","error":"not found"}"#.to_string()),
        GateMode::Value(v) => (
            200,
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000,"{v}"]}}]}}}}"#
            ),
        ),
        GateMode::NoData => (200, r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.to_string()),
        GateMode::BadQuery => (
            400,
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": parse error"}"#
                .to_string(),
        ),
    };
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

impl GateServer {
    pub fn start(mode: GateMode) -> GateServer {
        Self::start_with(mode, None)
    }

    /// The same gate over HTTPS, with a self-signed certificate for 127.0.0.1 ([`GateServer::ca_pem`]).
    pub fn start_tls(mode: GateMode) -> GateServer {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .unwrap();
        let mut gate = Self::start_with(mode, Some(Arc::new(config)));
        gate.ca_pem = Some(cert.cert.pem());
        gate
    }

    fn start_with(mode: GateMode, tls: Option<Arc<rustls::ServerConfig>>) -> GateServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (m, q) = (mode.clone(), queries.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                match &tls {
                    None => serve_one(stream, &m, &q),
                    Some(config) => {
                        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else { continue };
                        // A client that does not trust the certificate ends the handshake: no request.
                        serve_one(rustls::StreamOwned::new(conn, stream), &m, &q)
                    }
                }
            }
        });
        GateServer { port, mode, queries, ca_pem: None }
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: GateMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}
