//! Preconditions (RFC 9110 §13): `If-Match` against a resource whose `ETag` is its version in
//! quotes, so a client can make a write conditional on the version it read.

use actix_web::HttpRequest;
use actix_web::http::header;

/// An `If-Match` header that is neither `*` nor a list of entity tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("If-Match must be `*` or entity tags such as \"3\" (a version in quotes)")]
pub struct BadIfMatch;

/// An `If-Match` precondition (RFC 9110 §13.1.1): `*`, or a list of entity tags compared
/// strongly with the resource's `ETag`, which is its version in quotes. Weak tags never match.
#[derive(Debug, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Tags(Vec<EntityTag>),
}

#[derive(Debug, PartialEq, Eq)]
pub struct EntityTag {
    weak: bool,
    opaque: String,
}

impl IfMatch {
    /// Every `If-Match` line of the request, as one list; `None` without the header.
    pub fn from_request(request: &HttpRequest) -> Result<Option<Self>, BadIfMatch> {
        const BAD: BadIfMatch = BadIfMatch;
        let mut lines = request.headers().get_all(header::IF_MATCH).peekable();
        if lines.peek().is_none() {
            return Ok(None);
        }
        let mut text = String::new();
        for line in lines {
            text.push_str(line.to_str().map_err(|_| BAD)?);
            text.push(',');
        }
        Self::parse(&text).map(Some).ok_or(BAD)
    }

    pub fn parse(text: &str) -> Option<Self> {
        const SEPARATORS: [char; 3] = [' ', '\t', ','];
        if text.trim_matches(SEPARATORS) == "*" {
            return Some(Self::Any);
        }
        // `etagc` excludes `"` but not `,`: rejoin what splitting on commas cut inside a tag.
        let mut tags = Vec::new();
        let mut rest = text.trim_start_matches(SEPARATORS);
        while !rest.is_empty() {
            let (weak, quoted) = match rest.strip_prefix("W/") {
                Some(after) => (true, after),
                None => (false, rest),
            };
            let inner = quoted.strip_prefix('"')?;
            let end = inner.find('"')?;
            let opaque = &inner[..end];
            if !opaque
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b))
            {
                return None;
            }
            tags.push(EntityTag {
                weak,
                opaque: opaque.to_owned(),
            });
            let after = inner[end + 1..].trim_start_matches([' ', '\t']);
            if !(after.is_empty() || after.starts_with(',')) {
                return None;
            }
            rest = after.trim_start_matches(SEPARATORS);
        }
        (!tags.is_empty()).then_some(Self::Tags(tags))
    }

    /// Whether the precondition holds for a resource at `version` (`None`: no such resource yet).
    pub fn holds(&self, version: Option<i64>) -> bool {
        let Some(version) = version else {
            return false;
        };
        match self {
            Self::Any => true,
            Self::Tags(tags) => {
                let current = version.to_string();
                tags.iter().any(|t| !t.weak && t.opaque == current)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{EntityTag, IfMatch};

    fn tag(weak: bool, opaque: &str) -> EntityTag {
        EntityTag {
            weak,
            opaque: opaque.to_owned(),
        }
    }

    #[test]
    fn if_match_lists_parse_as_rfc_9110_writes_them() {
        assert_eq!(IfMatch::parse(" * "), Some(IfMatch::Any));
        assert_eq!(
            IfMatch::parse(r#""1", W/"2","a,b" ,"#),
            Some(IfMatch::Tags(vec![
                tag(false, "1"),
                tag(true, "2"),
                tag(false, "a,b")
            ]))
        );
        for bad in [
            "",
            "3",
            r#""3"#,
            r#"*, "3""#,
            r#""3" "4""#,
            "W/3",
            "\"a b\"",
        ] {
            assert_eq!(IfMatch::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn if_match_compares_strongly_with_the_version() {
        let list = IfMatch::parse(r#""2", W/"3""#).unwrap();
        assert!(list.holds(Some(2)));
        assert!(!list.holds(Some(3)), "weak tags never match");
        assert!(!list.holds(None), "no resource, nothing to match");
        assert!(IfMatch::Any.holds(Some(1)));
        assert!(!IfMatch::Any.holds(None));
        assert!(!IfMatch::parse(r#""+2""#).unwrap().holds(Some(2)));
    }

    proptest::proptest! {
        /// Any header value parses or is refused without panicking, and a version in quotes
        /// matches exactly that version.
        #[test]
        fn any_if_match_parses_or_is_refused(text in "\\PC{0,60}") {
            if let Some(precondition) = IfMatch::parse(&text) {
                let _ = precondition.holds(Some(1));
                proptest::prop_assert!(!precondition.holds(None));
            }
        }

        #[test]
        fn a_quoted_version_matches_only_itself(version in 0i64.., other in 0i64..) {
            let tag = IfMatch::parse(&format!("\"{version}\"")).unwrap();
            proptest::prop_assert!(tag.holds(Some(version)));
            proptest::prop_assert_eq!(tag.holds(Some(other)), other == version);
        }
    }
}
