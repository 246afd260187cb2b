//! The registry service: in-memory state plus the Kafka log, with the
//! write discipline that keeps them in step.
//!
//! Writes are serialized by one async mutex held across plan → produce →
//! apply, so two concurrent registrations cannot both pick the same id or
//! version. The state itself sits behind a separate `RwLock` that is only
//! write-locked for the (synchronous) apply step, so reads are served from
//! memory even while a write waits for Kafka — or Kafka is down.

use tokio::sync::{Mutex, RwLock, RwLockReadGuard};

use crate::{
    compatibility::CompatibilityLevel,
    error::RegistryError,
    persistence::KafkaLog,
    records::LogRecord,
    schema::AvroSchema,
    store::{RegisterPlan, Store, VersionSpec},
};

#[derive(Debug)]
pub(crate) struct Registry {
    state: RwLock<Store>,
    writer: Mutex<()>,
    log: KafkaLog,
}

impl Registry {
    pub(crate) fn new(store: Store, log: KafkaLog) -> Self {
        Self {
            state: RwLock::new(store),
            writer: Mutex::new(()),
            log,
        }
    }

    pub(crate) async fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.state.read().await
    }

    pub(crate) async fn register(
        &self,
        subject: &str,
        schema: &AvroSchema,
    ) -> Result<i32, RegistryError> {
        let _writer = self.writer.lock().await;
        let plan = self.state.read().await.plan_register(subject, schema)?;
        match plan {
            RegisterPlan::Existing { id } => Ok(id),
            RegisterPlan::New { id, record } => {
                self.commit(vec![record]).await?;
                Ok(id)
            }
        }
    }

    pub(crate) async fn set_level(
        &self,
        subject: Option<&str>,
        level: CompatibilityLevel,
    ) -> Result<(), RegistryError> {
        let _writer = self.writer.lock().await;
        self.commit(vec![Store::plan_set_level(subject, level)])
            .await
    }

    /// Unsets a level; returns the level that was in effect.
    pub(crate) async fn delete_level(
        &self,
        subject: Option<&str>,
    ) -> Result<CompatibilityLevel, RegistryError> {
        let _writer = self.writer.lock().await;
        let (record, previous) = self.state.read().await.plan_delete_level(subject)?;
        self.commit(vec![record]).await?;
        Ok(previous)
    }

    pub(crate) async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<i32>, RegistryError> {
        let _writer = self.writer.lock().await;
        let (records, versions) = self
            .state
            .read()
            .await
            .plan_delete_subject(subject, permanent)?;
        self.commit(records).await?;
        Ok(versions)
    }

    pub(crate) async fn delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<i32, RegistryError> {
        let _writer = self.writer.lock().await;
        let (records, version) = self
            .state
            .read()
            .await
            .plan_delete_version(subject, spec, permanent)?;
        self.commit(records).await?;
        Ok(version)
    }

    /// Persists, then applies exactly the records Kafka acknowledged: those
    /// are in the log and will be replayed, so memory must reflect them even
    /// if a later record of the same batch failed. Caller holds `writer`.
    async fn commit(&self, records: Vec<LogRecord>) -> Result<(), RegistryError> {
        let results = self.log.append(&records).await;
        let mut state = self.state.write().await;
        let mut first_error = None;
        for (record, result) in records.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    if let Err(e) = state.apply(record) {
                        first_error.get_or_insert(RegistryError::Internal(e));
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::Config;

    /// Nothing listens on port 1, so every produce fails after the timeout.
    #[tokio::test]
    async fn writes_fail_with_backend_error_and_reads_keep_working_when_kafka_is_down() {
        let config = Config {
            kafka: service_config::KafkaArgs::plain("127.0.0.1:1"),
            kafka_timeout_ms: 1_000,
            ..Config::default()
        };
        let mut store = Store::default();
        let existing = AvroSchema::parse(r#""int""#).unwrap();
        if let RegisterPlan::New { record, .. } = store.plan_register("s", &existing).unwrap() {
            store.apply(record).unwrap();
        }
        let registry = Registry::new(store, KafkaLog::new(&config).unwrap());

        let started = Instant::now();
        let new = AvroSchema::parse(r#""long""#).unwrap();
        let err = registry.register("s", &new).await.unwrap_err();
        assert!(matches!(err, RegistryError::Backend(_)), "{err:?}");
        assert_eq!(err.status_and_code().1, 50003);
        assert!(started.elapsed() < Duration::from_secs(5));

        // Nothing changed, and reads are unaffected.
        let state = registry.read().await;
        assert_eq!(state.versions("s", false).unwrap(), vec![1]);
        assert!(state.schema_by_id(2).is_err());
        drop(state);
        // Re-registering a known schema needs no write at all.
        assert_eq!(registry.register("s", &existing).await.unwrap(), 1);
        let err = registry
            .set_level(None, CompatibilityLevel::Full)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Backend(_)));
        assert_eq!(
            registry.read().await.global_level(),
            CompatibilityLevel::Backward
        );
    }
}
