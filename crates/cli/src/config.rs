//! Command-line and environment configuration. Every flag also reads `APITRAIL_<NAME>`;
//! flags win over the environment, the environment over defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apitrail_api::serve::ServeConfig;

use apitrail_model::{OrgId, RetrySchedule};
use apitrail_proxy::{Cidr, Upstream};
use apitrail_store::Store;
use apitrail_store_postgres::{PgOptions, PgStore};
use apitrail_store_sqlite::{DB_FILE, SqliteOptions, SqliteStore};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// apitrail: a self-hosted, multi-tenant API activity log service.
#[derive(Debug, Parser)]
#[command(name = "apitrail", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Where the data lives; shared by every command.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory of the embedded SQLite store.
    #[arg(
        long,
        env = "APITRAIL_DATA_DIR",
        default_value = "./apitrail-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Store URL instead of --data-dir: `sqlite://PATH/TO/FILE.db` or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` (several servers may share one database).
    #[arg(
        long,
        env = "APITRAIL_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// PostgreSQL: request logs dated up to this many days back get a partition of their own
    /// day; older ones share a coarse partition, so the number of partitions never follows
    /// the dates clients send.
    #[arg(
        long,
        env = "APITRAIL_PARTITION_WINDOW_DAYS",
        default_value_t = 31,
        value_parser = clap::value_parser!(u32).range(1..=3660),
        global = true
    )]
    pub partition_window_days: u32,
}

/// Where a store lives, from `--data-dir` / `--database-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl StoreArgs {
    /// A human description of where data is stored (never the URL's password).
    pub fn describe(&self) -> String {
        match self.location() {
            Ok(Location::Sqlite(path)) => format!("SQLite at {}", path.display()),
            Ok(Location::Postgres(url)) => {
                // Host, port and database only: user info and query parameters (which may
                // carry `password=`) stay out of logs.
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let rest = rest.split('?').next().unwrap_or_default();
                let shown = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                format!("PostgreSQL at {shown}")
            }
            Err(e) => e,
        }
    }

    /// The directory beside the data, for files kept with it (the SQLite file's directory,
    /// else `--data-dir`).
    pub fn data_directory(&self) -> PathBuf {
        match self.location() {
            Ok(Location::Sqlite(path)) => match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            },
            _ => self.data_dir.clone(),
        }
    }

    /// Which backend, and where.
    pub fn location(&self) -> Result<Location, String> {
        match self.database_url.as_deref() {
            None | Some("") => Ok(Location::Sqlite(self.data_dir.join(DB_FILE))),
            Some(url) => {
                if let Some(path) = url
                    .strip_prefix("sqlite://")
                    .or_else(|| url.strip_prefix("sqlite:"))
                {
                    if path.is_empty() {
                        return Err("--database-url sqlite:// needs a file path".into());
                    }
                    Ok(Location::Sqlite(PathBuf::from(path)))
                } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                    Ok(Location::Postgres(url.to_owned()))
                } else {
                    Err("--database-url must start with sqlite:// or postgres://".into())
                }
            }
        }
    }

    /// Opens the store (migrating its schema). `options` tune SQLite only.
    pub async fn open(&self, options: SqliteOptions) -> Result<Arc<dyn Store>, String> {
        match self.location()? {
            Location::Sqlite(path) => {
                let store = SqliteStore::open_file(&path, options)
                    .map_err(|e| format!("cannot open the store at {}: {e}", path.display()))?;
                Ok(Arc::new(store))
            }
            Location::Postgres(url) => {
                let options = PgOptions {
                    partition_window_days: self.partition_window_days,
                    ..PgOptions::default()
                };
                let store = PgStore::connect(&url, options)
                    .await
                    .map_err(|e| format!("cannot open the store ({}): {e}", self.describe()))?;
                Ok(Arc::new(store))
            }
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Manage orgs directly on the store (for bootstrapping).
    Orgs {
        #[command(subcommand)]
        command: OrgsCommand,
    },
    /// Manage API keys directly on the store (for bootstrapping).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Check an org's audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the capture proxy: a reverse proxy in front of an HTTP API that records a request
    /// log for every exchange passing through.
    Proxy(Box<ProxyArgs>),
    /// Export an org's request logs or audit entries to a file (NDJSON or CSV, oldest first),
    /// directly from the store or from a running server (`--url`, `--key`).
    Export(Box<ExportArgs>),
}

/// What `apitrail export` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportKind {
    /// Request logs (`GET /v1/logs/export`).
    Requests,
    /// Audit entries with their chain fields (`GET /v1/audit-log/export`).
    Audit,
}

