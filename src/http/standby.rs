//! What a standby node answers over HTTP (cluster mode, `docs/cluster.md`).
//!
//! A standby listens on the node's `bind` address while it follows the
//! active node, so clients, load balancers and operators can use it:
//! - with `cluster_relay` (the default) it relays every request and
//!   WebSocket connection to the active node (`cluster::relay::edge`), and
//!   its `GET /healthz` answers `200` with its view
//!   (`{"status":"ok","standby":{"node_id","role":"standby","copied_lsn",
//!   "active_node"}}`) while an active node is known, `503 standby` while
//!   none is;
//! - without it, `GET /healthz` answers `503` with code `standby` and the
//!   same view beside the error, so a load balancer's health check sends
//!   clients to the active node only, and anything else `503 standby`,
//!   naming the active node.
//!
//! It checks no token itself: a relayed request is checked by the active
//! node, a refused one needs none. When the node becomes active this server
//! stops (closing what it relays: the active node they went to is gone),
//! and the broker binds the same address.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};

use crate::cluster::node::StandbyView;
use crate::cluster::relay::edge::Edge;
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

async fn healthz(view: web::Data<Arc<StandbyView>>, relay: web::Data<Relaying>) -> HttpResponse {
    if relay.0 && view.active().is_some() {
        return HttpResponse::Ok().json(serde_json::json!({
            "status": "ok",
            "standby": view.to_json(),
        }));
    }
    let error = refusal(&view);
    HttpResponse::ServiceUnavailable().json(serde_json::json!({
        "error": {"code": "standby", "message": error.to_string()},
        "standby": view.to_json(),
    }))
}

async fn anything(view: web::Data<Arc<StandbyView>>) -> Result<HttpResponse, ApiError> {
    Err(refusal(&view))
}

/// Whether this standby relays (`cluster_relay`).
struct Relaying(bool);

/// Listen on `config.bind` (every address it resolves to), in the current
/// actix system: with as many workers as the broker would have when
/// relaying, one when only refusing.
pub fn start(config: &Config, view: Arc<StandbyView>) -> std::io::Result<StandbyServer> {
    let data = web::Data::new(view);
    let relay = config
        .cluster()
        .filter(|_| config.cluster_relay)
        .map(|settings| (settings, config.socket_write_timeout));
    let workers = if relay.is_some() {
        config.effective_workers()
    } else {
        1
    };
    let relaying = web::Data::new(Relaying(relay.is_some()));
    let connections = crate::limits::Limits::new(config).connections;
    let mut server = HttpServer::new(move || {
        let app = App::new()
            .app_data(data.clone())
            .app_data(relaying.clone())
            .route("/healthz", web::get().to(healthz));
        match &relay {
            // One edge per worker, its NATS connection made at its first
            // request.
            Some((settings, stall)) => app
                .app_data(web::Data::new(std::rc::Rc::new(Edge::new(
                    settings.clone(),
                    connections.clone(),
                    *stall,
                ))))
                .default_service(web::to(crate::cluster::relay::edge::relay)),
            None => app.default_service(web::to(anything)),
        }
    })
    .workers(workers)
    .max_connections(config.max_connections.div_ceil(workers).max(1))
    // Relayed frames are small: send them at once, as the broker's own
    // server does (Nagle + the client's delayed ACK cost 40 ms a frame).
    .on_connect(|conn, _| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
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
