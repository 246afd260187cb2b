//! HTTP basic auth in front of the API, as Confluent's registry offers it: when credentials are
//! configured, every route but `/health/live` needs them, and a request without them is `401`
//! with a `WWW-Authenticate` challenge and the Confluent error body.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};
use base64::Engine as _;

use crate::error::RegistryError;

/// Who may call the API: anybody, or holders of the configured credentials.
#[derive(Debug, Default)]
pub(crate) struct Access {
    /// `USER:PASSWORD` as configured.
    credentials: Option<String>,
}

impl Access {
    pub(crate) fn new(credentials: Option<&str>) -> Self {
        Self {
            credentials: credentials.map(str::to_owned),
        }
    }

    /// Whether a request with this `Authorization` header may pass.
    fn permits(&self, authorization: Option<&header::HeaderValue>) -> bool {
        let Some(expected) = &self.credentials else {
            return true;
        };
        let Some(presented) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .and_then(|(_, encoded)| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
            })
        else {
            return false;
        };
        constant_time_eq(&presented, expected.as_bytes())
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
    let open = request.path() == "/health/live";
    let permitted = open
        || request
            .app_data::<web::Data<Access>>()
            .is_none_or(|access| access.permits(request.headers().get(header::AUTHORIZATION)));
    if permitted {
        return next
            .call(request)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let mut response = RegistryError::Unauthorized.error_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"schema-registry\""),
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
        let access = Access::new(Some("admin:s3cret"));
        assert!(access.permits(Some(&basic("admin:s3cret"))));
        assert!(!access.permits(Some(&basic("admin:wrong"))));
        assert!(!access.permits(Some(&basic("admin:s3cret2"))));
        assert!(!access.permits(None));
        assert!(!access.permits(Some(&header::HeaderValue::from_static(
            "Bearer admin:s3cret"
        ))));
        assert!(!access.permits(Some(&header::HeaderValue::from_static("Basic !!!"))));
        assert!(Access::new(None).permits(None));
    }
}
