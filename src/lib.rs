//! weir: a multi-cluster, DNS-weighted traffic controller for Kubernetes.
//!
//! Data flows providers → snapshot → translate → desired state → plan → apply (DESIGN §2). Everything
//! up to the plan is pure; I/O lives in `providers`, `backends`, `dns` providers, `xds` servers and
//! the `reconciler` loops that apply plans.
#![forbid(unsafe_code)]

pub mod app;
pub mod aws;
pub mod backends;
pub mod cli;
pub mod crd;
pub mod dns;
#[cfg(test)]
mod golden;
pub mod http_serve;
pub mod ir;
pub mod model;
pub mod operator;
pub mod providers;
pub mod reconciler;
pub mod selection;
pub mod telemetry;
pub mod translate;
pub mod weight;
pub mod xds;
