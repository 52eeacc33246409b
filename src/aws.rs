//! AWS plumbing shared by the DynamoDB weight store and the Route53 provider: SDK configuration, the
//! one place where every call is counted (`weir_aws_requests_total{service,operation,outcome}`), and
//! retries with exponential backoff and full jitter.
//!
//! The SDK's own retries are disabled so that every HTTP attempt goes through [`Aws::call`]: it is
//! counted once per attempt, and throttling (`Throttling`, `PriorRequestNotComplete`,
//! `ThrottlingException`, `ProvisionedThroughputExceededException`, …) is retried here with bounded
//! attempts. A call that still fails is returned to the caller, which reports it; the next reconcile
//! tries again, so nothing is lost.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rand::Rng;

pub use aws_config;
pub use aws_sdk_dynamodb;
pub use aws_sdk_route53;
pub use aws_sdk_sts;

/// The region when `--aws-region` is not given and the environment names none.
pub const DEFAULT_REGION: &str = "eu-west-1";

/// Loads the SDK configuration from the standard environment (`AWS_ENDPOINT_URL`, `AWS_REGION`,
/// credentials chain). `region` is `--aws-region`: when given it wins over `AWS_REGION`, as the old
/// controller's flag did.
pub async fn sdk_config(region: Option<&str>) -> SdkConfig {
    loader(region).load().await
}

/// The configuration loader with weir's settings (region, no SDK retries, timeouts), for callers that
/// set more (tests point it at their own endpoint).
pub fn loader(region: Option<&str>) -> aws_config::ConfigLoader {
    let region = match region {
        Some(explicit) => RegionProviderChain::first_try(Region::new(explicit.to_string())),
        None => RegionProviderChain::default_provider().or_else(Region::new(DEFAULT_REGION)),
    };
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        // Retries happen in `Aws::call`, where each attempt is counted and throttling is backed off.
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

/// `weir_aws_requests_total{service,operation,outcome}`.
///
/// One counter family per process: every [`Aws`] counts into it however it was built (a factory that
/// knows nothing of the metrics registry included), and the wiring registers it once with
/// [`AwsMetrics::register`]. So no call can go uncounted.
#[derive(Clone)]
pub struct AwsMetrics {
    requests: Family<RequestLabels, Counter>,
}

static SHARED: std::sync::OnceLock<AwsMetrics> = std::sync::OnceLock::new();

impl Default for AwsMetrics {
    fn default() -> Self {
        SHARED.get_or_init(|| AwsMetrics { requests: Family::default() }).clone()
    }
}

impl AwsMetrics {
    /// A family of its own, not the process-wide one: for counting one component's calls in tests and
    /// benchmarks.
    pub fn isolated() -> Self {
        AwsMetrics { requests: Family::default() }
    }

    /// Registers the process-wide family in `registry` (once per registry).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("weir_aws");
        r.register(
            "requests",
            "AWS API calls (every attempt) by service, operation and outcome",
            metrics.requests.clone(),
        );
        metrics
    }

    /// Calls counted so far for one service (all outcomes; one operation or all), e.g. for benchmarks.
    pub fn count(&self, service: &str, operation: Option<&str>) -> u64 {
        Outcome::ALL.iter().map(|o| self.count_outcome(service, operation, *o)).sum()
    }

    /// Calls counted so far for one service and outcome (one operation or all).
    pub fn count_outcome(&self, service: &str, operation: Option<&str>, outcome: Outcome) -> u64 {
        // prometheus-client has no iteration over a family; keep the label space small and known.
        let ops: &[&'static str] = &[
            "ListResourceRecordSets",
            "ChangeResourceRecordSets",
            "GetChange",
            "ListHostedZonesByName",
            "GetHostedZone",
            "ListHealthChecks",
            "CreateHealthCheck",
            "ChangeTagsForResource",
            "GetHealthCheckStatus",
            "GetItem",
            "PutItem",
            "UpdateItem",
            "Scan",
            "TransactWriteItems",
        ];
        let services: &[&'static str] = &["route53", "dynamodb"];
        let mut total = 0;
        for s in services.iter().filter(|s| **s == service) {
            for op in ops.iter().filter(|o| operation.is_none_or(|want| want == **o)) {
                let labels = RequestLabels { service: s, operation: op, outcome: outcome.label() };
                total += self.requests.get_or_create(&labels).get();
            }
        }
        total
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Throttled or "prior request not complete": retried with backoff.
    Throttled,
    /// A DynamoDB condition failed or a transaction was cancelled.
    ConditionFailed,
    /// The request was rejected as invalid (`InvalidChangeBatch`, `InvalidInput`, `ValidationException`).
    Invalid,
    /// Any other error the service returned.
    ServiceError,
    /// Timeout, connection failure, unparsable response: retried.
    Transport,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Throttled,
        Outcome::ConditionFailed,
        Outcome::Invalid,
        Outcome::ServiceError,
        Outcome::Transport,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Throttled => "throttled",
            Outcome::ConditionFailed => "condition_failed",
            Outcome::Invalid => "invalid",
            Outcome::ServiceError => "error",
            Outcome::Transport => "transport",
        }
    }

    /// Worth another attempt right away (after backoff).
    pub fn retryable(self) -> bool {
        matches!(self, Outcome::Throttled | Outcome::Transport)
    }
}

/// Error codes that mean "slow down" (Route53, DynamoDB and the SDK's common list).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "PriorRequestNotComplete",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "TransactionInProgressException",
];

