//! Parley: a self-hostable chat backend. Map of the crate (see ARCHITECTURE.md for the
//! invariants each part keeps):
//!
//! - [`domain`]: validated values, events, and `Service`, the operations behind every route;
//!   it knows the ports only.
//! - Ports, a folder each with its trait in `mod.rs` and one file per adapter:
//!   [`store`], [`sequencer`], [`bus`], [`search`], [`cache`], [`lock`], [`mailer`].
//! - [`roles`]: the background roles (writer, scheduler, notifier).
//! - [`http`]: the axum edge, OpenAPI and Swagger UI.
//! - [`startup`]: picks the adapters from [`config`] and runs the roles' shared lifecycle.
//! - [`telemetry`]: logs and metrics.
//! - [`blocking`]: capped thread pools of their own for password hashes and searches.
//! - [`grouping`]: group commit of concurrent requests to one engine (RabbitMQ envelopes,
//!   Redis number grants).
//! - [`testing`]: where the tests find this machine's engines.

pub mod blocking;
pub mod bus;
pub mod cache;
pub mod config;
pub mod domain;
pub mod grouping;
pub mod http;
pub mod lock;
pub mod mailer;
pub mod roles;
pub mod search;
pub mod sequencer;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod testing;
