//! The `carebell` server: settings, telemetry, the application (`Application::build` and
//! `run_until_stopped`), the administration commands and the demo. `main.rs` only parses the
//! command line and calls into here.

pub mod admin;
pub mod admin_care;
pub mod admin_services;
mod app;
pub mod cli;
pub mod console_client;
pub mod demo;
pub mod devcert;
pub mod observability;
pub mod provider_client;
pub mod settings;
pub mod telemetry;

pub use app::Application;
