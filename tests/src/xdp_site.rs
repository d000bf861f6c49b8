//! Puts the XDP steering program on a testbed appliance's LAN and WAN ports.
#![forbid(unsafe_code)]

use shunt_dataplane::xdp::{AttachedMode, ModeRequest, Role, Steering, XdpError};

use crate::netns::NetnsError;
use crate::testbed::Appliance;

/// Errors putting the program on an appliance.
#[derive(Debug, thiserror::Error)]
pub enum XdpSiteError {
    /// Loading or attaching failed.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// Entering the appliance's namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// Loads the program and attaches its LAN and WAN entry points to `appliance`'s
/// ports (inside its namespace) in `mode`; returns it with the modes used.
pub fn attach_appliance(
    appliance: &Appliance,
    mode: ModeRequest,
) -> Result<(Steering, [AttachedMode; 2]), XdpSiteError> {
    let mut steering = Steering::load()?;
    let modes = appliance.netns.enter(|| -> Result<_, XdpError> {
        let lan = steering.attach(Role::Lan, &appliance.lan_if, mode)?;
        let wan = steering.attach(Role::Wan, &appliance.wan_if, mode)?;
        Ok([lan, wan])
    })??;
    Ok((steering, modes))
}
