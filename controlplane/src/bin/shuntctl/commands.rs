//! The subcommands' handlers: one management call each.

use serde_json::json;
use shunt_proto::management as m;
use tokio_stream::StreamExt as _;

use crate::args::*;
use crate::output::{fields, table, when, yes_no};
use crate::render::*;
use crate::session::{self, CachedLogin};
use crate::{Context, Failure};

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
        Command::Accounts(cmd) => accounts(cx, cmd).await?,
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
        PeeringCmd::Renew {
            name,
            remote_fingerprint,
            account,
            days,
        } => {
            let peers = svc
                .list_connected_peers(m::ListConnectedPeersRequest {})
                .await?
                .into_inner()
                .peers;
            let Some(known) = peers.into_iter().find(|p| p.name == name) else {
                return Err(Failure {
                    code: 7,
                    message: format!(
                        "no connected peer named {name:?}; see `shuntctl peering peers`"
                    ),
                });
            };
            let password = cx.password(&format!("password for {account} on {}", known.address))?;
            let peer = svc
                .connect_appliance(m::ConnectApplianceRequest {
                    name,
                    address: known.address,
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
