//! Route53 ALIAS records for AWS load balancers: which target hostnames are load balancers, the
//! canonical hosted zone of each (by region and type), and the turning of this cluster's CNAMEs into
//! weighted ALIAS `A` (plus `AAAA` for dual-stack names). Pure.
//!
//! Hostname forms (after an optional `dualstack.`):
//! - Classic and Application Load Balancers: `NAME.<region>.elb.amazonaws.com`;
//! - Network Load Balancers: `NAME.elb.<region>.amazonaws.com`;
//! - the same under `amazonaws.com.cn` in the China regions.
//!
//! A name that looks like a load balancer but whose region is not in the table stays a CNAME, with a
//! warning: an ALIAS with a wrong zone id would be refused, or worse, point nowhere.

use super::record::{AliasTarget, DesiredRecords, RecordSet, RecordType};

/// Canonical hosted zone ids of Elastic Load Balancing, per region: (region, Classic/ALB zone, NLB
/// zone). Source: AWS General Reference, "Elastic Load Balancing endpoints and quotas",
/// <https://docs.aws.amazon.com/general/latest/gr/elb.html> (the "Route 53 Hosted Zone ID" columns),
/// checked against the table external-dns keeps (provider/aws/aws.go, `canonicalHostedZones`).
const ELB_ZONES: &[(&str, &str, &str)] = &[
    ("af-south-1", "Z268VQBMOI5EKX", "Z203XCE67M25HM"),
    ("ap-east-1", "Z3DQVH9N71FHZ0", "Z12Y7K3UBGUAD1"),
    ("ap-east-2", "Z02789141MW7T1WBU19PO", "Z09176273OC2HWIAUNYW"),
    ("ap-northeast-1", "Z14GRHDCWA56QT", "Z31USIVHYNEOWT"),
    ("ap-northeast-2", "ZWKZPGTI48KDX", "ZIBE1TIR4HY56"),
    ("ap-northeast-3", "Z5LXEXXYW11ES", "Z1GWIQ4HH19I5X"),
    ("ap-south-1", "ZP97RAFLXTNZK", "ZVDDRBQ08TROA"),
    ("ap-south-2", "Z0173938T07WNTVAEPZN", "Z0711778386UTO08407HT"),
    ("ap-southeast-1", "Z1LMS91P8CMLE5", "ZKVM4W9LS7TM"),
    ("ap-southeast-2", "Z1GM3OXH4ZPM65", "ZCT6FZBF4DROD"),
    ("ap-southeast-3", "Z08888821HLRG5A9ZRTER", "Z01971771FYVNCOVWJU1G"),
    ("ap-southeast-4", "Z09517862IB2WZLPXG76F", "Z01156963G8MIIL7X90IV"),
    ("ap-southeast-5", "Z06010284QMVVW7WO5J", "Z026317210H9ACVTRO6FB"),
    ("ap-southeast-6", "Z023301818UFJ50CIO0MV", "Z01392953RKV2Q3RBP0KU"),
    ("ap-southeast-7", "Z0390008CMBRTHFGWBCB", "Z054363131YWATEMWRG5L"),
    ("ca-central-1", "ZQSVJUPU6J1EY", "Z2EPGBW3API2WT"),
    ("ca-west-1", "Z06473681N0SF6OS049SD", "Z02754302KBB00W2LKWZ9"),
    ("cn-north-1", "Z1GDH35T77C1KE", "Z3QFB96KMJ7ED6"),
    ("cn-northwest-1", "ZM7IZAIOVVDZF", "ZQEIKTCZ8352D"),
    ("eu-central-1", "Z215JYRZR1TBD5", "Z3F0SRJ5LGBH90"),
    ("eu-central-2", "Z06391101F2ZOEP8P5EB3", "Z02239872DOALSIDCX66S"),
    ("eu-north-1", "Z23TAZ6LKFMNIO", "Z1UDT6IFJ4EJM"),
    ("eu-south-1", "Z3ULH7SSC9OV64", "Z23146JA1KNAFP"),
    ("eu-south-2", "Z0956581394HF5D5LXGAP", "Z1011216NVTVYADP1SSV"),
    ("eu-west-1", "Z32O12XQLNTSW2", "Z2IFOLAFXWLO4F"),
    ("eu-west-2", "ZHURV8PSTC4K8", "ZD4D7Y8KGAS4G"),
    ("eu-west-3", "Z3Q77PNBQS71R4", "Z1CMS0P5QUZ6D5"),
    ("il-central-1", "Z09170902867EHPV2DABU", "Z0313266YDI6ZRHTGQY4"),
    ("me-central-1", "Z08230872XQRWHG2XF6I", "Z00282643NTTLPANJJG2P"),
    ("me-south-1", "ZS929ML54UICD", "Z3QSRYVP46NYYV"),
    ("mx-central-1", "Z023552324OKD1BB28BH5", "Z02031231H3ID6HYJ9A7U"),
    ("sa-east-1", "Z2P70J7HTTTPLU", "ZTK26PT1VY4CU"),
    ("us-east-1", "Z35SXDOTRQ7X7K", "Z26RNL4JYFTOTI"),
    ("us-east-2", "Z3AADJGX6KTTL2", "ZLMOA37VPKANP"),
    ("us-gov-east-1", "Z166TLBEWOO7G0", "Z1ZSMQQ6Q24QQ8"),
    ("us-gov-west-1", "Z33AYJ8TM3BH4J", "ZMG1MZ2THAWF1"),
    ("us-west-1", "Z368ELLRRE2KJ0", "Z24FKFUX50B4VW"),
    ("us-west-2", "Z1H1FL5HABSF5", "Z18D5FSROUN65G"),
];

