//! Reading a request body as a client sends it: JSON only, uncompressed, bounded in size and in
//! time. A body that trickles in (or stops) must not hold a connection, and its file
//! descriptor, for ever.

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures::StreamExt;
use tokio::time::{Instant, timeout_at};

/// Why a body was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the content type must be application/json")]
    NotJson,
    #[error("Content-Encoding `{0}` is not supported: send the body uncompressed")]
    Encoded(String),
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request body did not arrive within the request timeout")]
    Timeout,
    #[error("could not read the body: {0}")]
    Broken(String),
}

/// The problem rows of a body that was not read, shared by every service that reads bodies.
pub mod problems {
    use actix_web::http::StatusCode;

    use crate::ProblemType;

    pub const MALFORMED: ProblemType = ProblemType::new(
        "malformed-request",
        "Malformed request",
        StatusCode::BAD_REQUEST,
        None,
    );
    pub const REQUEST_TIMEOUT: ProblemType = ProblemType::new(
        "request-timeout",
        "Body not received in time",
        StatusCode::REQUEST_TIMEOUT,
        None,
    );
    pub const BODY_TOO_LARGE: ProblemType = ProblemType::new(
        "body-too-large",
        "Body too large",
        StatusCode::PAYLOAD_TOO_LARGE,
        None,
    );
    pub const UNSUPPORTED_MEDIA_TYPE: ProblemType = ProblemType::new(
        "unsupported-media-type",
        "Unsupported media type",
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        None,
    );
    pub const UNSUPPORTED_ENCODING: ProblemType = ProblemType::new(
        "unsupported-encoding",
        "Unsupported content encoding",
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        None,
    );
}

impl BodyError {
    /// Its row of the problem table.
    pub fn problem_type(&self) -> crate::ProblemType {
        match self {
            Self::NotJson => problems::UNSUPPORTED_MEDIA_TYPE,
            Self::Encoded(_) => problems::UNSUPPORTED_ENCODING,
            Self::TooLarge { .. } => problems::BODY_TOO_LARGE,
            Self::Timeout => problems::REQUEST_TIMEOUT,
            Self::Broken(_) => problems::MALFORMED,
        }
    }
}

/// Reads a JSON body of at most `limit` bytes, arriving by `deadline`.
pub async fn read_json(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    deadline: Instant,
) -> Result<web::BytesMut, BodyError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .is_some_and(|m| {
            m.type_() == mime::APPLICATION
                && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
        });
    if !is_json {
        return Err(BodyError::NotJson);
    }
    // A compressed body would otherwise reach the JSON parser and be called malformed.
    for coding in request.headers().get_all(header::CONTENT_ENCODING) {
        let text = coding.to_str().unwrap_or("?");
        if !text
            .split(',')
            .map(str::trim)
            .all(|c| c.is_empty() || c.eq_ignore_ascii_case("identity"))
        {
            return Err(BodyError::Encoded(text.chars().take(64).collect()));
        }
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    // Answering before the body is complete makes actix close the connection.
    while let Some(chunk) = timeout_at(deadline, payload.next())
        .await
        .map_err(|_| BodyError::Timeout)?
    {
        let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
