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
/// Requests refused by a rate limit (counter; label `limit`).
pub const RATE_LIMITED: &str = "courier_rate_limited_total";
/// WebSocket upgrades answered 429 because the client address was at a
/// connection cap (counter; label `limit`: `unauthenticated_per_ip` or
/// `connections_per_ip`).
pub const CONNECTIONS_REFUSED: &str = "courier_connections_refused_total";
/// HTTP requests whose body did not arrive within `http_body_timeout_ms`
/// (counter).
pub const HTTP_BODY_TIMEOUTS: &str = "courier_http_body_timeouts_total";
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
        "Missed pushes a follower read back from the store"
    );
}
