//! How a service reaches the schema registry: its URL, its credentials (HTTP basic auth in
//! Confluent Cloud's `USER_INFO` form, or a bearer token) and, for TLS, a CA to trust besides
//! the system's.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::SrSettings;

/// The schema registry connection of a service, flattened into its configuration.
#[derive(Clone, PartialEq, Eq, clap::Args)]
pub struct RegistryArgs {
    /// Base URL of the schema registry (Confluent REST API).
    #[arg(
        id = "registry_url",
        long = "registry-url",
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub url: String,
    /// HTTP basic auth for the registry, `USER:PASSWORD` (Confluent Cloud: API key and secret).
    #[arg(
        id = "registry_basic_auth",
        long = "registry-basic-auth",
        env = "SCHEMA_REGISTRY_BASIC_AUTH",
        value_name = "USER:PASSWORD"
    )]
    pub basic_auth: Option<String>,
    /// A bearer token for the registry (`Authorization: Bearer …`).
    #[arg(
        id = "registry_bearer_token",
        long = "registry-bearer-token",
        env = "SCHEMA_REGISTRY_BEARER_TOKEN",
        value_name = "TOKEN"
    )]
    pub bearer_token: Option<String>,
    /// A PEM file of CA certificates to trust for an `https://` registry, besides the system's.
    #[arg(
        id = "registry_ca_file",
        long = "registry-ca-file",
        env = "SCHEMA_REGISTRY_CA_FILE",
        value_name = "PEM"
    )]
    pub ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    /// The registry at `url`, without credentials.
    pub fn plain(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            basic_auth: None,
            bearer_token: None,
            ca_file: None,
        }
    }

    pub fn validate(&self) -> Result<(), RegistryAuthError> {
        if !self.url.starts_with("http://") && !self.url.starts_with("https://") {
            return Err(RegistryAuthError::Url(self.url.clone()));
        }
        if self.basic_auth.is_some() && self.bearer_token.is_some() {
            return Err(RegistryAuthError::BothCredentials);
        }
        if let Some(basic) = &self.basic_auth {
            split_user_info(basic)?;
        }
        if self.ca_file.is_some() {
            self.ca_certificates()?;
        }
        Ok(())
    }

    /// An HTTP client for the registry with `timeout` on every call, its credentials sent with
    /// every request (marked sensitive, so never logged) and the CA trusted.
    pub fn client_builder(
        &self,
        timeout: Duration,
    ) -> Result<reqwest::ClientBuilder, RegistryAuthError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(value) = self.authorization()? {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .default_headers(headers);
        for certificate in self.ca_certificates()? {
            builder = builder.add_root_certificate(certificate);
        }
        Ok(builder)
    }

    /// The settings of the Confluent wire-format codec: the same client as
    /// [`RegistryArgs::client_builder`].
    pub fn sr_settings(&self, timeout: Duration) -> Result<SrSettings, RegistryAuthError> {
        let builder = self.client_builder(timeout)?;
        SrSettings::new_builder(self.url.clone())
            .set_timeout(timeout)
            .build_with(builder)
            .map_err(|e| RegistryAuthError::Client(e.to_string()))
    }

    /// Asks the registry for its global configuration, as a start-up check: the registry must
    /// be reachable, trusted and accept these credentials.
    pub async fn check(&self, timeout: Duration) -> Result<(), RegistryAuthError> {
        let client = self
            .client_builder(timeout)?
            .build()
            .map_err(|e| RegistryAuthError::Client(e.to_string()))?;
        let url = format!("{}/config", self.url.trim_end_matches('/'));
        let response = client.get(&url).send().await.map_err(|e| {
            // The chain carries the cause (refused, timed out, certificate); the top says only
            // "error sending request".
            let mut detail = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                detail = format!("{detail}: {cause}");
                source = cause.source();
            }
            RegistryAuthError::Unreachable {
                url: self.url.clone(),
                detail,
            }
        })?;
        match response.status() {
            status if status.is_success() => Ok(()),
            status @ (reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) => {
                Err(RegistryAuthError::Refused {
                    url: self.url.clone(),
                    status: status.to_string(),
                    sent: match (&self.basic_auth, &self.bearer_token) {
                        (Some(_), _) => "the basic auth credentials (--registry-basic-auth)",
                        (None, Some(_)) => "the bearer token (--registry-bearer-token)",
                        (None, None) => {
                            "no credentials (set --registry-basic-auth or --registry-bearer-token)"
                        }
                    },
                })
            }
            status => Err(RegistryAuthError::Unreachable {
                url: self.url.clone(),
                detail: format!("GET /config answered {status}"),
            }),
        }
    }

    fn authorization(&self) -> Result<Option<reqwest::header::HeaderValue>, RegistryAuthError> {
        use base64::Engine as _;
        let value = match (&self.basic_auth, &self.bearer_token) {
            (Some(_), Some(_)) => return Err(RegistryAuthError::BothCredentials),
            (Some(basic), None) => {
                let (user, password) = split_user_info(basic)?;
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Basic {encoded}")
            }
            (None, Some(token)) => format!("Bearer {token}"),
            (None, None) => return Ok(None),
        };
        let mut value = reqwest::header::HeaderValue::from_str(&value)
            .map_err(|_| RegistryAuthError::BadCharacters)?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    fn ca_certificates(&self) -> Result<Vec<reqwest::Certificate>, RegistryAuthError> {
        let Some(path) = &self.ca_file else {
            return Ok(Vec::new());
        };
        let pem = std::fs::read(path).map_err(|source| RegistryAuthError::CaFile {
            path: path.clone(),
            detail: source.to_string(),
        })?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RegistryAuthError::CaFile {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if certificates.is_empty() {
            return Err(RegistryAuthError::CaFile {
                path: path.clone(),
                detail: "no PEM certificate in it".to_owned(),
            });
        }
        Ok(certificates)
    }
}

impl fmt::Debug for RegistryArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self.basic_auth.as_deref().map(redacted_user_info);
        f.debug_struct("RegistryArgs")
            .field("url", &self.url)
            .field("basic_auth", &user)
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// `USER:PASSWORD` as it may be logged: `USER:<redacted>`.
pub fn redacted_user_info(text: &str) -> String {
    format!(
        "{}:<redacted>",
        text.split_once(':').map_or(text, |(user, _)| user)
    )
}

fn split_user_info(text: &str) -> Result<(&str, &str), RegistryAuthError> {
    match text.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok((user, password)),
        _ => Err(RegistryAuthError::UserInfo),
    }
}

