//! Start-up and shutdown: builds the arbiters and actors, wires the broker's
//! handles, binds the HTTP server.
//!
//! Threads: actix-web runs one HTTP worker per core (socket session actors
//! live on the worker that accepted them); conversations and agents are spread
//! round robin over one shard arbiter per core; the router and the webchat
//! channel each get an arbiter of their own, so neither waits behind chat
//! traffic on a shared thread; the supervisor hub lives on the system arbiter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use actix::dev::channel;
use actix::prelude::*;
use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

use crate::broker::{Broker, BrokerParts};
use crate::channel::webchat::WebchatChannel;
use crate::config::Config;
use crate::router::Router;
use crate::supervisor::{Attach, SupervisorHub};

/// Start an actor on `arbiter` with an address created beforehand, so actors
/// that need each other's addresses can be wired before any of them runs.
fn start_later<A>(arbiter: &ArbiterHandle) -> (Addr<A>, impl FnOnce(A) + Send)
where
    A: Actor<Context = Context<A>> + Send,
{
    let (tx, rx) = channel::channel::<A>(16);
    let addr = Addr::new(tx);
    let arbiter = arbiter.clone();
    let run = move |actor: A| {
        arbiter.spawn_fn(move || {
            Context::with_receiver(rx).run(actor);
        });
    };
    (addr, run)
}

/// A broker bound and running, with what a client needs to reach it.
pub struct Started {
    pub server: actix_web::dev::Server,
    pub addrs: Vec<SocketAddr>,
    pub admin_token: String,
    pub arbiters: Vec<Arbiter>,
}

/// Build everything inside the current actix system and bind.
pub fn start(config: Config) -> std::io::Result<Started> {
    let workers = config.effective_workers();
    let admin_token = config.admin_token.clone().unwrap_or_else(crate::ids::token);
    let mut arbiters: Vec<Arbiter> = Vec::new();
    let mut arbiter = || {
        let a = Arbiter::new();
        let h = a.handle();
        arbiters.push(a);
        h
    };
    let router_arbiter = arbiter();
    let channel_arbiter = arbiter();
    let shards: Vec<ArbiterHandle> = (0..workers).map(|_| arbiter()).collect();

    let supervisor = SupervisorHub::new().start();
    let (router, run_router) = start_later::<Router>(&router_arbiter);
    let (webchat, run_webchat) = start_later::<WebchatChannel>(&channel_arbiter);
    let broker = Broker::new(BrokerParts {
        config: config.clone(),
        admin_token: admin_token.clone(),
        router,
        webchat,
        supervisor: supervisor.clone(),
        shards,
    });
    supervisor.do_send(Attach(Arc::downgrade(&broker)));
    run_router(Router::new(broker.clone()));
    run_webchat(WebchatChannel::new(broker.clone()));

    let data = web::Data::new(broker);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .configure(crate::http::routes)
    })
    .workers(workers)
    .shutdown_timeout(5)
    .bind(&config.bind)?;
    let addrs = server.addrs();
    Ok(Started {
        server: server.run(),
        addrs,
        admin_token,
        arbiters,
    })
}

/// Run until Ctrl-C / SIGTERM. Used by `main`.
pub fn run(config: Config) -> std::io::Result<()> {
    let generated = config.admin_token.is_none();
    let system = actix::System::new();
    system.block_on(async move {
        let started = start(config)?;
        for addr in &started.addrs {
            tracing::info!("switchboard listening on http://{addr}");
        }
        if generated {
            // The one thing printed on embedded defaults: how to call the admin API.
            println!("admin token: {}", started.admin_token);
        }
        let result = started.server.await;
        for a in started.arbiters {
            a.stop();
        }
        result
    })
}

/// A broker running on its own thread, for tests and embedding.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub admin_token: String,
    handle: Option<ServerHandle>,
    system: Option<actix::System>,
    thread: Option<JoinHandle<()>>,
}

impl RunningServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stop the server and wait for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Not graceful: tests want a fast stop, and open sockets would
            // otherwise hold it for the shutdown timeout.
            drop(handle.stop(false));
        }
        if let Some(system) = self.system.take() {
            system.stop();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start a broker on a new thread; returns once it listens.
pub fn spawn(config: Config) -> std::io::Result<RunningServer> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("switchboard".into())
        .spawn(move || {
            let system = actix::System::new();
            let sys = actix::System::current();
            system.block_on(async move {
                match start(config) {
                    Ok(started) => {
                        let handle = started.server.handle();
                        let _ = tx.send(Ok((started.addrs, started.admin_token, handle, sys)));
                        let _ = started.server.await;
                        for a in started.arbiters {
                            a.stop();
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    let (addrs, admin_token, handle, system) = rx
        .recv()
        .map_err(|_| std::io::Error::other("server thread died during start-up"))??;
    let addr = addrs
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("server bound no address"))?;
    Ok(RunningServer {
        addr,
        admin_token,
        handle: Some(handle),
        system: Some(system),
        thread: Some(thread),
    })
}
