//! A small HTTP server speaking the Prometheus query API (`GET /api/v1/query`), for ramp gates: it
//! answers with the value the test sets, no data, a 400, or drops the connection (unreachable).

use std::io::{BufRead, BufReader, Write};
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
}

impl GateServer {
    pub fn start(mode: GateMode) -> GateServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (m, q) = (mode.clone(), queries.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                        break;
                    }
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
                q.lock().unwrap().push(target.clone());
                let mode = m.lock().unwrap().clone();
                let (status, body) = match mode {
                    GateMode::Down => continue,
                    _ if !target.starts_with("/api/v1/query?") => {
                        (404, r#"{"status":"error","error":"not found"}"#.to_string())
                    }
                    GateMode::Value(v) => (
                        200,
                        format!(
                            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000,"{v}"]}}]}}}}"#
                        ),
                    ),
                    GateMode::NoData => {
                        (200, r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.to_string())
                    }
                    GateMode::BadQuery => (
                        400,
                        r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": parse error"}"#
                            .to_string(),
                    ),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        GateServer { port, mode, queries }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: GateMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}
