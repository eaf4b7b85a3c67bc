//! Provider options shared by `token`, `serve`, `run` and `check`: a config file, or one
//! provider described by flags alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokenrelay::config::{
    CommandConfig, Config, EnvConfig, FileConfig, Inject, ProviderConfig, SourceConfig,
};
use tokenrelay::source::output::OutputFormat;
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
    #[arg(long, value_parser = Inject::parse_name, value_name = "STYLE")]
    pub inject: Option<Inject>,
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
            Some(SourceConfig::Command(CommandConfig {
                command: Some(cmd.clone()),
                args: None,
                format,
                timeout: self.timeout,
                default_ttl: self.default_ttl,
            }))
        } else if let Some(path) = &self.token_file {
            Some(SourceConfig::File(FileConfig {
                path: path.clone(),
                format,
                default_ttl: self.default_ttl,
            }))
        } else {
            self.token_env.as_ref().map(|name| {
                SourceConfig::Env(EnvConfig {
                    name: name.clone(),
                    format,
                    default_ttl: self.default_ttl,
                })
            })
        })
    }

    /// The configuration: the file, or one provider from flags.
    pub fn load(&self) -> Result<Config, Failure> {
        let flag_source = self.flag_source()?;
        match (&self.config, flag_source) {
            (Some(_), Some(_)) => Err(Failure::usage(
                "--config and --token-command/--token-file/--token-env are exclusive",
            )),
            (Some(path), None) => {
                let mut cfg = Config::from_file(path)?;
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
                let cfg = Config {
                    listen: None,
                    admin_listen: None,
                    local_key_env: None,
                    local_key_file: None,
                    ca_bundle: self.ca_bundle.clone(),
                    allowed_hosts: Vec::new(),
                    allowed_origins: Vec::new(),
                    header_read_timeout: None,
                    idle_timeout: None,
                    max_connections: None,
                    providers: vec![ProviderConfig {
                        name: self.provider.clone().unwrap_or_else(|| "default".into()),
                        upstream: self.upstream.clone(),
                        inject: self.inject.clone().unwrap_or_default(),
                        scope: self.scope.clone(),
                        path_prefix: None,
                        listen: None,
                        headers,
                        retry_on: if self.retry_on.is_empty() {
                            vec![401]
                        } else {
                            self.retry_on.clone()
                        },
                        min_remaining: self.min_remaining,
                        upstream_timeout: None,
                        min_refresh_interval: None,
                        error_style: None,
                        aws_region: None,
                        aws_service: None,
                        max_socket_lifetime: None,
                        source,
                    }],
                };
                cfg.validate("flags")?;
                Ok(cfg)
            }
            (None, None) => Err(Failure::usage(
                "no token source: give --config FILE, --token-command CMD, --token-file PATH or --token-env VAR",
            )),
        }
    }

    /// Flags that refine a config file's providers.
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
