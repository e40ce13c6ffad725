//! `switchboard`: parse the configuration, start the broker, wait.

use clap::Parser;
use switchboard::config::{Args, Config};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "switchboard=info,actix_web=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = switchboard::server::run(config) {
        eprintln!("switchboard: {e}");
        std::process::exit(1);
    }
}