/// Registry settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum RegistryAuthError {
    #[error("registry url `{0}` must start with http:// or https://")]
    Url(String),
    #[error("registry basic auth must be USER:PASSWORD")]
    UserInfo,
    #[error("set registry basic auth or a registry bearer token, not both")]
    BothCredentials,
    #[error("registry credentials hold characters an HTTP header cannot carry")]
    BadCharacters,
    #[error("registry CA file {}: {detail}", path.display())]
    CaFile { path: PathBuf, detail: String },
    #[error("registry HTTP client: {0}")]
    Client(String),
    #[error("the schema registry at {url} refused {sent}: {status}")]
    Refused {
        url: String,
        status: String,
        sent: &'static str,
    },
    #[error("the schema registry at {url} could not be reached: {detail}")]
    Unreachable { url: String, detail: String },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn credentials_are_checked_and_never_shown() {
        let mut args = RegistryArgs::plain("https://registry.example:8081");
        args.basic_auth = Some("key:s3cret:with-colon".into());
        assert!(args.validate().is_ok());
        let shown = format!("{args:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("key:<redacted>"), "{shown}");
        let header = args.authorization().unwrap().unwrap();
        assert!(header.is_sensitive());
        // "key:s3cret:with-colon" in base64: the password keeps its own colons.
        assert_eq!(
            header.to_str().unwrap(),
            "Basic a2V5OnMzY3JldDp3aXRoLWNvbG9u"
        );

        args.bearer_token = Some("t0ken".into());
        assert!(matches!(
            args.validate(),
            Err(RegistryAuthError::BothCredentials)
        ));
        args.basic_auth = None;
        assert!(!format!("{args:?}").contains("t0ken"));
        assert_eq!(
            args.authorization().unwrap().unwrap().to_str().unwrap(),
            "Bearer t0ken"
        );

        let mut args = RegistryArgs::plain("http://r");
        args.basic_auth = Some("no-colon".into());
        assert!(matches!(args.validate(), Err(RegistryAuthError::UserInfo)));
        assert!(matches!(
            RegistryArgs::plain("ftp://r").validate(),
            Err(RegistryAuthError::Url(_))
        ));
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let mut args = RegistryArgs::plain("https://r");
        args.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(
            args.validate(),
            Err(RegistryAuthError::CaFile { .. })
        ));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not a certificate").unwrap();
        args.ca_file = Some(file.path().to_owned());
        assert!(matches!(
            args.validate(),
            Err(RegistryAuthError::CaFile { .. })
        ));
    }
}
