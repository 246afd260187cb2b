//! A service's configuration from flags, environment variables and an optional TOML file, in
//! that order of precedence, into the service's own typed `clap` struct.
//!
//! The file is named by the struct's `config` argument (`--config FILE`, or its environment
//! variable). Its keys are the settings' names, as fields (`max_batch = 1024`) or as flags
//! (`max-batch = 1024`). Each value becomes the default of the flag it names, so a flag or an
//! environment variable still overrides it, and every value goes through the same parsing as a
//! flag. A key that names no setting is an error: a typo in a file must not pass silently.

pub mod kafka;
pub mod registry;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Command, Parser};

pub use kafka::{ConnectError, KafkaArgs, KafkaProperty};
pub use registry::{RegistryArgs, RegistryAuthError};

/// The id of the argument that names the file: a field `config: Option<PathBuf>`.
pub const CONFIG_ARG: &str = "config";

/// Why no configuration could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag, environment variable or file value that does not parse; also `--help` and
    /// `--version`, which [`clap::Error::exit`] prints.
    #[error(transparent)]
    Args(#[from] clap::Error),
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the configuration file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("the configuration file {} sets `{key}`, which is not a setting (settings: {known})", path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("the configuration file {} sets `{key}` to {kind}; a setting is one value", path.display())]
    NotAValue {
        path: PathBuf,
        key: String,
        kind: &'static str,
    },
}

impl ConfigError {
    /// Prints the error (or the help or version asked for) and exits, as clap does.
    pub fn exit(self) -> ! {
        match self {
            Self::Args(error) => error.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// The log filter of a service when `RUST_LOG` is unset. actix-http logs each request it
/// cannot parse at ERROR, though the client's mistake is answered `400`: any client could fill
/// the log and page whoever watches it. `RUST_LOG=info` shows them again.
pub const DEFAULT_LOG_FILTER: &str = "info,actix_http::h1::dispatcher=off";

/// How many client connections an HTTP server may hold open at once, all its workers together.
///
/// Each connection is a file descriptor. Clients that open more than the process may have would
/// otherwise take the descriptors its Kafka clients, stores and logs need, and those fail in
/// worse ways than a client waiting in the listen backlog. `configured` must stay below the
/// open-file limit (`open_files`; `None`: no limit); unset, the cap is half that limit.
pub fn connection_cap(configured: Option<usize>, open_files: Option<u64>) -> Result<usize, String> {
    const UNLIMITED_DEFAULT: usize = 50_000;
    let limit = open_files.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    match (configured, limit) {
        (Some(0), _) => Err("max connections must be at least 1".to_owned()),
        (Some(cap), Some(limit)) if cap >= limit => Err(format!(
            "max connections ({cap}) must stay below the open-file limit ({limit}): raise `ulimit -n` or lower it"
        )),
        (Some(cap), _) => Ok(cap),
        (None, Some(limit)) => Ok((limit / 2).max(1)),
        (None, None) => Ok(UNLIMITED_DEFAULT),
    }
}

/// Connections the kernel may hold for a listener before it accepts them. The kernel caps it at
/// `net.core.somaxconn` (4096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: i32 = 4096;

/// A TCP listener on `address` (`host:port`, port 0 for any), as
/// `std::net::TcpListener::bind` makes it but with a backlog of [`LISTEN_BACKLOG`].
///
/// std listens with a backlog of 128. Connections beyond the [`connection_cap`] wait in that
/// queue, and so does every burst of new clients while the workers are busy: once it is full
/// the kernel drops further SYNs, and each dropped client waits a 1 s retransmission before it
/// is even seen.
pub fn listen(address: &str) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut last_error = None;
    for addr in std::net::ToSocketAddrs::to_socket_addrs(address)? {
        let bound = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|socket| {
                // As std does: a restarted service can bind while old connections linger.
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(LISTEN_BACKLOG)?;
                Ok(socket)
            });
        match bound {
            Ok(socket) => return Ok(socket.into()),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address} resolves to no address"),
        )
    }))
}

/// This process's soft limit on open files; `None` when it has none.
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The configuration from this process's arguments, environment and file.
pub fn parse<C: Parser>() -> Result<C, ConfigError> {
    parse_from(std::env::args_os())
}

