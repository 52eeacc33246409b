//! The in-cluster xDS control plane.
//!
//! ```text
//! provider snapshot ─┐
//! shared TrafficState ┼─► model::build ─► resources::translate ─► cache (one writer) ─► server (ADS: SotW + delta)
//! settings (flags) ──┘        pure              pure                many readers        ads.rs: sans-IO protocol
//! admin API ─► state store (SQLite / Kubernetes) ─► shared TrafficState
//! ```

pub mod admin;
pub mod cache;
pub mod controller;
pub mod grpc;
pub mod infra_status;
pub mod limits;
pub mod live;
pub mod server;
pub mod state;
pub mod state_kube;
pub mod vs_status;

pub use weir_core::xds::{ads, model, rejections, resources, snapshot, virtual_service};
