//! Configuration: embedded defaults, an optional TOML file (`--config`),
//! environment variables (`SWITCHBOARD_*`) and flags, later ones winning:
//! flag > env > file > default. Any bad value stops start-up with a message
//! naming the setting.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Everything the broker can be tuned with. Public fields so tests and embedders
/// can build one directly.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen address.
    pub bind: String,
    /// Admin bearer token; generated and printed at start-up when absent.
    pub admin_token: Option<String>,
    /// How long an offer waits for accept/reject before it goes to the next agent.
    pub offer_timeout: Duration,
    /// How long a disconnected agent keeps its tasks.
    pub disconnect_grace: Duration,
    /// How long a task may stay in wrap-up before it is completed automatically.
    pub wrapup_timeout: Duration,
    /// Disposition used when the wrap-up timeout completes a task.
    pub wrapup_disposition: String,
    /// Largest accepted upload, in bytes.
    pub max_upload: u64,
    /// Longest message text, in characters.
    pub max_text: usize,
    /// Longest wrap-up notes, in characters.
    pub max_notes: usize,
    /// Largest WebSocket frame a client may send, in bytes.
    pub max_frame: usize,
    /// Frames queued for one socket before its client counts as a slow consumer.
    pub socket_backlog: usize,
    /// Closing codes an agent may pick in wrap-up.
    pub dispositions: Vec<String>,
    /// HTTP worker threads and conversation shards (0 = one per core).
    pub workers: usize,
    /// Ping interval on every socket.
    pub heartbeat_interval: Duration,
    /// A socket silent (no frame, no pong) for this long is closed.
    pub client_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1:8080".into(),
            admin_token: None,
            offer_timeout: Duration::from_secs(30),
            disconnect_grace: Duration::from_secs(60),
            wrapup_timeout: Duration::from_secs(600),
            wrapup_disposition: "no_response".into(),
            max_upload: 25 * 1024 * 1024,
            max_text: 4096,
            max_notes: 4000,
            max_frame: 64 * 1024,
            socket_backlog: 512,
            dispositions: ["resolved", "follow_up", "escalated", "spam", "no_response"]
                .map(String::from)
                .to_vec(),
            workers: 0,
            heartbeat_interval: Duration::from_secs(15),
            client_timeout: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// Defaults for in-process tests: an ephemeral loopback port, a known admin
    /// token, two workers.
    pub fn for_tests() -> Self {
        Config {
            bind: "127.0.0.1:0".into(),
            admin_token: Some("test-admin".into()),
            workers: 2,
            ..Config::default()
        }
    }

    /// Number of worker threads / shards to run.
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }

    /// Layer file, env and flags over the defaults.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = &args.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
            let file: FileConfig = toml::from_str(&text)
                .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
            file.apply(&mut cfg)?;
        }
        args.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.dispositions.is_empty() {
            return Err(ConfigError("dispositions: at least one is needed".into()));
        }
        if !self.dispositions.contains(&self.wrapup_disposition) {
            return Err(ConfigError(format!(
                "wrapup_disposition: {:?} is not one of the dispositions {:?}",
                self.wrapup_disposition, self.dispositions
            )));
        }
        if self.socket_backlog == 0 {
            return Err(ConfigError("socket_backlog: must be at least 1".into()));
        }
        if self.offer_timeout.is_zero() {
            return Err(ConfigError("offer_timeout: must be more than 0".into()));
        }
        if let Some(t) = &self.admin_token {
            if t.len() < 8 {
                return Err(ConfigError(
                    "admin_token: must be at least 8 characters".into(),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 30s, 10m)"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{e} (use e.g. 512KiB, 25MiB)"))
}

