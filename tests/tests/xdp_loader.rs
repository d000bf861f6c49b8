//! The XDP loader on real kernel objects (root): attach modes, refusals with their
//! documented messages, and detaching on drop.

use shunt_dataplane::xdp::{AttachedMode, ModeRequest, Role, Steering, XdpError};
use shunt_tests::netns::{Netns, VethEnd, create_veth};

/// A namespace with a veth pair `va`–`vb`, both ends inside it.
fn veth_namespace() -> Netns {
    let ns = Netns::new("xdpload").unwrap();
    create_veth(
        VethEnd {
            netns: Some(&ns),
            name: "va",
            mac: None,
        },
        VethEnd {
            netns: Some(&ns),
            name: "vb",
            mac: None,
        },
        1500,
    )
    .unwrap();
    ns
}

fn xdp_state(ns: &Netns, dev: &str) -> String {
    let out = ns.run("ip", &["-d", "link", "show", "dev", dev]).unwrap();
    if out.contains("xdpgeneric") {
        "generic".into()
    } else if out.contains("prog/xdp") || out.contains(" xdp ") {
        "driver".into()
    } else {
        "none".into()
    }
}

#[test]
fn missing_interface_is_named_in_the_error() {
    let mut steering = Steering::load().unwrap();
    let err = steering
        .attach(Role::Lan, "shnt-nosuch0", ModeRequest::Auto)
        .unwrap_err();
    assert!(matches!(err, XdpError::NoSuchInterface { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("`shnt-nosuch0` does not exist") && msg.contains("ip link show"),
        "{msg}"
    );
}

#[test]
fn driver_mode_on_veth_and_detach_on_drop() {
    let ns = veth_namespace();
    let mut steering = Steering::load().unwrap();
    let modes = ns
        .enter(|| {
            [
                steering
                    .attach(Role::Lan, "va", ModeRequest::Driver)
                    .unwrap(),
                steering.attach(Role::Wan, "vb", ModeRequest::Auto).unwrap(),
            ]
        })
        .unwrap();
    assert_eq!(modes, [AttachedMode::Driver; 2]);
    assert_eq!(xdp_state(&ns, "va"), "driver");
    assert_eq!(steering.attachments().count(), 2);
    drop(steering);
    assert_eq!(xdp_state(&ns, "va"), "none");
    assert_eq!(xdp_state(&ns, "vb"), "none");
}

#[test]
fn generic_mode_when_asked() {
    let ns = veth_namespace();
    let mut steering = Steering::load().unwrap();
    let mode = ns
        .enter(|| steering.attach(Role::Lan, "va", ModeRequest::Generic))
        .unwrap()
        .unwrap();
    assert_eq!(mode, AttachedMode::Generic);
    assert_eq!(xdp_state(&ns, "va"), "generic");
    steering.detach_all();
    assert_eq!(xdp_state(&ns, "va"), "none");
}

#[test]
fn second_program_on_a_port_is_refused_as_busy() {
    let ns = veth_namespace();
    let mut steering = Steering::load().unwrap();
    let err = ns
        .enter(|| {
            steering
                .attach(Role::Lan, "va", ModeRequest::Driver)
                .unwrap();
            steering
                .attach(Role::Wan, "va", ModeRequest::Auto)
                .unwrap_err()
        })
        .unwrap();
    assert!(matches!(err, XdpError::Busy { .. }), "{err:?}");
    assert!(
        err.to_string().contains("ip link set dev va xdp off"),
        "{err}"
    );
    // The first attachment is untouched.
    assert_eq!(xdp_state(&ns, "va"), "driver");
}

#[test]
fn out_of_range_values_are_refused() {
    let mut steering = Steering::load().unwrap();
    let err = steering.set_partner_ready(100_000, true).unwrap_err();
    assert!(
        err.to_string()
            .contains("partner index 100000 is out of range"),
        "{err}"
    );
    let err = steering.register_socket("lo", 0, 0).unwrap_err();
    assert!(matches!(err, XdpError::NotAttached { .. }), "{err:?}");
    let err = steering.register_socket("lo", 1000, 0).unwrap_err();
    assert!(matches!(err, XdpError::OutOfRange { .. }), "{err:?}");
}
