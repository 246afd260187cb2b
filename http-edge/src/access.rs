//! Who may use the admin API: the admin token may do anything; the read-only token, if one is
//! configured, may read (`GET`) what the admin API shows but start, cancel or rebuild nothing.

use actix_web::HttpRequest;
use actix_web::http::header;

/// Why a request may not use the admin API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the admin API is disabled here (no admin token configured)")]
    Disabled,
    #[error("a valid `Authorization: Bearer <admin token>` header is required")]
    Unauthorized,
    #[error("the read-only admin token may read, not {0}")]
    Forbidden(&'static str),
}

/// The problem table's rows for a denied admin request, shared by every service's table.
pub mod problems {
    use actix_web::http::StatusCode;

    use crate::ProblemType;

    pub const UNAUTHORIZED: ProblemType = ProblemType::new(
        "unauthorized",
        "Unauthorized",
        StatusCode::UNAUTHORIZED,
        None,
    );
    pub const ADMIN_DISABLED: ProblemType = ProblemType::new(
        "admin-disabled",
        "Admin API disabled",
        StatusCode::FORBIDDEN,
        None,
    );
    pub const FORBIDDEN: ProblemType =
        ProblemType::new("forbidden", "Forbidden", StatusCode::FORBIDDEN, None);
}

impl Denied {
    pub fn problem_type(&self) -> &'static crate::ProblemType {
        match self {
            Self::Disabled => &problems::ADMIN_DISABLED,
            Self::Unauthorized => &problems::UNAUTHORIZED,
            Self::Forbidden(_) => &problems::FORBIDDEN,
        }
    }
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Admin,
}

/// The admin API's tokens; without an admin token the admin API is off.
#[derive(Clone, Default)]
pub struct Access {
    pub admin_token: Option<String>,
    pub read_token: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |token: &Option<String>| token.as_ref().map(|_| "<redacted>");
        f.debug_struct("Access")
            .field("admin_token", &shown(&self.admin_token))
            .field("read_token", &shown(&self.read_token))
            .finish()
    }
}

impl Access {
    /// The request's role if it is at least `needed`: `401` without a valid token, `403` for
    /// the read-only token asking to `act`.
    pub fn authorize(
        &self,
        request: &HttpRequest,
        needed: Role,
        act: &'static str,
    ) -> Result<Role, Denied> {
        let Some(admin) = &self.admin_token else {
            return Err(Denied::Disabled);
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or(Denied::Unauthorized)?;
        let role = if same_secret(presented.as_bytes(), admin.as_bytes()) {
            Role::Admin
        } else if self
            .read_token
            .as_deref()
            .is_some_and(|read| same_secret(presented.as_bytes(), read.as_bytes()))
        {
            Role::Read
        } else {
            return Err(Denied::Unauthorized);
        };
        if role < needed {
            return Err(Denied::Forbidden(act));
        }
        Ok(role)
    }
}

/// Compares in time that depends on the presented token's length only: neither where the
/// first difference is nor the secret's length shows.
fn same_secret(presented: &[u8], secret: &[u8]) -> bool {
    if secret.is_empty() {
        return false;
    }
    let mut difference = u8::from(presented.len() != secret.len());
    for (i, byte) in presented.iter().enumerate() {
        difference |= byte ^ secret[i % secret.len()];
    }
    difference == 0
}

/// The token of an `Authorization: Bearer <token>` value; the scheme name is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(
            !same_secret(b"abcabc", b"abc"),
            "a repeated secret is not the secret"
        );
        assert!(!same_secret(b"", b"abc"));
        assert!(!same_secret(b"", b""));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer t0k"), Some("t0k"));
        assert_eq!(bearer_token("bearer t0k"), Some("t0k"));
        assert_eq!(bearer_token("Basic t0k"), None);
    }

    #[test]
    fn roles_are_granted_by_token() {
        let access = Access {
            admin_token: Some("admin-token".into()),
            read_token: Some("read-token".into()),
        };
        let with = |token: &str| {
            TestRequest::default()
                .insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
                .to_http_request()
        };
        assert_eq!(
            access
                .authorize(&with("admin-token"), Role::Admin, "start")
                .ok(),
            Some(Role::Admin)
        );
        assert_eq!(
            access
                .authorize(&with("read-token"), Role::Read, "read")
                .ok(),
            Some(Role::Read)
        );
        assert!(matches!(
            access.authorize(&with("read-token"), Role::Admin, "start"),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            access.authorize(&with("nope"), Role::Read, "read"),
            Err(Denied::Unauthorized)
        ));
        let off = Access::default();
        assert!(matches!(
            off.authorize(&with("admin-token"), Role::Read, "read"),
            Err(Denied::Disabled)
        ));
    }
}
