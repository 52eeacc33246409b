//! The DynamoDB weight store: the table the earlier controller used (`--table-name`, key `ClusterName`
//! (S), numbers `DesiredWeight` and `CurrentWeight`).
//!
//! Every read is consistent. Every write is conditional: the row is created only if absent, the ack
//! only lands if DesiredWeight is still the applied value, and `set` only replaces the value it read.
//! Rows are parsed leniently into [`StoredWeight::Invalid`] (missing attribute, wrong type, out of
//! range) so that the reconciler can refuse them with a metric instead of failing.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, ReturnValue, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::{AckOutcome, DrainClaim, HistoryEntry, Plan, PlanWrite, StoreError, StoredWeight, WeightRow, WeightStore};
use crate::aws::{classify, describe, Aws, Outcome};

pub const KEY: &str = "ClusterName";
pub const DESIRED: &str = "DesiredWeight";
pub const CURRENT: &str = "CurrentWeight";
/// The row's ramp or override, JSON ([`Plan`]).
pub const PLAN: &str = "Plan";
/// The row's drain claim: Unix milliseconds (N) until which this cluster may take its weight to 0
/// ([`super::WeightStore::claim_drain`]); removed by the next ack.
pub const DRAIN_UNTIL: &str = "DrainUntil";
/// The hosts that block this cluster's ack (a string set; absent when none), for `weir weights list`.
pub const HELD: &str = "HeldHosts";
/// The history table's sort key: `<unix ms, 13 digits>-<random>`, so that entries sort by time and
/// two in one millisecond do not collide.
pub const HISTORY_SORT: &str = "ChangedAt";

pub struct DynamoStore {
    client: Client,
    table: String,
    aws: Aws,
    /// `--history-table` (key `ClusterName` S, sort `ChangedAt` S); history is off without it.
    history_table: Option<String>,
    /// Asks STS who we are (the history's actor); absent on a store built from a bare client.
    sts: Option<aws_sdk_sts::Client>,
    /// Reads the table's stream, when it has one ([`super::WeightStore::watch`]).
    streams: Option<aws_sdk_dynamodbstreams::Client>,
    /// The caller's ARN, looked up once (`None` inside: the lookup failed, and said so).
    identity: tokio::sync::OnceCell<Option<String>>,
}

/// How long the identity lookup may take before the history falls back to a local name.
const STS_TIMEOUT: Duration = Duration::from_secs(5);

impl DynamoStore {
    pub fn new(client: Client, table: &str, aws: Aws) -> Self {
        Self {
            client,
            table: table.to_string(),
            aws,
            history_table: None,
            sts: None,
            streams: None,
            identity: tokio::sync::OnceCell::new(),
        }
    }

    /// A store that also knows its caller (STS) and can follow the table's stream, on `config`.
    pub fn with_config(config: &aws_config::SdkConfig, table: &str, aws: Aws) -> Self {
        let mut store = Self::new(Client::new(config), table, aws);
        store.sts = Some(aws_sdk_sts::Client::new(config));
        store.streams = Some(aws_sdk_dynamodbstreams::Client::new(config));
        store
    }

    pub fn with_history_table(mut self, table: Option<String>) -> Self {
        self.history_table = table;
        self
    }

    /// Fails unless the history table exists (a typo must not silently turn history off).
    pub async fn check_history_table(&self) -> Result<(), StoreError> {
        let Some(table) = &self.history_table else { return Ok(()) };
        let req = self.client.describe_table().table_name(table);
        self.aws
            .call("dynamodb", "DescribeTable", || req.clone().send())
            .await
            .map(drop)
            .map_err(|e| Self::error("open the history table", format!("{table}: {}", describe(&e))))
    }

    /// A store on the SDK configuration from the standard environment; `region` (`--aws-region`)
    /// wins over `AWS_REGION` when given.
    pub async fn connect(table: &str, region: Option<&str>, aws: Aws) -> Self {
        let config = crate::aws::sdk_config(region).await;
        Self::with_config(&config, table, aws)
    }

