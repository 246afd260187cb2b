//! The validation toolkit every domain parses request bodies with: a body becomes a typed
//! command or a list of every offending field, never a half-checked value.
//!
//! The fast way ([`fast`]) deserialises straight into a borrowed body type and checks it; a body
//! it refuses goes the thorough way (a [`Checker`] over the JSON object), which names each bad
//! field. Both must accept exactly the same bodies; each domain's tests hold them to that.

use serde_json::{Map, Value};

use crate::aggregate::{CommandError, FieldError};
use crate::key::Identifier;

/// Accumulates field errors while a body is taken apart.
#[derive(Debug, Default)]
pub struct Checker {
    pub errors: Vec<FieldError>,
}

impl Checker {
    /// Records that `field` is wrong; None, for the caller's convenience.
    pub fn fail<T>(&mut self, field: impl Into<String>, message: impl Into<String>) -> Option<T> {
        self.errors.push(FieldError::new(field, message));
        None
    }

    /// Records every key of `object` not in `known` as an unknown field.
    pub fn unknown_fields(&mut self, object: &Map<String, Value>, known: &[&str], prefix: &str) {
        for key in object.keys().filter(|k| !known.contains(&k.as_str())) {
            self.errors
                .push(FieldError::new(format!("{prefix}{key}"), "unknown field"));
        }
    }

    /// A required string field.
    pub fn string<'a>(
        &mut self,
        object: &'a Map<String, Value>,
        name: &str,
        path: &str,
    ) -> Option<&'a str> {
        match object.get(name) {
            None | Some(Value::Null) => self.fail(path, "is required"),
            Some(Value::String(s)) => Some(s),
            Some(_) => self.fail(path, "must be a string"),
        }
    }

    /// A required integer field within `min..=max`.
    pub fn integer(
        &mut self,
        object: &Map<String, Value>,
        name: &str,
        path: &str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        match object.get(name) {
            None | Some(Value::Null) => self.fail(path, "is required"),
            Some(Value::Number(n)) => match n.as_i64().and_then(|v| in_range(v, min, max)) {
                Some(v) => Some(v),
                None => self.fail(path, format!("must be an integer from {min} to {max}")),
            },
            Some(_) => self.fail(path, "must be an integer"),
        }
    }

    /// A required [`Identifier`] field.
    pub fn identifier(
        &mut self,
        object: &Map<String, Value>,
        name: &str,
        path: &str,
    ) -> Option<Identifier> {
        let raw = self.string(object, name, path)?;
        Identifier::parse(raw).map_or_else(|m| self.fail(path, m), Some)
    }
}

/// Parses a JSON body into an object, or says why it is malformed. A repeated key is
/// malformed: `Value` would keep the last one silently, and readers disagree on which wins.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, CommandError> {
    if let Err(e) = serde_json::from_slice::<UniqueKeys>(body) {
        return Err(CommandError::Malformed(format!(
            "the body is not valid JSON: {e}"
        )));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(CommandError::Malformed(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(CommandError::Malformed(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// Any JSON document in which no object repeats a key.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                let shown = key.chars().take(64).collect::<String>();
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate key `{shown}`"
                )));
            }
            map.next_value::<UniqueKeys>()?;
            seen.insert(key);
        }
        Ok(self)
    }
}

/// The fast way to a command: straight into `W` (no unknown fields, every value of the right
/// type), then through `valid`. A body it refuses goes the thorough way, which names every
/// offending field. Both ways accept exactly the same bodies, with the same result (see the
/// tests); the fast one is for the bodies that are fine, which are nearly all of them.
///
/// Only an object goes the fast way: serde's derived structs also take a JSON array of the
/// fields in order (`["c-42", "EUR", [...]]`), which the thorough way, and the API, refuse.
pub fn fast<'a, W: serde::Deserialize<'a>, C>(
    body: &'a [u8],
    valid: impl FnOnce(W) -> Option<C>,
) -> Option<C> {
    let is_object = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !is_object {
        return None;
    }
    serde_json::from_slice::<W>(body).ok().and_then(valid)
}

