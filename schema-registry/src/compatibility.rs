//! Compatibility levels and the Avro schema-resolution checks behind them.
//!
//! Direction matters: *backward* means the new schema, used as reader, can
//! decode data written with an older schema (consumers upgrade first);
//! *forward* means older schemas, used as readers, can decode data written
//! with the new one (producers upgrade first). Transitive levels compare
//! with every live version instead of only the latest.
//!
//! `apache-avro` reports "partial" compatibility when only some values
//! resolve (a writer union branch or enum symbol the reader lacks). Such
//! data would fail to decode at runtime, so — like the Java implementation
//! Confluent uses — partial counts as incompatible here.

use std::{fmt, str::FromStr};

use apache_avro::{
    error::CompatibilityError,
    schema_compatibility::{Compatibility, SchemaCompatibility},
};
use serde::{Deserialize, Serialize};

use crate::{error::RegistryError, schema::AvroSchema};

/// A subject's (or the global) compatibility rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// No checks.
    None,
    /// New schema reads data of the latest version (Confluent's default).
    #[default]
    Backward,
    /// New schema reads data of every version.
    BackwardTransitive,
    /// Latest version reads data of the new schema.
    Forward,
    /// Every version reads data of the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every version.
    FullTransitive,
}

impl CompatibilityLevel {
    /// All levels, in Confluent's documentation order.
    pub const ALL: [Self; 7] = [
        Self::None,
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
    ];

    /// The level's wire name, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn checks_backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn checks_forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = RegistryError;

    /// Case-insensitive, as Confluent's registry is.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| RegistryError::InvalidCompatibilityLevel(s.to_owned()))
    }
}

/// An existing version the candidate is compared with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Previous<'a> {
    pub(crate) version: i32,
    pub(crate) schema: &'a AvroSchema,
}

