//! End-to-end tests against real PostgreSQL and Redis: one binary, compiled once.

mod admin;
mod auth;
mod bad_input;
mod demo;
mod dispatch;
mod family;
mod fleet;
mod flow;
mod ledger;
mod orders;
mod permissions;
mod redis_down;
mod routing;
mod security;
mod session;
mod statistics;
mod supervision;
mod ui;
mod web;
mod webhooks;