    /// `sts:GetCallerIdentity` (needs no IAM permission), one attempt, bounded: on failure the
    /// history names a local fallback, with a warning.
    async fn lookup_identity(&self) -> Option<String> {
        let sts = self.sts.as_ref()?;
        let once = Aws { retry: crate::aws::RetryPolicy { max_attempts: 1, ..self.aws.retry }, ..self.aws.clone() };
        let req = sts.get_caller_identity();
        let call = once.call("sts", "GetCallerIdentity", || req.clone().send());
        let error = match tokio::time::timeout(STS_TIMEOUT, call).await {
            Ok(Ok(out)) => match out.arn {
                Some(arn) => return Some(arn),
                None => "the answer has no Arn".to_string(),
            },
            Ok(Err(e)) => describe(&e),
            Err(_) => format!("no answer within {STS_TIMEOUT:?}"),
        };
        tracing::warn!(
            %error,
            "STS GetCallerIdentity failed: the history names this process by a local name instead of its AWS identity"
        );
        None
    }

    /// [`WeightStore::claim_drain`] on `rows`, the table as read just before. One
    /// `TransactWriteItems`: the claim on this cluster's row (DesiredWeight still 0) and a
    /// `ConditionCheck` on every other row read (no live claim; DesiredWeight > 0 on those counted for
    /// `--min-serving-clusters`), so that a table changed since the read refuses the claim.
    /// DynamoDB transactions are serialisable: of two clusters claiming at once, the second's check
    /// sees the first's claim, or the two conflict and both ask again on their next poll.
    pub async fn claim_drain_on(
        &self,
        rows: &[WeightRow],
        cluster: &str,
        min_serving: usize,
        ttl_ms: i64,
    ) -> Result<DrainClaim, StoreError> {
        if !rows.iter().any(|r| r.cluster == cluster) {
            return Err(StoreError::NotFound(cluster.to_string()));
        }
        let now = super::now_ms();
        let pinned = match super::drain_claim_check(rows, cluster, min_serving, now) {
            Ok(pinned) => pinned,
            Err(why) => return Ok(DrainClaim::Refused(why)),
        };
        let others: Vec<&WeightRow> = rows.iter().filter(|r| r.cluster != cluster).collect();
        // TransactWriteItems takes at most 100 items.
        if others.len() > 99 {
            return Err(Self::error(
                "claim_drain",
                format!("{} other clusters: more than one transaction holds", others.len()),
            ));
        }
        let build = |e: aws_sdk_dynamodb::error::BuildError| Self::error("claim_drain", e.to_string());
        let claim = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(cluster)))
            .update_expression("SET #du = :until")
            .condition_expression("#d = :zero")
            .expression_attribute_names("#du", DRAIN_UNTIL)
            .expression_attribute_names("#d", DESIRED)
            .expression_attribute_values(":until", AttributeValue::N((now + ttl_ms).to_string()))
            .expression_attribute_values(":zero", number(0))
            .build()
            .map_err(build)?;
        let mut req =
            self.client.transact_write_items().transact_items(TransactWriteItem::builder().update(claim).build());
        for other in others {
            let mut check = ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(Self::key(&other.cluster)))
                .expression_attribute_names("#du", DRAIN_UNTIL)
                .expression_attribute_values(":now", AttributeValue::N(now.to_string()));
            let mut condition = "(attribute_not_exists(#du) OR #du <= :now)".to_string();
            if pinned.contains(&other.cluster) {
                condition.push_str(" AND #d > :zero");
                check = check.expression_attribute_names("#d", DESIRED).expression_attribute_values(":zero", number(0));
            }
            let check = check.condition_expression(condition).build().map_err(build)?;
            req = req.transact_items(TransactWriteItem::builder().condition_check(check).build());
        }
        match self.aws.call("dynamodb", "TransactWriteItems", || req.clone().send()).await {
            Ok(_) => Ok(DrainClaim::Claimed),
            Err(e) if classify(&e) == Outcome::ConditionFailed => Ok(DrainClaim::Refused(format!(
                "the weight table changed while the drain was claimed (another cluster claimed, or stopped \
                 serving, or DesiredWeight moved: {}); asking again on the next poll",
                describe(&e)
            ))),
            Err(e) => Err(Self::error("claim_drain", describe(&e))),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The transaction item that appends `entry` to the history table.
    fn history_put(&self, entry: &HistoryEntry) -> Result<TransactWriteItem, StoreError> {
        let table = self.history_table.as_deref().unwrap_or_default();
        let put = Put::builder()
            .table_name(table)
            .set_item(Some(history_item(entry)))
            .build()
            .map_err(|e| Self::error("append_history", e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    fn error(operation: &'static str, message: String) -> StoreError {
        StoreError::Call { store: "dynamodb", operation, message }
    }

    fn key(cluster: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([(KEY.to_string(), AttributeValue::S(cluster.to_string()))])
    }

    /// Every item of the weight table (consistent reads). Bounded: a table of weight rows is small;
    /// 1,000 pages would be millions of clusters.
    async fn scan(&self, operation: &'static str) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        for _ in 0..1000 {
            let req = self.client.scan().table_name(&self.table).consistent_read(true).set_exclusive_start_key(start);
            let out = self
                .aws
                .call("dynamodb", "Scan", || req.clone().send())
                .await
                .map_err(|e| Self::error(operation, describe(&e)))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                break;
            }
        }
        Ok(items)
    }

    /// The raw DesiredWeight attribute of a row (for conditional writes), and the parsed row.
    async fn read(&self, cluster: &str) -> Result<Option<(Option<AttributeValue>, WeightRow)>, StoreError> {
        let req =
            self.client.get_item().table_name(&self.table).set_key(Some(Self::key(cluster))).consistent_read(true);
        let out = self
            .aws
            .call("dynamodb", "GetItem", || req.clone().send())
            .await
            .map_err(|e| Self::error("get", describe(&e)))?;
        Ok(out.item.map(|item| (item.get(DESIRED).cloned(), parse_row(cluster, &item))))
    }
}

/// A weight attribute as found: a number in 0-100, or a description of what is there instead.
pub fn parse_weight(value: Option<&AttributeValue>) -> StoredWeight {
    match value {
        None => StoredWeight::Invalid("missing".into()),
        Some(AttributeValue::N(n)) => StoredWeight::from_text(n),
        Some(AttributeValue::S(s)) => StoredWeight::Invalid(format!("string {s:?}")),
        Some(AttributeValue::Null(_)) => StoredWeight::Invalid("null".into()),
        Some(AttributeValue::Bool(b)) => StoredWeight::Invalid(format!("bool {b}")),
        Some(other) => StoredWeight::Invalid(format!("{other:?}")),
    }
}

fn row_name(item: &HashMap<String, AttributeValue>) -> String {
    match item.get(KEY) {
        Some(AttributeValue::S(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn parse_row(cluster: &str, item: &HashMap<String, AttributeValue>) -> WeightRow {
    let cluster = match item.get(KEY) {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => cluster.to_string(),
    };
    let mut row = WeightRow::new(cluster, parse_weight(item.get(DESIRED)), parse_weight(item.get(CURRENT)));
    row.plan = match item.get(PLAN) {
        Some(AttributeValue::S(raw)) => match Plan::from_json(raw) {
            Ok(plan) => Some(plan),
            Err(e) => {
                tracing::warn!(cluster = %row.cluster, error = %e, "ignoring the plan of this row");
                None
            }
        },
        _ => None,
    };
    row.drain_until_ms = match item.get(DRAIN_UNTIL) {
        Some(AttributeValue::N(ms)) => ms.parse().ok(),
        _ => None,
    };
    row
}

fn history_item(e: &HistoryEntry) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        (KEY.to_string(), AttributeValue::S(e.cluster.clone())),
        (HISTORY_SORT.to_string(), AttributeValue::S(format!("{:013}-{:08x}", e.at_ms, rand::random::<u32>()))),
        ("At".to_string(), AttributeValue::N(e.at_ms.to_string())),
        ("Field".to_string(), AttributeValue::S(e.field.clone())),
        ("After".to_string(), AttributeValue::S(e.after.clone())),
        ("Actor".to_string(), AttributeValue::S(e.actor.clone())),
        ("Cause".to_string(), AttributeValue::S(e.cause.clone())),
    ]);
    if let Some(b) = &e.before {
        item.insert("Before".into(), AttributeValue::S(b.clone()));
    }
    if let Some(r) = &e.reason {
        item.insert("Reason".into(), AttributeValue::S(r.clone()));
    }
    item
}

fn history_entry(item: &HashMap<String, AttributeValue>) -> HistoryEntry {
    let s = |k: &str| match item.get(k) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    };
    let at_ms = match item.get("At") {
        Some(AttributeValue::N(n)) => n.parse().unwrap_or(0),
        _ => 0,
    };
    HistoryEntry {
        at_ms,
        time: super::rfc3339_ms(at_ms),
        cluster: s(KEY).unwrap_or_default(),
        field: s("Field").unwrap_or_default(),
        before: s("Before"),
        after: s("After").unwrap_or_default(),
        actor: s("Actor").unwrap_or_default(),
        cause: s("Cause").unwrap_or_default(),
        reason: s("Reason"),
    }
}

fn number(w: u8) -> AttributeValue {
    AttributeValue::N(w.to_string())
}

#[async_trait::async_trait]
impl WeightStore for DynamoStore {
    fn name(&self) -> &'static str {
        "dynamodb"
    }

    async fn list(&self) -> Result<Vec<WeightRow>, StoreError> {
        let mut rows: Vec<WeightRow> =
            self.scan("list").await?.iter().map(|item| parse_row(&row_name(item), item)).collect();
        rows.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        Ok(rows)
    }

    async fn get(&self, cluster: &str) -> Result<Option<WeightRow>, StoreError> {
        Ok(self.read(cluster).await?.map(|(_, row)| row))
    }

    async fn ensure(&self, cluster: &str, initial: u8) -> Result<WeightRow, StoreError> {
        let req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, AttributeValue::S(cluster.to_string()))
            .item(DESIRED, number(initial))
            .item(CURRENT, number(initial))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", KEY);
        match self.aws.call("dynamodb", "PutItem", || req.clone().send()).await {
            Ok(_) => {
                tracing::info!(cluster, table = %self.table, initial, "created weight row");
                Ok(WeightRow::new(cluster, StoredWeight::Valid(initial), StoredWeight::Valid(initial)))
            }
            // The operator's row is there: leave it, read it.
            Err(e) if classify(&e) == Outcome::ConditionFailed => self
                .get(cluster)
                .await?
                .ok_or_else(|| Self::error("ensure", format!("row {cluster:?} exists but could not be read"))),
            Err(e) => Err(Self::error("ensure", describe(&e))),
        }
    }

    async fn ack(&self, cluster: &str, applied: u8) -> Result<AckOutcome, StoreError> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(cluster)))
            .update_expression("SET #c = :w REMOVE #du")
            .condition_expression("#d = :w")
            .expression_attribute_names("#c", CURRENT)
            .expression_attribute_names("#du", DRAIN_UNTIL)
            .expression_attribute_names("#d", DESIRED)
            .expression_attribute_values(":w", number(applied))
            .build()
            .map_err(|e| Self::error("ack", e.to_string()))?;
        let mut req =
            self.client.transact_write_items().transact_items(TransactWriteItem::builder().update(update).build());
        // The ack and its history entry land together or not at all.
        if self.history_table.is_some() {
            let actor = super::controller_actor(self.caller_identity().await.as_deref(), cluster);
            let entry = HistoryEntry::new(cluster, "CurrentWeight", None, applied.to_string(), &actor, "ack");
            req = req.transact_items(self.history_put(&entry)?);
        }
        match self.aws.call("dynamodb", "TransactWriteItems", || req.clone().send()).await {
            Ok(_) => Ok(AckOutcome::Acknowledged),
            Err(e) if classify(&e) == Outcome::ConditionFailed => {
                tracing::info!(cluster, applied, reason = %describe(&e), "DesiredWeight changed while applying; not acknowledged, reconciling again");
                Ok(AckOutcome::DesiredChanged)
            }
            Err(e) => Err(Self::error("ack", describe(&e))),
        }
    }

    async fn set_desired(&self, cluster: &str, desired: u8) -> Result<Option<StoredWeight>, StoreError> {
        let Some((raw, row)) = self.read(cluster).await? else {
            return Err(StoreError::NotFound(cluster.to_string()));
        };
        // Replace only what was read: a concurrent `set` makes this one fail instead of silently winning.
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(cluster)))
            .update_expression("SET #d = :new")
            .expression_attribute_names("#d", DESIRED)
            .expression_attribute_names("#k", KEY)
            .expression_attribute_values(":new", number(desired))
            .return_values(ReturnValue::UpdatedOld);
        req = match raw {
            Some(old) => {
                req.condition_expression("attribute_exists(#k) AND #d = :old").expression_attribute_values(":old", old)
            }
            None => req.condition_expression("attribute_exists(#k) AND attribute_not_exists(#d)"),
        };
        match self.aws.call("dynamodb", "UpdateItem", || req.clone().send()).await {
            Ok(out) => Ok(Some(out.attributes.as_ref().map(|a| parse_weight(a.get(DESIRED))).unwrap_or(row.desired))),
            Err(e) if classify(&e) == Outcome::ConditionFailed => {
                let found = match self.get(cluster).await? {
                    Some(now) => now.desired.to_string(),
                    None => "no row".to_string(),
                };
                Err(StoreError::Conflict { cluster: cluster.to_string(), expected: row.desired.to_string(), found })
            }
            Err(e) => Err(Self::error("set", describe(&e))),
        }
    }

    async fn write_plan(&self, cluster: &str, write: PlanWrite<'_>) -> Result<bool, StoreError> {
        // DesiredWeight before the write, exactly: the condition pins it, so that the history entry
        // can be written in the same transaction (a transaction returns no old values). A row whose
        // DesiredWeight is not a weight is read first and pinned to its raw attribute.
        let mut condition = vec!["attribute_exists(#k)".to_string()];
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(cluster)))
            .expression_attribute_names("#k", KEY)
            .expression_attribute_names("#p", PLAN)
            .expression_attribute_names("#d", DESIRED);
        let (before, pinned) = match write.expect_desired {
            Some(d) => (StoredWeight::Valid(d), Some(number(d))),
            None => {
                let Some((raw, row)) = self.read(cluster).await? else { return Ok(false) };
                (row.desired, raw)
            }
        };
        match pinned {
            Some(value) => {
                condition.push("#d = :ed".into());
                update = update.expression_attribute_values(":ed", value);
            }
            None => condition.push("attribute_not_exists(#d)".into()),
        }
        match write.expect_plan {
            Some(p) => {
                condition.push("#p = :ep".into());
                update = update.expression_attribute_values(":ep", AttributeValue::S(p.to_json()));
            }
            None => condition.push("attribute_not_exists(#p)".into()),
        }
        let mut set = Vec::new();
        if let Some(d) = write.desired {
            set.push("#d = :nd");
            update = update.expression_attribute_values(":nd", number(d));
        }
        if let Some(p) = write.plan {
            set.push("#p = :np");
            update = update.expression_attribute_values(":np", AttributeValue::S(p.to_json()));
        }
        let mut expression = String::new();
        if !set.is_empty() {
            expression = format!("SET {}", set.join(", "));
        }
        if write.plan.is_none() {
            expression = format!("{expression} REMOVE #p");
        }
        let update = update
            .condition_expression(condition.join(" AND "))
            .update_expression(expression.trim())
            .build()
            .map_err(|e| Self::error("write_plan", e.to_string()))?;
        let mut req =
            self.client.transact_write_items().transact_items(TransactWriteItem::builder().update(update).build());
        if let Some(d) = write.desired.filter(|d| before != StoredWeight::Valid(*d)) {
            if self.history_table.is_some() {
                let entry = HistoryEntry::new(
                    cluster,
                    "DesiredWeight",
                    Some(before.to_string()),
                    d.to_string(),
                    write.actor,
                    write.cause,
                )
                .with_reason(write.reason);
                req = req.transact_items(self.history_put(&entry)?);
            }
        }
        match self.aws.call("dynamodb", "TransactWriteItems", || req.clone().send()).await {
            Ok(_) => Ok(true),
            Err(e) if classify(&e) == Outcome::ConditionFailed => Ok(false),
            Err(e) => Err(Self::error("write_plan", describe(&e))),
        }
    }

    async fn caller_identity(&self) -> Option<String> {
        self.identity.get_or_init(|| self.lookup_identity()).await.clone()
    }

    fn spawn_change_hints(
        &self,
        cluster: &str,
        wake: Arc<Notify>,
        shutdown: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        let streams = self.streams.clone()?;
        let follower = StreamFollower {
            client: self.client.clone(),
            streams,
            table: self.table.clone(),
            cluster: cluster.to_string(),
            aws: self.aws.clone(),
        };
        Some(tokio::spawn(follower.run(wake, shutdown)))
    }

    async fn claim_drain(&self, cluster: &str, min_serving: usize, ttl_ms: i64) -> Result<DrainClaim, StoreError> {
        let rows = self.list().await?;
        self.claim_drain_on(&rows, cluster, min_serving, ttl_ms).await
    }

    /// Records the held hosts on the cluster's own row (never creating one), or removes the attribute
    /// when none is held. Called only when the set changes.
    async fn note_held(&self, cluster: &str, hosts: &[String]) -> Result<(), StoreError> {
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(cluster)))
            .condition_expression("attribute_exists(#k)")
            .expression_attribute_names("#k", KEY)
            .expression_attribute_names("#h", HELD);
        let req = if hosts.is_empty() {
            req.update_expression("REMOVE #h")
        } else {
            req.update_expression("SET #h = :h").expression_attribute_values(":h", AttributeValue::Ss(hosts.to_vec()))
        };
        match self.aws.call("dynamodb", "UpdateItem", || req.clone().send()).await {
            Ok(_) => Ok(()),
            Err(e) if classify(&e) == Outcome::ConditionFailed => Err(StoreError::NotFound(cluster.to_string())),
            Err(e) => Err(Self::error("note_held", describe(&e))),
        }
    }

    async fn held(&self) -> Result<std::collections::BTreeMap<String, Vec<String>>, StoreError> {
        let mut held = std::collections::BTreeMap::new();
        for item in self.scan("held").await? {
            if let Some(AttributeValue::Ss(hosts)) = item.get(HELD) {
                let mut hosts = hosts.clone();
                hosts.sort();
                held.insert(row_name(&item), hosts);
            }
        }
        Ok(held)
    }

    async fn append_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let Some(table) = &self.history_table else { return Ok(()) };
        let req = self.client.put_item().table_name(table).set_item(Some(history_item(entry)));
        self.aws
            .call("dynamodb", "PutItem", || req.clone().send())
            .await
            .map(drop)
            .map_err(|e| Self::error("append_history", describe(&e)))
    }

    async fn history(&self, cluster: Option<&str>, since_ms: Option<i64>) -> Result<Vec<HistoryEntry>, StoreError> {
        let Some(table) = &self.history_table else {
            return Err(Self::error("history", "history is off: no --history-table was given".into()));
        };
        let since = format!("{:013}", since_ms.unwrap_or(0).max(0));
        let mut entries = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        for _ in 0..1000 {
            let items = match cluster {
                Some(c) => {
                    let req = self
                        .client
                        .query()
                        .table_name(table)
                        .consistent_read(true)
                        .key_condition_expression("#k = :c AND #s >= :since")
                        .expression_attribute_names("#k", KEY)
                        .expression_attribute_names("#s", HISTORY_SORT)
                        .expression_attribute_values(":c", AttributeValue::S(c.to_string()))
                        .expression_attribute_values(":since", AttributeValue::S(since.clone()))
                        .set_exclusive_start_key(start.clone());
                    let out = self
                        .aws
                        .call("dynamodb", "Query", || req.clone().send())
                        .await
                        .map_err(|e| Self::error("history", describe(&e)))?;
                    start = out.last_evaluated_key.clone().filter(|k| !k.is_empty());
                    out.items.unwrap_or_default()
                }
                None => {
                    let req = self
                        .client
                        .scan()
                        .table_name(table)
                        .consistent_read(true)
                        .filter_expression("#s >= :since")
                        .expression_attribute_names("#s", HISTORY_SORT)
                        .expression_attribute_values(":since", AttributeValue::S(since.clone()))
                        .set_exclusive_start_key(start.clone());
                    let out = self
                        .aws
                        .call("dynamodb", "Scan", || req.clone().send())
                        .await
                        .map_err(|e| Self::error("history", describe(&e)))?;
                    start = out.last_evaluated_key.clone().filter(|k| !k.is_empty());
                    out.items.unwrap_or_default()
                }
            };
            entries.extend(items.iter().map(history_entry));
            if start.is_none() {
                break;
            }
        }
        entries.sort_by_key(|e| e.at_ms);
        Ok(entries)
    }
}

