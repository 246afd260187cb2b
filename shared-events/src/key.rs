//! Key conventions every client shares: what an aggregate id (the Kafka record key, the last
//! segment of a resource's URL) may look like. The command side refuses any other id, so the
//! query side can refuse it too without looking.

/// The longest id.
pub const MAX_ID_LEN: usize = 64;

/// An identifier as clients send it: 1..=64 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identifier(String);

impl Identifier {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > MAX_ID_LEN {
            return Err(format!("must be 1 to {MAX_ID_LEN} characters"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err("may contain only letters, digits, '.', '_' and '-'".into());
        }
        // They name an order or customer in URL paths, where `.` and `..` are dot-segments that
        // clients and proxies resolve away.
        if raw == "." || raw == ".." {
            return Err("must not be `.` or `..`".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(Identifier::parse("0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").is_ok());
        assert!(Identifier::parse("o-1.a_B").is_ok());
        assert!(Identifier::parse("...").is_ok());
        for bad in ["", "a b", "a/b", "é", ".", "..", &"x".repeat(65)] {
            assert!(Identifier::parse(bad).is_err(), "{bad}");
        }
    }
}
