//! The admin side of Pier: the admin listener's router (`/metrics`, `/healthz`, `/readyz`,
//! the console, `/api/v1` with its OpenAPI document), its guard against browsers, the
//! pull log, the dashboard history, preheating (`warm`), and the command line's client
//! of the admin API. The binary builds an [`AdminState`] and serves [`serve`].

pub mod activity;
pub mod api;
pub mod client;
pub mod client_projects;
mod console;
mod error;
pub mod guard;
pub mod history;
mod legacy;
pub mod metrics;
pub mod process;
mod router;
pub mod warm;

pub use error::AdminError;
pub use router::{AccountFiles, AdminState, Plugins, peer_of, serve};
