//! Two real `shunt-control` daemons on loopback reach secure peering through
//! the management API: own credentials made by the `openssl` command line
//! (encrypted PEM key on one side, PKCS#12 on the other), the private CA with
//! ConnectAppliance, the failure reasons (wrong CA, expired, name mismatch),
//! the licence rule, and a restart that leaves the keystore sealed.
//!
//! DESIGN.md section 2: rule 4 (signaling tunnel, mutual authentication),
//! rule 5 (every row of the mode matrix as ListPartners shows it: off/off,
//! on/off and off/on, on/on authenticated, on/on failed with the reason), rule 7 (sealed after restart:
//! secure peering off until opened), rule 10 (licence required, file and
//! licence server), rule 11 (both credential modes), rule 12 (monitoring
//! shows secure, `Connected Available` and the reason).

mod common;
#[path = "control_common/mod.rs"]
mod daemon;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{Alg, leaf, openssl, read, root_ca};
use daemon::{ADMIN_PASSWORD, Daemon, Flags, eventually};
use shunt_control::client::Client;
use shunt_control::licence::{LicenceSigner, LicenceTerms, SECURE_PEERING};
use shunt_proto::management as m;
use tonic::Code;

const KEYSTORE_PASSWORD: &str = "keystore-pw-123";
const WAIT: Duration = Duration::from_secs(30);

/// A licence signing key, its verifying key in hex and a valid licence file.
struct Vendor {
    signer: LicenceSigner,
    key_hex: String,
    licence: Vec<u8>,
}

impl Vendor {
    /// A licence for secure peering valid from a minute ago for `seconds`.
    fn licence(&self, seconds: u64) -> Vec<u8> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.signer
            .sign(&LicenceTerms {
                licence_id: "T-42".into(),
                customer: "Example Ltd".into(),
                features: vec![SECURE_PEERING.into()],
                not_before: now - 60,
                not_after: now + seconds,
            })
            .unwrap()
    }
}

fn vendor() -> Vendor {
    let (signer, _) = LicenceSigner::generate().unwrap();
    let key_hex = hex::encode(signer.public_key());
    let mut v = Vendor {
        signer,
        key_hex,
        licence: Vec::new(),
    };
    v.licence = v.licence(86_400);
    v
}

/// The tests of this file run one at a time: each runs two daemons, and on
/// the 2-core CI machine parallel pairs would starve each other's timers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn flags(vendor: &Vendor, name: &str, extra: &[&str]) -> Flags {
    let mut f: Vec<String> = [
        "--name",
        name,
        "--licence-verifying-key",
        &vendor.key_hex,
        "--peering-keepalive-ms",
        "200",
        "--peering-idle-timeout-ms",
        "2000",
        "--peering-backoff-max-ms",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    f.extend(extra.iter().map(|s| s.to_string()));
    Flags(f)
}

