//! `consult-server`: the whole engine (signaling + SFU + web client) in one process.

use clap::{Parser, Subcommand};
use consult_protocol::{CompanionKind, Role};
use consult_signaling::token::{unix_now, Grant, TokenService};
use consult_signaling::Config;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Teleconsultation engine: signaling, SFU and web client in one process"
)]
struct Cli {
    /// Optional TOML configuration file (keys as in `Config`); flags override it.
    #[arg(long, env = "CONSULT_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "CONSULT_HTTP_BIND")]
    http_bind: Option<SocketAddr>,
    #[arg(long, env = "CONSULT_UDP_BIND")]
    udp_bind: Option<SocketAddr>,
    /// Address clients reach the UDP port at (needed when udp-bind is 0.0.0.0).
    #[arg(long, env = "CONSULT_PUBLIC_IP")]
    public_ip: Option<IpAddr>,
    /// Base URL used in join links.
    #[arg(long, env = "CONSULT_PUBLIC_URL")]
    public_url: Option<String>,
    #[arg(long, env = "CONSULT_API_KEY")]
    api_key: Option<String>,
    #[arg(long, env = "CONSULT_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
    #[arg(long, env = "CONSULT_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "CONSULT_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Plain HTTP instead of HTTPS (loopback only).
    #[arg(long, env = "CONSULT_INSECURE_HTTP")]
    insecure_http: bool,
    #[arg(long, env = "CONSULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Recording encryption key, 64 hex digits (default: generated in the data dir).
    #[arg(long, env = "CONSULT_RECORDING_KEY", hide_env_values = true)]
    recording_key: Option<String>,
    /// Kept for older scripts: downlink estimation is on by default.
    #[arg(long, hide = true)]
    downlink_estimation: bool,
    /// Do not estimate subscribers' downlinks: every track is forwarded at its best layer
    /// whatever the link carries.
    #[arg(long, env = "CONSULT_NO_DOWNLINK_ESTIMATION")]
    no_downlink_estimation: bool,
    /// Media-plane threads, each owning whole rooms (default: one per core).
    #[arg(long, env = "CONSULT_SFU_THREADS")]
    sfu_threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default).
    Serve,
    /// Print an access token for local use.
    Token {
        #[arg(long)]
        room: String,
        #[arg(long)]
        identity: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long, value_parser = parse_companion)]
        companion_kind: Option<CompanionKind>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 4 * 3600)]
        ttl: u64,
    },
    /// Decrypt a recording (`*.ogg.sealed`, `*.ivf.sealed`) into its standard file, with the
    /// configured recording key (`recording_key`, else `<data dir>/recording.key`).
    ExportRecording {
        /// The sealed file.
        input: PathBuf,
        /// Where to write the Ogg/Opus or IVF file.
        output: PathBuf,
    },
    /// Check the audit trail's hash chain (`<data dir>/audit.db`): says where a record was
    /// changed, inserted or deleted; exits with 1 if the chain is broken.
    VerifyAudit,
}

fn parse_role(s: &str) -> Result<Role, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| "one of patient, companion, physician".to_owned())
}

fn parse_companion(s: &str) -> Result<CompanionKind, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| "one of nurse, pharmacist, carer".to_owned())
}

fn config(cli: &Cli) -> anyhow::Result<Config> {
    let mut c = match &cli.config {
        Some(path) => Config::from_toml(&std::fs::read_to_string(path)?)?,
        None => Config::default(),
    };
    if let Some(v) = cli.http_bind {
        c.http_bind = v;
    }
    if let Some(v) = cli.udp_bind {
        c.udp_bind = v;
    }
    if let Some(v) = cli.public_ip {
        c.public_ip = Some(v);
    }
    if let Some(v) = &cli.public_url {
        c.public_url = Some(v.clone());
    }
    if let Some(v) = &cli.api_key {
        c.api_key = v.clone();
    }
    if let Some(v) = &cli.api_secret {
        c.api_secret = v.clone();
    }
    if let Some(v) = &cli.tls_cert {
        c.tls_cert = Some(v.clone());
    }
    if let Some(v) = &cli.tls_key {
        c.tls_key = Some(v.clone());
    }
    if cli.insecure_http {
        c.insecure_http = true;
    }
    if let Some(v) = &cli.data_dir {
        c.data_dir = v.clone();
    }
    if let Some(v) = &cli.recording_key {
        c.recording_key = Some(v.clone());
    }
    if cli.no_downlink_estimation {
        c.downlink_estimation = false;
    }
    if let Some(n) = cli.sfu_threads {
        c.sfu_threads = n;
    }
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,str0m=warn,webrtc=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = config(&cli)?;
    match cli.command {
        Some(Cmd::Token {
            room,
            identity,
            name,
            role,
            companion_kind,
            ttl,
        }) => {
            let tokens = TokenService::new(&config.api_key, &config.api_secret);
            let (token, _) = tokens.mint(
                &Grant {
                    room: &room,
                    identity: &identity,
                    name: &name,
                    role,
                    companion_kind,
                },
                unix_now(),
                ttl,
            );
            println!("{token}");
            Ok(())
        }
        Some(Cmd::VerifyAudit) => {
            use consult_signaling::audit_chain::Verdict;
            let path = config.audit_db();
            match consult_signaling::audit::verify_chain(&path)? {
                Verdict::Intact { chained, unchained } => {
                    println!(
                        "{}: intact ({chained} records chained, {unchained} written before the \
                         chain existed)",
                        path.display()
                    );
                    Ok(())
                }
                Verdict::Broken { seq, reason } => {
                    println!("{}: BROKEN at record {seq}: {reason}", path.display());
                    std::process::exit(1);
                }
            }
        }
        Some(Cmd::ExportRecording { input, output }) => {
            let key = config.recording_key()?;
            let complete = consult_signaling::recording::export(&input, &output, &key)?;
            if complete {
                println!("{}: complete", output.display());
            } else {
                println!(
                    "{}: the recording was cut short (server stopped while recording); \
                     everything up to its last second is there",
                    output.display()
                );
            }
            Ok(())
        }
        Some(Cmd::Serve) | None => {
            let server = consult_signaling::start(config).await?;
            println!(
                "Consultation server: {} (media on UDP {})",
                server.base_url, server.udp_addr
            );
            let signal = stop_signal().await?;
            tracing::info!(signal, "stopping");
            let report = server.shutdown_gracefully(SHUTDOWN_LIMIT).await;
            // Not println!: stdout may be closed by now (a supervisor gone), which must not
            // turn a clean stop into a panic.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stdout(),
                "Stopped on {signal} in {:?}: {} consultation(s) told, recordings closed: {}, \
                 audit written: {}",
                report.took,
                report.rooms,
                report.recordings_closed,
                report.audit_flushed
            );
            Ok(())
        }
    }
}

/// How long a graceful stop may take (systemd's default stop timeout is 90 s, Docker's 10 s).
const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(8);

/// The first of SIGTERM (systemd, containers) and SIGINT (Ctrl-C), by name.
async fn stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
