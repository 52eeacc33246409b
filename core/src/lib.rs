//! weir's pure core: everything from the object snapshot to the plan, with no I/O and no clocks
//! (DESIGN §2). The `weir` crate holds the edges: providers, stores, DNS and xDS servers, the loops.
#![forbid(unsafe_code)]

pub mod crd;
pub mod dns;
pub mod duration;
pub mod explain;
pub mod gateway;
#[cfg(test)]
mod golden;
pub mod index;
pub mod ir;
pub mod model;
pub mod operator;
pub mod pipeline;
pub mod selection;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod translate;
pub mod weight;
pub mod xds;
