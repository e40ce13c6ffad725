//! The parts of the load harness that the broker's own test suite drives
//! too. The workflow scenario lives here once: `loadtest --workflow` runs it
//! at full size against a running broker (or one it starts and kills along
//! the way), and the broker's debug tests at a fifth of the size and less:
//! against a broker in the test's process (`tests/transfers_concurrency.rs`),
//! across `kill -9`s of the real binary (`tests/durability.rs`), and through
//! a cluster whose active node is killed (`tests/cluster_workflow.rs`).

pub mod workflow;
