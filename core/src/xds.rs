//! xDS: desired proxy config → Envoy resources, the versioned snapshot, and the ADS protocol as a
//! state machine with no I/O. The cache, the tonic server and the admin API are in the `weir` crate.

pub mod ads;
pub mod model;
pub mod rejections;
pub mod resources;
pub mod snapshot;
pub mod virtual_service;
