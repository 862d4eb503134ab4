//! # Policy: who may do what, who is asking, and what the text contains
//!
//! Pure decisions, no actors and no I/O of their own: [`authz`] decides
//! every REST and WebSocket action, [`identity`] says who a connection or
//! request belongs to (and is the port through which the server's token
//! verifier authenticates them), [`phi`] flags protected health information
//! in message text. Callers from every subsystem ask; nothing here calls
//! back, so a crash cannot happen here that is not the caller's.

pub mod authz;
pub mod identity;
pub mod phi;
