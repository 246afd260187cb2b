//! The single error type of the registry and its mapping onto the
//! Confluent REST error model (`{"error_code": .., "message": ..}`).

use actix_web::{HttpResponse, ResponseError, http::StatusCode};

/// Content type of every response body, as sent by Confluent's registry.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Everything that can go wrong in the registry.
///
/// The HTTP status and Confluent error code of each variant are defined in
/// exactly one place, [`RegistryError::status_and_code`].
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The subject has no (visible) versions.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// The subject exists but not the requested version.
    #[error("Version {version} not found.")]
    VersionNotFound {
        /// Subject that was searched.
        subject: String,
        /// Requested version.
        version: i32,
    },
    /// A lookup by schema content found nothing in the subject.
    #[error("Schema not found")]
    SchemaNotFound,
    /// No schema has this global id.
    #[error("Schema {0} not found")]
    SchemaIdNotFound(i32),
    /// A soft delete of a subject whose versions are all soft-deleted already.
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// A permanent delete of a subject that still has live versions.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// A soft delete of a version that is soft-deleted already.
    #[error(
        "Subject '{subject}' Version {version} was soft deleted. Set permanent=true to delete permanently"
    )]
    VersionSoftDeleted {
        /// Subject of the version.
        subject: String,
        /// The version.
        version: i32,
    },
    /// A permanent delete of a version that was not soft-deleted first.
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted {
        /// Subject of the version.
        subject: String,
        /// The version.
        version: i32,
    },
    /// `GET/DELETE /config/{subject}` without a subject-level setting.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    /// The new schema breaks the subject's compatibility rule.
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
        .details.join(", ")
    )]
    Incompatible {
        /// Subject being registered into.
        subject: String,
        /// Confluent-style detail entries.
        details: Vec<String>,
    },
    /// Not a valid Avro schema, or an unsupported schema type / feature.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// A version path segment that is neither a positive int nor `latest`.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// Unknown compatibility level name.
    #[error(
        "Invalid compatibility level '{0}'. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel(String),
    /// The request body (or query string) could not be understood.
    #[error("Unrecognized request: {0}")]
    MalformedRequest(String),
    /// Credentials are required and were missing or wrong.
    #[error("Unauthorized")]
    Unauthorized,
    /// No route matches the path.
    #[error("HTTP 404 Not Found")]
    RouteNotFound,
    /// The path exists but not for this method.
    #[error("HTTP 405 Method Not Allowed")]
    MethodNotAllowed,
    /// Kafka could not be reached or did not acknowledge a write in time.
    #[error("Error in the backend data store: {0}")]
    Backend(String),
    /// Startup configuration is unusable.
    #[error("Invalid configuration: {0}")]
    InvalidConfig(String),
    /// Binding or serving the listener failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A bug or impossible state; never expected in practice.
    #[error("Internal error: {0}")]
    Internal(String),
}

impl RegistryError {
    /// HTTP status and Confluent `error_code` for each variant.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        use RegistryError as E;
        match self {
            E::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            E::VersionNotFound { .. } => (StatusCode::NOT_FOUND, 40402),
            E::SchemaNotFound | E::SchemaIdNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            E::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            E::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            E::VersionSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40406),
            E::VersionNotSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40407),
            E::SubjectConfigNotFound(_) => (StatusCode::NOT_FOUND, 40408),
            E::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            E::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            E::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            E::InvalidCompatibilityLevel(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            E::MalformedRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, 422),
            E::Unauthorized => (StatusCode::UNAUTHORIZED, 401),
            E::RouteNotFound => (StatusCode::NOT_FOUND, 404),
            E::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 405),
            E::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50003),
            E::InvalidConfig(_) | E::Io(_) | E::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, 50001)
            }
        }
    }
}

impl ResponseError for RegistryError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = serde_json::json!({ "error_code": code, "message": self.to_string() });
        HttpResponse::build(status)
            .content_type(CONTENT_TYPE)
            .body(body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_confluent_shape() {
        let err = RegistryError::SchemaIdNotFound(7);
        let response = err.error_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(err.to_string(), "Schema 7 not found");
        assert_eq!(err.status_and_code().1, 40403);
    }

    #[test]
    fn incompatible_message_lists_details() {
        let err = RegistryError::Incompatible {
            subject: "s".into(),
            details: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            err.to_string(),
            "Schema being registered is incompatible with an earlier schema for subject \"s\", details: [a, b]"
        );
        assert_eq!(err.status_and_code(), (StatusCode::CONFLICT, 409));
    }
}
