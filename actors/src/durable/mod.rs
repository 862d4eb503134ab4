//! # Durable: the store and everything that writes or reads it
//!
//! **Owns** the database. The [`store`] is the one interface to it, with
//! its PostgreSQL and SQLite backends; [`persistence`] is the only writer of
//! realtime traffic (group commit, one transaction per batch);
//! [`retention`] expires and purges on an interval; [`history`] turns stored
//! rows back into messages; [`store_thread`] is the thread the write loops
//! wait on with PostgreSQL; [`private_files`] keeps the data directory 0700
//! and every file in it 0600.
//!
//! **Takes** writes through the [`PersistenceHandle`](persistence::PersistenceHandle)
//! (a bounded queue) and answers each writer through the reply target it
//! gave ([`PersistReply`](persistence::PersistReply)): it names no message type of the
//! realtime side, so nothing here depends on the actors above it.
//!
//! **A crash** of the persistence actor stops acks (nothing unacked is
//! lost; clients resend by `clientMsgId`) and marks the server unready; of
//! the retention actor, skips runs until restart. An unreachable database is
//! not a crash: batches are retried with backoff and `/ready` answers 503.

pub mod history;
pub mod persistence;
pub mod private_files;
pub mod retention;
pub mod store;
pub mod store_thread;
