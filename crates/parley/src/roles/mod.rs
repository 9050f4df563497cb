//! The background roles. Each runs until the shutdown signal (or, for consumers, until the
//! bus is closed and drained), so `serve` is just "start all of them".

pub mod notifier;
pub mod scheduler;
pub mod writer;
