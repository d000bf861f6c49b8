//! Stats service: counters now, and a snapshot stream at an interval.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shunt_proto::management as m;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{session, store_status};
use crate::appliance::Appliance;
use crate::partner::{Counters, PartnerConfig};
use crate::store::PARTNERS;

pub struct StatsService {
    appliance: Arc<Appliance>,
}

impl StatsService {
    pub fn new(appliance: Arc<Appliance>) -> Self {
        Self { appliance }
    }
}

/// Counters of every configured partner (as the data plane reports them)
/// and of the management API itself.
pub(crate) fn snapshot(appliance: &Appliance) -> Result<m::StatsSnapshot, Status> {
    let partners: Vec<(String, PartnerConfig)> =
        appliance.store.list(PARTNERS).map_err(store_status)?;
    let mut total = Counters::default();
    let mut per_partner = std::collections::HashMap::new();
    for (name, _) in partners {
        let c = appliance.partner_runtime(&name).counters;
        total.bytes_before_compression += c.bytes_before_compression;
        total.bytes_after_compression += c.bytes_after_compression;
        total.packets += c.packets;
        total.errors += c.errors;
        per_partner.insert(name, c.into());
    }
    Ok(m::StatsSnapshot {
        taken_at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        total: Some(total.into()),
        per_partner,
        management_calls: appliance.management_calls.load(Ordering::Relaxed),
        failed_logins: appliance.auth.failed_logins(),
    })
}

type StatsStream = Pin<Box<dyn Stream<Item = Result<m::StatsSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl m::stats_server::Stats for StatsService {
    type WatchStatsStream = StatsStream;

    async fn get_stats(
        &self,
        request: Request<m::GetStatsRequest>,
    ) -> Result<Response<m::StatsSnapshot>, Status> {
        session(&request)?;
        Ok(Response::new(snapshot(&self.appliance)?))
    }

    async fn watch_stats(
        &self,
        request: Request<m::WatchStatsRequest>,
    ) -> Result<Response<StatsStream>, Status> {
        session(&request)?;
        let interval_ms = match request.into_inner().interval_ms {
            0 => 1000,
            ms => ms.max(100),
        };
        let appliance = self.appliance.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.into()));
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = tx.closed() => return,
                }
                let snap = snapshot(&appliance);
                let failed = snap.is_err();
                if tx.send(snap).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