/// What a target hostname is, for ALIAS purposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadBalancerName {
    /// An AWS load balancer in a known region.
    Known { hosted_zone_id: &'static str, dualstack: bool },
    /// Shaped like an AWS load balancer name, but its region is not in the table.
    UnknownRegion { region: String },
    /// Anything else.
    NotALoadBalancer,
}

/// Classifies a (lower-case, no trailing dot) target hostname.
pub fn classify_target(hostname: &str) -> LoadBalancerName {
    let Some(rest) = hostname.strip_suffix(".amazonaws.com").or_else(|| hostname.strip_suffix(".amazonaws.com.cn"))
    else {
        return LoadBalancerName::NotALoadBalancer;
    };
    let labels: Vec<&str> = rest.split('.').collect();
    let dualstack = labels.first() == Some(&"dualstack");
    // ALB/Classic: …, region, "elb".  NLB: …, "elb", region.  The load balancer's own label comes first.
    let (region, nlb) = match labels.as_slice() {
        [.., _, region, "elb"] => (*region, false),
        [.., _, "elb", region] => (*region, true),
        [.., "elb"] | [.., "elb", _] => return LoadBalancerName::UnknownRegion { region: String::new() },
        _ => return LoadBalancerName::NotALoadBalancer,
    };
    match ELB_ZONES.iter().find(|(r, _, _)| *r == region) {
        Some((_, alb, nlb_zone)) => {
            LoadBalancerName::Known { hosted_zone_id: if nlb { nlb_zone } else { alb }, dualstack }
        }
        None => LoadBalancerName::UnknownRegion { region: region.to_string() },
    }
}

/// How CNAMEs to load balancers are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AliasOptions {
    /// `--prefer-cname`: keep CNAMEs.
    pub prefer_cname: bool,
    /// `EvaluateTargetHealth` of the ALIAS records.
    pub evaluate_target_health: bool,
}

impl Default for AliasOptions {
    fn default() -> Self {
        Self { prefer_cname: false, evaluate_target_health: true }
    }
}