/// Whether every array in a JSON text starts with an object, or is empty: for the fast way of a
/// body whose only arrays are lists of objects. Strings are skipped (a `[` in a value is text).
/// It looks at the bytes only; whatever else is wrong with the body, the parser finds.
pub fn arrays_hold_objects(body: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for (at, &byte) in body.iter().enumerate() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' => {
                let next = body[at + 1..].iter().find(|b| !b.is_ascii_whitespace());
                if !matches!(next, Some(b'{' | b']')) {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// The fast way, else the thorough one.
pub fn parse_fast_or_thorough<C>(
    body: &[u8],
    fast: impl FnOnce(&[u8]) -> Option<C>,
    thorough: impl FnOnce(&[u8]) -> Result<C, CommandError>,
) -> Result<C, CommandError> {
    match fast(body) {
        Some(command) => Ok(command),
        None => thorough(body),
    }
}

/// Whether the fast way alone accepts `body` exactly when the thorough way does, and as the
/// same command: what [`parse_fast_or_thorough`] relies on. For fuzzing and tests.
pub fn parses_agree<C: PartialEq + std::fmt::Debug>(
    body: &[u8],
    fast: impl Fn(&[u8]) -> Option<C>,
    thorough: impl Fn(&[u8]) -> Result<C, CommandError>,
) -> Result<(), String> {
    let (quick, slow) = (fast(body), thorough(body).ok());
    if quick == slow {
        Ok(())
    } else {
        Err(format!(
            "the fast way gives {quick:?}, the thorough way {slow:?}"
        ))
    }
}

/// An integer field's value when within `min..=max`.
pub fn in_range(value: i64, min: i64, max: i64) -> Option<i64> {
    (min..=max).contains(&value).then_some(value)
}

const MAX_TEXT_LEN: usize = 200;

/// Free text of 1..=200 characters without control characters (references, carriers, reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let length = raw.chars().count();
        if length == 0 || length > MAX_TEXT_LEN || raw.trim().is_empty() {
            return Err(format!(
                "must be 1 to {MAX_TEXT_LEN} characters, not all blank"
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Checker {
    /// A required [`Text`] field.
    pub fn text(&mut self, object: &Map<String, Value>, name: &str) -> Option<Text> {
        let raw = self.string(object, name, name)?;
        Text::parse(raw).map_or_else(|m| self.fail(name, m), Some)
    }

    /// `value` if no field failed, else every failure.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, CommandError> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(CommandError::Invalid(self.errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only its shape matters")]
    struct Body {
        name: String,
        count: i64,
    }

    #[test]
    fn arrays_of_objects_are_told_from_arrays_of_values() {
        assert!(arrays_hold_objects(
            br#"{"items":[{"a":1}, {"a":[]}],"x":"[1"}"#
        ));
        assert!(arrays_hold_objects(br#"{"items":[ ]}"#));
        assert!(!arrays_hold_objects(br#"{"items":[["A-1",2]]}"#));
        assert!(!arrays_hold_objects(br#"{"items":[{"a":1},[1]]}"#));
        assert!(!arrays_hold_objects(br#"{"items":[1]}"#));
        assert!(
            arrays_hold_objects(br#"{"s":"a\"[1"}"#),
            "an escaped quote stays in the string"
        );
    }

    /// A derived struct also deserialises from an array of its fields: the fast way must not
    /// take one, since the thorough way (and the API) wants an object.
    #[test]
    fn the_fast_way_takes_objects_only() {
        let take = |body: &[u8]| fast(body, |b: Body| Some(b.count));
        assert_eq!(take(br#" {"name":"a","count":2}"#), Some(2));
        assert_eq!(take(br#"["a",2]"#), None);
        assert_eq!(take(br#" ["a",2]"#), None);
        assert!(matches!(
            object(br#"["a",2]"#),
            Err(CommandError::Malformed(_))
        ));
    }
}
