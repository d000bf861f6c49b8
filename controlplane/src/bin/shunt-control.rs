//! `shunt-control`: the control-plane daemon.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    anyhow::bail!("shunt-control is not built yet")
}
