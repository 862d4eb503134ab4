//! Names of every `courier_*` metric, in one place so that the recorders and
//! the documentation agree. Labels never carry user data (no ids, no names).

/// Open WebSocket connections (gauge).
pub const CONNECTIONS: &str = "courier_connections";
/// WebSocket connections accepted since start (counter).
pub const CONNECTIONS_TOTAL: &str = "courier_connections_total";
/// Frames received from clients (counter; label `encoding`).
pub const FRAMES_IN: &str = "courier_frames_in_total";
/// Frames queued to clients (counter).
pub const FRAMES_OUT: &str = "courier_frames_out_total";
/// Frames answered with `invalid_frame` (counter).
pub const INVALID_FRAMES: &str = "courier_invalid_frames_total";
/// Messages accepted and committed (counter).
pub const MESSAGES_PUBLISHED: &str = "courier_messages_published_total";
/// Message pushes handed to connections (counter).
pub const MESSAGES_DELIVERED: &str = "courier_messages_delivered_total";
/// Time from a send arriving at its channel to its ack (histogram, seconds).
pub const PUBLISH_ACK_SECONDS: &str = "courier_publish_ack_seconds";
/// Rows per persistence batch (histogram).
pub const PERSIST_BATCH_SIZE: &str = "courier_persist_batch_size";
/// Time to commit one persistence batch (histogram, seconds).
pub const PERSIST_FLUSH_SECONDS: &str = "courier_persist_flush_seconds";
/// Commits running when a batch starts, itself included (histogram): above
/// 1, full batches are committed side by side.
pub const PERSIST_COMMITS_IN_FLIGHT: &str = "courier_persist_commits_in_flight";
/// Writes waiting in the persistence queue (gauge).
pub const PERSIST_QUEUE: &str = "courier_persist_queue_depth";
/// Writes refused because the persistence queue was full (counter).
pub const PERSIST_REJECTED: &str = "courier_persist_rejected_total";
/// Failed batch commits that will be retried (counter).
pub const PERSIST_RETRIES: &str = "courier_persist_retries_total";
/// Audit entries appended to the chain (counter).
pub const AUDIT_ENTRIES: &str = "courier_audit_entries_total";
/// Entries per audit append, each one transaction (histogram).
pub const AUDIT_BATCH_SIZE: &str = "courier_audit_batch_size";
/// How long a durable audit append waited for its commit (histogram).
pub const AUDIT_APPEND_WAIT_SECONDS: &str = "courier_audit_append_wait_seconds";
/// Durable audit appends that were not committed in time: their requests
/// answered `unavailable` (counter).
pub const AUDIT_APPEND_FAILURES: &str = "courier_audit_append_failures_total";
/// Checkpoints dropped because the sink's queue was full (counter).
pub const AUDIT_CHECKPOINT_SINK_DROPPED: &str = "courier_audit_checkpoint_sink_dropped_total";
/// Checkpoints the webhook sink delivered (counter).
pub const AUDIT_CHECKPOINT_WEBHOOK_SENT: &str = "courier_audit_checkpoint_webhook_sent_total";
/// Failed deliveries to the checkpoint webhook, each retried (counter).
pub const AUDIT_CHECKPOINT_WEBHOOK_FAILURES: &str =
    "courier_audit_checkpoint_webhook_failures_total";