/// Checks `candidate` against `previous` (ordered oldest to newest) under
/// `level`. Returns Confluent-style detail messages; empty means compatible.
///
/// Non-transitive levels only look at the last element of `previous`.
pub(crate) fn check(
    level: CompatibilityLevel,
    candidate: &AvroSchema,
    previous: &[Previous<'_>],
) -> Vec<String> {
    if level == CompatibilityLevel::None {
        return Vec::new();
    }
    let against: &[Previous<'_>] = if level.is_transitive() {
        previous
    } else {
        previous
            .last()
            .map(std::slice::from_ref)
            .unwrap_or_default()
    };

    let mut messages = Vec::new();
    // Newest first, like Confluent, so the most relevant conflict leads.
    for old in against.iter().rev() {
        let mut problems = Vec::new();
        if level.checks_backward()
            && let Some(problem) = can_read(old.schema, candidate)
        {
            problems.push((
                problem,
                "the new schema (reader) cannot read data written with",
            ));
        }
        if level.checks_forward()
            && let Some(problem) = can_read(candidate, old.schema)
        {
            problems.push((
                problem,
                "data written with the new schema cannot be read by",
            ));
        }
        if problems.is_empty() {
            continue;
        }
        for (problem, direction) in problems {
            messages.push(format!(
                "{{errorType:'{}', description:'{}: {direction} version {}', additionalInfo:'{}'}}",
                problem.error_type, problem.description, old.version, problem.additional_info
            ));
        }
        messages.push(format!("{{oldSchemaVersion: {}}}", old.version));
        messages.push(format!("{{oldSchema: '{}'}}", old.schema.normalized()));
    }
    if !messages.is_empty() {
        messages.push(format!("{{compatibility: '{level}'}}"));
    }
    messages
}

#[derive(Debug)]
struct Problem {
    error_type: &'static str,
    description: String,
    additional_info: String,
}

/// `None` when every datum written with `writer` can be decoded with `reader`.
fn can_read(writer: &AvroSchema, reader: &AvroSchema) -> Option<Problem> {
    match SchemaCompatibility::can_read(writer.parsed(), reader.parsed()) {
        Ok(Compatibility::Full) => None,
        Ok(Compatibility::Partial) => Some(Problem {
            error_type: "MISSING_UNION_BRANCH_OR_ENUM_SYMBOL",
            description: "some values of the writer schema (an enum symbol or union branch) \
                          have no counterpart in the reader schema"
                .to_owned(),
            additional_info: String::new(),
        }),
        Err(err) => Some(describe(&err, String::new())),
    }
}

/// Flattens nested field errors into one path, and avoids the multi-line
/// `Debug` dump of whole schemas that `CompatibilityError`'s `Display`
/// includes for type mismatches.
fn describe(err: &CompatibilityError, path: String) -> Problem {
    use CompatibilityError as E;
    let at = |path: &str| {
        if path.is_empty() {
            String::new()
        } else {
            format!(" at '{path}'")
        }
    };
    match err {
        E::FieldTypeMismatch(field, inner) => {
            let path = if path.is_empty() {
                field.clone()
            } else {
                format!("{path}.{field}")
            };
            describe(inner, path)
        }
        E::MissingDefaultValue(field) => {
            let full = if path.is_empty() {
                field.clone()
            } else {
                format!("{path}.{field}")
            };
            Problem {
                error_type: "READER_FIELD_MISSING_DEFAULT_VALUE",
                description: format!(
                    "The field '{full}' in the reader schema has no default value and is missing in the writer schema"
                ),
                additional_info: field.clone(),
            }
        }
        E::WrongType {
            writer_schema_type,
            reader_schema_type,
        } => {
            let writer = kind_of(writer_schema_type);
            let reader = kind_of(reader_schema_type);
            Problem {
                error_type: "TYPE_MISMATCH",
                description: format!(
                    "The type{} is {writer} in the writer schema and {reader} in the reader schema",
                    at(&path)
                ),
                additional_info: format!(
                    "reader type: {reader} not compatible with writer type: {writer}"
                ),
            }
        }
        E::NameMismatch {
            writer_name,
            reader_name,
        } => Problem {
            error_type: "NAME_MISMATCH",
            description: format!(
                "The name{} is '{writer_name}' in the writer schema and '{reader_name}' in the reader schema",
                at(&path)
            ),
            additional_info: format!("expected: {writer_name}"),
        },
        E::FixedMismatch => Problem {
            error_type: "FIXED_SIZE_MISMATCH",
            description: format!("The size of the fixed type{} differs", at(&path)),
            additional_info: String::new(),
        },
        E::MissingSymbols => Problem {
            error_type: "MISSING_ENUM_SYMBOLS",
            description: format!(
                "The reader enum{} has none of the writer's symbols",
                at(&path)
            ),
            additional_info: String::new(),
        },
        E::MissingUnionElements | E::SchemaMismatchAllUnionElements => Problem {
            error_type: "MISSING_UNION_BRANCH",
            description: format!(
                "The union{} has no branch able to read the writer's type",
                at(&path)
            ),
            additional_info: String::new(),
        },
        other => Problem {
            error_type: "TYPE_MISMATCH",
            description: format!("{other}{}", at(&path)),
            additional_info: String::new(),
        },
    }
}

/// `WrongType` carries `{:#?}` of whole schemas; the variant name at the
/// start (`Record`, `Int`, `Union`, ...) is all a human needs.
fn kind_of(debug: &str) -> String {
    let kind: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    if kind.is_empty() {
        "unknown".to_owned()
    } else {
        kind.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use CompatibilityLevel as L;

    fn schema(raw: &str) -> AvroSchema {
        AvroSchema::parse(raw).unwrap()
    }

    fn record(fields: &str) -> AvroSchema {
        schema(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
    }

    fn compatible(level: L, candidate: &AvroSchema, previous: &[&AvroSchema]) -> bool {
        let previous: Vec<Previous<'_>> = previous
            .iter()
            .enumerate()
            .map(|(i, schema)| Previous {
                version: i32::try_from(i).unwrap() + 1,
                schema,
            })
            .collect();
        check(level, candidate, &previous).is_empty()
    }

    const A: &str = r#"{"name":"a","type":"int"}"#;
    const B_NO_DEFAULT: &str = r#"{"name":"b","type":"string"}"#;
    const B_DEFAULT: &str = r#"{"name":"b","type":"string","default":"x"}"#;

    #[test]
    fn adding_a_field_with_default_is_fully_compatible() {
        let v1 = record(A);
        let v2 = record(&format!("{A},{B_DEFAULT}"));
        for level in L::ALL {
            assert!(compatible(level, &v2, &[&v1]), "{level}");
        }
    }

    #[test]
    fn adding_a_field_without_default_is_forward_only() {
        let v1 = record(A);
        let v2 = record(&format!("{A},{B_NO_DEFAULT}"));
        assert!(!compatible(L::Backward, &v2, &[&v1]));
        assert!(!compatible(L::BackwardTransitive, &v2, &[&v1]));
        assert!(!compatible(L::Full, &v2, &[&v1]));
        assert!(!compatible(L::FullTransitive, &v2, &[&v1]));
        assert!(compatible(L::Forward, &v2, &[&v1]));
        assert!(compatible(L::ForwardTransitive, &v2, &[&v1]));
        assert!(compatible(L::None, &v2, &[&v1]));
    }

    #[test]
    fn removing_a_field_without_default_is_backward_only() {
        let v1 = record(&format!("{A},{B_NO_DEFAULT}"));
        let v2 = record(A);
        assert!(compatible(L::Backward, &v2, &[&v1]));
        assert!(compatible(L::BackwardTransitive, &v2, &[&v1]));
        assert!(!compatible(L::Forward, &v2, &[&v1]));
        assert!(!compatible(L::ForwardTransitive, &v2, &[&v1]));
        assert!(!compatible(L::Full, &v2, &[&v1]));
    }

    #[test]
    fn removing_a_field_with_default_is_fully_compatible() {
        let v1 = record(&format!("{A},{B_DEFAULT}"));
        let v2 = record(A);
        assert!(compatible(L::Full, &v2, &[&v1]));
        assert!(compatible(L::FullTransitive, &v2, &[&v1]));
    }

    #[test]
    fn type_promotion_is_one_way() {
        let int = record(r#"{"name":"a","type":"int"}"#);
        let long = record(r#"{"name":"a","type":"long"}"#);
        // A long reader can read ints, not the other way round.
        assert!(compatible(L::Backward, &long, &[&int]));
        assert!(!compatible(L::Forward, &long, &[&int]));
        assert!(!compatible(L::Backward, &int, &[&long]));
        let string = record(r#"{"name":"a","type":"string"}"#);
        assert!(!compatible(L::Backward, &string, &[&int]));
    }

    #[test]
    fn enum_symbols_and_union_branches_must_all_resolve() {
        let ab = schema(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#);
        let abc = schema(r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#);
        assert!(compatible(L::Backward, &abc, &[&ab]));
        // Old readers would choke on "C": partial compatibility is rejected.
        assert!(!compatible(L::Forward, &abc, &[&ab]));

        let narrow = schema(r#"["null","string"]"#);
        let wide = schema(r#"["null","string","int"]"#);
        assert!(compatible(L::Backward, &wide, &[&narrow]));
        assert!(!compatible(L::Forward, &wide, &[&narrow]));
    }

    #[test]
    fn renaming_a_record_is_incompatible() {
        let r = schema(r#"{"type":"record","name":"R","fields":[]}"#);
        let s = schema(r#"{"type":"record","name":"S","fields":[]}"#);
        assert!(!compatible(L::Backward, &s, &[&r]));
    }

    #[test]
    fn transitive_levels_check_every_version() {
        // v1 has no `b`; v2 adds `b` with a default; v3 drops the default.
        // v3 can read v2 data (b present) but not v1 data (b missing).
        let v1 = record(A);
        let v2 = record(&format!("{A},{B_DEFAULT}"));
        let v3 = record(&format!("{A},{B_NO_DEFAULT}"));
        assert!(compatible(L::Backward, &v3, &[&v1, &v2]));
        assert!(!compatible(L::BackwardTransitive, &v3, &[&v1, &v2]));
        assert!(compatible(L::Full, &v3, &[&v1, &v2]));
        assert!(!compatible(L::FullTransitive, &v3, &[&v1, &v2]));

        // Forward mirror image: v1 requires `b`, v2 gives it a default,
        // v3 removes it. v2 can read v3 data, v1 cannot.
        let v1 = record(&format!("{A},{B_NO_DEFAULT}"));
        let v2 = record(&format!("{A},{B_DEFAULT}"));
        let v3 = record(A);
        assert!(compatible(L::Forward, &v3, &[&v1, &v2]));
        assert!(!compatible(L::ForwardTransitive, &v3, &[&v1, &v2]));
    }

    #[test]
    fn nothing_to_compare_with_is_compatible() {
        let v1 = record(A);
        for level in L::ALL {
            assert!(compatible(level, &v1, &[]));
        }
    }

    #[test]
    fn messages_follow_confluent_layout() {
        let v1 = record(A);
        let v2 = record(&format!("{A},{B_NO_DEFAULT}"));
        let messages = check(
            L::Backward,
            &v2,
            &[Previous {
                version: 1,
                schema: &v1,
            }],
        );
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].starts_with("{errorType:'READER_FIELD_MISSING_DEFAULT_VALUE'"));
        assert!(messages[0].contains("'b'"));
        assert_eq!(messages[1], "{oldSchemaVersion: 1}");
        assert!(messages[2].starts_with("{oldSchema: '"));
        assert_eq!(messages[3], "{compatibility: 'BACKWARD'}");
    }

    #[test]
    fn nested_field_errors_name_the_path() {
        let v1 = record(
            r#"{"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"}]}}"#,
        );
        let v2 = record(
            r#"{"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"string"}]}}"#,
        );
        let messages = check(
            L::Backward,
            &v2,
            &[Previous {
                version: 1,
                schema: &v1,
            }],
        );
        assert!(messages[0].contains("TYPE_MISMATCH"), "{messages:?}");
        assert!(messages[0].contains("inner.x"), "{messages:?}");
        assert!(messages[0].contains("int"), "{messages:?}");
    }

    #[test]
    fn level_names_round_trip() {
        for level in L::ALL {
            assert_eq!(level.as_str().parse::<L>().unwrap(), level);
            assert_eq!(level.as_str().to_lowercase().parse::<L>().unwrap(), level);
            let json = serde_json::to_string(&level).unwrap();
            assert_eq!(json, format!("\"{level}\""));
        }
        assert!(matches!(
            "SIDEWAYS".parse::<L>(),
            Err(RegistryError::InvalidCompatibilityLevel(_))
        ));
    }
}
