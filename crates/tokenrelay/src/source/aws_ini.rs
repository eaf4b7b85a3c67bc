//! The AWS shared config and credentials files (`~/.aws/config`, `~/.aws/credentials`): where
//! they are and a strict reader of their INI dialect, as botocore reads them.
//!
//! - `AWS_CONFIG_FILE` / `AWS_SHARED_CREDENTIALS_FILE` name the files (a leading `~/` is the
//!   home directory), default `~/.aws/config` and `~/.aws/credentials`. A file that does not
//!   exist is empty; one that exists must be a regular file of at most 1 MiB, UTF-8.
//! - In the config file a profile is `[profile NAME]` (or `[default]`); other sections
//!   (`[sso-session …]`, `[services …]`) are not profiles. In the credentials file every
//!   section `[NAME]` is a profile.
//! - Lines are `key = value` (or `key: value`), `# …` / `; …` comments, blank lines, and
//!   indented continuation lines (botocore's nested `s3 =` blocks), which are skipped. Keys are
//!   case-insensitive, values trimmed, with no inline comments (as botocore's parser). A
//!   duplicate section or key, a key outside a section, or any other line is an error naming
//!   the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::inputs::{read_bounded, FileError};
use super::SharedEnv;

/// Largest AWS config or credentials file read (1 MiB).
pub const MAX_AWS_CONFIG_FILE: u64 = 1024 * 1024;

/// Keys of one profile (lower-cased) and their values.
pub(crate) type Section = BTreeMap<String, String>;

/// The two files, read now.
#[derive(Debug, Clone, Default)]
pub(crate) struct AwsFiles {
    /// Path of the config file.
    pub config_path: PathBuf,
    /// Path of the credentials file.
    pub credentials_path: PathBuf,
    /// Profiles of the config file.
    pub config: BTreeMap<String, Section>,
    /// Profiles of the credentials file.
    pub credentials: BTreeMap<String, Section>,
}

/// Where the config and credentials files are: `AWS_CONFIG_FILE` and
/// `AWS_SHARED_CREDENTIALS_FILE`, else `$HOME/.aws/config` and `$HOME/.aws/credentials`.
pub(crate) fn paths(env: &SharedEnv) -> (PathBuf, PathBuf) {
    let home = env.var("HOME").filter(|h| !h.is_empty());
    let pick = |var: &str, default: &str| -> PathBuf {
        match env.var(var).filter(|v| !v.trim().is_empty()) {
            Some(v) => match (v.strip_prefix("~/"), &home) {
                (Some(rest), Some(h)) => Path::new(h).join(rest),
                _ => PathBuf::from(v),
            },
            None => match &home {
                Some(h) => Path::new(h).join(".aws").join(default),
                None => PathBuf::from("~/.aws").join(default),
            },
        }
    };
    (
        pick("AWS_CONFIG_FILE", "config"),
        pick("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
    )
}

impl AwsFiles {
    /// Reads both files (blocking: call on the blocking pool).
    ///
    /// # Errors
    /// One line naming the file and the cause (`/home/u/.aws/config line 3: …`).
    pub(crate) fn read(config_path: PathBuf, credentials_path: PathBuf) -> Result<Self, String> {
        let config = read_sections(&config_path)?
            .into_iter()
            .filter_map(|(name, keys)| config_profile_name(&name).map(|n| (n, keys)))
            .fold(
                BTreeMap::new(),
                |mut m: BTreeMap<String, Section>, (n, keys)| {
                    // `[default]` and `[profile default]` are the same profile; the latter wins,
                    // as in botocore.
                    m.entry(n).or_default().extend(keys);
                    m
                },
            );
        let credentials = read_sections(&credentials_path)?;
        Ok(AwsFiles {
            config_path,
            credentials_path,
            config,
            credentials,
        })
    }

    /// Whether `name` is a profile in either file.
    pub(crate) fn has_profile(&self, name: &str) -> bool {
        self.config.contains_key(name) || self.credentials.contains_key(name)
    }

    /// The profile's key from the credentials file, else from the config file (as botocore
    /// merges them), with the file it came from.
    pub(crate) fn get(&self, profile: &str, key: &str) -> Option<(&str, &Path)> {
        fn from<'m>(m: &'m BTreeMap<String, Section>, profile: &str, key: &str) -> Option<&'m str> {
            m.get(profile)
                .and_then(|s| s.get(key))
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        }
        from(&self.credentials, profile, key)
            .map(|v| (v, self.credentials_path.as_path()))
            .or_else(|| from(&self.config, profile, key).map(|v| (v, self.config_path.as_path())))
    }

    /// The file that defines `profile` (the config file when both do), for messages.
    pub(crate) fn file_of(&self, profile: &str) -> &Path {
        if self.config.contains_key(profile) || !self.credentials.contains_key(profile) {
            &self.config_path
        } else {
            &self.credentials_path
        }
    }
}

