//! DNS: the record model and the planner, both pure. The providers that publish records are in the
//! `weir` crate.

pub mod adopt;
pub mod plan;
pub mod record;
pub mod zones;