/// The configuration from `args` (the first is the program name), the environment and the file.
pub fn parse_from<C, I, T>(args: I) -> Result<C, ConfigError>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut command = C::command();
    // A first, lenient pass only to learn where the file is; the real pass judges everything.
    let path = C::command()
        .ignore_errors(true)
        .try_get_matches_from(&args)
        .ok()
        .and_then(|m| m.try_get_one::<PathBuf>(CONFIG_ARG).ok().flatten().cloned());
    let mut kafka_properties = Vec::new();
    if let Some(path) = path {
        let (with_defaults, from_file) = with_file_defaults(command, &path)?;
        command = with_defaults;
        kafka_properties = from_file;
    }
    if command
        .get_arguments()
        .any(|arg| arg.get_id() == kafka::PROPERTY_ARG)
    {
        let mut from_env: Vec<String> = std::env::vars_os()
            .filter_map(|(k, v)| kafka::property_from_env(k.to_str()?, v.to_str()?))
            .collect();
        from_env.sort();
        kafka_properties.extend(from_env);
        // Put before the command line's own flags: a later property replaces an earlier one, so
        // the file gives way to the environment, and both to the flags.
        let at = args.len().min(1);
        let injected = kafka_properties
            .into_iter()
            .flat_map(|p| [OsString::from("--kafka-property"), OsString::from(p)]);
        args.splice(at..at, injected);
    }
    let matches = command.try_get_matches_from(&args)?;
    Ok(C::from_arg_matches(&matches)?)
}

/// `command` with each setting in the file as its default, and the `KEY=VALUE` client
/// properties of the file's `[kafka]` table.
fn with_file_defaults(
    mut command: Command,
    path: &Path,
) -> Result<(Command, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
    let settings: Vec<String> = command
        .get_arguments()
        .map(|arg| arg.get_id().as_str().to_owned())
        .filter(|id| !matches!(id.as_str(), CONFIG_ARG | "help" | "version"))
        .collect();
    let mut kafka_properties = Vec::new();
    for (key, value) in table {
        if key == "kafka" && settings.iter().any(|s| s == kafka::PROPERTY_ARG) {
            let toml::Value::Table(properties) = value else {
                return Err(ConfigError::NotAValue {
                    path: path.to_owned(),
                    key,
                    kind: "not a table of client properties",
                });
            };
            for (name, value) in properties {
                let text = scalar(&value).ok_or_else(|| ConfigError::NotAValue {
                    path: path.to_owned(),
                    key: format!("kafka.{name}"),
                    kind: "an array or a table",
                })?;
                kafka_properties.push(format!("{name}={text}"));
            }
            continue;
        }
        let id = key.replace('-', "_");
        if !settings.contains(&id) {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key,
                known: settings.join(", "),
            });
        }
        let not_a_value = |kind| ConfigError::NotAValue {
            path: path.to_owned(),
            key: key.clone(),
            kind,
        };
        let text = match value {
            toml::Value::Array(_) => return Err(not_a_value("an array")),
            toml::Value::Table(_) => return Err(not_a_value("a table")),
            scalar_value => scalar(&scalar_value).unwrap_or_default(),
        };
        command = command.mut_arg(id, |arg| arg.default_value(text));
    }
    Ok((command, kafka_properties))
}