fn parse_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Command-line flags; each also reads its `SWITCHBOARD_*` variable.
#[derive(Debug, Default, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Actor-based chat broker for contact centers"
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "SWITCHBOARD_BIND")]
    pub bind: Option<String>,
    /// Admin bearer token (generated and printed when not set).
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Offer timeout, e.g. 30s.
    #[arg(long, env = "SWITCHBOARD_OFFER_TIMEOUT", value_parser = parse_duration)]
    pub offer_timeout: Option<Duration>,
    /// Disconnect grace period, e.g. 60s.
    #[arg(long, env = "SWITCHBOARD_DISCONNECT_GRACE", value_parser = parse_duration)]
    pub disconnect_grace: Option<Duration>,
    /// Wrap-up timeout, e.g. 10m.
    #[arg(long, env = "SWITCHBOARD_WRAPUP_TIMEOUT", value_parser = parse_duration)]
    pub wrapup_timeout: Option<Duration>,
    /// Disposition used by the wrap-up timeout.
    #[arg(long, env = "SWITCHBOARD_WRAPUP_DISPOSITION")]
    pub wrapup_disposition: Option<String>,
    /// Largest upload, e.g. 25MiB.
    #[arg(long, env = "SWITCHBOARD_MAX_UPLOAD", value_parser = parse_size)]
    pub max_upload: Option<u64>,
    /// Longest message text in characters.
    #[arg(long, env = "SWITCHBOARD_MAX_TEXT")]
    pub max_text: Option<usize>,
    /// Largest WebSocket frame from a client, e.g. 64KiB.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAME", value_parser = parse_size)]
    pub max_frame: Option<u64>,
    /// Frames queued per socket before the client is a slow consumer.
    #[arg(long, env = "SWITCHBOARD_SOCKET_BACKLOG")]
    pub socket_backlog: Option<usize>,
    /// Comma-separated disposition codes.
    #[arg(long, env = "SWITCHBOARD_DISPOSITIONS")]
    pub dispositions: Option<String>,
    /// Worker threads (0 = one per core).
    #[arg(long, env = "SWITCHBOARD_WORKERS")]
    pub workers: Option<usize>,
    /// Socket ping interval, e.g. 15s.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Close sockets silent for this long, e.g. 60s.
    #[arg(long, env = "SWITCHBOARD_CLIENT_TIMEOUT", value_parser = parse_duration)]
    pub client_timeout: Option<Duration>,
}

impl Args {
    fn apply(self, cfg: &mut Config) {
        if let Some(v) = self.bind {
            cfg.bind = v;
        }
        if let Some(v) = self.admin_token {
            cfg.admin_token = Some(v);
        }
        if let Some(v) = self.offer_timeout {
            cfg.offer_timeout = v;
        }
        if let Some(v) = self.disconnect_grace {
            cfg.disconnect_grace = v;
        }
        if let Some(v) = self.wrapup_timeout {
            cfg.wrapup_timeout = v;
        }
        if let Some(v) = self.wrapup_disposition {
            cfg.wrapup_disposition = v;
        }
        if let Some(v) = self.max_upload {
            cfg.max_upload = v;
        }
        if let Some(v) = self.max_text {
            cfg.max_text = v;
        }
        if let Some(v) = self.max_frame {
            cfg.max_frame = v as usize;
        }
        if let Some(v) = self.socket_backlog {
            cfg.socket_backlog = v;
        }
        if let Some(v) = self.dispositions {
            cfg.dispositions = parse_list(&v);
        }
        if let Some(v) = self.workers {
            cfg.workers = v;
        }
        if let Some(v) = self.heartbeat_interval {
            cfg.heartbeat_interval = v;
        }
        if let Some(v) = self.client_timeout {
            cfg.client_timeout = v;
        }
    }
}

/// The TOML file: the same settings as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    admin_token: Option<String>,
    offer_timeout: Option<String>,
    disconnect_grace: Option<String>,
    wrapup_timeout: Option<String>,
    wrapup_disposition: Option<String>,
    max_upload: Option<String>,
    max_text: Option<usize>,
    max_notes: Option<usize>,
    max_frame: Option<String>,
    socket_backlog: Option<usize>,
    dispositions: Option<Vec<String>>,
    workers: Option<usize>,
    heartbeat_interval: Option<String>,
    client_timeout: Option<String>,
}

