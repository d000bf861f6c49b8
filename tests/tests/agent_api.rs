//! The agent API of `shunt-dataplane` over a real unix socket (run as root): a real
//! appliance in agent mode on site A of a namespace testbed, driven by the control
//! plane's agent client. The socket is owner-only; sessions are installed, re-keyed,
//! changed and removed; bad input gets a gRPC error that says what is wrong; keys
//! expire on time with an event.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shunt_dataplane::agent;
use shunt_dataplane::io::afxdp::BindMode;
use shunt_dataplane::pipeline::{AgentSettings, Appliance, ApplianceOptions};
use shunt_dataplane::xdp::ModeRequest;
use shunt_proto::agent as pb;
use shunt_tests::testbed::Testbed;
use tonic::Code;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn encrypted(
    partner: &str,
    endpoint: &str,
    prefix: &str,
    epoch: u32,
    index: u32,
) -> pb::InstallSessionRequest {
    let key = |direction: pb::Direction, byte: u8| pb::SessionKey {
        direction: direction as i32,
        key: vec![byte.wrapping_add(epoch as u8); 32],
    };
    pb::InstallSessionRequest {
        partner: partner.into(),
        endpoint: endpoint.into(),
        epoch,
        keys: vec![
            key(pb::Direction::Transmit, 1),
            key(pb::Direction::Receive, 2),
        ],
        expires_at_unix: unix_now() + 600,
        prefixes: vec![prefix.into()],
        mode: pb::PartnerMode::CompressEncrypt as i32,
        local_index: index,
        remote_index: index + 1,
    }
}

/// Tries to connect to `socket` as user `nobody` (uid 65534), by running this test
/// binary's [`probe_connect`] under that uid; returns what the probe printed.
fn connect_as_nobody(socket: &Path) -> String {
    use std::os::unix::process::CommandExt as _;
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "probe_connect",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, socket)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run the probe as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("probe: ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "probe printed nothing: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned()
}

const PROBE_ENV: &str = "SHUNT_AGENT_PROBE_SOCKET";

/// Not a test of its own: the probe [`connect_as_nobody`] runs under another uid.
/// It prints the outcome of connecting to the socket named in the environment.
#[test]
#[ignore = "run by agent_api_installs_rekeys_and_removes_sessions_over_an_owner_only_socket"]
fn probe_connect() {
    let socket = std::env::var_os(PROBE_ENV).expect("run by the agent API test");
    match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(_) => println!("probe: connected"),
        Err(e) => println!("probe: {:?}", e.kind()),
    }
}

