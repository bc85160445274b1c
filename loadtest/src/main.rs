//! `consult-loadtest`: synthetic consultations against a running server. See `--help`.

use clap::Parser;
use consult_loadtest::options::Options;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // webrtc-rs warns about every interface it cannot gather on, for every connection:
            // only its errors by default; failures show in the report.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,webrtc=error,webrtc_ice=error,webrtc_mdns=error,webrtc_dtls=error,webrtc_srtp=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = Options::parse();
    let json = options.json.clone();
    match consult_loadtest::run(options).await {
        Ok(report) => {
            print!("{}", report.table());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("writing {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
            if report.participants.failed > 0 {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("consult-loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
