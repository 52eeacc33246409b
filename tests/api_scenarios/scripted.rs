//! A scripted Kubernetes API (DESIGN §5): a `kube::Client` over a tower-test mock service whose
//! answers a test gives as a function of the request, and which records every request made.
//!
//! A scenario states the API's answers (`answer(&Call) -> Reply`), runs the component once, then
//! asserts the calls (method, path, query, content type, body fields) and the component's outcome.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

/// One request the component made.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    /// The URI's path, e.g. `/apis/apps/v1/namespaces/shop/deployments/edge-envoy`.
    pub path: String,
    /// The URI's query, undecoded (`""` when there is none).
    pub query: String,
    pub content_type: String,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
}

impl Call {
    /// `"METHOD path"`, the form the call lists are asserted in.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The last path segment (the object's name, or the subresource).
    pub fn last_segment(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// A server-side apply: `PATCH` with the apply content type, forced, by `manager`.
    pub fn is_apply_by(&self, manager: &str) -> bool {
        self.method == "PATCH"
            && self.content_type == "application/apply-patch+yaml"
            && self.query.split('&').any(|p| p == format!("fieldManager={manager}"))
            && self.query.split('&').any(|p| p == "force=true")
    }
}

/// The API's answer: an HTTP status and a JSON body.
pub struct Reply(pub u16, pub Value);

/// 200 with `body`.
pub fn ok(body: Value) -> Reply {
    Reply(200, body)
}

/// 201 with `body`.
pub fn created(body: Value) -> Reply {
    Reply(201, body)
}

/// An error answer as the API server gives it: a `metav1.Status` with `code` and `reason`.
pub fn status(code: u16, reason: &str, message: &str) -> Reply {
    Reply(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

/// 404 NotFound.
pub fn not_found() -> Reply {
    status(404, "NotFound", "not found")
}

/// The request's body echoed with 200 (what an apply or a patch returns, near enough), with
/// `metadata.resourceVersion` set so that typed clients parse it.
pub fn echo(call: &Call) -> Reply {
    let mut body = call.body.clone();
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("resourceVersion").or_insert(json!("100"));
    }
    ok(body)
}

/// Every call made so far, in order.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    pub fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// The calls as `"METHOD path"` lines.
    pub fn lines(&self) -> Vec<String> {
        self.all().iter().map(Call::line).collect()
    }

    /// The calls with this method.
    pub fn with_method(&self, method: &str) -> Vec<Call> {
        self.all().into_iter().filter(|c| c.method == method).collect()
    }
}

/// A client whose every request `answer` answers; the calls are recorded in order.
pub fn client(mut answer: impl FnMut(&Call) -> Reply + Send + 'static) -> (Client, Calls) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls = Calls::default();
    let log = calls.clone();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.expect("the request body").to_bytes();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get(hyper::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("request bodies are JSON")
                },
            };
            let Reply(code, body) = answer(&call);
            log.0.lock().unwrap().push(call);
            let response = Response::builder()
                .status(code)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), calls)
}
