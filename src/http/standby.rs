//! What a standby node answers over HTTP (cluster mode, `docs/cluster.md`).
//!
//! A standby listens on the node's `bind` address while it follows the
//! active node, so clients, load balancers and operators can use it:
//! - with `cluster_relay` (the default) it serves sockets and providers'
//!   webhooks itself (below), relays every other HTTP request to the
//!   active node (`cluster::relay::edge`), and its `GET /healthz` answers
//!   `200` with its view (`{"status":"ok","standby":{"node_id",
//!   "role":"standby","copied_lsn","active_node"}}`) while an active node
//!   is known, `503 standby` while none is;
//! - without it, `GET /healthz` answers `503` with code `standby` and the
//!   same view beside the error, so a load balancer's health check sends
//!   clients to the active node only, and anything else `503 standby`,
//!   naming the active node.
//!
//! Sockets are not relayed: a webchat customer's (`GET /v1/webchat/ws`),
//! an agent's desk (`GET /v1/agents/{id}/ws`) and a supervisor's (`GET
//! /v1/supervisor/ws`) end here (`ws/edge_session.rs`), and their commands
//! and frames cross the bus between nodes to the active node, which runs
//! the conversations, the agents and the supervisors' streams
//! (`cluster::node_bus`). An upgrade request to any other path is relayed
//! like any request, and answered as the active node answers it.
//!
//! Providers' webhooks end here too: checked as the active node checks
//! them (`http::channels::Webhook`), their events handed to it over the
//! bus; the provider gets its answer once the active node holds them.
//!
//! It checks no token itself: a relayed request is checked by the active
//! node, a socket that ends here is admitted by it over the bus, a refused
//! request needs none. When the node becomes active this server stops
//! (closing what it serves: the active node they went to is gone), and the
//! broker binds the same address.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use std::rc::Rc;

use actix_codec::Framed;
use actix_http::{h1, HttpService};
use actix_service::{map_config, IntoServiceFactory, ServiceFactory as _};
use actix_web::dev::{fn_factory, fn_service, AppConfig, ServerHandle};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use tokio::net::TcpStream;

use crate::cluster::node::StandbyView;
use crate::cluster::node_bus::{Door, EdgeError, NodeBus};
use crate::cluster::relay::edge::Edge;
use crate::config::Config;
use crate::error::ApiError;
use crate::http::body::BodyDeadline;
use crate::http::channels::{Handshake, Hook, Webhook};
use crate::http::request_line::Prefixed;
use crate::protocol::ChannelKind;
use crate::ws::edge_session::EdgeSession;

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

/// What a socket or a webhook that ends here needs.
#[derive(Clone)]
struct EdgeNode {
    /// This worker's endpoint on the bus (made on the worker's thread from
    /// the node's own, which the listener's copy holds).
    node: Arc<NodeBus>,
    view: Arc<StandbyView>,
    config: Config,
}

/// The path of a webchat customer's socket.
const WEBCHAT_WS: &str = "/v1/webchat/ws";

/// The route of an agent's desk.
const DESK_WS: &str = "/v1/agents/{id}/ws";

/// The path of a supervisor's socket.
const SUPERVISOR_WS: &str = "/v1/supervisor/ws";