/// The file format of `apitrail export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line (re-ingestible through `POST /v1/ingest/requests`).
    Ndjson,
    /// RFC 4180 with a header row.
    Csv,
}

/// `apitrail export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The org to export (required on the store; with --url the key's org is exported).
    #[arg(long)]
    pub org: Option<String>,
    /// What to export.
    #[arg(long, value_enum, default_value = "requests")]
    pub kind: ExportKind,
    /// The file format.
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: ExportFormat,
    /// The file to write.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Continue a partial file: keep its complete lines/rows and export what follows the last
    /// one (without it the file is replaced).
    #[arg(long)]
    pub resume: bool,
    /// Export from this running server instead of the store (e.g. `http://127.0.0.1:8080`).
    #[arg(long, env = "APITRAIL_URL")]
    pub url: Option<String>,
    /// The org API key (scope `read`) for --url.
    #[arg(long, env = "APITRAIL_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Requests: earliest created_at, inclusive (RFC 3339 with offset).
    #[arg(long)]
    pub from: Option<String>,
    /// Requests: latest created_at, exclusive (RFC 3339 with offset).
    #[arg(long)]
    pub to: Option<String>,
    /// Requests: HTTP method.
    #[arg(long)]
    pub method: Option<String>,
    /// Requests: route pattern.
    #[arg(long)]
    pub route_pattern: Option<String>,
    /// Requests: request id.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Requests: auth type.
    #[arg(long)]
    pub auth_type: Option<String>,
    /// Requests: lowest status code, inclusive.
    #[arg(long)]
    pub status_min: Option<u16>,
    /// Requests: highest status code, inclusive.
    #[arg(long)]
    pub status_max: Option<u16>,
    /// Audit: resource type.
    #[arg(long)]
    pub resource_type: Option<String>,
    /// Audit: resource id.
    #[arg(long)]
    pub resource_id: Option<String>,
    /// Audit: action.
    #[arg(long)]
    pub action: Option<String>,
}

