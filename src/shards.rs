//! Where the per-chat actors run: on the HTTP workers' own threads.
//!
//! actix-web runs one worker per core, each an actix arbiter, and a socket's
//! session actor lives on the worker that accepted it. Conversations, agents
//! and the webchat channel's shards run on those same arbiters rather than on
//! arbiters of their own: a message between two actors of one thread is a
//! queue push, while one that crosses threads also wakes the other thread (a
//! futex and, on a busy core, a context switch), and a chat round trip made
//! several such crossings. With one worker the whole round trip stays on one
//! thread; with several, a message crosses only where its two ends really are
//! on different workers (a customer's socket and its agent's desk).
//!
//! Each worker registers its arbiter when it starts ([`Shards::register`]).
//! Actors created before any worker runs (agents from the config file,
//! simulated agents) wait in a queue and start on the first worker that
//! registers; their addresses work from the start (messages wait in the
//! mailbox). Handles nothing itself: it is a placement policy, not an actor.

use std::sync::atomic::{AtomicUsize, Ordering};

use actix::prelude::*;
use parking_lot::{Mutex, RwLock};

type Placement = Box<dyn FnOnce(&ArbiterHandle) + Send>;

/// The arbiters that host per-chat actors, filled as workers start.
#[derive(Default)]
pub struct Shards {
    arbiters: RwLock<Vec<ArbiterHandle>>,
    /// Starts waiting for the first arbiter.
    waiting: Mutex<Vec<Placement>>,
    next: AtomicUsize,
}

impl Shards {
    pub fn new() -> Self {
        Shards::default()
    }

    /// A worker's arbiter joins. Everything waiting for a home starts now,
    /// spread over the arbiters known so far.
    pub fn register(&self, arbiter: ArbiterHandle) {
        self.arbiters.write().push(arbiter);
        // Taken after the push: a `place` that saw no arbiter queued its start
        // before we could take the queue, and one that comes later sees ours.
        let waiting = std::mem::take(&mut *self.waiting.lock());
        for start in waiting {
            start(&self.pick_registered());
        }
    }

    /// How many arbiters have registered.
    pub fn len(&self) -> usize {
        self.arbiters.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pick_registered(&self) -> ArbiterHandle {
        let arbiters = self.arbiters.read();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        arbiters[n % arbiters.len()].clone()
    }

    /// Run `start` with the next arbiter, round robin; if none has registered
    /// yet, as soon as one does.
    pub fn place(&self, start: impl FnOnce(&ArbiterHandle) + Send + 'static) {
        let mut waiting = self.waiting.lock();
        if self.arbiters.read().is_empty() {
            waiting.push(Box::new(start));
            return;
        }
        drop(waiting);
        start(&self.pick_registered());
    }

    /// An actor's address before it runs, so it can be registered first; the
    /// returned function starts it on the next arbiter.
    pub fn prepare<A>(&self) -> (Addr<A>, impl FnOnce(A) + Send + '_)
    where
        A: Actor<Context = Context<A>> + Send,
    {
        let (addr, mailbox) = mailbox::<A>();
        let run = move |actor: A| {
            self.place(move |arbiter| mailbox.run_on(arbiter, actor));
        };
        (addr, run)
    }

    /// Start an actor on the next arbiter.
    pub fn start<A>(&self, actor: A) -> Addr<A>
    where
        A: Actor<Context = Context<A>> + Send,
    {
        let (addr, run) = self.prepare::<A>();
        run(actor);
        addr
    }
}

/// The receiving end of an actor's mailbox, before the actor runs.
pub struct Mailbox<A: Actor<Context = Context<A>>> {
    rx: actix::dev::channel::AddressReceiver<A>,
}

/// A mailbox and its address, for an actor to be started later, anywhere.
pub fn mailbox<A>() -> (Addr<A>, Mailbox<A>)
where
    A: Actor<Context = Context<A>>,
{
    let (tx, rx) = actix::dev::channel::channel::<A>(16);
    (Addr::new(tx), Mailbox { rx })
}

impl<A> Mailbox<A>
where
    A: Actor<Context = Context<A>> + Send,
{
    /// Start the actor on `arbiter`.
    pub fn run_on(self, arbiter: &ArbiterHandle, actor: A) {
        arbiter.spawn_fn(move || self.run_here(actor));
    }
}

impl<A> Mailbox<A>
where
    A: Actor<Context = Context<A>>,
{
    /// Start the actor on the current thread's arbiter.
    pub fn run_here(self, actor: A) {
        Context::with_receiver(self.rx).run(actor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Actor for Echo {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "std::thread::ThreadId")]
    struct WhereAreYou;

    impl Handler<WhereAreYou> for Echo {
        type Result = MessageResult<WhereAreYou>;

        fn handle(&mut self, _: WhereAreYou, _: &mut Context<Self>) -> Self::Result {
            MessageResult(std::thread::current().id())
        }
    }

    #[actix::test]
    async fn actors_placed_before_any_arbiter_start_on_the_first() {
        let shards = std::sync::Arc::new(Shards::new());
        // Addresses work before the actors run: messages wait.
        let early: Vec<Addr<Echo>> = (0..3).map(|_| shards.start(Echo)).collect();
        let pending: Vec<_> = early.iter().map(|a| a.send(WhereAreYou)).collect();
        let worker = Arbiter::new();
        shards.register(worker.handle());
        let mut threads = Vec::new();
        for p in pending {
            threads.push(p.await.expect("answered"));
        }
        assert!(threads.windows(2).all(|w| w[0] == w[1]), "one arbiter");
        assert_ne!(threads[0], std::thread::current().id());

        // Later starts are spread round robin over the arbiters.
        let second = Arbiter::new();
        shards.register(second.handle());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let a = shards.start(Echo);
            seen.insert(a.send(WhereAreYou).await.expect("answered"));
        }
        assert_eq!(seen.len(), 2, "both arbiters used");
        worker.stop();
        second.stop();
    }
}