/// Failed authentications (counter; label `reason`).
pub const AUTH_FAILURES: &str = "courier_auth_failures_total";
/// Second-factor checks at login (counter; label `result`, one of
/// [`SECOND_FACTOR_RESULTS`]).
pub const AUTH_SECOND_FACTOR: &str = "courier_auth_second_factor_total";
/// The `result`s of [`AUTH_SECOND_FACTOR`]: a TOTP code `accepted`, a
/// recovery code `recovery_used`, no code given (`required`), a code
/// `failed` (wrong, stale or malformed), a code `replayed`.
pub const SECOND_FACTOR_RESULTS: &[&str] = &[
    "accepted",
    "recovery_used",
    "required",
    "failed",
    "replayed",
];
/// Password reset links asked for and used (counter; labels `kind`:
/// `admin` or `self`, and `result`, one of [`PASSWORD_RESET_RESULTS`]).
pub const PASSWORD_RESETS: &str = "courier_password_resets_total";
/// The `result`s of [`PASSWORD_RESETS`]: a link `sent`, `webhook_failed`,
/// `no_account` (no such account: nothing sent), `refused` (a disabled or
/// locked account, or several with the email), `throttled` (the account's
/// self-service links per 15 minutes), a reset `completed`, a token
/// refused as `invalid_token`.
pub const PASSWORD_RESET_RESULTS: &[&str] = &[
    "sent",
    "webhook_failed",
    "no_account",
    "refused",
    "throttled",
    "completed",
    "invalid_token",
];
/// Requests refused by a rate limit (counter; label `limit`).
pub const RATE_LIMITED: &str = "courier_rate_limited_total";
/// WebSocket upgrades answered 429 because the client address was at a
/// connection cap (counter; label `limit`: `unauthenticated_per_ip` or
/// `connections_per_ip`).
pub const CONNECTIONS_REFUSED: &str = "courier_connections_refused_total";
/// HTTP requests whose body did not arrive within `http_body_timeout_ms`
/// (counter).
pub const HTTP_BODY_TIMEOUTS: &str = "courier_http_body_timeouts_total";
/// Requests refused by the network allow-lists, by `surface` (`api`,
/// `admin`, `ws`) (counter).
pub const NETWORK_DENIED: &str = "courier_network_denied_total";
/// Connections closed with 4009 because their queue overflowed (counter).
pub const SLOW_CONSUMERS: &str = "courier_slow_consumer_disconnects_total";
/// Channel actors running (gauge).
pub const CHANNELS_ACTIVE: &str = "courier_channels_active";
/// Users with at least one connection (gauge).
pub const USERS_ONLINE: &str = "courier_users_online";
/// Messages whose ciphertext failed authentication on read (counter).
pub const DECRYPT_FAILURES: &str = "courier_decrypt_failures_total";
/// Messages flagged as containing PHI by the server's detectors (counter).
pub const PHI_DETECTED: &str = "courier_phi_detected_total";
/// Uploads, by `result` (`stored`, `queued`, `too_large`, `type`,
/// `infected`, `scanner_down`, `incomplete`, `storage`, `error`) (counter).
pub const FILE_UPLOADS: &str = "courier_file_uploads_total";
/// Plaintext bytes of files stored (counter).
pub const FILE_BYTES_IN: &str = "courier_file_bytes_in_total";
/// Plaintext bytes of files served (counter).
pub const FILE_BYTES_OUT: &str = "courier_file_bytes_out_total";
/// Times the virus scanner could not be reached or failed (counter).
pub const FILE_SCANNER_DOWN: &str = "courier_file_scanner_unavailable_total";
/// Files whose objects the sweeper deleted (counter).
pub const FILES_PURGED: &str = "courier_files_purged_total";
/// Resident memory of the process (gauge, bytes).
pub const PROCESS_RSS: &str = "courier_process_resident_memory_bytes";
/// CPU time of the process (gauge, seconds; monotonic).
pub const PROCESS_CPU: &str = "courier_process_cpu_seconds";
/// Open file descriptors of the process (gauge).
pub const PROCESS_FDS: &str = "courier_process_open_fds";
/// Requests forwarded to their channel's owner node, by `op` (counter).
pub const CLUSTER_FORWARDED: &str = "courier_cluster_forwarded_total";
/// Publish on the owner to receipt on another node, per push (histogram).
pub const CLUSTER_PUSH_LATENCY: &str = "courier_cluster_push_latency_seconds";
/// Channels this node owns (gauge).
pub const CLUSTER_LEASES_HELD: &str = "courier_cluster_leases_held";
/// Channel ownership changes, by `change`: acquired, renewed (after a
/// lapse), taken_over (from a dead node), lost (counter).
pub const CLUSTER_LEASE_CHANGES: &str = "courier_cluster_lease_changes_total";
/// Pushes not published: the cluster publish queue was full (counter).
pub const CLUSTER_PUSHES_DROPPED: &str = "courier_cluster_pushes_dropped_total";
/// Missed `new_message` pushes a follower read back from the store (counter).
pub const CLUSTER_GAP_FILLS: &str = "courier_cluster_gap_fills_total";
/// Database connections of the store, by `state`: `idle` (open, free) or
/// `in_use` (taken by a transaction or a read) (gauge; sampled on scrape).
pub const DB_POOL_CONNECTIONS: &str = "courier_db_pool_connections";
/// The most connections the store opens (`db_max_connections`) (gauge).
pub const DB_POOL_MAX: &str = "courier_db_pool_max_connections";
/// Waits for a database connection that gave up after
/// `db_acquire_timeout_secs`, each answered `unavailable` (counter).
pub const DB_POOL_ACQUIRE_TIMEOUTS: &str = "courier_db_pool_acquire_timeouts_total";
/// 1 while the store answers the persistence actor's probe (what `/ready`
/// reports as `database`), else 0 (gauge; sampled on scrape).
pub const STORE_UP: &str = "courier_store_up";
/// When the served TLS certificate (the leaf of `tls_cert`) expires, in
/// seconds since the Unix epoch (gauge; only when TLS is configured).
pub const TLS_CERT_EXPIRY: &str = "courier_tls_cert_expiry_timestamp_seconds";
/// Errors answered, by `surface` (`rest` or `ws`) and protocol `code`
/// (counter).
pub const ERRORS: &str = "courier_errors_total";
/// HTTP responses, by status `class` (`2xx` ... `5xx`) (counter).
pub const HTTP_RESPONSES: &str = "courier_http_responses_total";
/// `notification` pushes handed to a user's connections, by `kind`
/// (`mention`, `direct_message`, `announcement`) (counter).
pub const NOTIFICATIONS_SENT: &str = "courier_notifications_sent_total";
/// Notifications a user's preferences held back, by `reason` (`disabled`,
/// `muted`, `quiet_hours`) (counter).
pub const NOTIFICATIONS_SUPPRESSED: &str = "courier_notifications_suppressed_total";
/// Notification events dropped: the notifier's queue was full, or the
/// store failed while deciding (counter).
pub const NOTIFICATIONS_DROPPED: &str = "courier_notifications_dropped_total";

