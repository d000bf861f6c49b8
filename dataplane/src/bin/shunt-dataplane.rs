//! `shunt-dataplane`: loads the XDP program and runs the fast path.

fn main() -> anyhow::Result<()> {
    println!("XDP object: {} bytes", shunt_dataplane::XDP_OBJECT.len());
    Ok(())
}
