//! The one loop over a request's region plan: "try the next one", written
//! once for regions, replicas and origin requests.
//!
//! [`Route`] is a request's [`Plan`] (from the core's
//! [`plan`](wharf_core::region::plan)) with the deployment it indexes into.
//! [`Route::send`] walks the plan's [attempts](Plan::attempts) in order: the
//! plan's regions in turn, each region's origin replicas in rendezvous order
//! for the request's key (the owner first, so concurrent misses from every
//! location meet in its one hydration). A try fails when the origin cannot
//! be reached ([`Error::OriginUnreachable`], from sending or from reading
//! the answer); any other answer, success or refusal, ends the loop. When a
//! region's last replica fails, the region failed: it is recorded in its
//! health record, and then either the next region serves this very request
//! (global hostname) or the request fails naming the region (pinned).
//!
//! The per-try value is a [`Hop`]: region and replica. Handlers get the
//! [`Hop`] that answered, so what they serve names the region that served.

use std::time::Duration;

use wharf_core::region::Plan;
use worker::{KvStore, Method, Response};

use crate::config::{Config, Region};
use crate::ctx::Ctx;
use crate::error::Error;
use crate::{health, origin};

/// One try: a region of the plan and one of its origin replicas.
#[derive(Clone, Copy, Debug)]
pub struct Hop<'a> {
    /// Index into `Config::regions`.
    pub index: usize,
    /// The region.
    pub region: &'a Region,
    /// The replica's base URL (no trailing `/`).
    pub origin: &'a str,
}

/// A plan and what it is carried out with.
pub struct Route<'a> {
    /// The configuration the plan indexes into.
    pub config: &'a Config,
    /// Regions in order, failover or not.
    pub plan: &'a Plan,
    /// KV, where a failed region's record is published.
    pub kv: Option<&'a KvStore>,
    /// Whether a failed region is recorded (a background revalidation is
    /// not a client's request and does not move health; as before).
    pub record: bool,
    /// Now, unix milliseconds.
    pub now_ms: u64,
}

impl<'a> Route<'a> {
    /// A client request's route: failures are recorded.
    pub fn of(ctx: &'a Ctx<'_>, plan: &'a Plan) -> Self {
        Route {
            config: &ctx.config,
            plan,
            kv: ctx.kv.as_ref(),
            record: true,
            now_ms: ctx.now_ms,
        }
    }

    fn hop(&self, region: usize, replica: usize) -> Option<Hop<'a>> {
        let r = self.config.regions.get(region)?;
        Some(Hop {
            index: region,
            region: r,
            origin: r.origins.get(replica)?,
        })
    }

    /// The plan's first try for `key`: the region that serves what needs no
    /// origin request, and the replica owning `key` there.
    pub fn first(&self, key: &str) -> Result<Hop<'a>, Error> {
        let config = self.config;
        self.plan
            .attempts(key, |i| config.regions[i].origins.as_slice())
            .first()
            .and_then(|a| self.hop(a.region, a.replica))
            .ok_or_else(|| Error::Runtime("no region to serve the request".into()))
    }

    /// Sends `method <origin><path>` with `headers` along the plan and hands
    /// the first answer to `read`; moves on when the origin cannot be
    /// reached (see the module doc). Returns what `read` made of it and the
    /// [`Hop`] that answered.
    pub async fn send<T>(
        &self,
        key: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
        read: impl AsyncFn(Response, Hop<'a>) -> Result<T, Error>,
    ) -> Result<(T, Hop<'a>), Error> {
        let config = self.config;
        let attempts = self
            .plan
            .attempts(key, |i| config.regions[i].origins.as_slice());
        let mut last = None;
        for (n, a) in attempts.iter().enumerate() {
            let Some(hop) = self.hop(a.region, a.replica) else {
                continue;
            };
            let url = format!("{}{path}", hop.origin);
            let answer = match origin::send(
                &hop.region.name,
                method.clone(),
                &url,
                headers,
                timeout,
            )
            .await
            {
                Ok(r) => read(r, hop).await,
                Err(e) => Err(e),
            };
            let e = match answer {
                Ok(t) => return Ok((t, hop)),
                Err(e @ Error::OriginUnreachable { .. }) => e,
                Err(e) => return Err(e),
            };
            tracing::warn!(region = %hop.region.name, origin = hop.origin, error = %e, "origin replica unreachable");
            if a.last_in_region {
                if self.record {
                    health::record(self.kv, config, a.region, false, None, self.now_ms, false)
                        .await;
                }
                if !self.plan.failover {
                    return Err(Error::RegionUnavailable {
                        region: hop.region.name.clone(),
                        cause: e.to_string(),
                        global: config.global_host.clone(),
                    });
                }
                if n + 1 < attempts.len() {
                    tracing::warn!(region = %hop.region.name, error = %e, "failing over to the next region");
                }
            }
            last = Some(e);
        }
        Err(last.unwrap_or_else(|| Error::Runtime("no region to serve the request".into())))
    }
}