/// A TOML value as a flag would spell it; `None` for arrays and tables.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    #[test]
    fn a_listener_holds_more_waiting_connections_than_std_s_128() {
        let listener = listen("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Never accepted, so each one waits in the backlog; a full backlog drops the SYN and
        // the connect would wait for a retransmission a second later.
        let held: Vec<_> = (0..300)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500))
                    .unwrap_or_else(|e| panic!("connection {i} was not queued: {e}"))
            })
            .collect();
        assert_eq!(held.len(), 300);
    }

    #[test]
    fn the_connection_cap_leaves_descriptors_for_the_rest() {
        assert_eq!(connection_cap(None, Some(20_000)), Ok(10_000));
        assert_eq!(connection_cap(None, Some(1)), Ok(1));
        assert_eq!(connection_cap(None, None), Ok(50_000));
        assert_eq!(connection_cap(Some(4_096), Some(20_000)), Ok(4_096));
        assert!(connection_cap(Some(20_000), Some(20_000)).is_err());
        assert!(connection_cap(Some(0), None).is_err());
    }

    #[derive(Debug, Parser)]
    #[command(name = "svc")]
    struct Settings {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        max_batch: usize,
        #[arg(long, default_value = "built-in")]
        name: String,
        #[arg(long)]
        replica: Option<String>,
        /// Cargo sets this variable for every test run, which spares the test `set_var`.
        #[arg(long, env = "CARGO_PKG_NAME", default_value = "built-in")]
        package: String,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn with_file(text: &str, flags: &[&str]) -> Result<Settings, ConfigError> {
        let file = file(text);
        let path = file.path().to_str().unwrap();
        let mut args = vec!["svc", "--config", path];
        args.extend(flags);
        parse_from(args)
    }

    #[test]
    fn without_a_file_the_defaults_and_flags_count() {
        let s: Settings = parse_from(["svc", "--name", "flag"]).unwrap();
        assert_eq!((s.max_batch, s.name.as_str(), s.replica), (1, "flag", None));
    }

    #[test]
    fn the_file_sets_what_no_flag_sets() {
        let s = with_file("max_batch = 7\nname = \"file\"\nreplica = \"r-1\"\n", &[]).unwrap();
        assert_eq!(s.max_batch, 7);
        assert_eq!(s.name, "file");
        assert_eq!(s.replica.as_deref(), Some("r-1"));
        // Flag spelling works as well as field spelling.
        assert_eq!(with_file("max-batch = 9", &[]).unwrap().max_batch, 9);
    }

    #[test]
    fn a_flag_beats_the_file() {
        let s = with_file("max_batch = 7\nname = \"file\"", &["--max-batch", "8"]).unwrap();
        assert_eq!((s.max_batch, s.name.as_str()), (8, "file"));
    }

    #[test]
    fn the_environment_beats_the_file_and_a_flag_beats_the_environment() {
        let s = with_file("package = \"file\"", &[]).unwrap();
        assert_eq!(s.package, env!("CARGO_PKG_NAME"));
        let s = with_file("package = \"file\"", &["--package", "flag"]).unwrap();
        assert_eq!(s.package, "flag");
    }

    #[test]
    fn a_file_value_is_parsed_like_a_flag() {
        let error = with_file("max_batch = \"lots\"", &[]).unwrap_err();
        assert!(matches!(error, ConfigError::Args(_)), "{error:?}");
        assert!(error.to_string().contains("lots"), "{error}");
    }

    #[derive(Debug, Parser)]
    #[command(name = "svc")]
    struct WithKafka {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[test]
    fn kafka_properties_come_from_the_file_table_and_flags_win() {
        let settings = file(
            "[kafka]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"from-file\"\n\"socket.timeout.ms\" = 5000\n",
        );
        let path = settings.path().to_str().unwrap();
        let s: WithKafka = parse_from([
            "svc",
            "--config",
            path,
            "--kafka-property",
            "sasl.password=from-flag",
        ])
        .unwrap();
        let effective = s.kafka.effective();
        assert_eq!(effective["security.protocol"], "SASL_SSL");
        assert_eq!(effective["socket.timeout.ms"], "5000");
        assert_eq!(effective["sasl.password"], "from-flag");
        // A [kafka] table where the binary has no Kafka settings is an unknown key.
        let error = with_file("[kafka]\n\"a.b\" = 1\n", &[]).unwrap_err();
        assert!(matches!(error, ConfigError::UnknownKey { .. }), "{error:?}");
        let nested = file("[kafka]\n\"a.b\" = [1]\n");
        let error =
            parse_from::<WithKafka, _, _>(["svc", "--config", nested.path().to_str().unwrap()])
                .unwrap_err();
        assert!(matches!(error, ConfigError::NotAValue { .. }), "{error:?}");
    }

    #[test]
    fn unknown_keys_and_bad_files_are_errors() {
        let error = with_file("max_bacth = 7", &[]).unwrap_err();
        let ConfigError::UnknownKey { key, known, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(key, "max_bacth");
        assert_eq!(known, "max_batch, name, replica, package");
        assert!(matches!(
            with_file("max_batch = [1]", &[]),
            Err(ConfigError::NotAValue {
                kind: "an array",
                ..
            })
        ));
        assert!(matches!(
            with_file("max_batch = ", &[]),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            parse_from::<Settings, _, _>(["svc", "--config", "/nonexistent/svc.toml"]),
            Err(ConfigError::Read { .. })
        ));
    }
}