/// Classifies an SDK error.
pub fn classify<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Outcome {
    match err {
        SdkError::ServiceError(_) => match err.code() {
            Some(code) if THROTTLING_CODES.contains(&code) => Outcome::Throttled,
            Some(
                "ConditionalCheckFailedException" | "TransactionCanceledException" | "TransactionConflictException",
            ) => Outcome::ConditionFailed,
            Some("InvalidChangeBatch" | "InvalidInput" | "ValidationException") => Outcome::Invalid,
            _ => Outcome::ServiceError,
        },
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Outcome::Transport,
        _ => Outcome::ServiceError,
    }
}

/// `CODE: message` of an SDK error, or its display text.
pub fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: Debug>(err: &SdkError<E, R>) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// Exponential backoff with full jitter, bounded attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total, first one included.
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 8, base: Duration::from_millis(50), cap: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (`attempt` counts from 1): uniform in
    /// `[0, min(cap, base × 2^(attempt-1))]`, so that many clients throttled together spread out.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let ceiling = exp.min(self.cap);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis.max(1)))
    }
}

/// Counts and retries AWS calls. Cheap to clone.
#[derive(Clone, Default)]
pub struct Aws {
    pub metrics: AwsMetrics,
    pub retry: RetryPolicy,
}

impl Aws {
    pub fn new(metrics: AwsMetrics) -> Self {
        Self { metrics, retry: RetryPolicy::default() }
    }

    /// Runs `request` (a closure that sends one request, e.g. `|| builder.clone().send()`), counting
    /// every attempt and retrying throttling and transport errors with backoff. The last error is
    /// returned unchanged so that callers can read service-specific details.
    pub async fn call<T, E, R, F, Fut>(
        &self,
        service: &'static str,
        operation: &'static str,
        mut request: F,
    ) -> Result<T, SdkError<E, R>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: Debug,
    {
        let mut attempt = 1;
        loop {
            let result = request().await;
            let outcome = match &result {
                Ok(_) => Outcome::Success,
                Err(e) => classify(e),
            };
            self.metrics.requests.get_or_create(&RequestLabels { service, operation, outcome: outcome.label() }).inc();
            match result {
                Err(e) if outcome.retryable() && attempt < self.retry.max_attempts => {
                    let delay = self.retry.delay(attempt);
                    tracing::debug!(service, operation, attempt, ?delay, error = %describe(&e), "retrying AWS call");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy { max_attempts: 5, base: Duration::from_millis(100), cap: Duration::from_millis(400) };
        for _ in 0..200 {
            assert!(p.delay(1) <= Duration::from_millis(100));
            assert!(p.delay(2) <= Duration::from_millis(200));
            assert!(p.delay(10) <= Duration::from_millis(400));
        }
        // Jitter: not always the same value.
        let samples: std::collections::BTreeSet<_> = (0..50).map(|_| p.delay(3)).collect();
        assert!(samples.len() > 1);
    }

    fn service_error(code: &str) -> SdkError<aws_sdk_route53::operation::get_change::GetChangeError, ()> {
        use aws_sdk_route53::error::ErrorMetadata;
        use aws_sdk_route53::operation::get_change::GetChangeError;
        SdkError::service_error(GetChangeError::generic(ErrorMetadata::builder().code(code).build()), ())
    }

    fn fast(max_attempts: u32) -> Aws {
        let retry = RetryPolicy { max_attempts, base: Duration::from_millis(1), cap: Duration::from_millis(2) };
        Aws { metrics: AwsMetrics::isolated(), retry }
    }

    #[tokio::test]
    async fn throttling_is_retried_and_every_attempt_counted() {
        let aws = fast(5);
        let mut n = 0;
        let out = aws
            .call("route53", "GetChange", || {
                n += 1;
                let attempt = n;
                async move {
                    match attempt {
                        1 => Err(service_error("Throttling")),
                        2 => Err(service_error("PriorRequestNotComplete")),
                        _ => Ok(attempt),
                    }
                }
            })
            .await;
        assert_eq!(out.unwrap(), 3);
        assert_eq!(aws.metrics.count_outcome("route53", Some("GetChange"), Outcome::Throttled), 2);
        assert_eq!(aws.metrics.count_outcome("route53", Some("GetChange"), Outcome::Success), 1);
    }

    #[tokio::test]
    async fn attempts_are_bounded_and_other_errors_are_not_retried() {
        let aws = fast(4);
        let out: Result<(), _> = aws.call("route53", "GetChange", || async { Err(service_error("Throttling")) }).await;
        assert_eq!(classify(&out.unwrap_err()), Outcome::Throttled);
        assert_eq!(aws.metrics.count("route53", Some("GetChange")), 4);
        let aws = fast(4);
        let out: Result<(), _> =
            aws.call("route53", "GetChange", || async { Err(service_error("InvalidInput")) }).await;
        assert_eq!(classify(&out.unwrap_err()), Outcome::Invalid);
        assert_eq!(aws.metrics.count("route53", Some("GetChange")), 1);
    }

    #[test]
    fn throttling_codes_are_retryable() {
        use aws_sdk_route53::error::ErrorMetadata;
        use aws_sdk_route53::operation::change_resource_record_sets::ChangeResourceRecordSetsError;
        let mk = |code: &str| {
            let err = ChangeResourceRecordSetsError::generic(ErrorMetadata::builder().code(code).message("m").build());
            SdkError::<_, ()>::service_error(err, ())
        };
        assert_eq!(classify(&mk("Throttling")), Outcome::Throttled);
        assert_eq!(classify(&mk("PriorRequestNotComplete")), Outcome::Throttled);
        assert_eq!(classify(&mk("InvalidChangeBatch")), Outcome::Invalid);
        assert_eq!(classify(&mk("NoSuchHostedZone")), Outcome::ServiceError);
        assert!(Outcome::Throttled.retryable());
        assert!(!Outcome::Invalid.retryable());
        assert_eq!(describe(&mk("Throttling")), "Throttling: m");
    }
}
