//! The probes, each against a [`Host`]: the filesystem root it looks under and the environment
//! it reads, so that the file probes can be run against a fake layout in tests.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the probes look: the filesystem root and the environment variables that the build
/// tools themselves read (`LIBCLANG_PATH`, `CC`, `CXX`, `JAVA_HOME`, `PYTHON`).
#[derive(Debug, Clone)]
pub struct Host {
    pub root: PathBuf,
    pub env: Vec<(String, OsString)>,
}

impl Host {
    /// This machine as it is.
    pub fn this_machine() -> Self {
        Self {
            root: PathBuf::from("/"),
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v)))
                .collect(),
        }
    }

    fn var(&self, name: &str) -> Option<&OsString> {
        self.env
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v)
    }

    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    /// Whether this process runs as root (then the install command needs no `sudo`).
    pub fn is_root(&self) -> bool {
        std::fs::read_to_string(self.path("/proc/self/status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next())
                == Some("0")
        })
    }
}

/// One prerequisite: what it is for and how to install it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    /// Debian packages that provide it.
    pub debian_packages: &'static [&'static str],
    /// How to install it when it is not a Debian package (Rust itself).
    pub other_install: Option<&'static str>,
}

impl Check {
    /// The exact command that installs it.
    pub fn install(&self, root: bool) -> String {
        if let Some(other) = self.other_install {
            return other.to_owned();
        }
        let sudo = if root { "" } else { "sudo " };
        format!(
            "{sudo}apt-get install -y --no-install-recommends {}",
            self.debian_packages.join(" ")
        )
    }
}

/// A probe's verdict: what was found (`Ok`, a short description) or why it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: Check,
    pub outcome: Result<String, String>,
}

impl Finding {
    pub fn missing(&self) -> bool {
        self.outcome.is_err()
    }
}

pub(crate) const RUST: Check = Check {
    name: "Rust 1.88+",
    debian_packages: &[],
    other_install: Some("rustup toolchain install stable && rustup default stable"),
};
pub(crate) const C_COMPILER: Check = Check {
    name: "C compiler",
    debian_packages: &["build-essential"],
    other_install: None,
};
pub(crate) const CXX_COMPILER: Check = Check {
    name: "C++ compiler",
    debian_packages: &["build-essential"],
    other_install: None,
};
pub(crate) const MAKE: Check = Check {
    name: "make",
    debian_packages: &["build-essential"],
    other_install: None,
};
pub(crate) const LIBCLANG: Check = Check {
    name: "libclang",
    debian_packages: &["libclang-dev"],
    other_install: None,
};
pub(crate) const OPENSSL: Check = Check {
    name: "OpenSSL headers",
    debian_packages: &["libssl-dev", "pkg-config"],
    other_install: None,
};
pub(crate) const JAVA: Check = Check {
    name: "Java 17+",
    debian_packages: &["openjdk-17-jre-headless"],
    other_install: None,
};
pub(crate) const MAVEN: Check = Check {
    name: "Maven",
    debian_packages: &["maven"],
    other_install: None,
};
pub(crate) const CHROMIUM: Check = Check {
    name: "Chromium (browser tests)",
    debian_packages: &["chromium"],
    other_install: None,
};
pub(crate) const PYTHON: Check = Check {
    name: "Python 3 with venv",
    debian_packages: &["python3", "python3-venv"],
    other_install: None,
};

pub(crate) fn all(host: &Host) -> Vec<Finding> {
    let scratch = std::env::temp_dir().join(format!("doctor-{}", std::process::id()));
    let findings = vec![
        finding(RUST, rust(host)),
        finding(
            C_COMPILER,
            compiles(host, &scratch, "CC", "cc", "c", C_SOURCE),
        ),
        finding(
            CXX_COMPILER,
            compiles(host, &scratch, "CXX", "c++", "cpp", CXX_SOURCE),
        ),
        finding(MAKE, version_line(host, "make", &["--version"])),
        finding(LIBCLANG, libclang(host)),
        finding(OPENSSL, openssl(host)),
        finding(JAVA, java(host)),
        finding(MAVEN, version_line(host, "mvn", &["-v"])),
        finding(PYTHON, python(host)),
        finding(CHROMIUM, chromium(host)),
    ];
    let _ = std::fs::remove_dir_all(&scratch);
    findings
}

fn finding(check: Check, outcome: Result<String, String>) -> Finding {
    Finding { check, outcome }
}

/// Runs `program` with `args`, returning its stdout and stderr when it exits with success.
fn run(host: &Host, program: &OsString, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    command
        .env_clear()
        .envs(host.env.iter().map(|(k, v)| (k, v)));
    let output = command
        .output()
        .map_err(|e| format!("`{}` could not run: {e}", program.to_string_lossy()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "`{} {}` failed ({}): {}",
            program.to_string_lossy(),
            args.join(" "),
            output.status,
            text.lines().next().unwrap_or("")
        ))
    }
}