impl ExportArgs {
    /// The filters as the export route's query parameters (`name`, value), checked against
    /// the kind.
    pub fn filters(&self) -> Result<Vec<(&'static str, String)>, String> {
        let requests = [
            ("from", self.from.clone()),
            ("to", self.to.clone()),
            ("method", self.method.clone()),
            ("route_pattern", self.route_pattern.clone()),
            ("request_id", self.request_id.clone()),
            ("auth_type", self.auth_type.clone()),
            ("status_min", self.status_min.map(|n| n.to_string())),
            ("status_max", self.status_max.map(|n| n.to_string())),
        ];
        let audit = [
            ("resource_type", self.resource_type.clone()),
            ("resource_id", self.resource_id.clone()),
            ("action", self.action.clone()),
        ];
        let (own, other, kind) = match self.kind {
            ExportKind::Requests => (&requests[..], &audit[..], "requests"),
            ExportKind::Audit => (&audit[..], &requests[..], "audit"),
        };
        if let Some((name, _)) = other.iter().find(|(_, v)| v.is_some()) {
            return Err(format!(
                "--{} does not filter --kind {kind}",
                name.replace('_', "-")
            ));
        }
        Ok(own
            .iter()
            .filter_map(|(n, v)| v.clone().map(|v| (*n, v)))
            .collect())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `apitrail serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "APITRAIL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Operator token (at least 16 characters) opening /admin/v1 and ingest for any org.
    /// Without one the operator API is refused.
    #[arg(long, env = "APITRAIL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Do not log apitrail's own API calls into the caller's org.
    #[arg(long, env = "APITRAIL_NO_SELF_LOG")]
    pub no_self_log: bool,
    /// Allow webhook destinations on loopback and private addresses (action dispatch). The
    /// decision is stored with each destination created or changed through this server, and
    /// every server sharing the store delivers by it.
    #[arg(long, env = "APITRAIL_ALLOW_PRIVATE_DESTINATIONS")]
    pub allow_private_destinations: bool,
    /// Delays between delivery attempts of actions, e.g. `5s,30s,2m` (units ms, s, m, h);
    /// attempts stop after the last one.
    #[arg(
        long,
        env = "APITRAIL_RETRY_SCHEDULE",
        default_value = "5s,30s,2m,10m,30m,1h,2h,5h",
        value_parser = RetrySchedule::parse
    )]
    pub retry_schedule: RetrySchedule,
    /// How long a dispatcher holds a leased action record: a record whose server died during
    /// its delivery is delivered again this long after it was leased.
    #[arg(long, env = "APITRAIL_ACTION_LEASE_SECS", default_value_t = 150, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub action_lease_secs: u64,
    /// Origins that may embed the web console `/ui` in a frame (CSP `frame-ancestors`), e.g.
    /// `https://app.example.com`; separated by spaces or commas. Default: none may.
    #[arg(long, env = "APITRAIL_UI_FRAME_ANCESTORS", value_parser = apitrail_api::console::FrameAncestors::parse)]
    pub ui_frame_ancestors: Option<apitrail_api::console::FrameAncestors>,
    /// Create a demo org and key, load a month of demo traffic, and print a curl line.
    #[arg(long, env = "APITRAIL_DEMO")]
    pub demo: bool,
    /// Delete request logs older than this many days (default: keep forever).
    #[arg(long, env = "APITRAIL_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub retention_days: Option<u32>,
    /// Cap of stored request and response bodies, in bytes.
    #[arg(long, env = "APITRAIL_BODY_CAP_BYTES", default_value_t = 64 * 1024)]
    pub body_cap_bytes: usize,
    /// Records the write queue holds before ingest answers 503 + Retry-After.
    #[arg(long, env = "APITRAIL_WRITE_QUEUE_RECORDS", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(10_000..))]
    pub write_queue_records: u64,
    /// Log format on stderr.
    #[arg(long, env = "APITRAIL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Connection limits and timeouts.
    #[command(flatten)]
    pub connections: ConnectionArgs,
    /// Limits and timings of the live tails.
    #[command(flatten)]
    pub tail: TailArgs,
}

/// Limits and timings of the live tails (`GET /v1/logs/tail`, `GET /v1/audit-log/tail`).
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Most live tails open at once per org (both kinds together); more are refused with 429.
    #[arg(long, env = "APITRAIL_TAIL_MAX_PER_ORG", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub tail_max_per_org: u64,
    /// Most live tails open at once on this server; more are refused with 429.
    #[arg(long, env = "APITRAIL_TAIL_MAX", default_value_t = 2_048, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub tail_max: u64,
    /// Seconds between heartbeat comments on an idle tail.
    #[arg(long, env = "APITRAIL_TAIL_HEARTBEAT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tail_heartbeat_secs: u64,
    /// Milliseconds between reads of new records when no commit woke the tails (records
    /// written by other processes on one SQLite file; a lost PostgreSQL notification).
    #[arg(long, env = "APITRAIL_TAIL_POLL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub tail_poll_ms: u64,
    /// Events a tail may have waiting for its client; a client that falls this far behind
    /// gets an error event and is disconnected.
    #[arg(long, env = "APITRAIL_TAIL_QUEUE_EVENTS", default_value_t = 1_024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub tail_queue_events: u64,
}

impl TailArgs {
    /// The live tails' configuration.
    pub fn tail_config(&self) -> apitrail_api::tail::TailConfig {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        apitrail_api::tail::TailConfig {
            heartbeat: Duration::from_secs(self.tail_heartbeat_secs),
            poll_interval: Duration::from_millis(self.tail_poll_ms),
            max_per_org: size(self.tail_max_per_org),
            max_total: size(self.tail_max),
            queue: size(self.tail_queue_events),
            ..apitrail_api::tail::TailConfig::default()
        }
    }
}

