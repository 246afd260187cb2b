//! Credentials in front of the API, as Confluent's registry and its managed offerings take them:
//! HTTP basic auth and bearer tokens. When either is configured, every route but `/health/live`
//! needs one of them, and a request without is `401` with a `WWW-Authenticate` challenge and the
//! Confluent error body.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};
use base64::Engine as _;

use crate::error::RegistryError;

/// Who may call the API: anybody, or holders of the configured credentials.
#[derive(Default)]
pub(crate) struct Access {
    /// `USER:PASSWORD` as configured.
    basic: Option<String>,
    bearer: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("basic", &self.basic.is_some())
            .field("bearer", &self.bearer.is_some())
            .finish()
    }
}

impl Access {
    pub(crate) fn new(basic: Option<&str>, bearer: Option<&str>) -> Self {
        Self {
            basic: basic.map(str::to_owned),
            bearer: bearer.map(str::to_owned),
        }
    }

    /// Whether a request with this `Authorization` header may pass.
    fn permits(&self, authorization: Option<&header::HeaderValue>) -> bool {
        if self.basic.is_none() && self.bearer.is_none() {
            return true;
        }
        let Some((scheme, credentials)) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
        else {
            return false;
        };
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("basic")
            && let Some(expected) = &self.basic
        {
            return base64::engine::general_purpose::STANDARD
                .decode(credentials)
                .is_ok_and(|presented| constant_time_eq(&presented, expected.as_bytes()));
        }
        if scheme.eq_ignore_ascii_case("bearer")
            && let Some(expected) = &self.bearer
        {
            return constant_time_eq(credentials.as_bytes(), expected.as_bytes());
        }
        false
    }

    /// The challenge of a `401`: the schemes this registry takes.
    fn challenge(&self) -> &'static str {
        match (&self.basic, &self.bearer) {
            (Some(_), Some(_)) => {
                "Basic realm=\"schema-registry\", Bearer realm=\"schema-registry\""
            }
            (None, Some(_)) => "Bearer realm=\"schema-registry\"",
            _ => "Basic realm=\"schema-registry\"",
        }
    }
}

/// Equal bytes, compared without an early exit, so the time taken does not tell how much of a
/// guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: lets permitted requests through, answers the rest `401`.
pub(crate) async fn authenticate(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let access = request.app_data::<web::Data<Access>>().cloned();
    let open = request.path() == "/health/live";
    let permitted = open
        || access
            .as_ref()
            .is_none_or(|access| access.permits(request.headers().get(header::AUTHORIZATION)));
    if permitted {
        return next
            .call(request)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let challenge = access.map_or("Basic realm=\"schema-registry\"", |a| a.challenge());
    let mut response = RegistryError::Unauthorized.error_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    Ok(request.into_response(response).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(text: &str) -> header::HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        header::HeaderValue::from_str(&format!("Basic {encoded}"))
            .unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn only_the_configured_credentials_pass() {
        let access = Access::new(Some("admin:s3cret"), None);
        assert!(access.permits(Some(&basic("admin:s3cret"))));
        assert!(!access.permits(Some(&basic("admin:wrong"))));
        assert!(!access.permits(Some(&basic("admin:s3cret2"))));
        assert!(!access.permits(None));
        assert!(!access.permits(Some(&header::HeaderValue::from_static(
            "Bearer admin:s3cret"
        ))));
        assert!(!access.permits(Some(&header::HeaderValue::from_static("Basic !!!"))));
        assert!(Access::new(None, None).permits(None));
    }

    #[test]
    fn bearer_tokens_pass_when_configured() {
        let access = Access::new(None, Some("t0ken"));
        assert!(access.permits(Some(&header::HeaderValue::from_static("Bearer t0ken"))));
        assert!(access.permits(Some(&header::HeaderValue::from_static("bearer t0ken"))));
        assert!(!access.permits(Some(&header::HeaderValue::from_static("Bearer t0ken2"))));
        assert!(!access.permits(Some(&basic("admin:t0ken"))));
        let both = Access::new(Some("admin:s3cret"), Some("t0ken"));
        assert!(both.permits(Some(&basic("admin:s3cret"))));
        assert!(both.permits(Some(&header::HeaderValue::from_static("Bearer t0ken"))));
        assert!(both.challenge().contains("Bearer"));
    }
}