#[test]
fn agent_api_installs_rekeys_and_removes_sessions_over_an_owner_only_socket() {
    let tb = Testbed::new().expect("testbed (run as root)");
    let site = &tb.site_a;
    let peer_wan = tb.site_b.wan_ipv4;
    let settings = AgentSettings {
        lan_interface: site.lan_if.clone(),
        wan_interface: site.wan_if.clone(),
        ..AgentSettings::default()
    };
    let options = ApplianceOptions {
        xdp_mode: ModeRequest::Driver,
        bind: BindMode::Copy,
        history_bytes: 4 << 20,
        max_workers: None,
        compression: true,
    };
    let appliance = site
        .netns
        .enter(move || Appliance::start_agent(&settings, &options))
        .expect("enter")
        .expect("appliance starts in agent mode");
    let appliance = Arc::new(Mutex::new(appliance));

    let dir = tempfile::tempdir().unwrap();
    // Let anyone traverse the directory, so only the socket's own mode protects it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("agent.sock");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(async { agent::bind_socket(&socket) }).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "agent socket mode {mode:o}");
    assert_eq!(connect_as_nobody(&socket), "PermissionDenied");
    // A second server on the same path is refused while the first one serves.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(agent::serve(
        appliance.clone(),
        listener,
        4790,
        async move {
            let _ = stopped.await;
        },
    ));

    rt.block_on(async {
        let mut client = shunt_control::agent::connect(&socket)
            .await
            .expect("connect");
        assert!(matches!(
            agent::bind_socket(&socket),
            Err(agent::AgentError::InUse(_))
        ));
        let hello = client
            .hello(pb::AgentHello {
                control_version: "test".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(hello.sessions.is_empty());
        assert_eq!(hello.tunnel_port, 4790);
        let mut events = client
            .watch_events(pb::WatchEventsRequest {})
            .await
            .unwrap()
            .into_inner();

        let endpoint = format!("{peer_wan}:4790");
        let reply = client
            .install_session(encrypted("site-b", &endpoint, "10.2.0.0/24", 1, 100))
            .await
            .expect("install")
            .into_inner();
        assert!(reply.new_session);
        // The next epoch keeps the session.
        let reply = client
            .install_session(encrypted("site-b", &endpoint, "10.2.0.0/24", 2, 100))
            .await
            .expect("rekey")
            .into_inner();
        assert!(!reply.new_session);
        let again = client
            .install_session(encrypted("site-b", &endpoint, "10.2.0.0/24", 2, 100))
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition);
        assert!(again.message().contains("not newer"), "{}", again.message());
        let hello = client
            .hello(pb::AgentHello::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hello.partners_with_sessions, vec!["site-b".to_owned()]);
        assert_eq!(hello.sessions[0].epoch, 2);
        assert_eq!(hello.sessions[0].prefixes, vec!["10.2.0.0/24".to_owned()]);

        // Bad input: each refused with a message naming the problem; nothing changes.
        let mut short = encrypted("site-c", "192.0.2.99:4790", "10.3.0.0/24", 1, 300);
        short.keys[0].key.truncate(16);
        let e = client.install_session(short).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("32 bytes"), "{}", e.message());
        let e = client
            .install_session(encrypted(
                "site-c",
                "192.0.2.99:4790",
                "10.3.0.1/24",
                1,
                300,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("host bits"), "{}", e.message());
        let e = client
            .install_session(encrypted(
                "site-c",
                "192.0.2.99:4790",
                "10.2.0.128/25",
                1,
                300,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("overlaps"), "{}", e.message());
        let e = client
            .install_session(encrypted(
                "site-c",
                "192.0.2.99:4790",
                "10.3.0.0/24",
                1,
                100,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);
        assert!(e.message().contains("local index 100"), "{}", e.message());
        let mut no_keys = encrypted("site-c", "192.0.2.99:4790", "10.3.0.0/24", 1, 300);
        no_keys.keys.clear();
        let e = client.install_session(no_keys).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("transmit and one receive key"),
            "{}",
            e.message()
        );
        let e = client
            .install_session(pb::InstallSessionRequest {
                partner: "site-c".into(),
                endpoint: "not-an-address".into(),
                mode: pb::PartnerMode::Plain as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = client
            .remove_session(pb::RemoveSessionRequest {
                partner: "nobody".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = client
            .set_rules(pb::SetRulesRequest {
                rules: vec![pb::AgentRule {
                    name: "web".into(),
                    destination_prefix: "10.2.0.0/25".into(),
                    port_low: 80,
                    port_high: 80,
                    action: pb::Action::PassThrough as i32,
                    ..Default::default()
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        client
            .set_rules(pb::SetRulesRequest {
                rules: vec![pb::AgentRule {
                    name: "backup".into(),
                    destination_prefix: "10.2.0.128/25".into(),
                    action: pb::Action::PassThrough as i32,
                    ..Default::default()
                }],
            })
            .await
            .expect("pass-through rule");
        let hello = client
            .hello(pb::AgentHello::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hello.sessions.len(), 1, "bad requests changed nothing");

        // Mode change: a fresh compress-only session; counters are reported.
        client
            .set_partner_mode(pb::SetPartnerModeRequest {
                partner: "site-b".into(),
                mode: pb::PartnerMode::Compress as i32,
            })
            .await
            .expect("mode change");
        let erased = client
            .erase_history(pb::EraseHistoryRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(erased.partners, 1);
        let counters = client
            .get_counters(pb::GetCountersRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(counters.per_partner.contains_key("site-b"));
        client
            .remove_session(pb::RemoveSessionRequest {
                partner: "site-b".into(),
            })
            .await
            .expect("remove");
        let hello = client
            .hello(pb::AgentHello::default())
            .await
            .unwrap()
            .into_inner();
        assert!(hello.sessions.is_empty());

        // Keys that expire: the session loses them, with an event.
        let mut short_lived = encrypted("site-b", &endpoint, "10.2.0.0/24", 1, 100);
        short_lived.expires_at_unix = unix_now() + 2;
        client.install_session(short_lived).await.expect("install");
        let expired = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let event = events.message().await.unwrap().expect("event stream open");
                if let Some(pb::data_plane_event::Event::SessionExpiredEpoch(epoch)) = event.event {
                    break (event.partner, epoch);
                }
            }
        })
        .await
        .expect("expiry event within 10 s");
        assert_eq!(expired, ("site-b".to_owned(), 1));
        let hello = client
            .hello(pb::AgentHello::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hello.sessions[0].epoch, 0, "expired keys are gone");
    });
    let _ = stop.send(());
    rt.block_on(server).unwrap().unwrap();
    let appliance = Arc::try_unwrap(appliance)
        .expect("server released the appliance")
        .into_inner()
        .unwrap();
    appliance.stop().expect("stop");
}
