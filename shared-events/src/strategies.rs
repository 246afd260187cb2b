//! Strategies for property tests of request bodies (with the `testing` feature): JSON values,
//! fields that are right, wrong, anything or absent, and bodies that are objects, carry an
//! unknown field, or are written as an array of their values.

use proptest::prelude::*;
use serde_json::{Map, Value};

/// Any JSON value, a few levels deep.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-5i64..20_000).prop_map(Value::from),
        (-1.0e3f64..1.0e3).prop_map(Value::from),
        "[A-Za-z0-9 ._-]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field: mostly a right value, sometimes a wrong one or anything, sometimes absent.
pub fn field(
    right: impl Strategy<Value = Value> + 'static,
    wrong: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        12 => right.prop_map(Some),
        2 => wrong.prop_map(Some),
        1 => any_json().prop_map(Some),
        1 => Just(None),
    ]
    .boxed()
}

/// An object of `fields`, sometimes with an unknown one, sometimes written as an array
/// of its values (which serde's derived structs would take).
pub fn body(fields: Vec<(&'static str, BoxedStrategy<Option<Value>>)>) -> BoxedStrategy<Value> {
    let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    (values, 0u8..12, 0u8..5)
        .prop_map(move |(values, unknown, form)| {
            let mut object = Map::new();
            for (name, value) in names.iter().zip(&values) {
                if let Some(value) = value {
                    object.insert((*name).to_owned(), value.clone());
                }
            }
            if unknown == 0 {
                object.insert("extra".into(), Value::from(1));
            }
            match form {
                0 => Value::Array(values.into_iter().flatten().collect()),
                _ => Value::Object(object),
            }
        })
        .boxed()
}

pub fn text() -> BoxedStrategy<Option<Value>> {
    field(
        "[A-Za-z0-9._-][A-Za-z0-9 ._-]{0,7}".prop_map(Value::from),
        prop_oneof![Just(""), Just(" "), Just("a\u{1}b")].prop_map(Value::from),
    )
}

pub fn whole(range: std::ops::Range<i64>, wrong: Vec<i64>) -> BoxedStrategy<Option<Value>> {
    field(
        range.prop_map(Value::from),
        proptest::sample::select(wrong).prop_map(Value::from),
    )
}
