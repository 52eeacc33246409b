//! The `static` weight store (`--backend-type static`, old name `fake`, the default): this cluster's
//! weight is a flag value (`--static-weight`, else `--initial-weight` as the old controller's `fake`). Nothing is stored, so acknowledging always succeeds and setting is refused.

use super::{AckOutcome, StoreError, StoredWeight, WeightRow, WeightStore};

#[derive(Debug, Clone)]
pub struct StaticStore {
    cluster: String,
    weight: u8,
}

impl StaticStore {
    pub fn new(cluster: impl Into<String>, weight: u8) -> Self {
        Self { cluster: cluster.into(), weight }
    }

    fn row(&self) -> WeightRow {
        WeightRow::new(self.cluster.clone(), StoredWeight::Valid(self.weight), StoredWeight::Valid(self.weight))
    }
}

#[async_trait::async_trait]
impl WeightStore for StaticStore {
    fn name(&self) -> &'static str {
        "static"
    }

    async fn list(&self) -> Result<Vec<WeightRow>, StoreError> {
        Ok(vec![self.row()])
    }

    async fn get(&self, cluster: &str) -> Result<Option<WeightRow>, StoreError> {
        Ok((cluster == self.cluster).then(|| self.row()))
    }

    /// There is no row to create: the weight is the one the store was opened with.
    async fn ensure(&self, _cluster: &str, _initial: u8) -> Result<WeightRow, StoreError> {
        Ok(self.row())
    }

    async fn ack(&self, _cluster: &str, _applied: u8) -> Result<AckOutcome, StoreError> {
        Ok(AckOutcome::Acknowledged)
    }

    async fn set_desired(&self, _cluster: &str, _desired: u8) -> Result<Option<StoredWeight>, StoreError> {
        Err(StoreError::ReadOnly("static"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_store_serves_the_flag_value() {
        let s = StaticStore::new("eu", 70);
        assert_eq!(s.ensure("eu", 0).await.unwrap().desired, StoredWeight::Valid(70));
        assert_eq!(s.get("eu").await.unwrap().unwrap().current, StoredWeight::Valid(70));
        assert_eq!(s.get("us").await.unwrap(), None);
        assert_eq!(s.list().await.unwrap().len(), 1);
        assert_eq!(s.ack("eu", 3).await.unwrap(), AckOutcome::Acknowledged);
        assert!(matches!(s.set_desired("eu", 1).await, Err(StoreError::ReadOnly("static"))));
    }
}
