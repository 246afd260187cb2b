//! A second client listener, `SASL_SSL`, as managed Kafka offers it: TLS with a certificate from
//! a CA made for this broker, and SCRAM-SHA-256/512 (and PLAIN) authentication.
//!
//! The CA and the broker's certificate are generated once per data directory (`tls/`); the SCRAM
//! credentials are written when the storage is formatted, as `kafka-storage format --add-scram`
//! does. Clients trust `tls/ca.pem`.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// What the `SASL_SSL` listener looks like.
#[derive(Debug, Clone)]
pub struct SecuredListener {
    pub port: u16,
    /// SCRAM users, `(name, password)`; PLAIN accepts the same ones.
    pub users: Vec<(String, String)>,
}

/// Files of the listener's TLS: the CA clients must trust and the broker's key store.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub keystore: PathBuf,
}

impl SecuredListener {
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TLS files under `data_dir`, made on first use.
    pub fn tls_files(data_dir: &Path) -> anyhow::Result<TlsFiles> {
        let dir = data_dir.join("tls");
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            keystore: dir.join("broker-keystore.pem"),
        };
        if files.ca.is_file() && files.keystore.is_file() {
            return Ok(files);
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let (ca_pem, keystore_pem) = generate().context("generating the broker's certificates")?;
        std::fs::write(&files.keystore, keystore_pem)?;
        std::fs::write(&files.ca, ca_pem)?;
        Ok(files)
    }

    /// The broker properties of the listener (added to the PLAINTEXT and CONTROLLER ones).
    pub(crate) fn properties(&self, tls: &TlsFiles) -> String {
        let plain_users: String = self
            .users
            .iter()
            .map(|(name, password)| format!(" user_{name}=\"{password}\""))
            .collect();
        format!(
            "\
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location={keystore}
",
            keystore = tls.keystore.display(),
        )
    }

    /// The `--add-scram` arguments of `kafka-storage format`.
    pub(crate) fn format_args(&self) -> Vec<String> {
        self.users
            .iter()
            .flat_map(|(name, password)| {
                ["SCRAM-SHA-256", "SCRAM-SHA-512"].map(|mechanism| {
                    format!("--add-scram={mechanism}=[name={name},password={password}]")
                })
            })
            .collect()
    }
}

/// A CA, and a broker certificate it signed for `127.0.0.1` and `localhost` (librdkafka checks
/// the host name). Returns the CA's PEM and the broker's key store: its PKCS#8 key (the only
/// unencrypted form Kafka's PEM loader reads), its certificate and the CA's.
fn generate() -> Result<(String, String), rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "local-kafka test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    let ca_pem = ca_cert.pem();
    let keystore = format!("{}{}{}", key.serialize_pem(), cert.pem(), ca_pem);
    Ok((ca_pem, keystore))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_key_store_holds_a_pkcs8_key_and_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let files = SecuredListener::tls_files(dir.path()).unwrap();
        let keystore = std::fs::read_to_string(&files.keystore).unwrap();
        assert!(
            keystore.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{keystore}"
        );
        assert_eq!(keystore.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        let ca = std::fs::read_to_string(&files.ca).unwrap();
        assert!(keystore.ends_with(&ca));
        // Made once: a restart keeps the certificates clients already trust.
        let again = SecuredListener::tls_files(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(again.ca).unwrap(), ca);
    }

    #[test]
    fn every_user_gets_both_scram_mechanisms_and_plain() {
        let listener = SecuredListener {
            port: 1,
            users: vec![("alice".into(), "a-secret".into())],
        };
        assert_eq!(
            listener.format_args(),
            [
                "--add-scram=SCRAM-SHA-256=[name=alice,password=a-secret]",
                "--add-scram=SCRAM-SHA-512=[name=alice,password=a-secret]"
            ]
        );
        let tls = TlsFiles {
            ca: "ca.pem".into(),
            keystore: "ks.pem".into(),
        };
        assert!(
            listener
                .properties(&tls)
                .contains("user_alice=\"a-secret\";")
        );
    }
}
