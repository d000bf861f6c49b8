//! `shuntctl`: the command-line client of the management API.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    anyhow::bail!("shuntctl is not built yet")
}