fn version_line(host: &Host, program: &str, args: &[&str]) -> Result<String, String> {
    let text = run(host, &OsString::from(program), args)?;
    Ok(without_escapes(
        text.lines().next().unwrap_or(program).trim(),
    ))
}

/// `text` without terminal escape sequences (Maven colours its version line).
fn without_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ending with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn rust(host: &Host) -> Result<String, String> {
    let rustc = host
        .var("RUSTC")
        .cloned()
        .unwrap_or_else(|| OsString::from("rustc"));
    let text = run(host, &rustc, &["--version"])?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    let version = line.split_whitespace().nth(1).unwrap_or("");
    match parse_version(version) {
        Some((1, minor)) if minor >= 88 => Ok(line),
        _ => Err(format!("{line}: older than 1.88")),
    }
}

const C_SOURCE: &str = "#include <stdint.h>\n#include <stdio.h>\nint main(void) { return (int)sizeof(uint64_t) - 8; }\n";
const CXX_SOURCE: &str = "#include <string>\n#include <vector>\nint main() { std::vector<std::string> v{\"ok\"}; return v[0].size() == 2 ? 0 : 1; }\n";

/// Compiles a small program the way the `cc` crate would (the compiler from `env_var`, else
/// `default`), with the standard library headers RocksDB and librdkafka include.
fn compiles(
    host: &Host,
    scratch: &Path,
    env_var: &str,
    default: &str,
    extension: &str,
    source: &str,
) -> Result<String, String> {
    let compiler = host
        .var(env_var)
        .cloned()
        .unwrap_or_else(|| OsString::from(default));
    std::fs::create_dir_all(scratch).map_err(|e| format!("scratch directory: {e}"))?;
    let file = scratch.join(format!("probe.{extension}"));
    let binary = scratch.join(format!("probe-{extension}"));
    std::fs::write(&file, source).map_err(|e| format!("scratch file: {e}"))?;
    let (file, binary) = (file.to_string_lossy(), binary.to_string_lossy());
    run(host, &compiler, &[&file, "-o", &binary])
        .map_err(|e| format!("cannot compile a {extension} file: {e}"))?;
    let version = run(host, &compiler, &["--version"]).unwrap_or_default();
    Ok(version.lines().next().unwrap_or("").trim().to_owned())
}

/// The `libclang` that bindgen (through clang-sys, at run time) would open, and the compiler's
/// own headers (`stddef.h`) it parses RocksDB's C header with.
fn libclang(host: &Host) -> Result<String, String> {
    let configured = host.var("LIBCLANG_PATH").map(PathBuf::from);
    let library = find_libclang(&host.root, configured.as_deref())?;
    let headers = clang_headers(host).ok_or_else(|| {
        format!(
            "{} is there, but not clang's own headers (lib/clang/<version>/include/stddef.h)",
            library.display()
        )
    })?;
    Ok(format!(
        "{} (headers {})",
        library.display(),
        headers.display()
    ))
}

/// The directories clang-sys searches on Linux, under `root`, most specific first.
fn libclang_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let mut llvm: Vec<PathBuf> = read_dir(&root.join("usr/lib"))
        .into_iter()
        .filter(|p| file_name(p).starts_with("llvm-"))
        .map(|p| p.join("lib"))
        .collect();
    // Newest LLVM first, as clang-sys prefers.
    llvm.sort_by_key(|p| std::cmp::Reverse(llvm_version(p)));
    dirs.extend(llvm);
    let multiarch = read_dir(&root.join("usr/lib"))
        .into_iter()
        .filter(|p| file_name(p).ends_with("-linux-gnu"));
    dirs.extend(multiarch);
    for dir in ["usr/lib", "usr/lib64", "usr/local/lib", "usr/local/lib64"] {
        dirs.push(root.join(dir));
    }
    dirs
}