/// Registers descriptions and units with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(CONNECTIONS, "Open WebSocket connections");
    describe_counter!(CONNECTIONS_TOTAL, "WebSocket connections accepted");
    describe_counter!(FRAMES_IN, "Frames received from clients");
    describe_counter!(
        FRAMES_OUT,
        "Frames taken from connection queues for writing to clients"
    );
    describe_counter!(INVALID_FRAMES, "Frames answered with invalid_frame");
    describe_counter!(MESSAGES_PUBLISHED, "Messages committed");
    describe_counter!(MESSAGES_DELIVERED, "Message pushes handed to connections");
    describe_histogram!(PUBLISH_ACK_SECONDS, Unit::Seconds, "Send to ack latency");
    describe_histogram!(
        PERSIST_BATCH_SIZE,
        Unit::Count,
        "Rows per persistence batch"
    );
    describe_histogram!(
        PERSIST_FLUSH_SECONDS,
        Unit::Seconds,
        "Persistence batch commit time"
    );
    describe_histogram!(
        PERSIST_COMMITS_IN_FLIGHT,
        Unit::Count,
        "Persistence commits running when a batch starts, itself included"
    );
    describe_gauge!(PERSIST_QUEUE, "Writes waiting for the persistence actor");
    describe_counter!(PERSIST_REJECTED, "Writes refused: persistence queue full");
    describe_counter!(
        PERSIST_RETRIES,
        "Persistence batches retried after a failure"
    );
    describe_counter!(AUDIT_ENTRIES, "Audit entries chained");
    describe_histogram!(AUDIT_BATCH_SIZE, Unit::Count, "Entries per audit append");
    describe_histogram!(
        AUDIT_APPEND_WAIT_SECONDS,
        Unit::Seconds,
        "Wait of a durable audit append for its commit"
    );
    describe_counter!(
        AUDIT_APPEND_FAILURES,
        "Durable audit appends not committed in time (request answered unavailable)"
    );
    describe_counter!(
        AUDIT_CHECKPOINT_SINK_DROPPED,
        "Audit checkpoints dropped: the sink's queue was full"
    );
    describe_counter!(
        AUDIT_CHECKPOINT_WEBHOOK_SENT,
        "Audit checkpoints delivered to the webhook"
    );
    describe_counter!(
        AUDIT_CHECKPOINT_WEBHOOK_FAILURES,
        "Failed deliveries to the audit checkpoint webhook (retried)"
    );
    describe_counter!(AUTH_FAILURES, "Failed authentications");
    describe_counter!(
        AUTH_SECOND_FACTOR,
        "Second-factor checks at login, by result"
    );
    describe_counter!(
        PASSWORD_RESETS,
        "Password reset links asked for and used, by kind and result"
    );
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "WebSocket upgrades refused by a per-address connection cap"
    );
    describe_counter!(
        HTTP_BODY_TIMEOUTS,
        "HTTP request bodies not received within the body deadline"
    );
    describe_counter!(
        NETWORK_DENIED,
        "Requests refused by the network allow-lists, by surface"
    );
    describe_counter!(
        SLOW_CONSUMERS,
        "Connections closed as slow consumers (4009)"
    );
    describe_gauge!(CHANNELS_ACTIVE, "Channel actors running");
    describe_gauge!(USERS_ONLINE, "Users with at least one connection");
    describe_counter!(DECRYPT_FAILURES, "Ciphertexts that failed authentication");
    describe_counter!(PHI_DETECTED, "Messages flagged as PHI by the server");
    describe_counter!(FILE_UPLOADS, "File uploads, by result");
    describe_counter!(
        FILE_BYTES_IN,
        Unit::Bytes,
        "Plaintext bytes of files stored"
    );
    describe_counter!(
        FILE_BYTES_OUT,
        Unit::Bytes,
        "Plaintext bytes of files served"
    );
    describe_counter!(
        FILE_SCANNER_DOWN,
        "Times the virus scanner could not be reached or failed"
    );
    describe_counter!(
        FILES_PURGED,
        "Files whose objects were deleted by the sweeper"
    );
    describe_gauge!(PROCESS_RSS, Unit::Bytes, "Resident memory of the process");
    describe_gauge!(PROCESS_CPU, Unit::Seconds, "CPU time used by the process");
    describe_gauge!(PROCESS_FDS, "Open file descriptors");
    describe_counter!(
        CLUSTER_FORWARDED,
        "Requests forwarded to the owner node of their channel"
    );
    describe_histogram!(
        CLUSTER_PUSH_LATENCY,
        Unit::Seconds,
        "Push published by a node to its receipt on this node"
    );
    describe_gauge!(CLUSTER_LEASES_HELD, "Channels this node owns");
    describe_counter!(CLUSTER_LEASE_CHANGES, "Channel ownership changes");
    describe_counter!(
        CLUSTER_PUSHES_DROPPED,
        "Pushes dropped: the cluster publish queue was full"
    );
    describe_counter!(
        CLUSTER_GAP_FILLS,
        "Missed new_message pushes a follower read back from the store"
    );
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Database connections of the store, by state (idle, in_use)"
    );
    describe_gauge!(DB_POOL_MAX, "The most database connections the store opens");
    describe_counter!(
        DB_POOL_ACQUIRE_TIMEOUTS,
        "Waits for a database connection that timed out (answered unavailable)"
    );
    describe_gauge!(
        STORE_UP,
        "1 while the store answers the readiness probe, else 0"
    );
    describe_gauge!(
        TLS_CERT_EXPIRY,
        Unit::Seconds,
        "Expiry of the served TLS certificate, seconds since the Unix epoch"
    );
    describe_counter!(ERRORS, "Errors answered, by surface (rest, ws) and code");
    describe_counter!(HTTP_RESPONSES, "HTTP responses, by status class");
    describe_counter!(
        NOTIFICATIONS_SENT,
        "Notification pushes handed to a user's connections, by kind"
    );
    describe_counter!(
        NOTIFICATIONS_SUPPRESSED,
        "Notifications held back by the user's preferences, by reason"
    );
    describe_counter!(
        NOTIFICATIONS_DROPPED,
        "Notification events dropped (queue full or store failure)"
    );
}

