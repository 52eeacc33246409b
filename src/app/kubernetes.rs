//! Wiring of the Kubernetes-only parts of `weir controller`: leader election and Events.

use std::sync::Arc;

use anyhow::Result;
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::runtime::Runtime;
use crate::cli::{LeaderArgs, ProviderKind};
use crate::reconciler::leader::{
    always_leader, default_identity, Fence, LeaderConfig, LeaderElector, LeaderMetrics, LeaderRx, WritersDone,
};
use crate::reconciler::{NoRefusalSink, RefusalSink};

/// Starts leader election when enabled; otherwise this process is always the leader. The returned
/// sender must live as long as the writers (dropping it freezes the value). Every writer checks the
/// returned [`Fence`] before each write batch; on shutdown the Lease is released once `writers` says
/// the in-flight passes ended.
pub async fn start_leader_election(
    args: &LeaderArgs,
    rt: &Runtime,
    liveness: &crate::telemetry::Liveness,
    writers: WritersDone,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(Option<watch::Sender<bool>>, LeaderRx, Fence)> {
    // Registered in every mode so that "no replica is the leader" can be alerted on everywhere.
    let metrics = LeaderMetrics::register(&mut rt.registry());
    if !args.enable_leader_election {
        metrics.leader.set(1);
        let (tx, rx, fence) = always_leader();
        return Ok((Some(tx), rx, fence));
    }
    let config = LeaderConfig {
        namespace: args.leader_election_namespace.clone(),
        name: args.leader_election_id.clone(),
        identity: default_identity(),
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    }
    .checked()?;
    // Each round (and the release) is bounded by the elector's own deadline, not by the client.
    let client = rt.kube("leader election").await?;
    let fence = Fence::closed();
    // A round is bounded by the renew deadline; three missed rounds in a row is a stuck elector.
    let heartbeat = liveness.heartbeat("leader election", (config.renew_deadline + config.retry_period) * 3);
    let elector = LeaderElector {
        api: Api::namespaced(client, &config.namespace),
        config,
        metrics,
        fence: fence.clone(),
        heartbeat,
    };
    let (tx, rx) = watch::channel(false);
    tasks.push(tokio::spawn(elector.run(tx, rt.shutdown(), writers)));
    Ok((None, rx, fence))
}

/// This controller's Pod (`POD_NAME`, and `POD_NAMESPACE` or the service account's namespace file),
/// where Events about the weight row go; `None` outside a Pod.
pub fn own_pod() -> Option<crate::model::ObjectRef> {
    let name = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty())?;
    let namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())?;
    Some(crate::model::ObjectRef::new("Pod", &namespace, &name))
}

/// Events on refused inputs with the Kubernetes provider; nothing more than logs and metrics otherwise.
pub async fn refusal_sink(
    provider: ProviderKind,
    rt: &Runtime,
) -> Result<(Arc<dyn RefusalSink>, Option<JoinHandle<()>>)> {
    if provider != ProviderKind::Kubernetes {
        return Ok((Arc::new(NoRefusalSink), None));
    }
    let client = rt.kube("Events").await?;
    let (sink, task) = crate::reconciler::events::spawn(client, default_identity());
    Ok((Arc::new(sink), Some(task)))
}