/// Whether a WebSocket upgrade to `path` ends here (a customer's, a desk's
/// or a supervisor's: every socket the broker serves); any other is
/// relayed.
fn ends_here(path: &str) -> bool {
    path == WEBCHAT_WS
        || path == SUPERVISOR_WS
        || path
            .strip_prefix("/v1/agents/")
            .and_then(|rest| rest.strip_suffix("/ws"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// `GET /v1/webchat/ws?token=…` on a standby.
async fn webchat(
    req: HttpRequest,
    stream: web::Payload,
    sockets: web::Data<EdgeNode>,
) -> Result<HttpResponse, ApiError> {
    let token = crate::http::bearer(&req)?
        .ok_or_else(|| ApiError::Unauthorized("missing ?token=".into()))?;
    open(req, stream, &sockets, Door::Webchat { token }).await
}

/// `GET /v1/agents/{id}/ws?token=…` on a standby.
async fn desk(
    req: HttpRequest,
    id: web::Path<String>,
    stream: web::Payload,
    sockets: web::Data<EdgeNode>,
) -> Result<HttpResponse, ApiError> {
    let token = crate::http::bearer(&req)?
        .ok_or_else(|| ApiError::Unauthorized("missing ?token=".into()))?;
    let door = Door::Desk {
        agent: id.into_inner(),
        token,
    };
    open(req, stream, &sockets, door).await
}

/// `GET /v1/supervisor/ws` (the admin token) on a standby.
async fn supervisor(
    req: HttpRequest,
    stream: web::Payload,
    sockets: web::Data<EdgeNode>,
) -> Result<HttpResponse, ApiError> {
    let token = crate::http::bearer(&req)?.ok_or_else(crate::http::missing_credentials)?;
    open(req, stream, &sockets, Door::Supervisor { token }).await
}

/// A socket at `door`: admitted by the active node over the bus (the same
/// checks and answers as its own upgrades), then served here
/// ([`EdgeSession`]).
async fn open(
    req: HttpRequest,
    stream: web::Payload,
    sockets: &EdgeNode,
    door: Door,
) -> Result<HttpResponse, ApiError> {
    let owner = sockets
        .view
        .active()
        .ok_or_else(|| refusal(&sockets.view))?;
    let client = req.peer_addr().map(|a| a.ip());
    let endpoint = match sockets.node.admit(&owner, &door, client).await {
        Ok(endpoint) => endpoint,
        Err(EdgeError::Refused(refusal)) => return Ok(refusal.response()),
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    };
    let session = EdgeSession::new(endpoint, door, sockets.node.clone(), &sockets.config);
    actix_web_actors::ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(sockets.config.max_frame)
        .start()
        .map_err(crate::http::sockets::upgrade_failed)
}

/// A provider's webhook on a standby: checked and parsed here as the
/// active node would (the channel configured, the body's size, the
/// signature, the body), its events handed to the active node over the
/// bus, which downloads their media and takes them as its own webhooks'
/// (`http::channels::take`); the provider gets the active node's answer.
async fn webhook(
    hook: Hook,
    req: HttpRequest,
    payload: web::Payload,
    edge: web::Data<EdgeNode>,
) -> Result<HttpResponse, ApiError> {
    let webhook = Webhook::check(hook, &edge.config, &req, payload).await?;
    if webhook.events.is_empty() {
        return Ok(Webhook::answer(webhook.kind));
    }
    let owner = edge.view.active().ok_or_else(|| refusal(&edge.view))?;
    match edge
        .node
        .inbound(&owner, webhook.kind, webhook.events)
        .await
    {
        Ok(()) => Ok(Webhook::answer(webhook.kind)),
        Err(EdgeError::Refused(refusal)) => Ok(refusal.response()),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// `GET` on Meta's webhooks on a standby: the subscription check, from
/// this node's configuration.
async fn verify(
    kind: ChannelKind,
    q: web::Query<Handshake>,
    edge: web::Data<EdgeNode>,
) -> Result<HttpResponse, ApiError> {
    crate::http::channels::handshake(&edge.config, kind, &q)
}

thread_local! {
    /// This worker's endpoint on the bus, and the node's own it was made
    /// from.
    static WORKER_ENDPOINT: RefCell<Option<(Weak<NodeBus>, Arc<NodeBus>)>> =
        const { RefCell::new(None) };
}

/// The endpoint of the worker whose thread this is, made once: the
/// server's factories run once per worker and per listening address (a
/// name that resolves to two addresses would start two).
fn worker_endpoint(node: &Arc<NodeBus>) -> Arc<NodeBus> {
    WORKER_ENDPOINT.with(|made| {
        let mut made = made.borrow_mut();
        if let Some((of, endpoint)) = made.as_ref() {
            if Weak::ptr_eq(of, &Arc::downgrade(node)) {
                return endpoint.clone();
            }
        }
        let endpoint = node.on_this_worker(None);
        *made = Some((Arc::downgrade(node), endpoint.clone()));
        endpoint
    })
}

/// Answer a socket over this node's connection limits, as the relay
/// answers one, and close it.
async fn over_limits(
    framed: Framed<TcpStream, h1::Codec>,
    why: crate::limits::Refused,
    write_timeout: std::time::Duration,
) {
    use actix_web::ResponseError;
    let parts = framed.into_parts();
    let answer = crate::cluster::relay::edge::refused(why).error_response();
    let socket = crate::http::upgrade::Socket {
        _slot: None,
        write_timeout,
    };
    let _ =
        crate::http::upgrade::respond(Rc::new(parts.io), parts.codec, answer.into(), socket).await;
}

/// Listen on `config.bind` (every address it resolves to), in the current
/// actix system: with as many workers as the broker would have when
/// relaying, one when only refusing.
pub fn start(
    config: &Config,
    view: Arc<StandbyView>,
    node: Arc<NodeBus>,
) -> std::io::Result<StandbyServer> {
    let sockets = EdgeNode {
        node,
        view: view.clone(),
        config: config.clone(),
    };
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
    let Some((settings, stall)) = relay else {
        return refusing(config, data, relaying);
    };
    // Relaying: served as the broker's own server serves (`server.rs`),
    // WebSockets leaving the HTTP/1 dispatcher and its buffers at the
    // upgrade, with one edge per worker (its NATS connection made at its
    // first request) for both.
    let connections = crate::limits::Limits::new(config).connections;
    let header_timeout = config.request_header_timeout;
    let (body_timeout, body_min_rate) = (config.request_body_timeout, config.request_body_min_rate);
    let mut builder = actix_web::dev::Server::build()
        .workers(workers)
        .max_concurrent_connections(config.max_connections.div_ceil(workers).max(1))
        .disable_signals();
    let mut addrs = Vec::new();
    for listener in listeners(config)? {
        let local = listener.local_addr()?;
        addrs.push(local);
        let (data, relaying, settings, connections, sockets) = (
            data.clone(),
            relaying.clone(),
            settings.clone(),
            connections.clone(),
            sockets.clone(),
        );
        builder = builder.listen(format!("standby-{local}"), listener, move || {
            let edge = Rc::new(Edge::new(settings.clone(), connections.clone(), stall));
            // Provider webhooks end here too; every other request is
            // relayed.
            let here = web::Data::new(EdgeNode {
                node: worker_endpoint(&sockets.node),
                ..sockets.clone()
            });
            // Their bodies are held to the minimum data rate, as on the
            // broker (a relayed body is, on the active node).
            let deadline = BodyDeadline {
                timeout: body_timeout,
                min_rate: body_min_rate,
            };
            let webhooks = web::scope("/v1/channels")
                .wrap_fn(move |mut req, srv| {
                    deadline.apply(&mut req);
                    actix_service::Service::call(srv, req)
                })
                .configure(|scope| {
                    crate::http::channels::routes(
                        scope,
                        |hook| {
                            web::post()
                                .to(move |req, payload, edge| webhook(hook, req, payload, edge))
                        },
                        |kind| web::get().to(move |q, edge| verify(kind, q, edge)),
                    )
                })
                .default_service(web::to(crate::cluster::relay::edge::relay));
            let app = App::new()
                .app_data(data.clone())
                .app_data(relaying.clone())
                .app_data(web::Data::new(edge.clone()))
                .app_data(here)
                .route("/healthz", web::get().to(healthz))
                .service(webhooks)
                .default_service(web::to(crate::cluster::relay::edge::relay));
            // WebSocket upgrades: every socket ends here, served as the
            // broker serves its own (`http::upgrade`); an upgrade request
            // to another path is relayed.
            let (sockets, connections) = (sockets.clone(), connections.clone());
            let upgrades = fn_factory(move || {
                let (edge, connections) = (edge.clone(), connections.clone());
                // On this worker's thread: its own endpoint on the bus.
                let sockets = web::Data::new(EdgeNode {
                    node: worker_endpoint(&sockets.node),
                    ..sockets.clone()
                });
                async move {
                    let sockets = App::new()
                        .app_data(sockets)
                        .route(WEBCHAT_WS, web::get().to(webchat))
                        .route(DESK_WS, web::get().to(desk))
                        .route(SUPERVISOR_WS, web::get().to(supervisor))
                        .into_factory()
                        .new_service(AppConfig::default())
                        .await?;
                    let sockets = Rc::new(sockets);
                    Ok::<_, ()>(fn_service(
                        move |(req, framed): (
                            actix_http::Request,
                            Framed<TcpStream, h1::Codec>,
                        )| {
                            if ends_here(req.path()) {
                                // Counted as a relayed socket is, for as
                                // long as it is open.
                                let peer = framed.io_ref().peer_addr().ok().map(|a| a.ip());
                                match connections.admit(peer) {
                                    Ok(slot) => {
                                        let socket = crate::http::upgrade::Socket {
                                            _slot: Some(slot),
                                            write_timeout: stall,
                                        };
                                        actix_web::rt::spawn(crate::http::upgrade::serve(
                                            sockets.clone(),
                                            req,
                                            framed.into_map_io(Prefixed::plain),
                                            socket,
                                        ));
                                    }
                                    Err(why) => {
                                        actix_web::rt::spawn(over_limits(framed, why, stall));
                                    }
                                }
                            } else {
                                actix_web::rt::spawn(crate::cluster::relay::edge::serve_upgrade(
                                    edge.clone(),
                                    req,
                                    framed,
                                ));
                            }
                            std::future::ready(Ok::<_, std::convert::Infallible>(()))
                        },
                    ))
                }
            });
            HttpService::build()
                .keep_alive(actix_http::KeepAlive::default())
                .client_request_timeout(header_timeout)
                // Relayed frames are small: send them at once (Nagle and
                // the client's delayed ACK would cost 40 ms a frame).
                .tcp_nodelay(true)
                .local_addr(local)
                .upgrade(upgrades)
                .finish(map_config(app, |_| AppConfig::default()))
                .tcp()
        })?;
    }
    let server = builder.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(StandbyServer { addrs, handle })
}

/// A listening socket on every address `config.bind` resolves to.
fn listeners(config: &Config) -> std::io::Result<Vec<std::net::TcpListener>> {
    let bind_error = |e| crate::server::bind_error(&config.bind, e);
    std::net::ToSocketAddrs::to_socket_addrs(config.bind.as_str())
        .map_err(bind_error)?
        .map(|addr| crate::server::listen(addr).map_err(bind_error))
        .collect()
}

/// Without the relay: one worker that refuses everything but `/healthz`.
fn refusing(
    config: &Config,
    data: web::Data<Arc<StandbyView>>,
    relaying: web::Data<Relaying>,
) -> std::io::Result<StandbyServer> {
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(relaying.clone())
            .route("/healthz", web::get().to(healthz))
            .default_service(web::to(anything))
    })
    .workers(1)
    .disable_signals();
    let mut addrs = Vec::new();
    for listener in listeners(config)? {
        addrs.push(listener.local_addr()?);
        server = server.listen(listener)?;
    }
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(StandbyServer { addrs, handle })
}

#[cfg(test)]
mod tests {
    use super::{ends_here, worker_endpoint};
    use crate::cluster::node_bus::NodeBus;
    use crate::cluster::ClusterSettings;
    use std::sync::Arc;

    #[actix_web::test]
    async fn a_worker_makes_one_endpoint_however_many_addresses_it_listens_on() {
        // No NATS here: the endpoints try in the background, for ever.
        let node = NodeBus::start(ClusterSettings::new("nats://127.0.0.1:1", "node-1"));
        let first = worker_endpoint(&node);
        assert!(Arc::ptr_eq(&first, &worker_endpoint(&node)));
        // Another node's own (a later server of this process): another.
        let other = NodeBus::start(ClusterSettings::new("nats://127.0.0.1:1", "node-2"));
        assert!(!Arc::ptr_eq(&first, &worker_endpoint(&other)));
    }

    #[test]
    fn every_socket_ends_here_and_the_rest_is_relayed() {
        assert!(ends_here("/v1/webchat/ws"));
        assert!(ends_here("/v1/agents/alice/ws"));
        assert!(ends_here("/v1/agents/ag_01HX/ws"));
        assert!(!ends_here("/v1/agents//ws"));
        assert!(!ends_here("/v1/agents/a/b/ws"));
        assert!(!ends_here("/v1/agents/alice"));
        assert!(ends_here("/v1/supervisor/ws"));
        assert!(!ends_here("/v1/supervisor/ws/x"));
        assert!(!ends_here("/v1/webchat/ws/"));
        assert!(!ends_here("/v1/stats"));
    }
}
