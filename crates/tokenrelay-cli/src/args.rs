//! Provider options shared by `token`, `serve`, `run` and `check`: a config file, or one
//! provider described by flags alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokenrelay::config::{Config, ProviderConfig};
use tokenrelay::inject::Style;
use tokenrelay::source::output::OutputFormat;
use tokenrelay::source::{CommandConfig, EnvConfig, FileConfig, SourceConfig};
use tokenrelay::source::{ProcessEnv, SharedEnv};

use crate::Failure;

/// Where the token comes from and, for the proxy, where requests go.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct ProviderArgs {
    /// TOML configuration file with [[provider]] tables.
    #[arg(long, short = 'c', env = "TOKENRELAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Provider name: which one of the config to use, or the name of the flag-defined one.
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Shell command that prints a token (run with `sh -c`).
    #[arg(long = "token-command", visible_alias = "command", value_name = "CMD")]
    pub token_command: Option<String>,
    /// File that holds a token (re-read when it changes).
    #[arg(long = "token-file", visible_alias = "file", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Environment variable that holds a token.
    #[arg(long = "token-env", visible_alias = "env", value_name = "VAR")]
    pub token_env: Option<String>,
    /// Scope to ask the source for (forwarded verbatim; overrides the config's).
    #[arg(long)]
    pub scope: Option<String>,
    /// How to read the source's output: auto, raw, jwt, json, exec-credential.
    #[arg(long, value_parser = OutputFormat::parse_name, value_name = "FORMAT")]
    pub format: Option<OutputFormat>,
    /// Time limit for one acquisition (command sources; default 30s).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Lifetime assumed when the source states none and the token is not a JWT (default 15m).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub default_ttl: Option<Duration>,
    /// Upstream base URL (proxy).
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// How to inject the token (proxy): bearer, api-key, x-api-key, header:NAME[:TEMPLATE].
    #[arg(long, value_parser = Style::parse_name, value_name = "STYLE")]
    pub inject: Option<Style>,
    /// Extra header set on every upstream request, `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Upstream status meaning "credential rejected" (repeatable; default 401).
    #[arg(long = "retry-on", value_name = "STATUS")]
    pub retry_on: Vec<u16>,
    /// Refresh first when the token has less than this left before a request (proxy; default 2m).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub min_remaining: Option<Duration>,
    /// PEM bundle of extra CA certificates trusted for upstream TLS (proxy).
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
}