/// Keystore initialized, licence installed.
async fn prepare(d: &Daemon, vendor: &Vendor) -> Client {
    let c = d.admin().await;
    c.keystore()
        .initialize(m::InitializeKeystoreRequest {
            password: KEYSTORE_PASSWORD.into(),
        })
        .await
        .unwrap();
    let status = c
        .licensing()
        .install_licence(m::InstallLicenceRequest {
            licence: vendor.licence.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.valid, "{status:?}");
    assert_eq!(status.holder, "Example Ltd");
    assert!(status.expires_at_unix > 0);
    c
}

async fn add_partner(c: &Client, name: &str, tunnel: &str) {
    c.partners()
        .add_partner(m::AddPartnerRequest {
            name: name.into(),
            address: tunnel.into(),
            prefixes: vec!["10.9.0.0/16".into()],
        })
        .await
        .unwrap();
}

async fn enable(c: &Client) {
    c.peering()
        .set_enabled(m::SetPeeringEnabledRequest { enabled: true })
        .await
        .unwrap();
}

async fn partner(c: &Client, name: &str) -> m::Partner {
    c.partners()
        .list_partners(m::ListPartnersRequest {})
        .await
        .unwrap()
        .into_inner()
        .partners
        .into_iter()
        .find(|p| p.name == name)
        .unwrap()
}

/// Waits until `c` shows `name` secure and `Connected Available`.
async fn wait_secure(c: &Client, name: &str) {
    let ok = eventually(WAIT, async || {
        let p = partner(c, name).await;
        p.secure && p.connection_status == "Connected Available"
    })
    .await;
    assert!(
        ok,
        "{name} never became secure: {:?}",
        partner(c, name).await
    );
    let p = partner(c, name).await;
    assert_eq!(p.reason, "");
    assert_eq!(p.traffic, "compressed, encrypted");
}

/// Waits until `c` shows `name` not secure with a reason containing `want`.
async fn wait_reason(c: &Client, name: &str, want: &str) {
    let ok = eventually(WAIT, async || {
        let p = partner(c, name).await;
        !p.secure && p.reason.contains(want)
    })
    .await;
    assert!(
        ok,
        "{name}: expected a reason with {want:?}, got {:?}",
        partner(c, name).await
    );
}

fn import_pem(chain: &[u8], key: &[u8], password: &str) -> m::ImportCredentialsRequest {
    m::ImportCredentialsRequest {
        material: Some(m::import_credentials_request::Material::Pem(m::PemPair {
            certificate_chain_pem: String::from_utf8(chain.to_vec()).unwrap(),
            private_key_pem: String::from_utf8(key.to_vec()).unwrap(),
            key_password: password.into(),
        })),
    }
}

async fn import_ca(c: &Client, store: &str, pem: &[u8]) {
    c.peering()
        .import_ca_certificates(m::ImportCaCertificatesRequest {
            store: store.into(),
            certificates_pem: String::from_utf8(pem.to_vec()).unwrap(),
        })
        .await
        .unwrap();
}

/// openssl material: CA `ca` with leaves `site-a` (ECDSA, key encrypted with
/// PKCS#8/AES) and `site-b` (RSA, as a PKCS#12 file).
fn openssl_material(dir: &Path) {
    root_ca(dir, "ca");
    leaf(dir, "site-a", "site-a", "ca", Alg::Ec, 30);
    leaf(dir, "site-b", "site-b", "ca", Alg::Rsa, 30);
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "site-a.key",
            "-out",
            "site-a-enc.key",
            "-passout",
            "pass:key-pw",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-in",
            "site-b.pem",
            "-inkey",
            "site-b.key",
            "-certfile",
            "ca.pem",
            "-out",
            "site-b.p12",
            "-passout",
            "pass:p12-pw",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_openssl_credentials_secure_then_restart_seals() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    openssl_material(&certs);
    let v = vendor();
    let b_tunnel = common::free_udp().to_string();

    let a = Daemon::start(&dir.path().join("a"), &flags(&v, "site-a", &[]));
    let b_flags = flags(&v, "site-b", &["--tunnel-listen", &b_tunnel]);
    let b = Daemon::start(&dir.path().join("b"), &b_flags);
    let (ca, cb) = (prepare(&a, &v).await, prepare(&b, &v).await);

    // A: encrypted PEM key; a wrong or missing password is refused clearly.
    let chain = read(&certs, "site-a-chain.pem");
    let key = read(&certs, "site-a-enc.key");
    let e = ca
        .peering()
        .import_credentials(import_pem(&chain, &key, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("encrypted"), "{}", e.message());
    let e = ca
        .peering()
        .import_credentials(import_pem(&chain, &key, "nope"))
        .await
        .unwrap_err();
    assert!(e.message().contains("wrong password"), "{}", e.message());
    let st = ca
        .peering()
        .import_credentials(import_pem(&chain, &key, "key-pw"))
        .await
        .unwrap()
        .into_inner();
    assert!(st.credentials_installed);
    import_ca(&ca, "partners", &read(&certs, "ca.pem")).await;

    // B: PKCS#12 with its file password.
    cb.peering()
        .import_credentials(m::ImportCredentialsRequest {
            material: Some(m::import_credentials_request::Material::Pkcs12(
                m::Pkcs12Bundle {
                    der: read(&certs, "site-b.p12"),
                    file_password: "p12-pw".into(),
                },
            )),
        })
        .await
        .unwrap();
    import_ca(&cb, "partners", &read(&certs, "ca.pem")).await;
    let st = cb
        .peering()
        .set_cipher_spec(m::SetCipherSpecRequest {
            spec: "TLS13_AES_256_GCM_SHA384:TLS13_CHACHA20_POLY1305_SHA256".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.ca_stores, ["partners"]);
    let e = cb
        .peering()
        .set_cipher_spec(m::SetCipherSpecRequest {
            spec: "TLS13_AES_256_GCM_SHA384:RC4-MD5".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("RC4-MD5"), "{}", e.message());

    add_partner(&ca, "site-b", &b.tunnel).await;
    add_partner(&cb, "site-a", &a.tunnel).await;
    enable(&ca).await;
    enable(&cb).await;
    wait_secure(&ca, "site-b").await;
    wait_secure(&cb, "site-a").await;

    // The watch shows the same.
    let mut watch = ca
        .partners()
        .watch_partners(m::WatchPartnersRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert!(first.partners[0].secure, "{first:?}");

    // Restart B (SIGKILL): its keystore is sealed, nothing is secure until
    // it is opened again.
    drop(cb);
    let b_dir = b.stop();
    let b = Daemon::start(&b_dir, &b_flags);
    let cb = b.admin().await;
    let ks = cb
        .keystore()
        .status(m::KeystoreStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ks.state, m::KeystoreState::Sealed as i32);
    wait_reason(&cb, "site-a", "keystore sealed").await;
    wait_reason(&ca, "site-b", "peer not secured").await;
    assert!(
        partner(&ca, "site-b")
            .await
            .reason
            .contains("keystore sealed")
    );
    cb.keystore()
        .open(m::OpenKeystoreRequest {
            password: KEYSTORE_PASSWORD.into(),
        })
        .await
        .unwrap();
    wait_secure(&cb, "site-a").await;
    wait_secure(&ca, "site-b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_ca_connect_appliance_secure() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let v = vendor();
    let a = Daemon::start(&dir.path().join("a"), &flags(&v, "site-a", &[]));
    let b = Daemon::start(&dir.path().join("b"), &flags(&v, "site-b", &[]));
    let (ca, cb) = (prepare(&a, &v).await, prepare(&b, &v).await);

    // Without a private CA, connecting is refused with the reason.
    let connect = m::ConnectApplianceRequest {
        name: "site-b".into(),
        address: b.address.clone(),
        fingerprint: b.fingerprint.clone(),
        account: "admin".into(),
        password: ADMIN_PASSWORD.into(),
        validity_days: 30,
    };
    let e = ca
        .peering()
        .connect_appliance(connect.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("no private CA"), "{}", e.message());

    let st = ca
        .peering()
        .create_private_ca(m::CreatePrivateCaRequest {
            common_name: "Example private CA".into(),
            validity_days: 3650,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.private_ca && st.credentials_installed, "{st:?}");
    assert_eq!(st.mode, m::CredentialMode::PrivateCa as i32);

    // A wrong remote password is refused.
    let mut bad = connect.clone();
    bad.password = "wrong-password".into();
    let e = ca.peering().connect_appliance(bad).await.unwrap_err();
    assert!(e.message().contains("login refused"), "{}", e.message());

    let peer = ca
        .peering()
        .connect_appliance(connect.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(peer.name, "site-b");
    assert!(peer.certificate_subject.contains("site-b"), "{peer:?}");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(peer.expires_at_unix > now + 29 * 86_400 && peer.expires_at_unix < now + 31 * 86_400);

    // B holds its own key; A never had it.
    let b_ks = cb
        .keystore()
        .status(m::KeystoreStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        b_ks.secret_names.contains(&"peering-key".to_owned()),
        "{b_ks:?}"
    );
    let a_ks = ca
        .keystore()
        .status(m::KeystoreStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut a_names = a_ks.secret_names.clone();
    a_names.sort();
    assert_eq!(a_names, ["peering-key", "private-ca-key"]);
    let b_st = cb
        .peering()
        .get_peering(m::GetPeeringRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(b_st.credentials_installed && !b_st.private_ca, "{b_st:?}");
    assert_eq!(b_st.ca_stores, ["private-ca"]);

    add_partner(&ca, "site-b", &b.tunnel).await;
    add_partner(&cb, "site-a", &a.tunnel).await;
    enable(&ca).await;
    enable(&cb).await;
    wait_secure(&ca, "site-b").await;
    wait_secure(&cb, "site-a").await;

    // Renewal: connecting again issues a fresh certificate, replacing the record.
    let renewed = ca
        .peering()
        .connect_appliance(m::ConnectApplianceRequest {
            validity_days: 60,
            ..connect
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.expires_at_unix > peer.expires_at_unix + 29 * 86_400);
    let peers = ca
        .peering()
        .list_connected_peers(m::ListConnectedPeersRequest {})
        .await
        .unwrap()
        .into_inner()
        .peers;
    assert_eq!(peers.len(), 1);
    wait_secure(&ca, "site-b").await;

    ca.peering()
        .remove_connected_peer(m::RemoveConnectedPeerRequest {
            name: "site-b".into(),
        })
        .await
        .unwrap();
    let e = ca
        .peering()
        .remove_connected_peer(m::RemoveConnectedPeerRequest {
            name: "site-b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Resetting A's keystore destroys the CA and A's key: A has no
    // credentials any more, says so, and B sees A as not secured.
    let reply = ca
        .keystore()
        .reset(m::ResetKeystoreRequest {
            confirm: shunt_proto::RESET_CONFIRMATION.into(),
            new_password: "another-keystore-pw".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply
            .destroyed_secrets
            .contains(&"private-ca-key".to_owned())
    );
    let st = ca
        .peering()
        .get_peering(m::GetPeeringRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!st.credentials_installed && !st.private_ca, "{st:?}");
    wait_reason(&ca, "site-b", "no credentials installed").await;
    wait_reason(&cb, "site-a", "peer not secured").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_show_their_reason() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    root_ca(&certs, "ca");
    root_ca(&certs, "other-ca");
    leaf(&certs, "site-a", "site-a", "ca", Alg::Ec, 30);
    leaf(&certs, "foreign", "site-b", "other-ca", Alg::Ec, 30);
    leaf(&certs, "expired", "site-b", "ca", Alg::Ec, -1);
    leaf(&certs, "misnamed", "somewhere-else", "ca", Alg::Ec, 30);
    let v = vendor();
    let a = Daemon::start(&dir.path().join("a"), &flags(&v, "site-a", &[]));
    let b = Daemon::start(&dir.path().join("b"), &flags(&v, "site-b", &[]));
    let (ca, cb) = (prepare(&a, &v).await, prepare(&b, &v).await);
    ca.peering()
        .import_credentials(import_pem(
            &read(&certs, "site-a-chain.pem"),
            &read(&certs, "site-a.key"),
            "",
        ))
        .await
        .unwrap();
    import_ca(&ca, "partners", &read(&certs, "ca.pem")).await;
    import_ca(&cb, "partners", &read(&certs, "ca.pem")).await;
    add_partner(&ca, "site-b", &b.tunnel).await;
    add_partner(&cb, "site-a", &a.tunnel).await;

    // Mode matrix, off/off: compressed, not encrypted.
    wait_reason(&ca, "site-b", "off on both appliances").await;
    let p = partner(&ca, "site-b").await;
    assert_eq!(p.traffic, "compressed, not encrypted", "{p:?}");
    assert_eq!(p.connection_status, "Connected Available", "{p:?}");
    // on/off: neither compressed nor encrypted, "peer not secured" here and
    // "off on this appliance" on the other side.
    enable(&ca).await;
    wait_reason(&ca, "site-b", "peer not secured").await;
    wait_reason(&cb, "site-a", "off on this appliance").await;
    for p in [partner(&ca, "site-b").await, partner(&cb, "site-a").await] {
        assert_eq!(p.traffic, "not compressed, not encrypted", "{p:?}");
    }

    for (name, want) in [
        ("foreign", "wrong CA"),
        ("expired", "expired"),
        ("misnamed", "name mismatch"),
    ] {
        cb.peering()
            .import_credentials(import_pem(
                &read(&certs, &format!("{name}-chain.pem")),
                &read(&certs, &format!("{name}.key")),
                "",
            ))
            .await
            .unwrap();
        enable(&cb).await;
        wait_reason(&ca, "site-b", want).await;
        let p = partner(&ca, "site-b").await;
        assert_eq!(p.traffic, "not compressed, not encrypted", "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn licence_is_required_and_can_come_from_a_licence_server() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let v = vendor();
    let licence_file = dir.path().join("licence.json");
    std::fs::write(&licence_file, &v.licence).unwrap();
    let server = Daemon::start(
        &dir.path().join("server"),
        &flags(
            &v,
            "licensor",
            &[
                "--serve-licence",
                licence_file.to_str().unwrap(),
                "--licence-server-listen",
                "127.0.0.1:0",
            ],
        ),
    );
    let client = Daemon::start(&dir.path().join("client"), &flags(&v, "site-c", &[]));
    let c = client.admin().await;

    // No licence: enabling is refused and says why.
    let e = c
        .peering()
        .set_enabled(m::SetPeeringEnabledRequest { enabled: true })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("no licence"), "{}", e.message());
    let st = c
        .licensing()
        .get_licence(m::GetLicenceRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!st.valid && st.detail.contains("no licence"), "{st:?}");

    // A licence signed by another vendor key is refused.
    let foreign = vendor();
    let e = c
        .licensing()
        .install_licence(m::InstallLicenceRequest {
            licence: foreign.licence,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("signature"), "{}", e.message());

    // From the licence server: valid, with expiry, and enabling works.
    let st = c
        .licensing()
        .set_licence_server(m::SetLicenceServerRequest {
            address: server.licence_server.clone().unwrap(),
            fingerprint: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.valid, "{st:?}");
    assert!(st.source.starts_with("server "), "{st:?}");
    assert!(st.expires_at_unix > 0);
    c.peering()
        .set_enabled(m::SetPeeringEnabledRequest { enabled: true })
        .await
        .unwrap();

    // A daemon started without a verifying key refuses every licence file.
    let keyless = Daemon::start(&dir.path().join("keyless"), &Flags::default());
    let e = keyless
        .admin()
        .await
        .licensing()
        .install_licence(m::InstallLicenceRequest { licence: v.licence })
        .await
        .unwrap_err();
    assert!(e.message().contains("verifying key"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsing_licence_switches_secure_peering_off() {
    let _serial = SERIAL.lock().await;
    let v = vendor();
    let dir = tempfile::tempdir().unwrap();
    let a = Daemon::start(&dir.path().join("a"), &flags(&v, "site-a", &[]));
    let b = Daemon::start(&dir.path().join("b"), &flags(&v, "site-b", &[]));
    let (ca, cb) = (prepare(&a, &v).await, prepare(&b, &v).await);
    ca.peering()
        .create_private_ca(m::CreatePrivateCaRequest::default())
        .await
        .unwrap();
    ca.peering()
        .connect_appliance(m::ConnectApplianceRequest {
            name: "site-b".into(),
            address: b.address.clone(),
            fingerprint: b.fingerprint.clone(),
            account: "admin".into(),
            password: ADMIN_PASSWORD.into(),
            validity_days: 1,
        })
        .await
        .unwrap();
    add_partner(&ca, "site-b", &b.tunnel).await;
    add_partner(&cb, "site-a", &a.tunnel).await;
    enable(&ca).await;
    enable(&cb).await;
    wait_secure(&ca, "site-b").await;
    // A licence that lapses in a few seconds replaces A's: secure until then.
    let st = ca
        .licensing()
        .install_licence(m::InstallLicenceRequest {
            licence: v.licence(3),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.valid, "{st:?}");
    assert!(partner(&ca, "site-b").await.secure);
    wait_reason(&ca, "site-b", "no licence").await;
    // Then with the cause, once the peering restarted blocked.
    wait_reason(&ca, "site-b", "expired").await;
    wait_reason(&cb, "site-a", "no licence").await;
    let st = ca
        .licensing()
        .get_licence(m::GetLicenceRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!st.valid && st.detail.contains("expired"), "{st:?}");
}
