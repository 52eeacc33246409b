//! weir: a multi-cluster, DNS-weighted traffic controller for Kubernetes.
//!
//! Data flows providers → snapshot → translate → desired state → plan → apply (DESIGN §2). Everything
//! up to the plan is pure; I/O lives in `providers`, `backends`, `dns` providers, `xds` servers and
//! the `reconciler` loops that apply plans.
#![forbid(unsafe_code)]

// The pure core, re-exported under the paths the rest of the tree uses.
pub use weir_core::{crd, gateway, index, ir, model, selection, translate, weight};

pub mod app;
pub mod aws;
pub mod backends;
pub mod cli;
pub mod dns;
pub mod http_serve;
pub mod operator;
pub mod providers;
pub mod reconciler;
pub mod telemetry;
pub mod xds;
