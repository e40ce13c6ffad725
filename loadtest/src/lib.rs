//! The parts of the load harness that the broker's own test suite drives
//! too. The workflow scenario lives here once: `loadtest --workflow` runs it
//! at full size against a running broker, and the broker's debug test
//! (`tests/transfers_concurrency.rs`) at a tenth of the size against one it
//! starts itself.

pub mod workflow;