impl ProviderArgs {
    fn flag_source(&self) -> Result<Option<SourceConfig>, Failure> {
        let given = [
            self.token_command.is_some(),
            self.token_file.is_some(),
            self.token_env.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given > 1 {
            return Err(Failure::usage(
                "give only one of --token-command, --token-file, --token-env",
            ));
        }
        let format = self.format.unwrap_or_default();
        Ok(if let Some(cmd) = &self.token_command {
            let mut c = CommandConfig::default();
            c.command = Some(cmd.clone());
            c.format = format;
            c.timeout = self.timeout;
            c.default_ttl = self.default_ttl;
            Some(SourceConfig::Command(c))
        } else if let Some(path) = &self.token_file {
            let mut c = FileConfig::new(path.clone());
            c.format = format;
            c.default_ttl = self.default_ttl;
            Some(SourceConfig::File(c))
        } else {
            self.token_env.as_ref().map(|name| {
                let mut c = EnvConfig::new(name.clone());
                c.format = format;
                c.default_ttl = self.default_ttl;
                SourceConfig::Env(c)
            })
        })
    }

    /// The provider `--provider` picks out of `--config`'s file; `None` without a file, where
    /// `--provider` names the one provider the flags define instead.
    pub fn chosen(&self) -> Option<&str> {
        self.provider.as_deref().filter(|_| self.config.is_some())
    }

    /// The configuration: the file, or one provider from flags.
    pub fn load(&self) -> Result<Config, Failure> {
        let flag_source = self.flag_source()?;
        match (&self.config, flag_source) {
            (Some(_), Some(_)) => Err(Failure::usage(
                "--config and --token-command/--token-file/--token-env are exclusive",
            )),
            (Some(path), None) => {
                self.refuse_ignored_flags()?;
                let mut cfg = Config::from_file(path)?;
                self.refuse_untaken_source_flags(&cfg)?;
                for p in &mut cfg.providers {
                    self.apply_overrides(p);
                }
                if self.ca_bundle.is_some() {
                    cfg.ca_bundle = self.ca_bundle.clone();
                }
                Ok(cfg)
            }
            (None, Some(source)) => {
                let mut headers = std::collections::BTreeMap::new();
                for h in &self.headers {
                    let (k, v) = h.split_once(':').ok_or_else(|| {
                        Failure::usage(format!("--header {h:?}: expected `Name: value`"))
                    })?;
                    headers.insert(k.trim().to_owned(), v.trim().to_owned());
                }
                let name = self.provider.clone().unwrap_or_else(|| "default".into());
                let mut p = ProviderConfig::new(name, source);
                p.upstream.clone_from(&self.upstream);
                p.inject = self.inject.clone().unwrap_or_default();
                p.scope.clone_from(&self.scope);
                p.headers = headers;
                if !self.retry_on.is_empty() {
                    p.retry_on.clone_from(&self.retry_on);
                }
                p.min_remaining = self.min_remaining;
                let mut cfg = Config::default();
                cfg.ca_bundle.clone_from(&self.ca_bundle);
                cfg.providers = vec![p];
                cfg.validate("flags")?;
                Ok(cfg)
            }
            (None, None) => Err(Failure::usage(
                "no token source: give --config FILE, --token-command CMD, --token-file PATH or --token-env VAR",
            )),
        }
    }

    /// Flags that refine a config file's providers.
    /// With `--config`, the flags that only describe a flag-defined provider would be ignored:
    /// a usage error names them (a silently dropped `--upstream` sends requests elsewhere).
    fn refuse_ignored_flags(&self) -> Result<(), Failure> {
        let ignored: Vec<&str> = [
            (self.upstream.is_some(), "--upstream"),
            (self.inject.is_some(), "--inject"),
            (!self.headers.is_empty(), "--header"),
            (!self.retry_on.is_empty(), "--retry-on"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        if ignored.is_empty() {
            return Ok(());
        }
        Err(Failure::usage(format!(
            "{} describe a provider given by flags and would be ignored with --config; set them in the config file's [[provider]] table",
            ignored.join(", ")
        )))
    }

    /// `--format`, `--timeout` and `--default-ttl` override command, file and env sources;
    /// given with a config that has none, they would be ignored: a usage error.
    fn refuse_untaken_source_flags(&self, cfg: &Config) -> Result<(), Failure> {
        let given: Vec<&str> = [
            (self.format.is_some(), "--format"),
            (self.timeout.is_some(), "--timeout"),
            (self.default_ttl.is_some(), "--default-ttl"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        let takes = cfg.providers.iter().any(|p| {
            matches!(
                p.source,
                SourceConfig::Command(_) | SourceConfig::Env(_) | SourceConfig::File(_)
            )
        });
        if given.is_empty() || takes {
            return Ok(());
        }
        Err(Failure::usage(format!(
            "{} apply to command, file and env sources, and the config has none; set the source's own keys in the config file",
            given.join(", ")
        )))
    }

    fn apply_overrides(&self, p: &mut ProviderConfig) {
        if let Some(scope) = &self.scope {
            p.scope = Some(scope.clone());
        }
        if self.min_remaining.is_some() {
            p.min_remaining = self.min_remaining;
        }
        match &mut p.source {
            SourceConfig::Command(c) => {
                c.timeout = self.timeout.or(c.timeout);
                c.default_ttl = self.default_ttl.or(c.default_ttl);
                c.format = self.format.unwrap_or(c.format);
            }
            SourceConfig::Env(c) => {
                c.default_ttl = self.default_ttl.or(c.default_ttl);
                c.format = self.format.unwrap_or(c.format);
            }
            SourceConfig::File(c) => {
                c.default_ttl = self.default_ttl.or(c.default_ttl);
                c.format = self.format.unwrap_or(c.format);
            }
            _ => {}
        }
    }
}

/// The environment sources read standard variables from.
pub(crate) fn process_env() -> SharedEnv {
    Arc::new(ProcessEnv)
}
