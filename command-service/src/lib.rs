//! The command service: the composition root of the command side. It reads its configuration,
//! opens a [`command_engine::lane::Lane`] per aggregate it runs ([`app::aggregates`]), starts
//! the transactional producers and serves the command routes beside its operational ones.
//!
//! What a command goes through, and what a `2xx` means, is the engine's
//! ([`command_engine`]); what a command may do is its domain's (`orders`, `customers`).

pub mod api;
pub mod app;
pub mod config;
pub mod openapi;

pub use app::{Application, StartupError};
pub use config::Config;
