//! Parsing and normalization of Avro schemas.
//!
//! A registered schema is stored and returned in a *normalized* form: the
//! schema parsed by `apache-avro` and serialized back to compact JSON. That
//! form is independent of whitespace and of the key order the client used,
//! but — unlike Avro's Parsing Canonical Form — it keeps defaults, docs,
//! aliases and custom properties, so schemas that differ in those are
//! different schemas with different ids.
//!
//! Identity (which id a schema gets) is decided by [`AvroSchema::identity`],
//! the normalized JSON with every object's keys sorted. The normalized form
//! alone would almost always do, but default values are arbitrary JSON
//! whose key order would leak through if `serde_json`'s `preserve_order`
//! feature were ever enabled somewhere in the workspace.

use std::sync::Arc;

use apache_avro::Schema;
use serde_json::{Map, Value};

use crate::error::RegistryError;

/// A parsed, normalized Avro schema. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AvroSchema {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    parsed: Schema,
    normalized: String,
    identity: String,
}

impl AvroSchema {
    /// Parses a schema string as sent by clients (the `schema` field).
    pub(crate) fn parse(raw: &str) -> Result<Self, RegistryError> {
        let parsed =
            Schema::parse_str(raw).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
        let unserializable = |e: serde_json::Error| {
            RegistryError::InvalidSchema(format!("schema cannot be serialized: {e}"))
        };
        // Serialized directly so the text keeps apache-avro's natural key
        // order (`type`, `name`, ..., `fields`); going through `Value` would
        // alphabetize it.
        let normalized = serde_json::to_string(&parsed).map_err(unserializable)?;
        let identity =
            sort_keys(serde_json::to_value(&parsed).map_err(unserializable)?).to_string();
        Ok(Self {
            inner: Arc::new(Inner {
                parsed,
                normalized,
                identity,
            }),
        })
    }

    /// The schema as understood by `apache-avro`, for compatibility checks.
    pub(crate) fn parsed(&self) -> &Schema {
        &self.inner.parsed
    }

    /// The normalized JSON text that is stored and returned to clients.
    pub(crate) fn normalized(&self) -> &str {
        &self.inner.normalized
    }

    /// Equality key: two schemas with the same identity share one id.
    pub(crate) fn identity(&self) -> &str {
        &self.inner.identity
    }
}

fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect::<Map<String, Value>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn id(raw: &str) -> String {
        AvroSchema::parse(raw).unwrap().identity().to_owned()
    }

    #[test]
    fn whitespace_and_key_order_do_not_matter() {
        let a = r#"{"type":"record","name":"User","namespace":"x","fields":[{"name":"a","type":"int"}]}"#;
        let b = r#"
            {
              "fields" : [ { "type" : "int", "name" : "a" } ],
              "namespace" : "x",
              "name" : "User",
              "type" : "record"
            }"#;
        assert_eq!(id(a), id(b));
        assert_eq!(
            AvroSchema::parse(a).unwrap().normalized(),
            AvroSchema::parse(b).unwrap().normalized()
        );
    }

    #[test]
    fn normalized_text_keeps_the_conventional_key_order() {
        let schema = AvroSchema::parse(
            r#"{"fields":[{"type":"int","name":"a"}],"name":"R","type":"record"}"#,
        )
        .unwrap();
        assert_eq!(
            schema.normalized(),
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#
        );
    }

    #[test]
    fn fullname_and_namespace_spellings_are_equivalent() {
        let a = r#"{"type":"record","name":"x.User","fields":[]}"#;
        let b = r#"{"type":"record","name":"User","namespace":"x","fields":[]}"#;
        assert_eq!(id(a), id(b));
    }

    #[test]
    fn primitive_spellings_are_equivalent() {
        assert_eq!(id(r#""string""#), id(r#"{"type":"string"}"#));
    }

    #[test]
    fn defaults_docs_and_properties_are_significant() {
        let base =
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":1}]}"#;
        let other_default =
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":2}]}"#;
        let no_default = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
        let with_doc = r#"{"type":"record","name":"R","doc":"hi","fields":[{"name":"a","type":"int","default":1}]}"#;
        let with_prop = r#"{"type":"record","name":"R","owner":"me","fields":[{"name":"a","type":"int","default":1}]}"#;
        let ids = [base, other_default, no_default, with_doc, with_prop].map(id);
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn key_order_inside_default_values_does_not_matter() {
        let a = r#"{"type":"record","name":"R","fields":[{"name":"m","type":{"type":"map","values":"int"},"default":{"x":1,"y":2}}]}"#;
        let b = r#"{"type":"record","name":"R","fields":[{"name":"m","type":{"type":"map","values":"int"},"default":{"y":2,"x":1}}]}"#;
        assert_eq!(id(a), id(b));
    }

    #[test]
    fn normalization_is_idempotent() {
        let raw = r#"{"type":"record","name":"R","namespace":"n","doc":"d","fields":[
            {"name":"a","type":["null","string"],"default":null},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
            {"name":"e2","type":"E"},
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}}
        ]}"#;
        let once = AvroSchema::parse(raw).unwrap();
        let twice = AvroSchema::parse(once.normalized()).unwrap();
        assert_eq!(once.normalized(), twice.normalized());
        assert_eq!(once.identity(), twice.identity());
    }

    #[test]
    fn invalid_schemas_are_rejected() {
        for raw in [
            "",
            "not json",
            r#"{"type":"record"}"#,
            r#"{"type":"nope"}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"Missing"}]}"#,
        ] {
            assert!(
                matches!(AvroSchema::parse(raw), Err(RegistryError::InvalidSchema(_))),
                "{raw:?} should be invalid"
            );
        }
    }
}