/// How often the stream's open shards are read (one `GetRecords` per open shard each time).
pub const STREAM_POLL: Duration = Duration::from_millis(100);
/// How often the shard list is read again (shards close and split over time).
const STREAM_REDISCOVER: Duration = Duration::from_secs(60);
/// How often a table without a stream is checked for one.
const STREAM_RECHECK: Duration = Duration::from_secs(300);

/// Follows the weight table's DynamoDB stream and wakes the weight loop when a record names this
/// cluster's row. Only a hint: the loop then reads the row consistently, and its poll stays the
/// source of truth, so a missed record (a shard that closed, a throttled read) costs latency only.
struct StreamFollower {
    client: Client,
    streams: aws_sdk_dynamodbstreams::Client,
    table: String,
    cluster: String,
    aws: Aws,
}

/// Why the follower stopped reading for a while.
#[derive(Debug)]
enum StreamStop {
    /// The table has no stream (or it was turned off).
    NoStream,
    Error(String),
}

impl StreamFollower {
    async fn run(self, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        let mut said: Option<String> = None;
        loop {
            let pause = tokio::select! {
                stop = self.follow(&wake) => match stop {
                    StreamStop::NoStream => {
                        if said.as_deref() != Some("no stream") {
                            tracing::info!(table = %self.table, "the weight table has no stream: DesiredWeight edits are seen by the poll alone (--weight-poll-interval)");
                            said = Some("no stream".into());
                        }
                        STREAM_RECHECK
                    }
                    StreamStop::Error(e) => {
                        if said.as_deref() != Some(e.as_str()) {
                            tracing::warn!(table = %self.table, error = %e, "reading the weight table's stream failed; the poll goes on, retrying");
                            said = Some(e);
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        backoff
                    }
                },
                _ = shutdown.changed() => return,
            };
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn err<E, R>(operation: &str, e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> StreamStop
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        StreamStop::Error(format!("{operation}: {}", describe(e)))
    }

    /// Reads the stream until something stops it; returns only on a stop.
    async fn follow(&self, wake: &Notify) -> StreamStop {
        let req = self.client.describe_table().table_name(&self.table);
        let table = match self.aws.call("dynamodb", "DescribeTable", || req.clone().send()).await {
            Ok(out) => out.table,
            Err(e) => return Self::err("DescribeTable", &e),
        };
        let enabled = table.as_ref().and_then(|t| t.stream_specification()).is_some_and(|s| s.stream_enabled());
        let Some(arn) = table.and_then(|t| t.latest_stream_arn).filter(|_| enabled) else {
            return StreamStop::NoStream;
        };
        loop {
            let mut iterators = match self.open_shards(&arn).await {
                Ok(i) => i,
                Err(stop) => return stop,
            };
            if iterators.is_empty() {
                return StreamStop::Error(format!("stream {arn} has no open shard"));
            }
            tracing::debug!(stream = %arn, shards = iterators.len(), "following the weight table's stream");
            let until = tokio::time::Instant::now() + STREAM_REDISCOVER;
            while tokio::time::Instant::now() < until && !iterators.is_empty() {
                let mut next = Vec::with_capacity(iterators.len());
                for iterator in iterators {
                    let req = self.streams.get_records().shard_iterator(iterator).limit(100);
                    let out = match self.aws.call("dynamodbstreams", "GetRecords", || req.clone().send()).await {
                        Ok(out) => out,
                        // An iterator lives 15 minutes; a new one is fetched on rediscovery.
                        Err(e) if e.code() == Some("ExpiredIteratorException") => continue,
                        Err(e) => return Self::err("GetRecords", &e),
                    };
                    if out.records().iter().any(|r| self.names_our_row(r)) {
                        wake.notify_one();
                    }
                    // None: the shard closed; its children are found on rediscovery.
                    next.extend(out.next_shard_iterator);
                }
                iterators = next;
                tokio::time::sleep(STREAM_POLL).await;
            }
        }
    }

    fn names_our_row(&self, record: &aws_sdk_dynamodbstreams::types::Record) -> bool {
        use aws_sdk_dynamodbstreams::types::AttributeValue as StreamValue;
        let key = record.dynamodb().and_then(|d| d.keys()).and_then(|k| k.get(KEY));
        matches!(key, Some(StreamValue::S(name)) if *name == self.cluster)
    }

    /// An iterator at the newest record of every open shard.
    async fn open_shards(&self, arn: &str) -> Result<Vec<String>, StreamStop> {
        use aws_sdk_dynamodbstreams::types::ShardIteratorType;
        let mut open = Vec::new();
        let mut start: Option<String> = None;
        // Bounded: a table this small has a handful of shards.
        for _ in 0..100 {
            let req = self.streams.describe_stream().stream_arn(arn).set_exclusive_start_shard_id(start.clone());
            let out = self
                .aws
                .call("dynamodbstreams", "DescribeStream", || req.clone().send())
                .await
                .map_err(|e| Self::err("DescribeStream", &e))?;
            let Some(desc) = out.stream_description else { break };
            for shard in desc.shards() {
                let closed = shard.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_some();
                if let (false, Some(id)) = (closed, shard.shard_id()) {
                    open.push(id.to_string());
                }
            }
            start = desc.last_evaluated_shard_id;
            if start.is_none() {
                break;
            }
        }
        let mut iterators = Vec::with_capacity(open.len());
        for shard in open {
            let req = self
                .streams
                .get_shard_iterator()
                .stream_arn(arn)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::Latest);
            let out = self
                .aws
                .call("dynamodbstreams", "GetShardIterator", || req.clone().send())
                .await
                .map_err(|e| Self::err("GetShardIterator", &e))?;
            iterators.extend(out.shard_iterator);
        }
        Ok(iterators)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_parsed_strictly() {
        assert_eq!(parse_weight(Some(&AttributeValue::N("42".into()))), StoredWeight::Valid(42));
        assert_eq!(parse_weight(Some(&AttributeValue::N("101".into()))), StoredWeight::Invalid("101".into()));
        assert_eq!(parse_weight(Some(&AttributeValue::N("-1".into()))), StoredWeight::Invalid("-1".into()));
        assert_eq!(parse_weight(Some(&AttributeValue::N("2.5".into()))), StoredWeight::Invalid("2.5".into()));
        assert_eq!(parse_weight(Some(&AttributeValue::S("50".into()))), StoredWeight::Invalid("string \"50\"".into()));
        assert_eq!(parse_weight(None), StoredWeight::Invalid("missing".into()));
    }

    #[test]
    fn rows_keep_their_cluster_name() {
        let item = HashMap::from([
            (KEY.to_string(), AttributeValue::S("eu".into())),
            (DESIRED.to_string(), AttributeValue::N("10".into())),
        ]);
        let row = parse_row("ignored", &item);
        assert_eq!(row.cluster, "eu");
        assert_eq!(row.desired, StoredWeight::Valid(10));
        assert_eq!(row.current, StoredWeight::Invalid("missing".into()));
    }
}
