//! Scenarios against a scripted Kubernetes API (tower-test, DESIGN §5): each states the API's
//! answers, runs one component once, and asserts the requests it made and its outcome, including
//! at least one error answer.

mod dnsendpoint;
mod infra;
mod scripted;
mod xds_state;