fn llvm_version(dir: &Path) -> u32 {
    dir.parent()
        .map(file_name)
        .and_then(|n| n.strip_prefix("llvm-").and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Finds a `libclang` shared library bindgen can open: `libclang.so`, `libclang.so.<n>`,
/// `libclang-<n>.so` or `libclang-<n>.so.<m>`, in `configured` (`LIBCLANG_PATH`, a directory or
/// the file itself) or the usual directories under `root`. `libclang-cpp.so` is the C++ API of
/// clang, which bindgen cannot use: it does not count.
pub fn find_libclang(root: &Path, configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(configured) = configured {
        let candidates = if configured.is_dir() {
            read_dir(configured)
        } else {
            vec![configured.to_path_buf()]
        };
        return candidates
            .into_iter()
            .find(|p| is_libclang(file_name(p)) && p.is_file())
            .ok_or_else(|| {
                format!(
                    "LIBCLANG_PATH is {}, which holds no libclang.so",
                    configured.display()
                )
            });
    }
    let mut impostors = Vec::new();
    for dir in libclang_dirs(root) {
        for path in read_dir(&dir) {
            let name = file_name(&path);
            if is_libclang(name) && path.is_file() {
                return Ok(path);
            }
            if name.starts_with("libclang") && name.contains(".so") {
                impostors.push(name.to_owned());
            }
        }
    }
    impostors.sort();
    impostors.dedup();
    if impostors.is_empty() {
        Err("no libclang.so (bindgen needs it to build RocksDB's bindings)".to_owned())
    } else {
        Err(format!(
            "no libclang.so that bindgen can open (found only {})",
            impostors.join(", ")
        ))
    }
}

fn is_libclang(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("libclang") else {
        return false;
    };
    // `libclang.so`, `libclang.so.1`, `libclang-14.so`, `libclang-14.so.1`; never
    // `libclang-cpp.so.14` or `libclangBasic.a`.
    let rest = match rest.strip_prefix('-') {
        Some(versioned) => {
            if !versioned.starts_with(|c: char| c.is_ascii_digit()) {
                return false;
            }
            // The version ran into ".so": put the dot back.
            if let Some(so) = versioned.find(".so") {
                &versioned[so..]
            } else {
                return false;
            }
        }
        None => rest,
    };
    rest == ".so"
        || rest
            .strip_prefix(".so.")
            .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

fn clang_headers(host: &Host) -> Option<PathBuf> {
    let mut bases: Vec<PathBuf> = read_dir(&host.path("/usr/lib"))
        .into_iter()
        .filter(|p| file_name(p).starts_with("llvm-"))
        .map(|p| p.join("lib/clang"))
        .collect();
    bases.push(host.path("/usr/lib/clang"));
    bases.push(host.path("/usr/local/lib/clang"));
    bases
        .iter()
        .flat_map(|base| read_dir(base))
        .map(|version| version.join("include"))
        .find(|include| include.join("stddef.h").is_file())
}

/// OpenSSL as librdkafka's build finds it: through `pkg-config`.
fn openssl(host: &Host) -> Result<String, String> {
    let pkg_config = OsString::from("pkg-config");
    run(host, &pkg_config, &["--atleast-version=1.1.1", "openssl"]).map_err(|_| {
        "pkg-config does not know OpenSSL 1.1.1+ (its headers and .pc file)".to_owned()
    })?;
    let version = run(host, &pkg_config, &["--modversion", "openssl"])?;
    Ok(format!("OpenSSL {}", version.trim()))
}

fn java(host: &Host) -> Result<String, String> {
    let java = host
        .var("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|p| p.is_file())
        .map_or_else(|| OsString::from("java"), PathBuf::into_os_string);
    let text = run(host, &java, &["-version"])?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    let major = java_major(&line);
    match major {
        Some(major) if major >= 17 => Ok(line),
        Some(major) => Err(format!("{line}: Java {major}, Kafka 4 needs 17 or newer")),
        None => Err(format!("cannot read a version from `{line}`")),
    }
}

/// The major version in `java -version`'s first line: `openjdk version "17.0.15" …` → 17,
/// `java version "1.8.0_392"` → 8.
pub(crate) fn java_major(line: &str) -> Option<u32> {
    let quoted = line.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '_', '-', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

fn python(host: &Host) -> Result<String, String> {
    let python = host
        .var("PYTHON")
        .cloned()
        .unwrap_or_else(|| OsString::from("python3"));
    run(host, &python, &["-c", "import venv, ensurepip"])
        .map_err(|_| "python3 cannot import venv and ensurepip (python3-venv)".to_owned())?;
    version_line(host, &python.to_string_lossy(), &["--version"])
}

/// The browser the `/docs` tests drive headless (`CHROMIUM`, else `chromium`).
fn chromium(host: &Host) -> Result<String, String> {
    let program = host
        .var("CHROMIUM")
        .cloned()
        .unwrap_or_else(|| OsString::from("chromium"));
    let text = run(host, &program, &["--version"])?;
    let line = text
        .lines()
        .find(|l| l.contains("Chromium") || l.contains("Chrome"))
        .unwrap_or("")
        .trim()
        .to_owned();
    if line.is_empty() {
        Err(format!(
            "`{} --version` names no Chromium",
            program.to_string_lossy()
        ))
    } else {
        Ok(line)
    }
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn layout(files: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for file in files {
            let path = root.path().join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        root
    }

    #[test]
    fn libclang_cpp_alone_is_not_libclang() {
        // What a fresh Debian 12 machine of this kind ships: clang's C++ API library only.
        let root = layout(&[
            "usr/lib/llvm-14/lib/libclang-cpp.so.14",
            "usr/lib/x86_64-linux-gnu/libclang-cpp.so.14",
        ]);
        let error = find_libclang(root.path(), None).unwrap_err();
        assert!(error.contains("libclang-cpp.so.14"), "{error}");
    }

    #[test]
    fn libclang_is_found_where_debian_puts_it() {
        let root = layout(&[
            "usr/lib/llvm-14/lib/libclang-cpp.so.14",
            "usr/lib/llvm-14/lib/libclang.so.1",
        ]);
        let found = find_libclang(root.path(), None).unwrap();
        assert!(
            found.ends_with("usr/lib/llvm-14/lib/libclang.so.1"),
            "{}",
            found.display()
        );
        let root = layout(&["usr/lib/x86_64-linux-gnu/libclang-16.so.16.0.6"]);
        assert!(find_libclang(root.path(), None).is_ok());
    }

    #[test]
    fn the_newest_llvm_wins() {
        let root = layout(&[
            "usr/lib/llvm-9/lib/libclang.so",
            "usr/lib/llvm-14/lib/libclang.so",
        ]);
        let found = find_libclang(root.path(), None).unwrap();
        assert!(found.to_string_lossy().contains("llvm-14"));
    }

    #[test]
    fn libclang_path_is_honoured_and_checked() {
        let root = layout(&["opt/clang/lib/libclang.so", "opt/empty/libclang-cpp.so"]);
        assert!(
            find_libclang(
                Path::new("/nonexistent"),
                Some(&root.path().join("opt/clang/lib"))
            )
            .is_ok()
        );
        assert!(find_libclang(root.path(), Some(&root.path().join("opt/empty"))).is_err());
    }

    #[test]
    fn library_names() {
        for good in [
            "libclang.so",
            "libclang.so.1",
            "libclang-14.so",
            "libclang-14.so.1",
            "libclang-16.0.so.16.0.6",
        ] {
            assert!(is_libclang(good), "{good}");
        }
        for bad in [
            "libclang-cpp.so.14",
            "libclang-cpp.so",
            "libclangBasic.a",
            "libclang.a",
            "libclang.so.",
            "libclang-.so",
        ] {
            assert!(!is_libclang(bad), "{bad}");
        }
    }

    #[test]
    fn headers_are_part_of_libclang() {
        let root = layout(&["usr/lib/llvm-14/lib/libclang.so.1"]);
        let host = Host {
            root: root.path().to_path_buf(),
            env: Vec::new(),
        };
        assert!(libclang(&host).unwrap_err().contains("stddef.h"));
        let root = layout(&[
            "usr/lib/llvm-14/lib/libclang.so.1",
            "usr/lib/llvm-14/lib/clang/14.0.6/include/stddef.h",
        ]);
        let host = Host {
            root: root.path().to_path_buf(),
            env: Vec::new(),
        };
        assert!(libclang(&host).is_ok());
    }

    #[test]
    fn escapes_are_dropped() {
        assert_eq!(
            without_escapes("\u{1b}[1mApache Maven 3.8.7\u{1b}[m"),
            "Apache Maven 3.8.7"
        );
    }

    #[test]
    fn java_versions() {
        assert_eq!(
            java_major(r#"openjdk version "17.0.15" 2025-04-15"#),
            Some(17)
        );
        assert_eq!(java_major(r#"openjdk version "21" 2023-09-19"#), Some(21));
        assert_eq!(java_major(r#"java version "1.8.0_392""#), Some(8));
        assert_eq!(java_major("nonsense"), None);
    }

    #[test]
    fn a_missing_program_is_missing() {
        let host = Host {
            root: PathBuf::from("/"),
            env: vec![("PATH".to_owned(), OsString::from("/nonexistent"))],
        };
        assert!(version_line(&host, "mvn", &["-v"]).is_err());
        assert!(python(&host).is_err());
        assert!(java(&host).is_err());
    }

    #[test]
    fn the_install_command_names_the_packages() {
        let findings = vec![
            Finding {
                check: LIBCLANG,
                outcome: Err("none".into()),
            },
            Finding {
                check: C_COMPILER,
                outcome: Err("none".into()),
            },
            Finding {
                check: CXX_COMPILER,
                outcome: Err("none".into()),
            },
            Finding {
                check: JAVA,
                outcome: Ok("17".into()),
            },
        ];
        assert_eq!(
            crate::debian_packages(&findings),
            ["libclang-dev", "build-essential"]
        );
        let report = crate::report(&findings, true);
        assert!(
            report.contains(
                "apt-get install -y --no-install-recommends libclang-dev build-essential"
            ),
            "{report}"
        );
        assert!(!report.contains("sudo"));
        assert!(crate::report(&findings, false).contains("sudo apt-get"));
    }
}