/// The series exported from start, at zero, so that `/metrics` lists every
/// family before its first event and `increase()` sees that first event
/// (a counter born at 1 shows no increase). Gauges are registered with
/// `increment(0.0)`, which leaves a value already set alone; labelled
/// families are registered with the label values alerts and dashboards
/// select on.
pub fn export_from_start() {
    use metrics::{counter, gauge, histogram};
    for name in [
        CONNECTIONS_TOTAL,
        FRAMES_IN,
        FRAMES_OUT,
        INVALID_FRAMES,
        MESSAGES_PUBLISHED,
        MESSAGES_DELIVERED,
        PERSIST_REJECTED,
        PERSIST_RETRIES,
        AUDIT_ENTRIES,
        AUDIT_APPEND_FAILURES,
        AUDIT_CHECKPOINT_SINK_DROPPED,
        AUDIT_CHECKPOINT_WEBHOOK_SENT,
        AUDIT_CHECKPOINT_WEBHOOK_FAILURES,
        HTTP_BODY_TIMEOUTS,
        SLOW_CONSUMERS,
        DECRYPT_FAILURES,
        PHI_DETECTED,
        FILE_BYTES_IN,
        FILE_BYTES_OUT,
        FILE_SCANNER_DOWN,
        FILES_PURGED,
        CLUSTER_PUSHES_DROPPED,
        CLUSTER_GAP_FILLS,
        DB_POOL_ACQUIRE_TIMEOUTS,
    ] {
        counter!(name).increment(0);
    }
    for name in [
        CONNECTIONS,
        PERSIST_QUEUE,
        CHANNELS_ACTIVE,
        USERS_ONLINE,
        CLUSTER_LEASES_HELD,
        DB_POOL_MAX,
        STORE_UP,
    ] {
        gauge!(name).increment(0.0);
    }
    for state in ["idle", "in_use"] {
        gauge!(DB_POOL_CONNECTIONS, "state" => state).increment(0.0);
    }
    for name in [
        PUBLISH_ACK_SECONDS,
        PERSIST_BATCH_SIZE,
        PERSIST_FLUSH_SECONDS,
        PERSIST_COMMITS_IN_FLIGHT,
        AUDIT_BATCH_SIZE,
        AUDIT_APPEND_WAIT_SECONDS,
        CLUSTER_PUSH_LATENCY,
    ] {
        let _ = histogram!(name);
    }
    for reason in ["password", "token", "refresh", "refresh_reuse", "timeout"] {
        counter!(AUTH_FAILURES, "reason" => reason).increment(0);
    }
    for result in SECOND_FACTOR_RESULTS {
        counter!(AUTH_SECOND_FACTOR, "result" => *result).increment(0);
    }
    for kind in ["admin", "self"] {
        for result in PASSWORD_RESET_RESULTS {
            counter!(PASSWORD_RESETS, "kind" => kind, "result" => *result).increment(0);
        }
    }
    for limit in ["send_message", "rest", "auth", "register"] {
        counter!(RATE_LIMITED, "limit" => limit).increment(0);
    }
    for kind in ["mention", "direct_message", "announcement"] {
        counter!(NOTIFICATIONS_SENT, "kind" => kind).increment(0);
    }
    for reason in ["disabled", "muted", "quiet_hours"] {
        counter!(NOTIFICATIONS_SUPPRESSED, "reason" => reason).increment(0);
    }
    counter!(NOTIFICATIONS_DROPPED).increment(0);
    for limit in ["unauthenticated_per_ip", "connections_per_ip"] {
        counter!(CONNECTIONS_REFUSED, "limit" => limit).increment(0);
    }
    for result in ["stored", "queued"] {
        counter!(FILE_UPLOADS, "result" => result).increment(0);
    }
    for op in [
        "send_message",
        "edit_message",
        "delete_message",
        "mark_read",
        "reaction",
    ] {
        counter!(CLUSTER_FORWARDED, "op" => op).increment(0);
    }
    for change in ["acquired", "renewed", "taken_over", "lost"] {
        counter!(CLUSTER_LEASE_CHANGES, "change" => change).increment(0);
    }
    for surface in ["rest", "ws"] {
        for code in ["internal", "unavailable"] {
            counter!(ERRORS, "surface" => surface, "code" => code).increment(0);
        }
    }
    for class in ["2xx", "4xx", "5xx"] {
        counter!(HTTP_RESPONSES, "class" => class).increment(0);
    }
}