/// Replaces each traffic CNAME to a known AWS load balancer by a weighted ALIAS `A` (plus `AAAA` for a
/// `dualstack.` name) with the same name, set identifier, weight, TTL (which Route53 ignores for an
/// ALIAS; external-dns too) and health check. `keep_cname(host)`
/// says a host must stay a CNAME (Route53 refuses an ALIAS beside another cluster's CNAME).
pub fn use_aliases(desired: &mut DesiredRecords, opts: AliasOptions, keep_cname: impl Fn(&str) -> bool) {
    if opts.prefer_cname {
        return;
    }
    let mut out = Vec::with_capacity(desired.records.len());
    for record in std::mem::take(&mut desired.records) {
        if record.key.rtype != RecordType::Cname || keep_cname(&record.key.name) {
            out.push(record);
            continue;
        }
        match classify_target(&record.values[0]) {
            LoadBalancerName::Known { hosted_zone_id, dualstack } => {
                let alias = |rtype: RecordType| {
                    let mut r: RecordSet = record.clone();
                    r.key.rtype = rtype;
                    r.alias = Some(AliasTarget {
                        hosted_zone_id: hosted_zone_id.to_string(),
                        evaluate_target_health: opts.evaluate_target_health,
                    });
                    r
                };
                out.push(alias(RecordType::A));
                if dualstack {
                    out.push(alias(RecordType::Aaaa));
                }
            }
            LoadBalancerName::UnknownRegion { region } => {
                tracing::warn!(
                    host = %record.key.name,
                    target = %record.values[0],
                    region,
                    "the target looks like an AWS load balancer of a region weir has no canonical hosted zone for; \
                     publishing a CNAME instead of an ALIAS"
                );
                out.push(record);
            }
            LoadBalancerName::NotALoadBalancer => out.push(record),
        }
    }
    out.sort();
    desired.records = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::record::RecordKey;

    #[test]
    fn load_balancer_names_are_classified() {
        let known = |h: &str| match classify_target(h) {
            LoadBalancerName::Known { hosted_zone_id, dualstack } => Some((hosted_zone_id, dualstack)),
            _ => None,
        };
        // ALB / Classic, NLB, dual-stack, China.
        assert_eq!(known("k8s-web-1234.eu-west-1.elb.amazonaws.com"), Some(("Z32O12XQLNTSW2", false)));
        assert_eq!(known("my-nlb-abc.elb.us-east-1.amazonaws.com"), Some(("Z26RNL4JYFTOTI", false)));
        assert_eq!(known("dualstack.k8s-web-1234.us-west-2.elb.amazonaws.com"), Some(("Z1H1FL5HABSF5", true)));
        assert_eq!(known("dualstack.nlb-1.elb.eu-central-1.amazonaws.com"), Some(("Z3F0SRJ5LGBH90", true)));
        assert_eq!(known("lb-1.cn-north-1.elb.amazonaws.com.cn"), Some(("Z1GDH35T77C1KE", false)));
        assert_eq!(
            classify_target("lb-1.xx-moon-1.elb.amazonaws.com"),
            LoadBalancerName::UnknownRegion { region: "xx-moon-1".into() }
        );
        assert!(matches!(classify_target("lb-1.elb.amazonaws.com"), LoadBalancerName::UnknownRegion { .. }));
        assert_eq!(classify_target("lb.example.net"), LoadBalancerName::NotALoadBalancer);
        assert_eq!(classify_target("bucket.s3.amazonaws.com"), LoadBalancerName::NotALoadBalancer);
    }

    fn cname(host: &str, target: &str) -> RecordSet {
        RecordSet {
            key: RecordKey { name: host.into(), rtype: RecordType::Cname, set_identifier: "eu".into() },
            weight: 40,
            ttl: 60,
            values: vec![target.into()],
            health_check_id: Some("hc".into()),
            alias: None,
        }
    }

    #[test]
    fn cnames_to_load_balancers_become_aliases() {
        let mut d = DesiredRecords {
            records: vec![
                cname("a.example.com", "dualstack.lb-1.eu-west-1.elb.amazonaws.com"),
                cname("b.example.com", "lb.example.net"),
                cname("c.example.com", "lb-2.xx-moon-1.elb.amazonaws.com"),
                cname("d.example.com", "lb-3.elb.eu-west-1.amazonaws.com"),
            ],
            ..Default::default()
        };
        use_aliases(&mut d, AliasOptions::default(), |h| h == "d.example.com");
        let got: Vec<(&str, RecordType, Option<&str>, u8, u32)> = d
            .records
            .iter()
            .map(|r| {
                (r.key.name.as_str(), r.key.rtype, r.alias.as_ref().map(|a| a.hosted_zone_id.as_str()), r.weight, r.ttl)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a.example.com", RecordType::A, Some("Z32O12XQLNTSW2"), 40, 60),
                ("a.example.com", RecordType::Aaaa, Some("Z32O12XQLNTSW2"), 40, 60),
                ("b.example.com", RecordType::Cname, None, 40, 60),
                ("c.example.com", RecordType::Cname, None, 40, 60),
                ("d.example.com", RecordType::Cname, None, 40, 60),
            ]
        );
        assert!(d.records[0].alias.as_ref().unwrap().evaluate_target_health);
        assert_eq!(d.records[0].health_check_id.as_deref(), Some("hc"));

        let mut d = DesiredRecords {
            records: vec![cname("a.example.com", "lb-1.eu-west-1.elb.amazonaws.com")],
            ..Default::default()
        };
        use_aliases(&mut d, AliasOptions { prefer_cname: true, evaluate_target_health: true }, |_| false);
        assert_eq!(d.records[0].key.rtype, RecordType::Cname);
    }
}