/// The profile a config-file section names: `default`, `profile NAME`, or none.
fn config_profile_name(section: &str) -> Option<String> {
    if section == "default" {
        return Some(section.to_owned());
    }
    let rest = section.strip_prefix("profile")?;
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let name = rest.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// Reads and parses one file; a missing file has no sections.
fn read_sections(path: &Path) -> Result<BTreeMap<String, Section>, String> {
    let bytes = match read_bounded(path, MAX_AWS_CONFIG_FILE) {
        Ok(b) => b,
        Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(BTreeMap::new())
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
    parse(&text).map_err(|e| format!("{} {e}", path.display()))
}

/// Parses the INI text; the error names the line (`line 3: …`) and never quotes a value.
pub(crate) fn parse(text: &str) -> Result<BTreeMap<String, Section>, String> {
    let mut sections: BTreeMap<String, Section> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut key_seen = false;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation: a nested block under `key =` (botocore's `s3 =` settings) or a
            // multi-line value. None of the keys read here is nested, so it is skipped, but
            // only where a key came before.
            if !key_seen {
                return Err(format!("line {n}: indented line outside a key"));
            }
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let name = rest
                .strip_suffix(']')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("line {n}: a section header is `[name]`"))?;
            if sections.contains_key(name) {
                return Err(format!("line {n}: section [{name}] appears twice"));
            }
            sections.insert(name.to_owned(), Section::new());
            current = Some(name.to_owned());
            key_seen = false;
            continue;
        }
        let Some(section) = &current else {
            return Err(format!("line {n}: a key before any [section]"));
        };
        let at = trimmed
            .find(['=', ':'])
            .ok_or_else(|| format!("line {n}: expected `key = value`"))?;
        let key = trimmed[..at].trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(format!("line {n}: a value without a key"));
        }
        let value = trimmed[at + 1..].trim();
        key_seen = true;
        let keys = sections.entry(section.clone()).or_default();
        if keys.insert(key.clone(), value.to_owned()).is_some() {
            return Err(format!("line {n}: key {key} appears twice in [{section}]"));
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MapEnv;
    use std::sync::Arc;

    #[test]
    fn parses_the_dialect() {
        let text = "# comment\n; other\n[default]\nregion = us-east-1\nAWS_Access_Key_ID: AKIA1\n\n[profile ci]\nrole_arn = arn:aws:iam::1:role/r\ns3 =\n  max_concurrent_requests = 10\nempty =\n[sso-session x]\nsso_region = eu-west-1\n";
        let s = parse(text).unwrap();
        assert_eq!(s["default"]["region"], "us-east-1");
        assert_eq!(s["default"]["aws_access_key_id"], "AKIA1");
        assert_eq!(s["profile ci"]["role_arn"], "arn:aws:iam::1:role/r");
        assert_eq!(s["profile ci"]["empty"], "");
        assert!(s.contains_key("sso-session x"));
    }

    #[test]
    fn refuses_what_botocore_refuses() {
        for (text, want) in [
            ("key = v\n", "line 1: a key before any [section]"),
            ("[a]\nno equals sign\n", "line 2: expected `key = value`"),
            ("[a]\n= v\n", "line 2: a value without a key"),
            ("[a]\n[a]\n", "line 2: section [a] appears twice"),
            ("[a]\nk = 1\nK = 2\n", "line 3: key k appears twice in [a]"),
            ("[a\n", "line 1: a section header is `[name]`"),
            ("[]\n", "line 1: a section header is `[name]`"),
            ("  indented = 1\n", "line 1: indented line outside a key"),
        ] {
            assert_eq!(parse(text).unwrap_err(), want, "{text:?}");
        }
        // the secret never appears in an error
        let e = parse("[a]\naws_secret_access_key wJalrXUtnFEMI\n").unwrap_err();
        assert!(!e.contains("wJalr"), "{e}");
    }

    #[test]
    fn profiles_of_each_file_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let creds = dir.path().join("credentials");
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n[profile ci]\naws_access_key_id = FROMCONFIG\nregion = us-east-2\n[ci2]\nregion = x\n",
        )
        .unwrap();
        std::fs::write(&creds, "[ci]\naws_access_key_id = FROMCREDS\n").unwrap();
        let f = AwsFiles::read(config.clone(), creds.clone()).unwrap();
        assert!(f.has_profile("ci") && f.has_profile("default"));
        assert!(
            !f.has_profile("ci2"),
            "a config section without `profile ` is none"
        );
        assert_eq!(
            f.get("ci", "aws_access_key_id"),
            Some(("FROMCREDS", creds.as_path()))
        );
        assert_eq!(f.get("ci", "region"), Some(("us-east-2", config.as_path())));
        assert_eq!(f.get("ci", "nothing"), None);
        // missing files are empty, other problems are errors naming the file
        let none = AwsFiles::read(dir.path().join("x"), dir.path().join("y")).unwrap();
        assert!(!none.has_profile("default"));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_AWS_CONFIG_FILE as usize + 1]).unwrap();
        let e = AwsFiles::read(big.clone(), creds.clone()).unwrap_err();
        assert_eq!(e, format!("{}: larger than 1 MiB", big.display()));
        let e = AwsFiles::read(dir.path().to_owned(), creds).unwrap_err();
        assert!(e.ends_with("not a regular file (directory)"), "{e}");
    }

    #[test]
    fn file_locations() {
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([("HOME", "/home/u")]));
        assert_eq!(
            paths(&env),
            (
                PathBuf::from("/home/u/.aws/config"),
                PathBuf::from("/home/u/.aws/credentials")
            )
        );
        let env: SharedEnv = Arc::new(MapEnv::from_pairs([
            ("HOME", "/home/u"),
            ("AWS_CONFIG_FILE", "~/cfg"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/etc/creds"),
        ]));
        assert_eq!(
            paths(&env),
            (PathBuf::from("/home/u/cfg"), PathBuf::from("/etc/creds"))
        );
    }
}
