//! Latency of a unary management call: an in-process `shunt-control`
//! server on loopback (TLS, token layer, real services), one client
//! connection, sequential `System.Status` calls; prints p50/p90/p99/max.
//! As a reference measured in the same run it also times `System.Health`,
//! which skips the token check and carries almost no work.
//!
//! `cargo run --release -p shunt-benches --bin mgmt_latency [CALLS]`
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use shunt_control::appliance::{Appliance, ApplianceOptions};
use shunt_control::auth::AuthSettings;
use shunt_control::client::Client;
use shunt_control::keystore::{KdfParams, Password};
use shunt_control::licensing::NoVerifyingKey;
use shunt_proto::management as m;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("CALLS")?
        .unwrap_or(5000);
    let dir = tempfile::tempdir()?;
    let options = ApplianceOptions {
        state_dir: dir.path().join("state"),
        auth: AuthSettings::default(),
        kdf: KdfParams::default(),
    };
    let appliance = Arc::new(Appliance::open(&options, Box::new(NoVerifyingKey))?);
    appliance
        .auth
        .bootstrap(&Password::new("benchmark-admin-pw"))?;
    let identity = shunt_control::tls::load_or_create_identity(&options.state_dir)?;
    let fingerprint = identity.fingerprint.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        shunt_control::server::serve(appliance, &identity, listener, async {
            let _ = stopped.await;
        })
        .await
    });

    let mut client = Client::connect(&address, &fingerprint).await?;
    client.login("admin", "benchmark-admin-pw").await?;
    let mut system = client.system();

    // Warm up the connection, allocator and caches.
    for _ in 0..200 {
        system.status(m::StatusRequest {}).await?;
        system.health(m::HealthRequest {}).await?;
    }
    let mut status = Vec::with_capacity(calls);
    let mut health = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        system.status(m::StatusRequest {}).await?;
        status.push(t.elapsed());
        let t = Instant::now();
        system.health(m::HealthRequest {}).await?;
        health.push(t.elapsed());
    }
    report("System.Status (token check + status)", &mut status);
    report("System.Health (reference, no token)", &mut health);
    let ratio = percentile(&status, 0.50).as_secs_f64() / percentile(&health, 0.50).as_secs_f64();
    println!("p50 ratio Status/Health: {ratio:.2}");

    let _ = stop.send(());
    server.await??;
    Ok(())
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index]
}

fn report(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name}: {} calls, p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        samples.len(),
        us(percentile(samples, 0.50)),
        us(percentile(samples, 0.90)),
        us(percentile(samples, 0.99)),
        us(samples[samples.len() - 1]),
    );
}
