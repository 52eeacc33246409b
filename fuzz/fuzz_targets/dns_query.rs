//! A DNS packet through the embedded server's handler: never panics; a reply fits its transport.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use weir::dns::record::{RecordKey, RecordSet, RecordType};
use weir::dns::server::{handle, Transport, ZoneIndex, EDNS_PAYLOAD};

fn zone() -> &'static ZoneIndex {
    static ZONE: OnceLock<ZoneIndex> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mk = |name: &str, rtype, cluster: &str, weight, value: &str| RecordSet {
            key: RecordKey { name: name.into(), rtype, set_identifier: cluster.into() },
            weight,
            ttl: 30,
            values: vec![value.into()],
            health_check_id: None,
            alias: None,
        };
        ZoneIndex::build(
            vec![
                mk("api.example.com", RecordType::A, "eu", 70, "10.0.0.1"),
                mk("api.example.com", RecordType::A, "us", 30, "10.1.0.1"),
                mk("api.example.com", RecordType::Aaaa, "eu", 1, "2001:db8::1"),
                mk("www.example.com", RecordType::Cname, "eu", 0, "lb.example.net"),
                mk("_weir.www.example.com", RecordType::Txt, "eu", 1, &"t".repeat(700)),
            ],
            &["example.com".to_string()],
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some(reply) = handle(zone(), data, &mut rng, transport) {
            assert!(reply.bytes.len() >= 12);
            assert_eq!(reply.bytes[0..2], data[0..2], "the reply carries the query's id");
            if transport == Transport::Udp {
                assert!(reply.bytes.len() <= usize::from(EDNS_PAYLOAD));
            }
        }
    }
});
