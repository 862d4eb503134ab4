//! # Telemetry: the names of what Courier measures
//!
//! [`names`] lists every `courier_*` metric, so that the recorders in every
//! subsystem and the documentation agree. Recording itself goes through the
//! `metrics` facade; the server installs the Prometheus exporter.

pub mod names;