/// Limits and timeouts of client connections, shared by `serve` and `proxy`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// A request's headers must be complete this many seconds after its first byte (a new
    /// connection must send its first request within it); else the connection is closed.
    #[arg(long, env = "APITRAIL_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_secs: u64,
    /// An idle kept-alive connection is closed after this many seconds.
    #[arg(long, env = "APITRAIL_KEEP_ALIVE_TIMEOUT_SECS", default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub keep_alive_timeout_secs: u64,
    /// A request body that sends nothing for this many seconds is cut off with 408 and the
    /// connection closed.
    #[arg(long, env = "APITRAIL_BODY_READ_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_read_timeout_secs: u64,
    /// A request body must be complete within this many seconds of the server starting to
    /// read it, however steadily it arrives; else 408 and the connection is closed.
    #[arg(long, env = "APITRAIL_BODY_DEADLINE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub body_deadline_secs: u64,
    /// Most client connections open at once; beyond it new connections wait (idle ones are
    /// closed to make room). Lowered at start-up to fit the open-file limit.
    #[arg(long, env = "APITRAIL_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
}

impl ConnectionArgs {
    /// The listener's limits and timeouts.
    pub fn serve_config(&self) -> ServeConfig {
        ServeConfig {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            keep_alive_timeout: Duration::from_secs(self.keep_alive_timeout_secs),
            body_read_timeout: Duration::from_secs(self.body_read_timeout_secs),
            body_deadline: Duration::from_secs(self.body_deadline_secs),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            http2: false,
        }
    }
}

impl ServeArgs {
    /// The listener's limits and timeouts.
    pub fn serve_config(&self) -> ServeConfig {
        self.connections.serve_config()
    }
}

/// `apitrail proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address to listen on.
    #[arg(long, env = "APITRAIL_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// The API requests are forwarded to, e.g. `http://127.0.0.1:3000` or
    /// `https://api.internal` (TLS); a path in it is put before every request's path.
    #[arg(long, env = "APITRAIL_UPSTREAM")]
    pub upstream: Upstream,
    /// A file of route patterns, one a line, `{name}` placeholders for whole segments
    /// (`/v1/users/{id}`); `#` starts a comment line. A record's `route_pattern` is the most
    /// specific match (a literal segment beats a placeholder).
    #[arg(long, env = "APITRAIL_ROUTES")]
    pub routes: Option<PathBuf>,
    /// An OpenAPI 3 document (JSON or YAML) whose `paths` are the route patterns, instead of
    /// --routes.
    #[arg(long, env = "APITRAIL_OPENAPI", conflicts_with = "routes")]
    pub openapi: Option<PathBuf>,
    /// A peer whose `X-Forwarded-For` is believed: an address or a range such as
    /// `10.0.0.0/8` (repeat the flag for several; comma-separated in the environment).
    #[arg(
        long = "trusted-proxy",
        env = "APITRAIL_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<Cidr>,
    /// The org of exchanges without an `apitrail-org` header; without it such exchanges are
    /// not recorded (and counted as unattributed).
    #[arg(long, env = "APITRAIL_ORG", value_parser = parse_org)]
    pub org: Option<OrgId>,
    /// Keep request and response bodies in the records (each up to --body-cap-bytes).
    #[arg(long, env = "APITRAIL_CAPTURE_BODIES")]
    pub capture_bodies: bool,
    /// Most bytes of each body kept with --capture-bodies.
    #[arg(long, env = "APITRAIL_BODY_CAP_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..=16 * 1024 * 1024))]
    pub body_cap_bytes: u64,
    /// Records waiting for the store before new ones are dropped (and counted), so that a
    /// slow store never slows traffic.
    #[arg(long, env = "APITRAIL_BUFFER_RECORDS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub buffer_records: u64,
    /// The key of credential fingerprints (at least 16 characters). Default: the key in
    /// `proxy-fingerprint.key` beside the data, made at first start; give the same key to
    /// every proxy that should fingerprint alike.
    #[arg(long, env = "APITRAIL_FINGERPRINT_KEY", hide_env_values = true)]
    pub fingerprint_key: Option<String>,
    /// A PEM file of certificate authorities to trust for an `https://` upstream, besides
    /// the Mozilla roots compiled in (a private CA).
    #[arg(long, env = "APITRAIL_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Speak HTTP/2 to the upstream (h2c with prior knowledge for `http://`, h2 by ALPN for
    /// `https://`) instead of HTTP/1.1, for upstreams that only speak HTTP/2 (gRPC).
    #[arg(long, env = "APITRAIL_UPSTREAM_HTTP2")]
    pub upstream_http2: bool,
    /// A PEM certificate chain: clients connect over TLS (HTTPS, h2 or HTTP/1.1 by ALPN).
    /// Needs --tls-key.
    #[arg(long, env = "APITRAIL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "APITRAIL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Event loops serving clients, one thread each (default: one per CPU); each has its own
    /// listening socket and upstream pool, so an exchange never changes threads.
    #[arg(long, env = "APITRAIL_PROXY_THREADS", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,
    /// Seconds a connection to the upstream may take before the exchange is answered 502.
    #[arg(long, env = "APITRAIL_UPSTREAM_CONNECT_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub upstream_connect_timeout_secs: u64,
    /// Send the records to a remote `apitrail serve` (its base URL, e.g.
    /// `https://apitrail.internal:8080`) through its ingest API, instead of writing the
    /// store.
    #[arg(long, env = "APITRAIL_INGEST_URL", requires = "ingest_key")]
    pub ingest_url: Option<String>,
    /// The key for --ingest-url: an org key with scope `write` (records of its own org
    /// only) or the operator token.
    #[arg(long, env = "APITRAIL_INGEST_KEY", hide_env_values = true)]
    pub ingest_key: Option<String>,
    /// How long a batch for --ingest-url is retried (with backoff) before it is given up.
    #[arg(long, env = "APITRAIL_INGEST_RETRY_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ingest_retry_secs: u64,
    /// Seconds the exchanges in flight get to finish at shutdown (SIGINT/SIGTERM) before
    /// the proxy stops without them.
    #[arg(long, env = "APITRAIL_SHUTDOWN_GRACE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,
    /// Address of the proxy's own `/healthz` and `/metrics` (off without it).
    #[arg(long, env = "APITRAIL_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Log format on stderr.
    #[arg(long, env = "APITRAIL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Connection limits and timeouts (towards clients).
    #[command(flatten)]
    pub connections: ConnectionArgs,
}

