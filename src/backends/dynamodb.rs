//! The DynamoDB weight store: the table the earlier controller used (`--table-name`, key `ClusterName`
//! (S), numbers `DesiredWeight` and `CurrentWeight`).
//!
//! Every read is consistent. Every write is conditional: the row is created only if absent, the ack
//! only lands if DesiredWeight is still the applied value, and `set` only replaces the value it read.
//! Rows are parsed leniently into [`StoredWeight::Invalid`] (missing attribute, wrong type, out of
//! range) so that the reconciler can refuse them with a metric instead of failing.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;

use super::{AckOutcome, StoreError, StoredWeight, WeightRow, WeightStore};
use crate::aws::{classify, describe, Aws, Outcome};

pub const KEY: &str = "ClusterName";
pub const DESIRED: &str = "DesiredWeight";
pub const CURRENT: &str = "CurrentWeight";

pub struct DynamoStore {
    client: Client,
    table: String,
    aws: Aws,
}

impl DynamoStore {
    pub fn new(client: Client, table: &str, aws: Aws) -> Self {
        Self { client, table: table.to_string(), aws }
    }

    /// A store on the SDK configuration from the standard environment; `region` (`--aws-region`)
    /// wins over `AWS_REGION` when given.
    pub async fn connect(table: &str, region: Option<&str>, aws: Aws) -> Self {
        let config = crate::aws::sdk_config(region).await;
        Self::new(Client::new(&config), table, aws)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn error(operation: &'static str, message: String) -> StoreError {
        StoreError::Call { store: "dynamodb", operation, message }
    }

    fn key(cluster: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([(KEY.to_string(), AttributeValue::S(cluster.to_string()))])
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

fn parse_row(cluster: &str, item: &HashMap<String, AttributeValue>) -> WeightRow {
    let cluster = match item.get(KEY) {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => cluster.to_string(),
    };
    WeightRow { cluster, desired: parse_weight(item.get(DESIRED)), current: parse_weight(item.get(CURRENT)) }
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
        let mut rows = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        // Bounded: a table of weight rows is small; 1,000 pages would be millions of clusters.
        for _ in 0..1000 {
            let req = self.client.scan().table_name(&self.table).consistent_read(true).set_exclusive_start_key(start);
            let out = self
                .aws
                .call("dynamodb", "Scan", || req.clone().send())
                .await
                .map_err(|e| Self::error("list", describe(&e)))?;
            for item in out.items() {
                let name = match item.get(KEY) {
                    Some(AttributeValue::S(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                rows.push(parse_row(&name, item));
            }
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                break;
            }
        }
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
                Ok(WeightRow {
                    cluster: cluster.to_string(),
                    desired: StoredWeight::Valid(initial),
                    current: StoredWeight::Valid(initial),
                })
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
            .update_expression("SET #c = :w")
            .condition_expression("#d = :w")
            .expression_attribute_names("#c", CURRENT)
            .expression_attribute_names("#d", DESIRED)
            .expression_attribute_values(":w", number(applied))
            .build()
            .map_err(|e| Self::error("ack", e.to_string()))?;
        let req =
            self.client.transact_write_items().transact_items(TransactWriteItem::builder().update(update).build());
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
