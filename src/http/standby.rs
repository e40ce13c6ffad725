//! What a standby node answers over HTTP (cluster mode, `docs/cluster.md`).
//!
//! A standby listens on the node's `bind` address while it follows the
//! active node, so supervisors, load balancers and operators see it:
//! - `GET /healthz`: `503` with code `standby`, and the node's view
//!   (`{"node_id","role":"standby","copied_lsn","active_node"}`) beside the
//!   error, so a load balancer's health check sends clients to the active
//!   node only, and a liveness probe can tell a live standby from a dead
//!   process (connection refused);
//! - anything else: `503 standby`, naming the active node.
//!
//! It checks no token (nothing it answers needs one), so it is no place to
//! guess the admin token. When the node becomes active this server stops,
//! and the broker binds the same address.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};

use crate::cluster::node::StandbyView;
use crate::config::Config;
use crate::error::ApiError;

/// The standby's server.
pub struct StandbyServer {
    pub addrs: Vec<SocketAddr>,
    handle: ServerHandle,
}

impl StandbyServer {
    /// Stop listening (at once: it holds no client state), so the broker
    /// can bind the address.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// The error every request gets: this node is a standby, and which node is
/// active.
fn refusal(view: &StandbyView) -> ApiError {
    ApiError::Standby(match view.active() {
        Some(active) => format!(
            "node {} is a standby; {active} is the active node: send clients there",
            view.node_id
        ),
        None => format!(
            "node {} is a standby and no active node is known yet",
            view.node_id
        ),
    })
}

async fn healthz(view: web::Data<Arc<StandbyView>>) -> HttpResponse {
    let error = refusal(&view);
    HttpResponse::ServiceUnavailable().json(serde_json::json!({
        "error": {"code": "standby", "message": error.to_string()},
        "standby": view.to_json(),
    }))
}

async fn anything(view: web::Data<Arc<StandbyView>>) -> Result<HttpResponse, ApiError> {
    Err(refusal(&view))
}

/// Listen on `config.bind` (every address it resolves to) with one worker,
/// in the current actix system.
pub fn start(config: &Config, view: Arc<StandbyView>) -> std::io::Result<StandbyServer> {
    let data = web::Data::new(view);
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/healthz", web::get().to(healthz))
            .default_service(web::to(anything))
    })
    .workers(1)
    .disable_signals();
    let mut addrs = Vec::new();
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(config.bind.as_str())
        .map_err(|e| crate::server::bind_error(&config.bind, e))?;
    for addr in resolved {
        let listener =
            crate::server::listen(addr).map_err(|e| crate::server::bind_error(&config.bind, e))?;
        addrs.push(listener.local_addr()?);
        server = server.listen(listener)?;
    }
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(StandbyServer { addrs, handle })
}
