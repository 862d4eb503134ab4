//! # Audit: the tamper-evident chain over every security event
//!
//! **Owns** the `audit_logs` table: [`actor`] is its only writer (the
//! chain's head, batching, signed checkpoints and the checkpoint file);
//! [`chain`] is the pure part (hashing, linking, verifying, signing), used
//! by the actor, by `courier audit verify` and by `GET /api/audit/verify`;
//! [`reads`] builds (and reads back) the details of the entries that
//! disclose messages, the accounting of disclosures' raw material.
//! Message events do not go through the actor: they ride in their message
//! batch's own transaction (see the store's `audit_ride`), so a message and
//! its audit entry commit together.
//!
//! **Takes** [`PendingAudit`](chain::PendingAudit) events through the
//! [`AuditHandle`](actor::AuditHandle) from REST handlers, connection and
//! channel actors, and the retention actor.
//!
//! **A crash** of the audit actor loses only events still queued (never an
//! appended one) and marks the server unready; on restart it reads the head
//! from the store and links after it.

pub mod actor;
pub mod chain;
pub mod reads;