impl FileConfig {
    fn apply(self, cfg: &mut Config) -> Result<(), ConfigError> {
        let dur = |name: &str, v: &str| {
            parse_duration(v).map_err(|e| ConfigError(format!("{name}: {v:?}: {e}")))
        };
        let size = |name: &str, v: &str| {
            parse_size(v).map_err(|e| ConfigError(format!("{name}: {v:?}: {e}")))
        };
        if let Some(v) = self.bind {
            cfg.bind = v;
        }
        if let Some(v) = self.admin_token {
            cfg.admin_token = Some(v);
        }
        if let Some(v) = self.offer_timeout {
            cfg.offer_timeout = dur("offer_timeout", &v)?;
        }
        if let Some(v) = self.disconnect_grace {
            cfg.disconnect_grace = dur("disconnect_grace", &v)?;
        }
        if let Some(v) = self.wrapup_timeout {
            cfg.wrapup_timeout = dur("wrapup_timeout", &v)?;
        }
        if let Some(v) = self.wrapup_disposition {
            cfg.wrapup_disposition = v;
        }
        if let Some(v) = self.max_upload {
            cfg.max_upload = size("max_upload", &v)?;
        }
        if let Some(v) = self.max_text {
            cfg.max_text = v;
        }
        if let Some(v) = self.max_notes {
            cfg.max_notes = v;
        }
        if let Some(v) = self.max_frame {
            cfg.max_frame = size("max_frame", &v)? as usize;
        }
        if let Some(v) = self.socket_backlog {
            cfg.socket_backlog = v;
        }
        if let Some(v) = self.dispositions {
            cfg.dispositions = v;
        }
        if let Some(v) = self.workers {
            cfg.workers = v;
        }
        if let Some(v) = self.heartbeat_interval {
            cfg.heartbeat_interval = dur("heartbeat_interval", &v)?;
        }
        if let Some(v) = self.client_timeout {
            cfg.client_timeout = dur("client_timeout", &v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_protocol() {
        let c = Config::default();
        assert_eq!(c.bind, "127.0.0.1:8080");
        assert_eq!(c.offer_timeout, Duration::from_secs(30));
        assert_eq!(c.disconnect_grace, Duration::from_secs(60));
        assert_eq!(c.wrapup_timeout, Duration::from_secs(600));
        assert_eq!(c.max_upload, 25 * 1024 * 1024);
        assert_eq!(c.dispositions.len(), 5);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn flag_beats_file_and_file_beats_default() {
        let dir = std::env::temp_dir().join(format!("sb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("switchboard.toml");
        std::fs::write(
            &path,
            "offer_timeout = \"5s\"\nbind = \"127.0.0.1:9000\"\nmax_upload = \"1MiB\"\n",
        )
        .unwrap();
        let args = Args::try_parse_from([
            "switchboard",
            "--config",
            path.to_str().unwrap(),
            "--bind",
            "127.0.0.1:9100",
        ])
        .unwrap();
        let cfg = Config::load(args).unwrap();
        assert_eq!(cfg.bind, "127.0.0.1:9100");
        assert_eq!(cfg.offer_timeout, Duration::from_secs(5));
        assert_eq!(cfg.max_upload, 1024 * 1024);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Args::try_parse_from(["switchboard", "--offer-timeout", "soon"]).unwrap_err();
        assert!(err.to_string().contains("--offer-timeout"), "{err}");

        let mut cfg = Config::default();
        let file: FileConfig = toml::from_str("wrapup_timeout = \"ten\"").unwrap();
        let err = file.apply(&mut cfg).unwrap_err();
        assert!(err.to_string().contains("wrapup_timeout"), "{err}");

        let file: Result<FileConfig, _> = toml::from_str("offer_timout = \"1s\"");
        assert!(file.is_err(), "unknown keys are rejected");

        let cfg = Config {
            wrapup_disposition: "gone".into(),
            ..Config::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("wrapup_disposition"));
    }

    #[test]
    fn dispositions_list_parses() {
        assert_eq!(parse_list(" a, b ,,c"), vec!["a", "b", "c"]);
    }
}
