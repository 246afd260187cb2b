//! In-memory registry state, rebuilt from the log at startup.
//!
//! The store never changes on its own: mutations are *planned* against the
//! current state (yielding log records plus the answer for the client), the
//! records are written to Kafka, and only then [`Store::apply`] folds them
//! in — the same function that replays the topic at startup. That keeps
//! the live state and a restarted registry's state identical by
//! construction.

use std::collections::{BTreeMap, HashMap};

use crate::{
    compatibility::{self, CompatibilityLevel, Previous},
    error::RegistryError,
    records::{ConfigValue, DeleteSubjectValue, IdWatermarkValue, LogRecord, SchemaValue},
    schema::AvroSchema,
};

/// A version path segment: a number, or `latest` / `-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionSpec {
    Latest,
    Number(i32),
}

impl VersionSpec {
    pub(crate) fn parse(raw: &str) -> Result<Self, RegistryError> {
        if raw.eq_ignore_ascii_case("latest") || raw == "-1" {
            return Ok(Self::Latest);
        }
        match raw.parse::<i32>() {
            Ok(v) if v >= 1 => Ok(Self::Number(v)),
            _ => Err(RegistryError::InvalidVersion(raw.to_owned())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VersionEntry {
    id: i32,
    deleted: bool,
}

/// A version of a subject, as returned by queries.
#[derive(Debug, Clone)]
pub(crate) struct SubjectVersion {
    pub(crate) subject: String,
    pub(crate) version: i32,
    pub(crate) id: i32,
    pub(crate) schema: AvroSchema,
}

/// Outcome of planning a registration.
#[derive(Debug)]
pub(crate) enum RegisterPlan {
    /// The schema is already a live version of the subject.
    Existing { id: i32 },
    /// A new version must be written.
    New { id: i32, record: LogRecord },
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    schemas: HashMap<i32, AvroSchema>,
    ids_by_identity: HashMap<String, i32>,
    subjects: BTreeMap<String, BTreeMap<i32, VersionEntry>>,
    global_level: Option<CompatibilityLevel>,
    subject_levels: BTreeMap<String, CompatibilityLevel>,
    /// Highest id ever seen, including ids whose schemas were permanently
    /// deleted, so ids are never reused.
    max_id: i32,
}

impl Store {
    // ----- queries -------------------------------------------------------

    pub(crate) fn schema_by_id(&self, id: i32) -> Result<&AvroSchema, RegistryError> {
        self.schemas
            .get(&id)
            .ok_or(RegistryError::SchemaIdNotFound(id))
    }

    /// `(subject, version)` pairs using schema `id`.
    pub(crate) fn versions_of_id(
        &self,
        id: i32,
        include_deleted: bool,
    ) -> Result<Vec<(String, i32)>, RegistryError> {
        self.schema_by_id(id)?;
        Ok(self
            .subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions
                    .iter()
                    .filter(move |(_, e)| e.id == id && (include_deleted || !e.deleted))
                    .map(move |(v, _)| (subject.clone(), *v))
            })
            .collect())
    }

    pub(crate) fn subjects(&self, include_deleted: bool, prefix: &str) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(name, versions)| {
                name.starts_with(prefix)
                    && (include_deleted || versions.values().any(|e| !e.deleted))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Versions of a subject; a subject without visible versions is unknown.
    pub(crate) fn versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<i32>, RegistryError> {
        let versions: Vec<i32> = self
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(_, e)| include_deleted || !e.deleted)
            .map(|(v, _)| *v)
            .collect();
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        Ok(versions)
    }

    pub(crate) fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let visible = self.versions(subject, include_deleted)?;
        let version = match spec {
            VersionSpec::Latest => visible.last().copied(),
            VersionSpec::Number(n) => visible.contains(&n).then_some(n),
        };
        let not_found = || RegistryError::VersionNotFound {
            subject: subject.to_owned(),
            version: match spec {
                VersionSpec::Latest => -1,
                VersionSpec::Number(n) => n,
            },
        };
        let version = version.ok_or_else(not_found)?;
        let entry = self
            .subjects
            .get(subject)
            .and_then(|versions| versions.get(&version))
            .ok_or_else(not_found)?;
        self.subject_version(subject, version, *entry)
    }

    /// The newest version of `subject` whose schema equals `schema`.
    pub(crate) fn lookup(
        &self,
        subject: &str,
        schema: &AvroSchema,
        include_deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        self.versions(subject, include_deleted)?;
        let id = self
            .ids_by_identity
            .get(schema.identity())
            .ok_or(RegistryError::SchemaNotFound)?;
        let (version, entry) = self
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .rev()
            .find(|(_, e)| e.id == *id && (include_deleted || !e.deleted))
            .ok_or(RegistryError::SchemaNotFound)?;
        self.subject_version(subject, *version, *entry)
    }

    pub(crate) fn global_level(&self) -> CompatibilityLevel {
        self.global_level.unwrap_or_default()
    }

    pub(crate) fn subject_level(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.subject_levels.get(subject).copied()
    }

    fn effective_level(&self, subject: &str) -> CompatibilityLevel {
        self.subject_level(subject)
            .unwrap_or_else(|| self.global_level())
    }

    /// Compatibility of `candidate` with the subject's versions.
    ///
    /// `spec == None` or `Latest` applies the subject's level as registration
    /// would (all versions for transitive levels); a numbered version checks
    /// against that version only.
    pub(crate) fn check_compatibility(
        &self,
        subject: &str,
        spec: Option<VersionSpec>,
        candidate: &AvroSchema,
    ) -> Result<Vec<String>, RegistryError> {
        let level = self.effective_level(subject);
        match spec {
            None | Some(VersionSpec::Latest) => {
                let live = self.live_versions(subject);
                Ok(compatibility::check(level, candidate, &live))
            }
            Some(spec @ VersionSpec::Number(_)) => {
                let old = self.version(subject, spec, false)?;
                let previous = [Previous {
                    version: old.version,
                    schema: &old.schema,
                }];
                Ok(compatibility::check(level, candidate, &previous))
            }
        }
    }

    // ----- planning ------------------------------------------------------

    pub(crate) fn plan_register(
        &self,
        subject: &str,
        schema: &AvroSchema,
    ) -> Result<RegisterPlan, RegistryError> {
        let versions = self.subjects.get(subject);
        let known_id = self.ids_by_identity.get(schema.identity()).copied();

        if let Some(id) = known_id {
            let live_duplicate = versions
                .into_iter()
                .flatten()
                .any(|(_, e)| e.id == id && !e.deleted);
            if live_duplicate {
                return Ok(RegisterPlan::Existing { id });
            }
        }

        let live = self.live_versions(subject);
        let details = compatibility::check(self.effective_level(subject), schema, &live);
        if !details.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                details,
            });
        }

        let (id, normalized) = match known_id {
            Some(id) => (id, self.schema_by_id(id)?.normalized().to_owned()),
            None => (
                self.max_id
                    .checked_add(1)
                    .ok_or_else(|| RegistryError::Internal("schema ids exhausted".into()))?,
                schema.normalized().to_owned(),
            ),
        };
        // Continue after the highest version still on record (soft-deleted
        // ones included), so a soft-deleted version number is never reused.
        let version = versions
            .and_then(|v| v.keys().next_back().copied())
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| RegistryError::Internal("versions exhausted".into()))?;
        Ok(RegisterPlan::New {
            id,
            record: LogRecord::Schema {
                subject: subject.to_owned(),
                version,
                value: Some(SchemaValue {
                    subject: subject.to_owned(),
                    version,
                    id,
                    schema: normalized,
                    deleted: false,
                }),
            },
        })
    }

    pub(crate) fn plan_set_level(subject: Option<&str>, level: CompatibilityLevel) -> LogRecord {
        LogRecord::Config {
            subject: subject.map(str::to_owned),
            value: Some(ConfigValue {
                compatibility_level: level,
            }),
        }
    }

    /// Returns the record unsetting the level and the level being removed.
    pub(crate) fn plan_delete_level(
        &self,
        subject: Option<&str>,
    ) -> Result<(LogRecord, CompatibilityLevel), RegistryError> {
        let previous = match subject {
            None => self.global_level(),
            Some(s) => self
                .subject_level(s)
                .ok_or_else(|| RegistryError::SubjectConfigNotFound(s.to_owned()))?,
        };
        let record = LogRecord::Config {
            subject: subject.map(str::to_owned),
            value: None,
        };
        Ok((record, previous))
    }

    /// Returns the records and the versions reported as deleted.
    pub(crate) fn plan_delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<(Vec<LogRecord>, Vec<i32>), RegistryError> {
        let versions = self
            .subjects
            .get(subject)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
        let live: Vec<i32> = versions
            .iter()
            .filter(|(_, e)| !e.deleted)
            .map(|(v, _)| *v)
            .collect();

        if !permanent {
            let Some(&max) = versions.keys().next_back() else {
                return Err(RegistryError::SubjectNotFound(subject.to_owned()));
            };
            if live.is_empty() {
                return Err(RegistryError::SubjectSoftDeleted(subject.to_owned()));
            }
            let record = LogRecord::DeleteSubject {
                subject: subject.to_owned(),
                value: Some(DeleteSubjectValue {
                    subject: subject.to_owned(),
                    version: max,
                }),
            };
            return Ok((vec![record], live));
        }

        if !live.is_empty() {
            return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
        }
        let all: Vec<i32> = versions.keys().copied().collect();
        let mut records = vec![self.id_watermark()];
        records.extend(all.iter().map(|&version| LogRecord::Schema {
            subject: subject.to_owned(),
            version,
            value: None,
        }));
        records.push(LogRecord::DeleteSubject {
            subject: subject.to_owned(),
            value: None,
        });
        if self.subject_levels.contains_key(subject) {
            records.push(LogRecord::Config {
                subject: Some(subject.to_owned()),
                value: None,
            });
        }
        Ok((records, all))
    }

    /// Returns the records and the deleted version number.
    pub(crate) fn plan_delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<(Vec<LogRecord>, i32), RegistryError> {
        // `latest` means the latest live version for a soft delete and the
        // latest soft-deleted one for a permanent delete; a numbered version
        // is looked up among all so the error can say it was soft-deleted.
        let found = match (spec, permanent) {
            (VersionSpec::Latest, false) => self.version(subject, spec, false)?,
            (VersionSpec::Number(_), false) => {
                self.versions(subject, false)?;
                self.version(subject, spec, true)?
            }
            (_, true) => self.version(subject, spec, true)?,
        };
        let entry = self
            .subjects
            .get(subject)
            .and_then(|v| v.get(&found.version))
            .copied()
            .ok_or_else(|| RegistryError::Internal("version vanished".into()))?;
        let version = found.version;

        if !permanent {
            if entry.deleted {
                return Err(RegistryError::VersionSoftDeleted {
                    subject: subject.to_owned(),
                    version,
                });
            }
            let record = LogRecord::Schema {
                subject: subject.to_owned(),
                version,
                value: Some(SchemaValue {
                    subject: subject.to_owned(),
                    version,
                    id: found.id,
                    schema: found.schema.normalized().to_owned(),
                    deleted: true,
                }),
            };
            return Ok((vec![record], version));
        }

        if !entry.deleted {
            return Err(RegistryError::VersionNotSoftDeleted {
                subject: subject.to_owned(),
                version,
            });
        }
        let mut records = vec![
            self.id_watermark(),
            LogRecord::Schema {
                subject: subject.to_owned(),
                version,
                value: None,
            },
        ];
        let last_version = self.subjects.get(subject).is_some_and(|v| v.len() == 1);
        if last_version {
            records.push(LogRecord::DeleteSubject {
                subject: subject.to_owned(),
                value: None,
            });
        }
        Ok((records, version))
    }

    // ----- applying ------------------------------------------------------

    /// Folds one log record into the state. Used for replay and for live
    /// writes alike. An error means the record was skipped.
    pub(crate) fn apply(&mut self, record: LogRecord) -> Result<(), String> {
        match record {
            LogRecord::Schema {
                subject,
                version,
                value: Some(value),
            } => {
                if !self.schemas.contains_key(&value.id) {
                    let schema = AvroSchema::parse(&value.schema).map_err(|e| {
                        format!("schema id {} of {subject} v{version}: {e}", value.id)
                    })?;
                    self.ids_by_identity
                        .entry(schema.identity().to_owned())
                        .or_insert(value.id);
                    self.schemas.insert(value.id, schema);
                }
                self.max_id = self.max_id.max(value.id);
                let entry = VersionEntry {
                    id: value.id,
                    deleted: value.deleted,
                };
                let old = self
                    .subjects
                    .entry(subject)
                    .or_default()
                    .insert(version, entry);
                if let Some(old) = old.filter(|old| old.id != value.id) {
                    self.collect_unreferenced(old.id);
                }
            }
            LogRecord::Schema {
                subject,
                version,
                value: None,
            } => {
                if let Some(versions) = self.subjects.get_mut(&subject) {
                    let removed = versions.remove(&version);
                    if versions.is_empty() {
                        self.subjects.remove(&subject);
                    }
                    if let Some(removed) = removed {
                        self.collect_unreferenced(removed.id);
                    }
                }
            }
            LogRecord::Config {
                subject: None,
                value,
            } => self.global_level = value.map(|v| v.compatibility_level),
            LogRecord::Config {
                subject: Some(subject),
                value: Some(value),
            } => {
                self.subject_levels
                    .insert(subject, value.compatibility_level);
            }
            LogRecord::Config {
                subject: Some(subject),
                value: None,
            } => {
                self.subject_levels.remove(&subject);
            }
            LogRecord::DeleteSubject {
                subject,
                value: Some(value),
            } => {
                if let Some(versions) = self.subjects.get_mut(&subject) {
                    for entry in versions.range_mut(..=value.version).map(|(_, e)| e) {
                        entry.deleted = true;
                    }
                }
            }
            LogRecord::DeleteSubject { value: None, .. }
            | LogRecord::IdWatermark { value: None } => {}
            LogRecord::IdWatermark { value: Some(value) } => {
                self.max_id = self.max_id.max(value.max_id);
            }
        }
        Ok(())
    }

    /// Summary for the startup log.
    pub(crate) fn stats(&self) -> (usize, usize, i32) {
        (self.schemas.len(), self.subjects.len(), self.max_id)
    }

    fn id_watermark(&self) -> LogRecord {
        LogRecord::IdWatermark {
            value: Some(IdWatermarkValue {
                max_id: self.max_id,
            }),
        }
    }

    fn live_versions(&self, subject: &str) -> Vec<Previous<'_>> {
        self.subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(_, e)| !e.deleted)
            .filter_map(|(v, e)| {
                self.schemas.get(&e.id).map(|schema| Previous {
                    version: *v,
                    schema,
                })
            })
            .collect()
    }

    fn subject_version(
        &self,
        subject: &str,
        version: i32,
        entry: VersionEntry,
    ) -> Result<SubjectVersion, RegistryError> {
        let schema = self.schemas.get(&entry.id).cloned().ok_or_else(|| {
            RegistryError::Internal(format!(
                "{subject} v{version} refers to unknown id {}",
                entry.id
            ))
        })?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version,
            id: entry.id,
            schema,
        })
    }

    /// Drops schema `id` once no version (live or soft-deleted) uses it;
    /// soft-deleted versions keep ids resolvable, permanent deletes don't.
    fn collect_unreferenced(&mut self, id: i32) {
        let referenced = self
            .subjects
            .values()
            .flat_map(|v| v.values())
            .any(|e| e.id == id);
        if referenced {
            return;
        }
        let Some(schema) = self.schemas.remove(&id) else {
            return;
        };
        if self.ids_by_identity.get(schema.identity()) == Some(&id) {
            self.ids_by_identity.remove(schema.identity());
            // Another id with the same identity can only exist if the
            // normalization changed between versions of this program; keep
            // the oldest one reachable.
            if let Some(other) = self
                .schemas
                .iter()
                .filter(|(_, s)| s.identity() == schema.identity())
                .map(|(other, _)| *other)
                .min()
            {
                self.ids_by_identity
                    .insert(schema.identity().to_owned(), other);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
    const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"int","default":0}]}"#;
    const V3_BREAKING: &str =
        r#"{"type":"record","name":"R","fields":[{"name":"c","type":"int"}]}"#;

    fn schema(raw: &str) -> AvroSchema {
        AvroSchema::parse(raw).unwrap()
    }

    /// Plans and applies a registration the way the registry does.
    fn register(store: &mut Store, subject: &str, raw: &str) -> Result<i32, RegistryError> {
        match store.plan_register(subject, &schema(raw))? {
            RegisterPlan::Existing { id } => Ok(id),
            RegisterPlan::New { id, record } => {
                store.apply(record).unwrap();
                Ok(id)
            }
        }
    }

    fn apply_all(store: &mut Store, records: Vec<LogRecord>) {
        for r in records {
            store.apply(r).unwrap();
        }
    }

    #[test]
    fn ids_are_global_and_versions_per_subject() {
        let mut store = Store::default();
        assert_eq!(register(&mut store, "a", V1).unwrap(), 1);
        assert_eq!(register(&mut store, "a", V1).unwrap(), 1);
        assert_eq!(register(&mut store, "a", V2).unwrap(), 2);
        assert_eq!(register(&mut store, "b", V2).unwrap(), 2);
        assert_eq!(store.versions("a", false).unwrap(), vec![1, 2]);
        assert_eq!(store.versions("b", false).unwrap(), vec![1]);
        assert_eq!(
            store.versions_of_id(2, false).unwrap(),
            vec![("a".to_owned(), 2), ("b".to_owned(), 1)]
        );
        let latest = store.version("a", VersionSpec::Latest, false).unwrap();
        assert_eq!((latest.version, latest.id), (2, 2));
        assert_eq!(store.lookup("b", &schema(V2), false).unwrap().version, 1);
        assert!(matches!(
            store.lookup("b", &schema(V1), false),
            Err(RegistryError::SchemaNotFound)
        ));
    }

    #[test]
    fn incompatible_registration_is_rejected_without_changes() {
        let mut store = Store::default();
        register(&mut store, "a", V1).unwrap();
        assert!(matches!(
            register(&mut store, "a", V3_BREAKING),
            Err(RegistryError::Incompatible { .. })
        ));
        assert_eq!(store.versions("a", false).unwrap(), vec![1]);
        store
            .apply(Store::plan_set_level(Some("a"), CompatibilityLevel::None))
            .unwrap();
        assert_eq!(register(&mut store, "a", V3_BREAKING).unwrap(), 2);
    }

    #[test]
    fn soft_delete_hides_versions_but_keeps_ids() {
        let mut store = Store::default();
        register(&mut store, "a", V1).unwrap();
        register(&mut store, "a", V2).unwrap();
        let (records, deleted) = store.plan_delete_subject("a", false).unwrap();
        assert_eq!(deleted, vec![1, 2]);
        apply_all(&mut store, records);
        assert!(store.subjects(false, "").is_empty());
        assert_eq!(store.subjects(true, ""), vec!["a".to_owned()]);
        assert!(matches!(
            store.versions("a", false),
            Err(RegistryError::SubjectNotFound(_))
        ));
        assert!(store.schema_by_id(1).is_ok());
        assert!(matches!(
            store.plan_delete_subject("a", false),
            Err(RegistryError::SubjectSoftDeleted(_))
        ));
        // Registering again continues numbering and reuses the id.
        assert_eq!(register(&mut store, "a", V1).unwrap(), 1);
        assert_eq!(store.versions("a", false).unwrap(), vec![3]);
        assert_eq!(store.versions("a", true).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn permanent_delete_requires_soft_delete_and_never_reuses_ids() {
        let mut store = Store::default();
        register(&mut store, "a", V1).unwrap();
        register(&mut store, "a", V2).unwrap();
        assert!(matches!(
            store.plan_delete_subject("a", true),
            Err(RegistryError::SubjectNotSoftDeleted(_))
        ));
        let (records, _) = store.plan_delete_subject("a", false).unwrap();
        apply_all(&mut store, records);
        let (records, deleted) = store.plan_delete_subject("a", true).unwrap();
        assert_eq!(deleted, vec![1, 2]);
        apply_all(&mut store, records);
        assert!(store.subjects(true, "").is_empty());
        assert!(matches!(
            store.schema_by_id(2),
            Err(RegistryError::SchemaIdNotFound(2))
        ));
        assert!(matches!(
            store.plan_delete_subject("a", true),
            Err(RegistryError::SubjectNotFound(_))
        ));
        // Fresh id, numbering restarts for a fully purged subject.
        assert_eq!(register(&mut store, "a", V1).unwrap(), 3);
        assert_eq!(store.versions("a", false).unwrap(), vec![1]);
    }

    #[test]
    fn version_deletes_follow_the_soft_then_permanent_rule() {
        let mut store = Store::default();
        register(&mut store, "a", V1).unwrap();
        register(&mut store, "a", V2).unwrap();
        assert!(matches!(
            store.plan_delete_version("a", VersionSpec::Number(1), true),
            Err(RegistryError::VersionNotSoftDeleted { .. })
        ));
        let (records, v) = store
            .plan_delete_version("a", VersionSpec::Latest, false)
            .unwrap();
        assert_eq!(v, 2);
        apply_all(&mut store, records);
        assert_eq!(store.versions("a", false).unwrap(), vec![1]);
        assert!(matches!(
            store.plan_delete_version("a", VersionSpec::Number(2), false),
            Err(RegistryError::VersionSoftDeleted { .. })
        ));
        assert!(matches!(
            store.plan_delete_version("a", VersionSpec::Number(9), false),
            Err(RegistryError::VersionNotFound { .. })
        ));
        let (records, v) = store
            .plan_delete_version("a", VersionSpec::Number(2), true)
            .unwrap();
        assert_eq!(v, 2);
        apply_all(&mut store, records);
        assert_eq!(store.versions("a", true).unwrap(), vec![1]);
        assert!(store.schema_by_id(2).is_err());
        assert!(store.schema_by_id(1).is_ok());
    }

    #[test]
    fn replay_of_the_same_records_rebuilds_the_same_state() {
        let mut live = Store::default();
        let mut log = Vec::new();
        let run = |store: &mut Store, records: Vec<LogRecord>, log: &mut Vec<LogRecord>| {
            for r in records {
                log.push(r.clone());
                store.apply(r).unwrap();
            }
        };
        for raw in [V1, V2] {
            if let RegisterPlan::New { record, .. } = live.plan_register("a", &schema(raw)).unwrap()
            {
                run(&mut live, vec![record], &mut log);
            }
        }
        run(
            &mut live,
            vec![Store::plan_set_level(None, CompatibilityLevel::Full)],
            &mut log,
        );
        let (records, _) = live.plan_delete_subject("a", false).unwrap();
        run(&mut live, records, &mut log);
        let (records, _) = live.plan_delete_subject("a", true).unwrap();
        run(&mut live, records, &mut log);

        let mut replayed = Store::default();
        for r in log {
            let (k, v) = r.encode().unwrap();
            replayed
                .apply(LogRecord::decode(&k, v.as_deref()).unwrap())
                .unwrap();
        }
        assert_eq!(replayed.stats(), live.stats());
        assert_eq!(replayed.stats().2, 2);
        assert_eq!(replayed.global_level(), CompatibilityLevel::Full);
        assert!(replayed.subjects(true, "").is_empty());
    }

    #[test]
    fn watermark_survives_compaction_of_the_highest_id() {
        let mut store = Store::default();
        register(&mut store, "a", V1).unwrap();
        let (soft, _) = store.plan_delete_subject("a", false).unwrap();
        apply_all(&mut store, soft);
        let (hard, _) = store.plan_delete_subject("a", true).unwrap();
        // After compaction only the watermark survives (tombstones and the
        // records they shadow are gone).
        let survivors: Vec<LogRecord> = hard
            .into_iter()
            .filter(|r| matches!(r, LogRecord::IdWatermark { .. }))
            .collect();
        let mut restarted = Store::default();
        apply_all(&mut restarted, survivors);
        assert_eq!(register(&mut restarted, "a", V1).unwrap(), 2);
    }

    #[test]
    fn config_levels() {
        let mut store = Store::default();
        assert_eq!(store.global_level(), CompatibilityLevel::Backward);
        assert!(matches!(
            store.plan_delete_level(Some("a")),
            Err(RegistryError::SubjectConfigNotFound(_))
        ));
        store
            .apply(Store::plan_set_level(
                Some("a"),
                CompatibilityLevel::Forward,
            ))
            .unwrap();
        assert_eq!(store.subject_level("a"), Some(CompatibilityLevel::Forward));
        let (record, previous) = store.plan_delete_level(Some("a")).unwrap();
        assert_eq!(previous, CompatibilityLevel::Forward);
        store.apply(record).unwrap();
        assert_eq!(store.subject_level("a"), None);
    }

    #[test]
    fn version_spec_parsing() {
        assert_eq!(VersionSpec::parse("latest").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("-1").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("3").unwrap(), VersionSpec::Number(3));
        for bad in ["0", "-2", "x", "", "99999999999"] {
            assert!(matches!(
                VersionSpec::parse(bad),
                Err(RegistryError::InvalidVersion(_))
            ));
        }
    }
}