fn parse_org(s: &str) -> Result<OrgId, String> {
    OrgId::parse(s).map_err(|e| e.to_string())
}

/// `apitrail orgs ...`.
#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an org.
    Create {
        /// The org id (1-64 of A-Za-z0-9_.:-); a UUIDv7 when omitted.
        #[arg(long)]
        id: Option<String>,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// List orgs.
    List,
}

/// `apitrail keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print its secret (shown only this once).
    Create {
        /// The org id.
        #[arg(long)]
        org: String,
        /// A label for the key.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: read, write, admin.
        #[arg(long, value_delimiter = ',', default_value = "read")]
        scopes: Vec<String>,
        /// user or service_account.
        #[arg(long, default_value = "service_account")]
        principal_type: String,
        /// The principal's id (defaults to the key name).
        #[arg(long)]
        principal_id: Option<String>,
        /// The user the key acts for.
        #[arg(long)]
        user_id: Option<String>,
        /// The principal's email.
        #[arg(long)]
        email: Option<String>,
        /// The service account the key acts for.
        #[arg(long)]
        service_account_id: Option<String>,
    },
    /// List an org's keys.
    List {
        /// The org id.
        #[arg(long)]
        org: String,
    },
    /// Revoke a key; it stops authenticating at once.
    Revoke {
        /// The org id.
        #[arg(long)]
        org: String,
        /// The key id.
        #[arg(long)]
        id: String,
    },
}

