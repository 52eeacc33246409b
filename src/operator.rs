//! The operator: the pure computations (children, status, policy, Envoy settings, admission) are in
//! `weir_core::operator`; the validating webhook's HTTPS server is I/O and lives here.

pub use weir_core::operator::*;

pub mod webhook;
