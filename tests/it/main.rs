//! busbar's end-to-end tests: one test binary, one module per subsystem. Everything goes through
//! real parts: components compiled from `plugins/`, the real bus, the real `busbar` binary.

mod browser;
mod bus;
mod conformance;
mod contract;
mod cli;
mod dashboard;
mod hub;
mod hostile;
mod limits;
mod policy;
mod relay;
mod reload;
mod runtime;
mod server;
mod store;
mod tenants;
mod support;
mod tidy;