/// `apitrail audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the org's audit hash chain from the store; prints the report (as
    /// `GET /v1/audit-log/verify` does) and exits with status 1 when it does not verify.
    Verify {
        /// The org id.
        #[arg(long)]
        org: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_reads_the_retry_schedule_and_lease() {
        let serve = |args: &[&str]| {
            let mut all = vec!["apitrail", "serve"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Command::Serve(s)) => Ok(s),
                Ok(_) => panic!("not serve"),
                Err(e) => Err(e.to_string()),
            }
        };
        let s = serve(&[
            "--retry-schedule",
            "250ms,2s,1m",
            "--action-lease-secs",
            "5",
        ])
        .unwrap();
        assert_eq!(s.retry_schedule.max_attempts(), 4);
        assert_eq!(s.retry_schedule.delay_after(1), Some(250));
        assert_eq!(s.action_lease_secs, 5);
        let defaults = serve(&[]).unwrap();
        assert_eq!(defaults.retry_schedule, RetrySchedule::default());
        let limits = defaults.serve_config();
        assert_eq!(limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(limits.keep_alive_timeout, Duration::from_secs(75));
        assert_eq!(limits.body_read_timeout, Duration::from_secs(30));
        assert_eq!(limits.body_deadline, Duration::from_secs(300));
        assert_eq!(limits.max_connections, 10_000);
        let set = serve(&[
            "--header-read-timeout-secs",
            "2",
            "--keep-alive-timeout-secs",
            "3",
            "--body-read-timeout-secs",
            "4",
            "--body-deadline-secs",
            "5",
            "--max-connections",
            "6",
        ])
        .unwrap()
        .serve_config();
        assert_eq!(
            (
                set.header_read_timeout.as_secs(),
                set.keep_alive_timeout.as_secs(),
                set.body_read_timeout.as_secs(),
                set.body_deadline.as_secs(),
                set.max_connections
            ),
            (2, 3, 4, 5, 6)
        );
        assert!(serve(&["--max-connections", "0"]).is_err());
        assert!(serve(&["--header-read-timeout-secs", "0"]).is_err());
        assert!(serve(&["--retry-schedule", "5d"]).is_err());
        assert!(serve(&["--action-lease-secs", "1"]).is_err());
    }

    #[test]
    fn proxy_flags_have_the_documented_defaults() {
        let proxy = |args: &[&str]| {
            let mut all = vec!["apitrail", "proxy"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Command::Proxy(p)) => Ok(p),
                Ok(_) => panic!("not proxy"),
                Err(e) => Err(e.to_string()),
            }
        };
        let p = proxy(&["--upstream", "http://127.0.0.1:3000"]).unwrap();
        assert_eq!(p.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(p.upstream.to_string(), "http://127.0.0.1:3000");
        assert_eq!((p.buffer_records, p.body_cap_bytes), (10_000, 65_536));
        assert!(!p.capture_bodies && p.org.is_none() && p.trusted_proxy.is_empty());
        assert_eq!(p.connections.serve_config().max_connections, 10_000);
        let p = proxy(&[
            "--upstream",
            "http://up/base",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "192.0.2.1",
            "--org",
            "acme",
        ])
        .unwrap();
        assert_eq!(p.trusted_proxy.len(), 2);
        assert_eq!(p.org.as_ref().map(OrgId::as_str), Some("acme"));
        assert!(proxy(&[]).is_err(), "--upstream is required");
        assert!(proxy(&["--upstream", "http://x", "--buffer-records", "0"]).is_err());
        assert!(proxy(&["--upstream", "http://x", "--body-cap-bytes", "0"]).is_err());
    }

    #[test]
    fn database_urls_choose_the_backend() {
        let args = |url: Option<&str>| StoreArgs {
            data_dir: PathBuf::from("/d"),
            database_url: url.map(str::to_owned),
            partition_window_days: 31,
        };
        assert_eq!(
            args(None).location().unwrap(),
            Location::Sqlite(PathBuf::from("/d/apitrail.db"))
        );
        assert_eq!(
            args(Some("sqlite:///x/y.db")).location().unwrap(),
            Location::Sqlite(PathBuf::from("/x/y.db"))
        );
        assert_eq!(
            args(Some("postgres://u:secret@h:5/db")).location().unwrap(),
            Location::Postgres("postgres://u:secret@h:5/db".into())
        );
        assert_eq!(
            args(Some("postgres://u:secret@h:5/db")).describe(),
            "PostgreSQL at h:5/db"
        );
        assert_eq!(
            args(Some("postgres://app@h/db?password=secret&sslmode=disable")).describe(),
            "PostgreSQL at h/db"
        );
        assert!(args(Some("mysql://h/db")).location().is_err());
        assert!(args(Some("sqlite://")).location().is_err());
    }
}
