//! End-to-end tests against real PostgreSQL and Redis: one binary, compiled once.

mod admin;
mod alarm_batch;
mod auth;
mod bad_input;
mod demo;
mod deploy;
mod dispatch;
mod family;
mod fleet;
mod flow;
mod ledger;
mod observability;
mod orders;
mod permissions;
mod proactive;
mod redis_down;
mod restore;
mod rolling;
mod routing;
mod security;
mod session;
mod statistics;
mod supervision;
mod ui;
mod web;
mod webhooks;
