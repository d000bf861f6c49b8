//! `shunt-control`: the control-plane daemon. Serves the management API
//! over TLS from a state directory (configuration database, keystore,
//! management certificate). See docs/control-plane.md.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use shunt_control::appliance::{Appliance, ApplianceOptions};
use shunt_control::auth::AuthSettings;
use shunt_control::keystore::{KdfParams, Password};
use shunt_control::licensing::NoVerifyingKey;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Shunt control plane: management API, keystore, partners, policy"
)]
struct Args {
    /// State directory: config.redb, keystore, management certificate.
    #[arg(long, env = "SHUNT_STATE_DIR", default_value = "/var/lib/shunt")]
    state_dir: PathBuf,
    /// Management API address (TLS). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// First start only: file holding the password of the `admin` account
    /// (roles admin and keystore-admin). Ignored once an account exists.
    #[arg(long)]
    bootstrap_admin_password_file: Option<PathBuf>,
    /// Lifetime of a login token, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl_secs: u64,
    /// Failed logins allowed per source address within the window.
    #[arg(long, default_value_t = 5)]
    max_failed_logins: u32,
    /// Window of the failed-login limit, in seconds.
    #[arg(long, default_value_t = 60)]
    failed_login_window_secs: u64,
    /// Serve Prometheus metrics on plain HTTP (`GET /metrics`) at this address; off
    /// unless given, 127.0.0.1:9464 when given without a value. No authentication:
    /// keep it on loopback or behind a firewall.
    #[arg(long, value_name = "ADDR", num_args = 0..=1,
          default_missing_value = shunt_control::metrics::DEFAULT_LISTEN)]
    metrics_listen: Option<SocketAddr>,
    /// Argon2id memory (KiB) for new keystore password wraps.
    #[arg(long, default_value_t = KdfParams::default().memory_kib)]
    keystore_kdf_memory_kib: u32,
    /// Argon2id passes for new keystore password wraps.
    #[arg(long, default_value_t = KdfParams::default().iterations)]
    keystore_kdf_iterations: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let options = ApplianceOptions {
        state_dir: args.state_dir.clone(),
        auth: AuthSettings {
            token_ttl: Duration::from_secs(args.token_ttl_secs),
            max_failed_logins: args.max_failed_logins,
            failed_login_window: Duration::from_secs(args.failed_login_window_secs),
        },
        kdf: KdfParams {
            memory_kib: args.keystore_kdf_memory_kib,
            iterations: args.keystore_kdf_iterations,
            parallelism: 1,
        },
    };
    let appliance = Arc::new(Appliance::open(&options, Box::new(NoVerifyingKey))?);
    bootstrap(&appliance, args.bootstrap_admin_password_file.as_deref())?;

    let identity = shunt_control::tls::load_or_create_identity(&args.state_dir)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, fingerprint = %identity.fingerprint, "management API listening; keystore sealed");
    let metrics = match args.metrics_listen {
        Some(at) => Some(
            shunt_control::metrics::spawn(appliance.clone(), at)
                .await
                .with_context(|| format!("cannot serve metrics on {at}"))?,
        ),
        None => None,
    };
    // Machine-readable lines for scripts and tests, on stdout.
    let mut out = std::io::stdout().lock();
    if let Some(at) = metrics {
        writeln!(out, "metrics http://{at}/metrics")?;
    }
    writeln!(out, "listening {address}")?;
    writeln!(out, "fingerprint sha256:{}", identity.fingerprint)?;
    out.flush()?;
    drop(out);

    shunt_control::server::serve(appliance, &identity, listener, shutdown_signal()).await?;
    tracing::info!("shut down");
    Ok(())
}

fn bootstrap(appliance: &Appliance, password_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    if appliance.auth.has_accounts()? {
        if password_file.is_some() {
            tracing::warn!("accounts exist already; --bootstrap-admin-password-file ignored");
        }
        return Ok(());
    }
    let Some(file) = password_file else {
        bail!(
            "no administrator account exists yet: start once with --bootstrap-admin-password-file FILE \
             (FILE holds the admin password, at least 10 characters); there is no default password"
        );
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let password = Password::new(text.trim_end_matches(['\n', '\r']));
    appliance
        .auth
        .bootstrap(&password)
        .context("cannot create the admin account")?;
    eprintln!(
        "created account `admin` (roles admin, keystore-admin); you may now delete {}",
        file.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
