//! Label and field selectors, as `labelSelector` / `fieldSelector` query parameters spell them.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector plus the field selectors this server supports (`metadata.name`,
/// `metadata.namespace`, `=`/`==`/`!=`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    labels: Vec<Req>,
    fields: Vec<Req>,
}

impl Selector {
    pub fn parse(label: Option<&str>, field: Option<&str>) -> Result<Selector, String> {
        Ok(Selector {
            labels: label.map(parse_reqs).transpose()?.unwrap_or_default(),
            fields: field.map(parse_reqs).transpose()?.unwrap_or_default(),
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
        let field = |k: &str| match k {
            "metadata.name" => obj["metadata"]["name"].as_str().map(str::to_string),
            "metadata.namespace" => Some(obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string()),
            _ => None,
        };
        self.labels.iter().all(|r| eval(r, &label)) && self.fields.iter().all(|r| eval(r, &field))
    }
}

fn eval(req: &Req, get: &dyn Fn(&str) -> Option<String>) -> bool {
    match req {
        Req::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
        Req::NotEq(k, v) => get(k).as_deref() != Some(v.as_str()),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
        Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    }
}

/// Splits on commas that are not inside a `(...)` set.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_reqs(s: &str) -> Result<Vec<Req>, String> {
    split_top(s).into_iter().map(str::trim).filter(|p| !p.is_empty()).map(parse_req).collect()
}

fn parse_req(p: &str) -> Result<Req, String> {
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner =
            rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or(format!("bad set in {p:?}"))?;
        Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
    };
    if let Some(k) = p.strip_prefix('!') {
        return Ok(Req::NotExists(k.trim().into()));
    }
    if let Some((k, v)) = p.split_once("!=") {
        return Ok(Req::NotEq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
        return Ok(Req::Eq(k.trim().into(), v.trim().into()));
    }
    if let Some((k, rest)) = p.split_once(" notin ") {
        return Ok(Req::NotIn(k.trim().into(), set(rest)?));
    }
    if let Some((k, rest)) = p.split_once(" in ") {
        return Ok(Req::In(k.trim().into(), set(rest)?));
    }
    if p.contains(' ') || p.contains('(') {
        return Err(format!("unsupported selector {p:?}"));
    }
    Ok(Req::Exists(p.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_and_field_selectors() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"app": "web", "tier": "fe"}}});
        let m = |l: Option<&str>, f: Option<&str>| Selector::parse(l, f).unwrap().matches(&obj);
        assert!(m(Some("app=web"), None));
        assert!(m(Some("app==web,tier"), None));
        assert!(!m(Some("app!=web"), None));
        assert!(m(Some("app in (web, api),!missing"), None));
        assert!(!m(Some("tier notin (fe)"), None));
        assert!(m(None, Some("metadata.name=a,metadata.namespace=ns")));
        assert!(!m(None, Some("metadata.name=b")));
    }
}
