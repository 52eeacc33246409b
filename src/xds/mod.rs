//! The in-cluster xDS control plane.
//!
//! ```text
//! provider snapshot ─┐
//! shared TrafficState ┼─► model::build ─► resources::translate ─► cache (one writer) ─► server (ADS: SotW + delta)
//! settings (flags) ──┘        pure              pure                many readers        ads.rs: sans-IO protocol
//! admin API ─► state store (SQLite / Kubernetes) ─► shared TrafficState
//! ```

pub mod admin;
pub mod ads;
pub mod cache;
pub mod controller;
pub mod model;
pub mod resources;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod state_kube;
