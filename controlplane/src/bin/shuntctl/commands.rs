//! The subcommands: one per management call, grouped like the services.

use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};
use shunt_proto::management as m;
use tokio_stream::StreamExt as _;

use crate::output::{self, fields, table, when, yes_no};
use crate::session::{self, CachedLogin};
use crate::{Context, Failure};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Is the server up? (needs no login)
    Health,
    /// Log in and cache the token.
    Login {
        #[arg(long, default_value = "admin")]
        account: String,
    },
    /// Revoke the cached token.
    Logout,
    /// Version, uptime, licence, keystore, peering, data plane.
    Status,
    /// Change the password of the logged-in account.
    Password,
    #[command(subcommand)]
    Accounts(AccountsCmd),
    #[command(subcommand)]
    Keystore(KeystoreCmd),
    #[command(subcommand)]
    Partners(PartnersCmd),
    #[command(subcommand)]
    Rules(RulesCmd),
    #[command(subcommand)]
    Stats(StatsCmd),
    #[command(subcommand, name = "datastore")]
    DataStore(DataStoreCmd),
    #[command(subcommand)]
    Licence(LicenceCmd),
    #[command(subcommand)]
    Peering(PeeringCmd),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Admin,
    KeystoreAdmin,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCmd {
    List,
    /// Create an account (the password is prompted).
    Add {
        name: String,
        #[arg(long = "role", required = true)]
        roles: Vec<RoleArg>,
    },
    Remove {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeystoreCmd {
    Status,
    /// Create the keystore with its first password.
    Init,
    /// Open the keystore with its password.
    Open,
    Seal,
    ChangePassword,
    /// Destroy every private key and all encrypted data, then start afresh.
    Reset {
        /// Confirms the destruction without asking.
        #[arg(long)]
        yes_destroy_all_keys: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PartnersCmd {
    List,
    Add {
        name: String,
        /// Partner's signaling address, host:port.
        #[arg(long)]
        address: String,
        /// LAN prefix behind the partner (repeatable).
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
    },
    Remove {
        name: String,
    },
    /// Print the list now and on every change.
    Watch {
        /// Stop after this many updates.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ActionArg {
    Accelerate,
    PassThrough,
}

#[derive(Debug, Subcommand)]
pub enum RulesCmd {
    List,
    Add {
        name: String,
        #[arg(long, default_value_t = 100)]
        priority: u32,
        #[arg(long, default_value = "0.0.0.0/0")]
        source: String,
        #[arg(long, default_value = "0.0.0.0/0")]
        destination: String,
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// Destination ports, "443" or "8000-8100"; every port when omitted.
        #[arg(long)]
        ports: Option<String>,
        #[arg(long, value_enum, default_value = "accelerate")]
        action: ActionArg,
    },
    Remove {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StatsCmd {
    Show,
    Watch {
        #[arg(long, default_value_t = 1000)]
        interval_ms: u32,
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum DataStoreCmd {
    Show,
    Set {
        #[arg(long, value_enum)]
        encryption: Option<OnOff>,
        /// History store size in bytes.
        #[arg(long)]
        size: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LicenceCmd {
    Show,
    /// Install a signed licence file.
    Install {
        file: std::path::PathBuf,
    },
    /// Take licences from a licence server ("" to stop).
    Server {
        address: String,
        #[arg(long, default_value = "")]
        server_fingerprint: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Own,
    PrivateCa,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum VerificationArg {
    Full,
    ChainOnly,
}

#[derive(Debug, Subcommand)]
pub enum PeeringCmd {
    Show,
    Enable,
    Disable,
    Mode {
        mode: ModeArg,
    },
    Verification {
        verification: VerificationArg,
    },
    /// Cipher suites, colon-separated (e.g. TLS13_AES_256_GCM_SHA384).
    Ciphers {
        spec: String,
    },
    /// Import own certificate chain and key (PEM); prompts for a key password if --encrypted-key.
    ImportPem {
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        key: std::path::PathBuf,
        #[arg(long)]
        encrypted_key: bool,
    },
    /// Import a PKCS#12 bundle (prompts for its file password).
    ImportPkcs12 {
        file: std::path::PathBuf,
    },
    /// Import CA certificates (PEM) into a named store.
    ImportCa {
        store: String,
        file: std::path::PathBuf,
    },
    /// Create this appliance's private CA.
    CreateCa {
        #[arg(long, default_value = "Shunt private CA")]
        common_name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Enroll a remote appliance into the private CA (prompts for its admin password).
    Connect {
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long)]
        remote_fingerprint: String,
        #[arg(long, default_value = "admin")]
        account: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Appliances enrolled into this appliance's private CA.
    Peers,
    RemovePeer {
        name: String,
    },
}

pub async fn run(cx: &mut Context, command: Command) -> Result<(), Failure> {
    match command {
        Command::Health => {
            let reply = cx
                .connect()
                .await?
                .system()
                .health(m::HealthRequest {})
                .await?
                .into_inner();
            show(
                cx,
                json!({"serving": reply.serving, "version": reply.version}),
                || {
                    fields(&[
                        ("serving", yes_no(reply.serving)),
                        ("version", reply.version.clone()),
                    ])
                },
            );
        }
        Command::Login { account } => login(cx, account).await?,
        Command::Logout => {
            let client = cx.authed().await?;
            client.system().logout(m::LogoutRequest {}).await?;
            session::remove(&cx.token_file)?;
            if !cx.cli.json {
                println!("logged out");
            }
        }
        Command::Status => {
            let s = cx
                .authed()
                .await?
                .system()
                .status(m::StatusRequest {})
                .await?
                .into_inner();
            let ks = s.keystore.unwrap_or_default();
            let lic = s.licence.unwrap_or_default();
            let peer = s.peering.unwrap_or_default();
            let dp = s.data_plane.unwrap_or_default();
            show(
                cx,
                json!({"version": s.version, "uptime_seconds": s.uptime_seconds, "keystore": keystore_json(&ks),
                       "licence": licence_json(&lic), "peering": peering_json(&peer),
                       "data_plane": {"connected": dp.connected, "detail": dp.detail}}),
                || {
                    fields(&[
                        ("version", s.version.clone()),
                        ("uptime", format!("{} s", s.uptime_seconds)),
                        ("keystore", keystore_line(&ks)),
                        ("licence", licence_line(&lic)),
                        ("secure peering", peering_line(&peer)),
                        (
                            "data plane",
                            if dp.connected {
                                "connected".into()
                            } else {
                                dp.detail.clone()
                            },
                        ),
                    ])
                },
            );
        }
        Command::Password => {
            let client = cx.authed().await?;
            let current = cx.password("current password")?;
            let new = cx.new_password("new password")?;
            client
                .system()
                .change_admin_password(m::ChangeAdminPasswordRequest {
                    current_password: current,
                    new_password: new,
                })
                .await?;
            session::remove(&cx.token_file)?;
            if !cx.cli.json {
                println!("password changed; log in again");
            }
        }
        Command::Accounts(cmd) => crate::commands::accounts(cx, cmd).await?,
        Command::Keystore(cmd) => keystore(cx, cmd).await?,
        Command::Partners(cmd) => partners(cx, cmd).await?,
        Command::Rules(cmd) => rules(cx, cmd).await?,
        Command::Stats(cmd) => stats(cx, cmd).await?,
        Command::DataStore(cmd) => data_store(cx, cmd).await?,
        Command::Licence(cmd) => licence(cx, cmd).await?,
        Command::Peering(cmd) => peering(cx, cmd).await?,
    }
    Ok(())
}

/// Prints `value` as JSON with `--json`, else runs `human`.
fn show(cx: &Context, value: Value, human: impl FnOnce()) {
    if cx.cli.json {
        output::json(&value)
    } else {
        human()
    }
}

async fn login(cx: &mut Context, account: String) -> Result<(), Failure> {
    let (server, fingerprint) = cx.target()?;
    let mut client = cx.connect().await?;
    let password = cx.password(&format!("password for {account}"))?;
    let reply = client.login(&account, &password).await?;
    session::store(
        &cx.token_file,
        &CachedLogin {
            server: server.clone(),
            fingerprint,
            account: account.clone(),
            token: reply.token.clone(),
            expires_at_unix: reply.expires_at_unix,
        },
    )?;
    let roles: Vec<&str> = reply.roles.iter().map(|r| role_name(*r)).collect();
    show(
        cx,
        json!({"account": account, "server": server, "expires_at_unix": reply.expires_at_unix, "roles": roles}),
        || {
            println!(
                "logged in to {server} as {account} ({}); token expires {}",
                roles.join(", "),
                when(reply.expires_at_unix)
            )
        },
    );
    Ok(())
}

async fn accounts(cx: &mut Context, cmd: AccountsCmd) -> Result<(), Failure> {
    let client = cx.authed().await?;
    match cmd {
        AccountsCmd::List => {
            let list = client
                .system()
                .list_accounts(m::ListAccountsRequest {})
                .await?
                .into_inner();
            let rows: Vec<(String, Vec<&str>)> = list
                .accounts
                .iter()
                .map(|a| {
                    (
                        a.name.clone(),
                        a.roles.iter().map(|r| role_name(*r)).collect(),
                    )
                })
                .collect();
            show(
                cx,
                json!(
                    rows.iter()
                        .map(|(n, r)| json!({"name": n, "roles": r}))
                        .collect::<Vec<_>>()
                ),
                || {
                    table(
                        &["ACCOUNT", "ROLES"],
                        &rows
                            .iter()
                            .map(|(n, r)| vec![n.clone(), r.join(", ")])
                            .collect::<Vec<_>>(),
                    )
                },
            );
        }
        AccountsCmd::Add { name, roles } => {
            let password = cx.new_password(&format!("password for {name}"))?;
            let roles = roles
                .iter()
                .map(|r| match r {
                    RoleArg::Admin => m::Role::Admin as i32,
                    RoleArg::KeystoreAdmin => m::Role::KeystoreAdmin as i32,
                })
                .collect();
            client
                .system()
                .create_account(m::CreateAccountRequest {
                    name: name.clone(),
                    password,
                    roles,
                })
                .await?;
            done(cx, &format!("account {name} created"));
        }
        AccountsCmd::Remove { name } => {
            client
                .system()
                .remove_account(m::RemoveAccountRequest { name: name.clone() })
                .await?;
            done(cx, &format!("account {name} removed"));
        }
    }
    Ok(())
}

async fn keystore(cx: &mut Context, cmd: KeystoreCmd) -> Result<(), Failure> {
    let client = cx.authed().await?;
    let mut ks = client.keystore();
    let status = match cmd {
        KeystoreCmd::Status => ks.status(m::KeystoreStatusRequest {}).await?.into_inner(),
        KeystoreCmd::Init => {
            let password = cx.new_password("new keystore password")?;
            ks.initialize(m::InitializeKeystoreRequest { password })
                .await?
                .into_inner()
        }
        KeystoreCmd::Open => {
            let password = cx.password("keystore password")?;
            ks.open(m::OpenKeystoreRequest { password })
                .await?
                .into_inner()
        }
        KeystoreCmd::Seal => ks.seal(m::SealKeystoreRequest {}).await?.into_inner(),
        KeystoreCmd::ChangePassword => {
            let current = cx.password("current keystore password")?;
            let new = cx.new_password("new keystore password")?;
            ks.change_password(m::ChangeKeystorePasswordRequest {
                current_password: current,
                new_password: new,
            })
            .await?
            .into_inner()
        }
        KeystoreCmd::Reset {
            yes_destroy_all_keys,
        } => {
            if !yes_destroy_all_keys {
                return Err(Failure {
                    code: 2,
                    message: "reset destroys every private key, the private CA and all encrypted data including the \
                              compression history; add --yes-destroy-all-keys to go ahead"
                        .into(),
                });
            }
            let new_password = cx.new_password("new keystore password")?;
            let reply = ks
                .reset(m::ResetKeystoreRequest {
                    confirm: shunt_proto::RESET_CONFIRMATION.into(),
                    new_password,
                })
                .await?
                .into_inner();
            let status = reply.status.unwrap_or_default();
            show(
                cx,
                json!({"destroyed_secrets": reply.destroyed_secrets, "destroyed_history_bytes": reply.destroyed_history_bytes,
                       "keystore": keystore_json(&status)}),
                || {
                    println!(
                        "destroyed {} secret(s) ({}) and {} B of history",
                        reply.destroyed_secrets.len(),
                        reply.destroyed_secrets.join(", "),
                        reply.destroyed_history_bytes
                    );
                    println!("keystore: {}", keystore_line(&status));
                },
            );
            return Ok(());
        }
    };
    show(cx, keystore_json(&status), || {
        let mut lines = vec![
            ("state", state_name(status.state).to_owned()),
            (
                "secrets",
                if status.secret_names.is_empty() {
                    "-".into()
                } else {
                    status.secret_names.join(", ")
                },
            ),
            (
                "kdf",
                format!(
                    "argon2id m={} KiB t={} p={}",
                    status.kdf_memory_kib, status.kdf_iterations, status.kdf_parallelism
                ),
            ),
        ];
        if !status.effect.is_empty() {
            lines.push(("effect", status.effect.clone()));
        }
        fields(&lines)
    });
    Ok(())
}

async fn partners(cx: &mut Context, cmd: PartnersCmd) -> Result<(), Failure> {
    let client = cx.authed().await?;
    let mut svc = client.partners();
    match cmd {
        PartnersCmd::List => {
            let list = svc
                .list_partners(m::ListPartnersRequest {})
                .await?
                .into_inner();
            print_partners(cx, &list);
        }
        PartnersCmd::Add {
            name,
            address,
            prefixes,
        } => {
            let p = svc
                .add_partner(m::AddPartnerRequest {
                    name,
                    address,
                    prefixes,
                })
                .await?
                .into_inner();
            print_partners(cx, &m::PartnerList { partners: vec![p] });
        }
        PartnersCmd::Remove { name } => {
            svc.remove_partner(m::RemovePartnerRequest { name: name.clone() })
                .await?;
            done(cx, &format!("partner {name} removed"));
        }
        PartnersCmd::Watch { count } => {
            let mut stream = svc
                .watch_partners(m::WatchPartnersRequest {})
                .await?
                .into_inner();
            let mut seen = 0;
            while let Some(list) = stream.next().await {
                print_partners(cx, &list?);
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
                if !cx.cli.json {
                    println!();
                }
            }
        }
    }
    Ok(())
}

fn print_partners(cx: &Context, list: &m::PartnerList) {
    show(
        cx,
        json!(list.partners.iter().map(partner_json).collect::<Vec<_>>()),
        || {
            let rows: Vec<Vec<String>> = list
                .partners
                .iter()
                .map(|p| {
                    let c = p.counters.unwrap_or_default();
                    vec![
                        p.name.clone(),
                        p.address.clone(),
                        p.prefixes.join(","),
                        p.secure.to_string(),
                        p.connection_status.clone(),
                        p.traffic.clone(),
                        format!(
                            "{}/{}",
                            c.bytes_before_compression, c.bytes_after_compression
                        ),
                        if p.reason.is_empty() {
                            "-".into()
                        } else {
                            p.reason.clone()
                        },
                    ]
                })
                .collect();
            table(
                &[
                    "PARTNER",
                    "ADDRESS",
                    "PREFIXES",
                    "SECURE",
                    "STATUS",
                    "TRAFFIC",
                    "BYTES IN/OUT",
                    "REASON",
                ],
                &rows,
            )
        },
    );
}

async fn rules(cx: &mut Context, cmd: RulesCmd) -> Result<(), Failure> {
    let client = cx.authed().await?;
    let mut svc = client.policy();
    match cmd {
        RulesCmd::List => {
            let list = svc.list_rules(m::ListRulesRequest {}).await?.into_inner();
            print_rules(cx, &list.rules);
        }
        RulesCmd::Add {
            name,
            priority,
            source,
            destination,
            protocol,
            ports,
            action,
        } => {
            let (port_low, port_high) = parse_ports(ports.as_deref())?;
            let rule = m::Rule {
                name,
                priority,
                source_prefix: source,
                destination_prefix: destination,
                protocol,
                port_low,
                port_high,
                action: match action {
                    ActionArg::Accelerate => m::RuleAction::Accelerate,
                    ActionArg::PassThrough => m::RuleAction::PassThrough,
                } as i32,
            };
            let rule = svc
                .add_rule(m::AddRuleRequest { rule: Some(rule) })
                .await?
                .into_inner();
            print_rules(cx, &[rule]);
        }
        RulesCmd::Remove { name } => {
            svc.remove_rule(m::RemoveRuleRequest { name: name.clone() })
                .await?;
            done(cx, &format!("rule {name} removed"));
        }
    }
    Ok(())
}

fn parse_ports(ports: Option<&str>) -> Result<(u32, u32), Failure> {
    let bad = || Failure {
        code: 9,
        message: "ports: give PORT or LOW-HIGH, e.g. 443 or 8000-8100".into(),
    };
    let Some(text) = ports else {
        return Ok((0, 65535));
    };
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    Ok((low.into(), high.into()))
}

fn print_rules(cx: &Context, rules: &[m::Rule]) {
    let action = |a: i32| {
        if a == m::RuleAction::PassThrough as i32 {
            "pass-through"
        } else {
            "accelerate"
        }
    };
    show(
        cx,
        json!(
            rules
                .iter()
                .map(
                    |r| json!({"name": r.name, "priority": r.priority, "source": r.source_prefix,
            "destination": r.destination_prefix, "protocol": r.protocol, "port_low": r.port_low,
            "port_high": r.port_high, "action": action(r.action)})
                )
                .collect::<Vec<_>>()
        ),
        || {
            let rows: Vec<Vec<String>> = rules
                .iter()
                .map(|r| {
                    vec![
                        r.priority.to_string(),
                        r.name.clone(),
                        r.source_prefix.clone(),
                        r.destination_prefix.clone(),
                        r.protocol.clone(),
                        format!("{}-{}", r.port_low, r.port_high),
                        action(r.action).into(),
                    ]
                })
                .collect();
            table(
                &[
                    "PRIO",
                    "RULE",
                    "SOURCE",
                    "DESTINATION",
                    "PROTO",
                    "PORTS",
                    "ACTION",
                ],
                &rows,
            )
        },
    );
}

async fn stats(cx: &mut Context, cmd: StatsCmd) -> Result<(), Failure> {
    let client = cx.authed().await?;
    let mut svc = client.stats();
    match cmd {
        StatsCmd::Show => print_stats(
            cx,
            &svc.get_stats(m::GetStatsRequest {}).await?.into_inner(),
        ),
        StatsCmd::Watch { interval_ms, count } => {
            let mut stream = svc
                .watch_stats(m::WatchStatsRequest { interval_ms })
                .await?
                .into_inner();
            let mut seen = 0;
            while let Some(snap) = stream.next().await {
                print_stats(cx, &snap?);
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn print_stats(cx: &Context, s: &m::StatsSnapshot) {
    let counters = |c: &m::PartnerCounters| {
        json!({"bytes_before_compression": c.bytes_before_compression, "bytes_after_compression": c.bytes_after_compression,
               "packets": c.packets, "errors": c.errors})
    };
    let total = s.total.unwrap_or_default();
    let mut names: Vec<&String> = s.per_partner.keys().collect();
    names.sort();
    show(
        cx,
        json!({"taken_at_unix_ms": s.taken_at_unix_ms, "total": counters(&total),
               "per_partner": names.iter().map(|n| (n.to_string(), counters(&s.per_partner[*n]))).collect::<serde_json::Map<_, _>>(),
               "management_calls": s.management_calls, "failed_logins": s.failed_logins}),
        || {
            let row = |name: &str, c: &m::PartnerCounters| {
                vec![
                    name.to_owned(),
                    c.bytes_before_compression.to_string(),
                    c.bytes_after_compression.to_string(),
                    c.packets.to_string(),
                    c.errors.to_string(),
                ]
            };
            let mut rows: Vec<Vec<String>> =
                names.iter().map(|n| row(n, &s.per_partner[*n])).collect();
            rows.push(row("(total)", &total));
            table(
                &[
                    "PARTNER",
                    "BYTES BEFORE",
                    "BYTES AFTER",
                    "PACKETS",
                    "ERRORS",
                ],
                &rows,
            );
            println!(
                "management calls: {}, failed logins: {}",
                s.management_calls, s.failed_logins
            );
        },
    );
}

async fn data_store(cx: &mut Context, cmd: DataStoreCmd) -> Result<(), Failure> {
    let client = cx.authed().await?;
    let mut svc = client.data_store();
    let s = match cmd {
        DataStoreCmd::Show => svc
            .get_data_store(m::GetDataStoreRequest {})
            .await?
            .into_inner(),
        DataStoreCmd::Set { encryption, size } => svc
            .set_data_store(m::SetDataStoreRequest {
                encryption: encryption.map(|e| matches!(e, OnOff::On)),
                size_bytes: size,
            })
            .await?
            .into_inner(),
    };
    show(
        cx,
        json!({"encryption": s.encryption, "size_bytes": s.size_bytes, "used_bytes": s.used_bytes, "state": s.state}),
        || {
            fields(&[
                (
                    "encryption",
                    if s.encryption {
                        "on (AES-256-XTS)".into()
                    } else {
                        "off".into()
                    },
                ),
                ("size", format!("{} B", s.size_bytes)),
                ("used", format!("{} B", s.used_bytes)),
                ("state", s.state.clone()),
            ])
        },
    );
    Ok(())
}

async fn licence(cx: &mut Context, cmd: LicenceCmd) -> Result<(), Failure> {
    let client = cx.authed().await?;
    let mut svc = client.licensing();
    let s = match cmd {
        LicenceCmd::Show => svc.get_licence(m::GetLicenceRequest {}).await?.into_inner(),
        LicenceCmd::Install { file } => {
            let licence = std::fs::read(&file).map_err(|e| Failure {
                code: 9,
                message: format!("cannot read {}: {e}", file.display()),
            })?;
            svc.install_licence(m::InstallLicenceRequest { licence })
                .await?
                .into_inner()
        }
        LicenceCmd::Server {
            address,
            server_fingerprint,
        } => svc
            .set_licence_server(m::SetLicenceServerRequest {
                address,
                fingerprint: server_fingerprint,
            })
            .await?
            .into_inner(),
    };
    show(cx, licence_json(&s), || {
        fields(&[("licence", licence_line(&s)), ("source", s.source.clone())])
    });
    Ok(())
}

async fn peering(cx: &mut Context, cmd: PeeringCmd) -> Result<(), Failure> {
    let client = cx.authed().await?;
    let mut svc = client.peering();
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Failure {
            code: 9,
            message: format!("cannot read {}: {e}", path.display()),
        })
    };
    let status = match cmd {
        PeeringCmd::Show => svc.get_peering(m::GetPeeringRequest {}).await?.into_inner(),
        PeeringCmd::Enable => svc
            .set_enabled(m::SetPeeringEnabledRequest { enabled: true })
            .await?
            .into_inner(),
        PeeringCmd::Disable => svc
            .set_enabled(m::SetPeeringEnabledRequest { enabled: false })
            .await?
            .into_inner(),
        PeeringCmd::Mode { mode } => {
            let mode = match mode {
                ModeArg::Own => m::CredentialMode::Own,
                ModeArg::PrivateCa => m::CredentialMode::PrivateCa,
            } as i32;
            svc.set_credential_mode(m::SetCredentialModeRequest { mode })
                .await?
                .into_inner()
        }
        PeeringCmd::Verification { verification } => {
            let verification = match verification {
                VerificationArg::Full => m::Verification::Full,
                VerificationArg::ChainOnly => m::Verification::ChainOnly,
            } as i32;
            svc.set_verification(m::SetVerificationRequest { verification })
                .await?
                .into_inner()
        }
        PeeringCmd::Ciphers { spec } => svc
            .set_cipher_spec(m::SetCipherSpecRequest { spec })
            .await?
            .into_inner(),
        PeeringCmd::ImportPem {
            cert,
            key,
            encrypted_key,
        } => {
            let key_password = if encrypted_key {
                cx.password("private key password")?
            } else {
                String::new()
            };
            let pem = m::PemPair {
                certificate_chain_pem: String::from_utf8_lossy(&read(&cert)?).into_owned(),
                private_key_pem: String::from_utf8_lossy(&read(&key)?).into_owned(),
                key_password,
            };
            let material = Some(m::import_credentials_request::Material::Pem(pem));
            svc.import_credentials(m::ImportCredentialsRequest { material })
                .await?
                .into_inner()
        }
        PeeringCmd::ImportPkcs12 { file } => {
            let der = read(&file)?;
            let file_password = cx.password("PKCS#12 file password")?;
            let material = Some(m::import_credentials_request::Material::Pkcs12(
                m::Pkcs12Bundle { der, file_password },
            ));
            svc.import_credentials(m::ImportCredentialsRequest { material })
                .await?
                .into_inner()
        }
        PeeringCmd::ImportCa { store, file } => {
            let certificates_pem = String::from_utf8_lossy(&read(&file)?).into_owned();
            svc.import_ca_certificates(m::ImportCaCertificatesRequest {
                store,
                certificates_pem,
            })
            .await?
            .into_inner()
        }
        PeeringCmd::CreateCa { common_name, days } => svc
            .create_private_ca(m::CreatePrivateCaRequest {
                common_name,
                validity_days: days,
            })
            .await?
            .into_inner(),
        PeeringCmd::Connect {
            name,
            address,
            remote_fingerprint,
            account,
            days,
        } => {
            let password = cx.password(&format!("password for {account} on {address}"))?;
            let peer = svc
                .connect_appliance(m::ConnectApplianceRequest {
                    name,
                    address,
                    fingerprint: remote_fingerprint,
                    account,
                    password,
                    validity_days: days,
                })
                .await?
                .into_inner();
            print_peers(cx, &[peer]);
            return Ok(());
        }
        PeeringCmd::Peers => {
            let list = svc
                .list_connected_peers(m::ListConnectedPeersRequest {})
                .await?
                .into_inner();
            print_peers(cx, &list.peers);
            return Ok(());
        }
        PeeringCmd::RemovePeer { name } => {
            svc.remove_connected_peer(m::RemoveConnectedPeerRequest { name: name.clone() })
                .await?;
            done(cx, &format!("peer {name} removed"));
            return Ok(());
        }
    };
    show(cx, peering_json(&status), || {
        fields(&[
            ("secure peering", peering_line(&status)),
            ("credential mode", mode_name(status.mode).into()),
            (
                "verification",
                verification_name(status.verification).into(),
            ),
            (
                "cipher spec",
                if status.cipher_spec.is_empty() {
                    "default".into()
                } else {
                    status.cipher_spec.clone()
                },
            ),
            ("credentials", yes_no(status.credentials_installed)),
            ("private CA", yes_no(status.private_ca)),
            (
                "CA stores",
                if status.ca_stores.is_empty() {
                    "-".into()
                } else {
                    status.ca_stores.join(", ")
                },
            ),
        ])
    });
    Ok(())
}

fn print_peers(cx: &Context, peers: &[m::ConnectedPeer]) {
    show(
        cx,
        json!(peers.iter().map(|p| json!({"name": p.name, "address": p.address, "subject": p.certificate_subject,
            "expires_at_unix": p.expires_at_unix})).collect::<Vec<_>>()),
        || {
            let rows: Vec<Vec<String>> = peers
                .iter()
                .map(|p| vec![p.name.clone(), p.address.clone(), p.certificate_subject.clone(), when(p.expires_at_unix)])
                .collect();
            table(&["PEER", "ADDRESS", "SUBJECT", "EXPIRES"], &rows)
        },
    );
}

fn done(cx: &Context, message: &str) {
    show(cx, json!({"ok": true}), || println!("{message}"));
}

fn role_name(r: i32) -> &'static str {
    match m::Role::try_from(r) {
        Ok(m::Role::Admin) => "admin",
        Ok(m::Role::KeystoreAdmin) => "keystore-admin",
        _ => "unknown",
    }
}

fn state_name(s: i32) -> &'static str {
    match m::KeystoreState::try_from(s) {
        Ok(m::KeystoreState::Uninitialized) => "uninitialized",
        Ok(m::KeystoreState::Sealed) => "sealed",
        Ok(m::KeystoreState::Open) => "open",
        _ => "unknown",
    }
}

fn mode_name(mode: i32) -> &'static str {
    match m::CredentialMode::try_from(mode) {
        Ok(m::CredentialMode::Own) => "own",
        Ok(m::CredentialMode::PrivateCa) => "private-ca",
        _ => "not set",
    }
}

fn verification_name(v: i32) -> &'static str {
    match m::Verification::try_from(v) {
        Ok(m::Verification::ChainOnly) => "chain-only",
        _ => "full",
    }
}

fn keystore_json(s: &m::KeystoreStatus) -> Value {
    json!({"state": state_name(s.state), "secrets": s.secret_names, "effect": s.effect,
           "kdf": {"algorithm": "argon2id", "memory_kib": s.kdf_memory_kib, "iterations": s.kdf_iterations,
                   "parallelism": s.kdf_parallelism}})
}

fn keystore_line(s: &m::KeystoreStatus) -> String {
    if s.effect.is_empty() {
        state_name(s.state).into()
    } else {
        format!("{} ({})", state_name(s.state), s.effect)
    }
}

fn licence_json(l: &m::LicenceStatus) -> Value {
    json!({"valid": l.valid, "holder": l.holder, "expires_at_unix": l.expires_at_unix, "source": l.source, "detail": l.detail})
}

fn licence_line(l: &m::LicenceStatus) -> String {
    if l.valid {
        format!("valid, {} until {}", l.holder, when(l.expires_at_unix))
    } else {
        format!("none ({})", l.detail)
    }
}

fn peering_json(p: &m::PeeringStatus) -> Value {
    json!({"enabled": p.enabled, "mode": mode_name(p.mode), "verification": verification_name(p.verification),
           "cipher_spec": p.cipher_spec, "detail": p.detail, "credentials_installed": p.credentials_installed,
           "ca_stores": p.ca_stores, "private_ca": p.private_ca})
}

fn peering_line(p: &m::PeeringStatus) -> String {
    match (p.enabled, p.detail.is_empty()) {
        (true, true) => "enabled, active".into(),
        (_, false) => format!(
            "{} ({})",
            if p.enabled { "enabled" } else { "disabled" },
            p.detail
        ),
        (false, true) => "disabled".into(),
    }
}

fn partner_json(p: &m::Partner) -> Value {
    let c = p.counters.unwrap_or_default();
    json!({"name": p.name, "address": p.address, "prefixes": p.prefixes, "secure": p.secure,
           "connection_status": p.connection_status, "reason": p.reason, "traffic": p.traffic,
           "counters": {"bytes_before_compression": c.bytes_before_compression,
                        "bytes_after_compression": c.bytes_after_compression, "packets": c.packets, "errors": c.errors}})
}
