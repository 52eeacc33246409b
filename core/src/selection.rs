//! Which Ingresses and hosts weir manages: `--binding-domain`, `--annotation-filter` and
//! `--host-namespaces`.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("annotation filter {0:?} must be of the form key=value")]
    MalformedFilter(String),
    #[error("annotation filter {0:?} has an empty key")]
    EmptyFilterKey(String),
    #[error("binding domain {0:?} is not a valid DNS name")]
    BadDomain(String),
    #[error(
        "host namespaces {0:?} must be of the form DOMAIN=NAMESPACE[,NAMESPACE...] (a DNS domain, then one or \
         more namespace names)"
    )]
    MalformedHostNamespaces(String),
}

/// A DNS domain matched on a label boundary: `api.example.com` and `example.com` are in
/// `example.com`; `badexample.com` is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingDomain(String);

impl BindingDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn contains(&self, host: &str) -> bool {
        let host = normalize_host(host);
        if self.0.is_empty() {
            return true;
        }
        host == self.0 || host.strip_suffix(&self.0).is_some_and(|rest| rest.ends_with('.'))
    }
}

impl FromStr for BindingDomain {
    type Err = SelectionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let d = normalize_host(s);
        if d.is_empty() {
            return Ok(Self(d));
        }
        if !is_dns_name(&d) {
            return Err(SelectionError::BadDomain(s.to_string()));
        }
        Ok(Self(d))
    }
}

/// Lower-case, no trailing dot, surrounding space removed.
pub fn normalize_host(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// RFC 1123 host names, plus a leading `*.` wildcard label as Ingress allows.
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `--annotation-filter k=v`: only Ingresses carrying that annotation with that value are managed.
/// Several filters must all match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationFilter {
    pub key: String,
    pub value: String,
}

impl FromStr for AnnotationFilter {
    type Err = SelectionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = s.split_once('=').ok_or_else(|| SelectionError::MalformedFilter(s.to_string()))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(SelectionError::EmptyFilterKey(s.to_string()));
        }
        if value.contains('=') || key.contains(char::is_whitespace) {
            return Err(SelectionError::MalformedFilter(s.to_string()));
        }
        Ok(Self { key: key.to_string(), value: value.trim().to_string() })
    }
}

impl AnnotationFilter {
    pub fn matches(&self, annotations: Option<&BTreeMap<String, String>>) -> bool {
        annotations.and_then(|a| a.get(&self.key)).is_some_and(|v| *v == self.value)
    }
}

/// `--host-namespaces DOMAIN=NS[,NS...]`: a host at or under `DOMAIN` (on a label boundary) may be
/// claimed only by objects (Ingresses, Gateway API routes, LoadBalancer Services) in these
/// namespaces. A host under several rules follows the one with the longest domain; a host under none
/// may be claimed from any namespace (the oldest claim wins, as without the flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNamespaces {
    pub domain: BindingDomain,
    pub namespaces: BTreeSet<String>,
}

impl FromStr for HostNamespaces {
    type Err = SelectionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || SelectionError::MalformedHostNamespaces(s.to_string());
        let (domain, list) = s.split_once('=').ok_or_else(malformed)?;
        let domain: BindingDomain = domain.parse().map_err(|_| malformed())?;
        let namespaces: BTreeSet<String> = list.split(',').map(|n| n.trim().to_string()).collect();
        if domain.as_str().is_empty() || !namespaces.iter().all(|n| is_namespace_name(n)) {
            return Err(malformed());
        }
        Ok(Self { domain, namespaces })
    }
}

/// Whether `n` can name a Kubernetes namespace (an RFC 1123 label: at most 63 lowercase letters,
/// digits and `-`, not starting or ending with `-`).
pub fn is_namespace_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

impl HostNamespaces {
    /// The rule `host` follows: the one with the longest domain containing it.
    pub fn rule_for<'a>(rules: &'a [HostNamespaces], host: &str) -> Option<&'a HostNamespaces> {
        rules.iter().filter(|r| r.domain.contains(host)).max_by_key(|r| r.domain.as_str().len())
    }

    /// `DOMAIN=NS,NS` as given.
    pub fn describe(&self) -> String {
        format!("{}={}", self.domain.as_str(), self.namespaces.iter().cloned().collect::<Vec<_>>().join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_namespaces_follow_the_longest_domain() {
        let rules: Vec<HostNamespaces> =
            ["example.com=infra", "Shop.Example.com.=shop, payments"].iter().map(|r| r.parse().unwrap()).collect();
        assert_eq!(rules[1].namespaces, BTreeSet::from(["payments".to_string(), "shop".to_string()]));
        let ns = |host: &str| HostNamespaces::rule_for(&rules, host).map(HostNamespaces::describe);
        assert_eq!(ns("api.shop.example.com").as_deref(), Some("shop.example.com=payments,shop"));
        assert_eq!(ns("shop.example.com").as_deref(), Some("shop.example.com=payments,shop"));
        assert_eq!(ns("*.shop.example.com").as_deref(), Some("shop.example.com=payments,shop"));
        assert_eq!(ns("badshop.example.com").as_deref(), Some("example.com=infra"));
        assert_eq!(ns("example.org"), None);
        for bad in ["example.com", "=shop", "example.com=", "example.com=Shop", "example.com=a,,b", "ex ample.com=a"] {
            assert!(bad.parse::<HostNamespaces>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn binding_domain_matches_on_label_boundary() {
        let d: BindingDomain = "Example.com.".parse().unwrap();
        assert!(d.contains("api.example.com"));
        assert!(d.contains("example.com"));
        assert!(d.contains("A.B.EXAMPLE.COM."));
        assert!(!d.contains("badexample.com"));
        assert!(!d.contains("example.com.evil.org"));
        assert!(!d.contains("com"));
        let any: BindingDomain = "".parse().unwrap();
        assert!(any.contains("anything.org"));
        assert!("exa mple.com".parse::<BindingDomain>().is_err());
    }

    #[test]
    fn annotation_filter_is_strict() {
        let f: AnnotationFilter = "team=payments".parse().unwrap();
        assert_eq!(f, AnnotationFilter { key: "team".into(), value: "payments".into() });
        let ann = BTreeMap::from([("team".to_string(), "payments".to_string())]);
        assert!(f.matches(Some(&ann)));
        assert!(!f.matches(None));
        let other = BTreeMap::from([("team".to_string(), "search".to_string())]);
        assert!(!f.matches(Some(&other)));
        // An empty value is a real filter (annotation present and empty).
        assert!("k=".parse::<AnnotationFilter>().is_ok());
        for bad in ["team", "=x", "a=b=c", "", "a b=c"] {
            assert!(bad.parse::<AnnotationFilter>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_name("a.example.com"));
        assert!(is_dns_name("*.example.com"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("-a.b"));
        assert!(!is_dns_name(""));
        assert!(!is_dns_name(&"a".repeat(64)));
    }
}
