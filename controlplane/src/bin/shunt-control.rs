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
use shunt_control::agent::{DataPlaneLink, LinkSettings};
use shunt_control::appliance::{Appliance, ApplianceOptions};
use shunt_control::auth::AuthSettings;
use shunt_control::keystore::{KdfParams, Password};
use shunt_control::licence::{LicenceServer, LicenceVerifier, NoVerifyingKey, VerifyLicence};
use shunt_control::peering::{BackoffPolicy, PeeringConfig};

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
    /// This appliance's name: the DNS name or IP address its partners know it
    /// by (and its certificate carries); also its name at a licence server.
    #[arg(long, env = "SHUNT_NAME", default_value = "shunt")]
    name: String,
    /// Tunnel UDP address; secure-peering signaling (QUIC) shares it with the
    /// data plane. Port 0 picks a free port.
    #[arg(long, default_value = "0.0.0.0:4790")]
    tunnel_listen: SocketAddr,
    /// Signaling keepalive interval, milliseconds.
    #[arg(long, default_value_t = 5000)]
    peering_keepalive_ms: u64,
    /// A partner silent this long is declared dead, milliseconds.
    #[arg(long, default_value_t = 20000)]
    peering_idle_timeout_ms: u64,
    /// Largest delay between reconnection attempts, milliseconds.
    #[arg(long, default_value_t = 60000)]
    peering_backoff_max_ms: u64,
    /// Interval between key epochs, seconds.
    #[arg(long, default_value_t = 600)]
    peering_rekey_secs: u64,
    /// The vendor's licence verifying key: Ed25519 public key, 64 hex digits.
    /// Without it every licence file is refused.
    #[arg(long, env = "SHUNT_LICENCE_VERIFYING_KEY")]
    licence_verifying_key: Option<String>,
    /// Re-fetch the licence from the licence server this often, seconds.
    #[arg(long, default_value_t = 3600)]
    licence_refresh_secs: u64,
    /// Serve this signed licence file to other appliances (licence server);
    /// needs --licence-server-listen.
    #[arg(long, requires = "licence_server_listen")]
    serve_licence: Option<PathBuf>,
    /// Address of the licence server (TCP). Port 0 picks a free port.
    #[arg(long, requires = "serve_licence")]
    licence_server_listen: Option<SocketAddr>,
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
    /// The data plane's agent socket (shunt-dataplane --agent-socket): partners,
    /// modes, keys and rules are installed there, counters read back.
    #[arg(long, env = "SHUNT_DATAPLANE_SOCKET")]
    dataplane_socket: Option<PathBuf>,
    /// Lifetime of session keys in the data plane: how long it keeps forwarding
    /// without hearing from this daemon (restarts).
    #[arg(long, default_value_t = 1800)]
    dataplane_key_lifetime_secs: u64,
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
    let verifier: Box<dyn VerifyLicence> = match &args.licence_verifying_key {
        Some(hex) => {
            Box::new(LicenceVerifier::from_hex(hex).context("--licence-verifying-key is unusable")?)
        }
        None => {
            tracing::warn!(
                "no --licence-verifying-key: licence files will be refused and secure peering cannot be enabled"
            );
            Box::new(NoVerifyingKey)
        }
    };
    let appliance = Arc::new(Appliance::open(&options, verifier)?.named(&args.name));
    bootstrap(&appliance, args.bootstrap_admin_password_file.as_deref())?;
    let keys = args.dataplane_socket.clone().map(|socket| {
        let mut settings = LinkSettings::new(socket);
        settings.key_lifetime = Duration::from_secs(args.dataplane_key_lifetime_secs);
        let (keys, receiver) = shunt_control::peering_daemon::keys_channel();
        DataPlaneLink::start(appliance.clone(), settings, receiver);
        keys
    });

    let licence_server = match (&args.serve_licence, args.licence_server_listen) {
        (Some(file), Some(listen)) => {
            let licence = std::fs::read(file)
                .with_context(|| format!("cannot read licence file {}", file.display()))?;
            let server = LicenceServer::new();
            server.set_default(&licence);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen for licence requests on {listen}"))?;
            let bound = listener.local_addr()?;
            tokio::spawn(server.serve(listener));
            tracing::info!(address = %bound, file = %file.display(), "serving licences");
            Some(bound)
        }
        _ => None,
    };
    tokio::spawn(refresh_licence(
        appliance.clone(),
        Duration::from_secs(args.licence_refresh_secs.max(1)),
    ));

    let mut peering = PeeringConfig::new(&args.name, args.tunnel_listen);
    peering.keepalive = Duration::from_millis(args.peering_keepalive_ms);
    peering.idle_timeout = Duration::from_millis(args.peering_idle_timeout_ms);
    peering.rekey_interval = Duration::from_secs(args.peering_rekey_secs);
    peering.backoff = BackoffPolicy {
        initial: BackoffPolicy::default()
            .initial
            .min(Duration::from_millis(args.peering_backoff_max_ms)),
        max: Duration::from_millis(args.peering_backoff_max_ms),
    };
    // Session keys go to the data plane when --dataplane-socket is given.
    let (tunnel, _peering_task) =
        shunt_control::peering_daemon::spawn(appliance.clone(), peering, keys).await?;

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
    // Machine-readable lines for scripts and tests, on stdout. Written in one go and
    // best effort: a reader that stops listening must not take the daemon down.
    let mut lines = String::new();
    if let Some(at) = metrics {
        lines.push_str(&format!("metrics http://{at}/metrics\n"));
    }
    lines.push_str(&format!("listening {address}\n"));
    if let Some(l) = licence_server {
        lines.push_str(&format!("licence-server {l}\n"));
    }
    lines.push_str(&format!("fingerprint sha256:{}\n", identity.fingerprint));
    lines.push_str(&format!("tunnel {tunnel}\n"));
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_all(lines.as_bytes()).and_then(|()| out.flush()) {
        tracing::warn!(%error, "cannot write the start-up lines to stdout; going on");
    }
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

/// Re-fetches the licence from the configured licence server, at start and
/// then every `every`.
async fn refresh_licence(appliance: Arc<Appliance>, every: Duration) {
    loop {
        match appliance.licence_settings() {
            Ok(s) if !s.server.is_empty() => {
                // Failures are recorded in the licence status by fetch_licence.
                let _ = shunt_control::service::fetch_licence(&appliance, &s.server).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the licence settings")
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
