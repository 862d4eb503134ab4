//! Cluster mode over NATS (issue 32), proven on real processes.
//!
//! Every test starts what a cluster is made of: one fresh PostgreSQL
//! database ([`support::fresh_postgres_url`]; under `CI=true` a missing
//! PostgreSQL fails, elsewhere the test skips), one `nats-server` with
//! JetStream ([`support::nats`]; missing, the test fails), and three
//! `courier serve` processes ([`support::process`]) named `n0`, `n1`, `n2`,
//! sharing that database, that NATS, the JWT secret and the master keys,
//! each with its own data directory and port. Users register and log in
//! over REST on any node; clients are the protocol crate's `Client` over
//! real WebSockets, spread over the nodes. Publishers send with
//! `clientMsgId`s and resend what was not acked, with the same id, until it
//! is; readers join with `sinceSeq` (0 at first) and check that every
//! `new_message` is the seq after the last one they saw, reconnecting (with
//! `sinceSeq` = that last seq) when their connection ends.
//!
//! | promise | test |
//! |---|---|
//! | one order per channel: six clients on three nodes, three publishing 100 messages each at once, see the same gap-free `seq` order (the same message ids), every send is acked at once, and REST history reads back the same from every node | `one_order_across_nodes` |
//! | the owner of a busy channel SIGKILLed mid-traffic, for several seeds: the channel moves within about a lease, publishers resend unacked sends to a live node until acked; nothing acked lost, nothing stored twice, `seq` gap-free, the killed node's clients reconnect to a live node and recover with `sinceSeq` without a gap; `courier audit verify` ok | `owner_killed_mid_traffic` |
//! | NATS stopped, then started again, mid-traffic: sends answer `unavailable` (only the owner of the channel may still commit), every node's `/ready` goes 503 (`cluster` failing) then 200 without a restart, service resumes; nothing acked lost, `seq` gap-free, the same order everywhere | `nats_outage_mid_traffic` |
//! | one node's NATS link cut (through [`support::proxy`]) while the others keep NATS: its `/ready` 503 while the others stay 200, the others take over the channel it owned, no split order, nothing acked lost; healed, it serves again and its clients see every message sent meanwhile, once each, in order, also a client that moved to it during the cut with a `sinceSeq` above what it had seen | `one_node_partitioned_from_nats` |
//! | a flag made over REST on one node reaches, as `message_flagged`, the channel owner's socket on another node and not a plain member's on a third; an archive made on one node refuses sends forwarded from another with `forbidden` "this channel is archived" | `flags_and_archive_across_nodes` |
//! | a logout, then a password change, on one node closes the user's sockets on every node with 4003 within 1 s (and only that session's for a logout); presence: a member on a third node sees the user online (pushed, and in a join's `online`), and `offline` only once the user's last connection, on any node, closes; a user whose only connection was on a SIGKILLed node goes `offline` within the lease (plus 5 s) and leaves `online` | `revocation_and_presence_across_nodes` |
//!
//! The tests run one at a time (a lock): each starts five processes, and CI
//! has two cores. Leases are 2 s (`COURIER_CLUSTER_LEASE_MS`) and a
//! forwarded send waits 3 s for the owner (`COURIER_CLUSTER_FORWARD_TIMEOUT_MS`).
//! When a test fails, the end of every node's log and of NATS's is printed
//! and the data directories are kept (their path is printed).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `COURIER_CLUSTER_ROUNDS` | 2 | failover rounds (one seed each) |
//! | `COURIER_CLUSTER_SEED` | from the clock | the first seed (printed; rerun a failure with it) |
//! | `COURIER_CLUSTER_OUTAGE_MS` | 4000 | how long NATS is down |
//! | `COURIER_CLUSTER_CUT_MS` | 7000 | how long the partitioned node is cut off |
//! | `COURIER_CLUSTER_KEEP_DIRS` | unset | keep the data directories (node logs) and print their paths |
//! | `COURIER_CLUSTER_REPORT` | unset | a file to append one JSON line of figures per run |
//!
//! Figures are printed with `--nocapture`.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_actors::crypto::Keyring;
use courier_protocol::client::{Client, ClientError};
use courier_protocol::error::close;
use courier_protocol::frames::*;
use courier_protocol::{ChannelId, ErrorCode, MessageId, UserId};
use reqwest::Method;
use serde_json::{json, Value};
use support::nats::Nats;
use support::process::{metric_sum, Broker, BrokerSpec};
use support::proxy::Proxy;
use tempfile::TempDir;

/// Nodes in every cluster.
const NODES: usize = 3;
/// `COURIER_CLUSTER_LEASE_MS` of every node.
const LEASE_MS: u64 = 2000;
/// `COURIER_CLUSTER_FORWARD_TIMEOUT_MS` of every node.
const FORWARD_TIMEOUT_MS: u64 = 3000;
/// The password of every user.
const PASSWORD: &str = "correct horse battery staple";
/// A client task gives up after this long (a test fails well before).
const TASK_DEADLINE: Duration = Duration::from_secs(100);
/// A send not answered (ack or error) in this long is counted, and resent.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause after a refused send: doubling from the first to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(400));

/// One cluster test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// Six clients, two per node, in one channel; three of them (one per node)
/// publish 100 messages each at once. Everyone sees one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_across_nodes() {
    const PER_PUBLISHER: u64 = 100;
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(None).await else {
        return;
    };
    let owner = cluster.user("owner", 0).await;
    let mut people = Vec::new();
    for i in 0..6 {
        people.push(cluster.user(&format!("member{i}"), i % NODES).await);
    }
    let members: Vec<&User> = people.iter().collect();
    let channel = cluster.channel(&owner, "order", &members, 1).await;
    let forwarded_before = cluster.forwarded().await;

    let shared = Shared::new();
    let target = Arc::new(AtomicU64::new(0));
    let plans: Vec<Plan> = (0..6)
        .map(|i| {
            let publishes = i < 3;
            Plan {
                label: format!("c{i}"),
                prefix: format!("c{i}"),
                token: people[i].token.clone(),
                channel,
                urls: cluster.ws_urls.clone(),
                home: i % NODES,
                sticky: true,
                window: if publishes { 8 } else { 0 },
                limit: if publishes { PER_PUBLISHER } else { 0 },
                pace: Duration::ZERO,
                reads: true,
                target: target.clone(),
                moves: None,
            }
        })
        .collect();
    let load = Load::start(plans, &shared).await;
    shared
        .wait_done(load.len(), Duration::from_secs(90), "every send acked")
        .await;
    let histories = cluster.histories(&owner, channel).await;
    target.store(last_seq(&histories), Ordering::SeqCst);
    let logs = load.finish().await;
    let forwarded_after = cluster.forwarded().await;

    let verdict = Verdict::of(
        channel,
        &histories,
        &logs.iter().collect::<Vec<_>>(),
        &[],
        &[],
    );
    let owned = cluster.owned().await;
    report(&json!({
        "test": "order", "verdict": verdict.figures.clone(),
        "forwardedTotal": {"before": forwarded_before, "after": forwarded_after},
        "channelsOwned": owned,
    }));
    verdict.assert_sound("one order across nodes");
    assert_eq!(
        last_seq(&histories),
        3 * PER_PUBLISHER,
        "every message stored"
    );
    cluster.stop().await;
}

/// The owner of a busy channel is SIGKILLed mid-traffic, once per seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_killed_mid_traffic() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(None).await else {
        return;
    };
    let rounds = env_u64("COURIER_CLUSTER_ROUNDS", 2).max(1);
    let first_seed = env_u64("COURIER_CLUSTER_SEED", clock_seed());
    let owner = cluster.user("owner", 0).await;
    let mut people = Vec::new();
    for i in 0..6 {
        people.push(cluster.user(&format!("member{i}"), i % NODES).await);
    }
    let members: Vec<&User> = people.iter().collect();

    for round in 0..rounds {
        let seed = first_seed + round;
        let mut rng = SplitMix64::new(seed);
        println!(
            "cluster failover round={round} seed={seed} (rerun: COURIER_CLUSTER_SEED={seed} COURIER_CLUSTER_ROUNDS=1)"
        );
        let channel = cluster
            .channel(
                &owner,
                &format!("busy-{round}"),
                &members,
                round as usize % NODES,
            )
            .await;
        let via = rng.range(0, NODES as u64 - 1) as usize;
        let warm_id = format!("r{round}warm");
        let (victim, warm) = cluster.discover_owner(&owner, channel, via, &warm_id).await;
        println!("cluster failover round={round}: n{victim} owns the busy channel");

        let shared = Shared::new();
        let target = Arc::new(AtomicU64::new(0));
        // Readers 0..3 (one per node), publishers 3..6 (one per node).
        let plans: Vec<Plan> = (0..6)
            .map(|i| {
                let publishes = i >= 3;
                Plan {
                    label: format!("{}{}", if publishes { "pub" } else { "reader" }, i % NODES),
                    prefix: format!("r{round}c{i}"),
                    token: people[i].token.clone(),
                    channel,
                    urls: cluster.ws_urls.clone(),
                    home: i % NODES,
                    sticky: false,
                    window: if publishes {
                        rng.range(1, 6) as usize
                    } else {
                        0
                    },
                    limit: if publishes { u64::MAX } else { 0 },
                    pace: Duration::from_millis(rng.range(15, 40)),
                    reads: !publishes,
                    target: target.clone(),
                    moves: None,
                }
            })
            .collect();
        let load = Load::start(plans, &shared).await;
        shared.wait_acks(30, Duration::from_secs(30)).await;
        let kill_after = rng.range(200, 1500);
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        let acks_at_kill = shared.acks();
        let killed_at = Instant::now();
        cluster.kill(victim).await;

        // The channel moves: a send put on the wire after the kill is acked.
        let publishers: Vec<usize> = (3..6).collect();
        let first_fresh = shared
            .wait_fresh_ack(&publishers, killed_at, Duration::from_secs(30))
            .await;
        let every_fresh = shared
            .wait_every_fresh_ack(&publishers, killed_at, Duration::from_secs(30))
            .await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        shared.stop.store(true, Ordering::SeqCst);
        shared
            .wait_done(
                load.len(),
                Duration::from_secs(60),
                "every unacked send resent and acked",
            )
            .await;
        let histories = cluster.histories(&owner, channel).await;
        target.store(last_seq(&histories), Ordering::SeqCst);
        let logs = load.finish().await;
        let audit = cluster.audit_verify().await;

        let refs: Vec<&ClientLog> = logs.iter().collect();
        let mut verdict = Verdict::of(
            channel,
            &histories,
            &refs,
            &[(warm_id.clone(), warm)],
            &[ErrorCode::Unavailable],
        );
        // The killed node's clients went to a live node.
        for log in logs.iter().filter(|l| l.home == victim) {
            let last = log.connections.last().map(|c| c.1);
            if last == Some(victim) || log.connections.len() < 2 {
                verdict.problems.push(format!(
                    "{} (on the killed n{victim}) did not reconnect to a live node: connections {:?}",
                    log.label,
                    log.connection_nodes()
                ));
            }
        }
        let failover_ms = first_fresh.map(|at| at.duration_since(killed_at).as_millis());
        report(&json!({
            "test": "failover", "round": round, "seed": seed, "victim": victim,
            "killAfterMs": kill_after, "acksAtKill": acks_at_kill,
            "firstFreshAckAfterKillMs": failover_ms,
            "everyPublisherFreshAckAfterKillMs":
                every_fresh.map(|at| at.duration_since(killed_at).as_millis()),
            "verdict": verdict.figures.clone(), "audit": audit,
        }));
        assert!(
            first_fresh.is_some() && every_fresh.is_some(),
            "round {round}: after the owner n{victim} was killed, sends were not acked again \
             within 30 s (lease {LEASE_MS} ms)"
        );
        verdict.assert_sound(&format!("failover round {round} (seed {seed})"));
        cluster.restart(victim).await;
    }
    cluster.stop().await;
}

/// NATS stops mid-traffic, stays down a while, starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_mid_traffic() {
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(None).await else {
        return;
    };
    let outage = Duration::from_millis(env_u64("COURIER_CLUSTER_OUTAGE_MS", 4000));
    let owner = cluster.user("owner", 0).await;
    let mut people = Vec::new();
    for i in 0..6 {
        people.push(cluster.user(&format!("member{i}"), i % NODES).await);
    }
    let members: Vec<&User> = people.iter().collect();
    let channel = cluster.channel(&owner, "outage", &members, 0).await;
    let (owner_node, warm) = cluster.discover_owner(&owner, channel, 1, "warm").await;
    let pids: Vec<u32> = (0..NODES).map(|i| cluster.node(i).pid()).collect();

    let shared = Shared::new();
    let target = Arc::new(AtomicU64::new(0));
    let plans = mixed_plans(&cluster, &people, channel, "", true, &target);
    let load = Load::start(plans, &shared).await;
    shared.wait_acks(30, Duration::from_secs(30)).await;
    let probe = Probe::start(&cluster, &[0, 1, 2]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stop_began = Instant::now();
    cluster.nats.stop().await;
    let stopped_at = Instant::now();
    probe.phase("outage");
    tokio::time::sleep(outage).await;
    probe.phase("restart");
    let restart_at = Instant::now();
    cluster.nats.restart().await;
    let back_at = Instant::now();
    let ready_again = cluster
        .wait_ready(&[0, 1, 2], Duration::from_secs(30))
        .await;
    probe.phase("after");
    let ready_at = Instant::now();
    let publishers: Vec<usize> = (3..6).collect();
    let resumed = shared
        .wait_every_fresh_ack(&publishers, ready_at, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    shared.stop.store(true, Ordering::SeqCst);
    shared
        .wait_done(
            load.len(),
            Duration::from_secs(60),
            "every unacked send resent and acked",
        )
        .await;
    let histories = cluster.histories(&owner, channel).await;
    target.store(last_seq(&histories), Ordering::SeqCst);
    let logs = load.finish().await;
    let samples = probe.finish().await;
    let audit = cluster.audit_verify().await;

    let refs: Vec<&ClientLog> = logs.iter().collect();
    let mut verdict = Verdict::of(
        channel,
        &histories,
        &refs,
        &[("warm".to_owned(), warm)],
        &[ErrorCode::Unavailable],
    );
    for (i, &pid) in pids.iter().enumerate() {
        if !cluster.running(i) || cluster.node(i).pid() != pid {
            verdict.problems.push(format!(
                "n{i} did not survive the NATS outage as the same process"
            ));
        }
        if !samples.iter().any(|s| {
            s.node == i && s.phase == "outage" && s.status == Some(503) && s.cluster_failing
        }) {
            verdict.problems.push(format!(
                "n{i}: /ready never answered 503 with `cluster` failing while NATS was down: {:?}",
                statuses(&samples, i, "outage")
            ));
        }
    }
    // Only the owner may commit while NATS is down: a non-owner cannot
    // reach it, so a fresh send it put on the wire then and acked before
    // NATS came back is a second order.
    let notes = shared.notes();
    let foreign: Vec<&AckNote> = notes
        .iter()
        .filter(|n| {
            !n.duplicate
                && n.sent_at >= stopped_at
                && n.acked_at < restart_at
                && n.node != owner_node
        })
        .collect();
    if !foreign.is_empty() {
        verdict.problems.push(format!(
            "{} fresh sends acked by nodes other than the owner n{owner_node} while NATS was down: {:?}",
            foreign.len(),
            &foreign[..foreign.len().min(5)]
        ));
    }
    // Publishers on the other nodes were told `unavailable` meanwhile.
    for log in logs.iter().filter(|l| l.window > 0 && l.home != owner_node) {
        let told = log.refusals.iter().any(|r| {
            r.code == ErrorCode::Unavailable
                && r.at >= stop_began
                && r.at <= back_at + Duration::from_millis(FORWARD_TIMEOUT_MS)
        });
        if !told {
            verdict.problems.push(format!(
                "{} (on n{}, not the owner) was never answered `unavailable` while NATS was down: {:?}",
                log.label,
                log.home,
                refusal_codes(log)
            ));
        }
    }
    let during: usize = notes
        .iter()
        .filter(|n| !n.duplicate && n.sent_at >= stopped_at && n.acked_at < restart_at)
        .count();
    report(&json!({
        "test": "nats_outage", "owner": owner_node, "outageMs": outage.as_millis(),
        "natsStopMs": stopped_at.duration_since(stop_began).as_millis(),
        "natsRestartMs": back_at.duration_since(restart_at).as_millis(),
        "readyAgainMs": ready_again.map(|at| at.duration_since(back_at).as_millis()),
        "everyPublisherAckedAgainMs": resumed.map(|at| at.duration_since(ready_at).as_millis()),
        "freshAcksWhileDown": during,
        "ready": (0..NODES).map(|i| json!({
            "outage": statuses(&samples, i, "outage"), "restart": statuses(&samples, i, "restart"),
            "after": statuses(&samples, i, "after"),
        })).collect::<Vec<_>>(),
        "verdict": verdict.figures.clone(), "audit": audit,
    }));
    assert!(
        ready_again.is_some(),
        "/ready did not return to 200 on every node within 30 s of NATS's return"
    );
    assert!(
        resumed.is_some(),
        "every publisher's sends were not acked again within 30 s of /ready 200"
    );
    verdict.assert_sound("NATS outage");
    cluster.stop().await;
}

/// One node's link to NATS is cut (the others keep theirs), then healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_partitioned_from_nats() {
    const CUT: usize = 2;
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(Some(CUT)).await else {
        return;
    };
    let cut_for = Duration::from_millis(env_u64("COURIER_CLUSTER_CUT_MS", 7000));
    let owner = cluster.user("owner", 0).await;
    let mut people = Vec::new();
    for i in 0..NODES {
        people.push(cluster.user(&format!("member{i}"), i).await);
    }
    let members: Vec<&User> = people.iter().collect();

    // A channel the cut node owns (P) and one another node owns (Q).
    let mut owned_by_cut: Option<(ChannelId, String, SendResult)> = None;
    let mut owned_elsewhere: Option<(ChannelId, String, SendResult, usize)> = None;
    let mut tried = Vec::new();
    for k in 0..12 {
        if owned_by_cut.is_some() && owned_elsewhere.is_some() {
            break;
        }
        let channel = cluster
            .channel(&owner, &format!("ward-{k}"), &members, 0)
            .await;
        let via = if k % 2 == 0 { CUT } else { 0 };
        let warm_id = format!("warm{k}");
        let (by, warm) = cluster.discover_owner(&owner, channel, via, &warm_id).await;
        tried.push(by);
        if by == CUT && owned_by_cut.is_none() {
            owned_by_cut = Some((channel, warm_id, warm));
        } else if by != CUT && owned_elsewhere.is_none() {
            owned_elsewhere = Some((channel, warm_id, warm, by));
        }
    }
    let (p, p_warm_id, p_warm) =
        owned_by_cut.unwrap_or_else(|| panic!("no channel came to be owned by n{CUT}: {tried:?}"));
    let (q, q_warm_id, q_warm, q_owner) = owned_elsewhere
        .unwrap_or_else(|| panic!("every channel came to be owned by n{CUT}: {tried:?}"));
    println!("cluster partition: n{CUT} owns P {p}, n{q_owner} owns Q {q}");

    let shared = Shared::new();
    let (p_target, q_target) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // The cut node's clients stay on it: they must see everything once healed.
    let mut plans = Vec::new();
    for (channel, tag, target) in [(p, "P", &p_target), (q, "Q", &q_target)] {
        for (i, person) in people.iter().enumerate() {
            for publishes in [false, true] {
                plans.push(Plan {
                    label: format!("{tag}{}{i}", if publishes { "pub" } else { "reader" }),
                    prefix: format!("{tag}{}{i}", if publishes { "p" } else { "r" }),
                    token: person.token.clone(),
                    channel,
                    urls: cluster.ws_urls.clone(),
                    home: i,
                    sticky: i == CUT,
                    window: if publishes { 3 } else { 0 },
                    limit: if publishes { u64::MAX } else { 0 },
                    pace: Duration::from_millis(40),
                    reads: !publishes,
                    target: target.clone(),
                    moves: None,
                });
            }
        }
    }
    // Halfway through the cut, a reader of each channel leaves a node that
    // kept NATS for the cut node, which lags: it rejoins there with a
    // `sinceSeq` above what that node has seen, and must get each message
    // after it once, in order, by the time the cut is healed.
    let move_now = Arc::new(AtomicBool::new(false));
    for (channel, tag, target, from) in [(p, "P", &p_target, 0), (q, "Q", &q_target, 1)] {
        plans.push(Plan {
            label: format!("{tag}mover{from}"),
            prefix: format!("{tag}v{from}"),
            token: people[from].token.clone(),
            channel,
            urls: cluster.ws_urls.clone(),
            home: from,
            sticky: true,
            window: 0,
            limit: 0,
            pace: Duration::ZERO,
            reads: true,
            target: target.clone(),
            moves: Some((CUT, move_now.clone())),
        });
    }
    let load = Load::start(plans, &shared).await;
    shared.wait_acks(40, Duration::from_secs(30)).await;
    let probe = Probe::start(&cluster, &[0, 1, 2]);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let proxy = cluster.proxy.as_ref().expect("the proxy");
    probe.phase("cut");
    let cut_at = Instant::now();
    proxy.cut();
    tokio::time::sleep(cut_for / 2).await;
    move_now.store(true, Ordering::SeqCst);
    tokio::time::sleep(cut_for - cut_for / 2).await;
    probe.phase("healed");
    let heal_at = Instant::now();
    proxy.heal();
    let ready_again = cluster.wait_ready(&[CUT], Duration::from_secs(30)).await;
    let ready_at = Instant::now();
    let cut_publishers: Vec<usize> = load.indexes(|plan| plan.window > 0 && plan.home == CUT);
    let resumed = shared
        .wait_every_fresh_ack(&cut_publishers, ready_at, Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    shared.stop.store(true, Ordering::SeqCst);
    shared
        .wait_done(
            load.len(),
            Duration::from_secs(60),
            "every unacked send resent and acked",
        )
        .await;
    let p_histories = cluster.histories(&owner, p).await;
    let q_histories = cluster.histories(&owner, q).await;
    p_target.store(last_seq(&p_histories), Ordering::SeqCst);
    q_target.store(last_seq(&q_histories), Ordering::SeqCst);
    let logs = load.finish().await;
    let samples = probe.finish().await;
    let audit = cluster.audit_verify().await;

    let of = |c: ChannelId| logs.iter().filter(|l| l.channel == c).collect::<Vec<_>>();
    let mut p_verdict = Verdict::of(
        p,
        &p_histories,
        &of(p),
        &[(p_warm_id, p_warm)],
        &[ErrorCode::Unavailable],
    );
    let q_verdict = Verdict::of(
        q,
        &q_histories,
        &of(q),
        &[(q_warm_id, q_warm)],
        &[ErrorCode::Unavailable],
    );
    let mut problems = Vec::new();
    for log in logs.iter().filter(|l| l.label.contains("mover")) {
        if log.connections.last().map(|c| c.1) != Some(CUT) {
            problems.push(format!(
                "{} did not end on n{CUT}: connections {:?}, ends {:?}",
                log.label,
                log.connection_nodes(),
                log.ends
            ));
        }
    }
    if !samples
        .iter()
        .any(|s| s.node == CUT && s.phase == "cut" && s.status == Some(503) && s.cluster_failing)
    {
        problems.push(format!(
            "n{CUT}: /ready never answered 503 with `cluster` failing while cut off: {:?}",
            statuses(&samples, CUT, "cut")
        ));
    }
    for i in (0..NODES).filter(|&i| i != CUT) {
        if samples.iter().any(|s| s.node == i && s.status != Some(200)) {
            problems.push(format!(
                "n{i} kept NATS, yet /ready was not always 200: cut {:?}, healed {:?}",
                statuses(&samples, i, "cut"),
                statuses(&samples, i, "healed")
            ));
        }
    }
    let notes = shared.notes();
    let fresh_in_cut = |channel: ChannelId, by_cut: bool| -> Vec<AckNote> {
        notes
            .iter()
            .filter(|n| {
                n.channel == channel
                    && !n.duplicate
                    && (n.node == CUT) == by_cut
                    && n.sent_at >= cut_at
                    && n.acked_at < heal_at
            })
            .copied()
            .collect()
    };
    // The others take P over; Q goes on for them.
    let p_elsewhere = fresh_in_cut(p, false);
    if p_elsewhere.is_empty() {
        problems.push(format!(
            "P (owned by n{CUT}) was not taken over: no fresh send on it acked by another node \
             during the {} ms cut (lease {LEASE_MS} ms)",
            cut_for.as_millis()
        ));
    }
    if fresh_in_cut(q, false).is_empty() {
        problems.push(format!(
            "Q (owned by n{q_owner}) stopped for the nodes that kept NATS during the cut"
        ));
    }
    // One owner at a time: once another node commits fresh messages to a
    // channel during the cut, the cut node must not.
    for (name, channel) in [("P", p), ("Q", q)] {
        let others = fresh_in_cut(channel, false);
        let Some(first_other) = others.iter().map(|n| n.acked_at).min() else {
            continue;
        };
        let split: Vec<AckNote> = fresh_in_cut(channel, true)
            .into_iter()
            .filter(|n| n.acked_at > first_other)
            .collect();
        if !split.is_empty() {
            problems.push(format!(
                "{name}: n{CUT}, cut off, acked {} fresh sends after another node had taken the \
                 channel over (split ownership): {:?}",
                split.len(),
                &split[..split.len().min(5)]
            ));
        }
    }
    p_verdict.problems.append(&mut problems);
    report(&json!({
        "test": "partition", "cutNode": CUT, "qOwner": q_owner, "cutMs": cut_for.as_millis(),
        "readyAgainMs": ready_again.map(|at| at.duration_since(heal_at).as_millis()),
        "cutNodeAckedAgainMs": resumed.map(|at| at.duration_since(ready_at).as_millis()),
        "pTakenOverAfterMs": p_elsewhere.iter().map(|n| n.acked_at).min()
            .map(|at| at.duration_since(cut_at).as_millis()),
        "proxy": {"forwarded": proxy.forwarded(), "refusedWhileCut": proxy.refused()},
        "ready": (0..NODES).map(|i| json!({
            "cut": statuses(&samples, i, "cut"), "healed": statuses(&samples, i, "healed"),
        })).collect::<Vec<_>>(),
        "p": p_verdict.figures.clone(), "q": q_verdict.figures.clone(), "audit": audit,
    }));
    assert!(
        ready_again.is_some(),
        "n{CUT}: /ready did not return to 200 within 30 s of the heal"
    );
    assert!(
        resumed.is_some(),
        "n{CUT}'s publishers were not acked again within 30 s of its /ready 200"
    );
    p_verdict.assert_sound("partition, channel P (owned by the cut node)");
    q_verdict.assert_sound("partition, channel Q");
    cluster.stop().await;
}

/// Revocation on one node reaches the sockets on the others; presence
/// counts connections across nodes.
/// Flags reach the moderators' sockets on every node, and nobody else's;
/// an archive reaches the channel's owner, wherever it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_and_archive_across_nodes() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(None).await else {
        return;
    };
    let owner = cluster.user("fowner", 0).await;
    let member = cluster.user("fmember", 1).await;
    let room = cluster.channel(&owner, "flagged", &[&member], 0).await;
    let mut watching = cluster.client(2, &owner).await;
    watching
        .join(room, None)
        .await
        .expect("the owner joins on n2");
    let mut plain = cluster.client(1, &member).await;
    plain
        .join(room, None)
        .await
        .expect("the member joins on n1");
    let sent = plain
        .send_text(room, "Mr Smith, bed 4")
        .await
        .expect("the member sends on n1");

    let (status, body) = cluster
        .rest(
            0,
            Method::POST,
            &format!("/api/messages/{}/flag", sent.message_id),
            Some(&owner.token),
            Some(json!({"reason": "a patient's name"})),
        )
        .await;
    assert_eq!(status, 200, "flag on n0: {body}");
    let pushed = watching
        .next_push_matching(Duration::from_secs(5), |f| {
            matches!(f, ServerFrame::MessageFlagged(_))
        })
        .await;
    match pushed {
        Ok(ServerFrame::MessageFlagged(f)) => {
            assert_eq!((f.message_id, f.flagged), (sent.message_id, true));
            assert_eq!(f.flag_reason.as_deref(), Some("a patient's name"));
        }
        other => panic!("the owner on n2 did not get message_flagged: {other:?}"),
    }
    watching
        .send_text(room, "noted")
        .await
        .expect("the owner sends on n2");
    let next = plain
        .next_push_matching(Duration::from_secs(5), |f| {
            matches!(f, ServerFrame::MessageFlagged(_))
                || matches!(f, ServerFrame::NewMessage(m) if m.data.seq == 2)
        })
        .await;
    assert!(
        matches!(&next, Ok(ServerFrame::NewMessage(_))),
        "the member on n1: {next:?}"
    );
    let late = plain
        .next_push_matching(Duration::from_millis(500), |f| {
            matches!(f, ServerFrame::MessageFlagged(_))
        })
        .await;
    assert!(
        matches!(late, Err(ClientError::Timeout(_))),
        "a plain member got a flag: {late:?}"
    );

    let (status, body) = cluster
        .rest(
            1,
            Method::POST,
            &format!("/api/channels/{room}/archive"),
            Some(&owner.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "archive on n1: {body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match plain.send_text(room, "after the archive").await {
            Err(ClientError::Server(e)) if e.message == "this channel is archived" => {
                assert_eq!(e.code, ErrorCode::Forbidden);
                break;
            }
            other if Instant::now() > deadline => {
                panic!("sends on n1 still accepted 5 s after the archive: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_presence_across_nodes() {
    const WITHIN: Duration = Duration::from_secs(1);
    let _serial = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(None).await else {
        return;
    };

    // Revocation: session 1 of `revoked` has sockets on n0 and n1, session 2 on
    // every node. A logout of session 1 on n0 ends session 1's sockets only.
    let s1 = cluster.user("revoked", 0).await; // logged in on n1
    let s2 = cluster.login("revoked", 2).await;
    assert_ne!(s1.token, s2.token);
    let (a1, b1) = (cluster.client(0, &s1).await, cluster.client(1, &s1).await);
    let (a2, b2, c2) = (
        cluster.client(0, &s2).await,
        cluster.client(1, &s2).await,
        cluster.client(2, &s2).await,
    );
    let closing = [("session1@n0", a1), ("session1@n1", b1)].map(watch_close);
    let logout_at = Instant::now();
    let (status, body) = cluster
        .rest(0, Method::POST, "/api/auth/logout", Some(&s1.token), None)
        .await;
    assert_eq!(status, 204, "logout on n0: {body}");
    let mut figures = Vec::new();
    for closed in closing {
        let (label, code, at) = closed.await.expect("a close watcher");
        let code = code.unwrap_or_else(|e| panic!("{label}: {e}"));
        let took = at.duration_since(logout_at);
        figures.push(json!({"socket": label, "code": code, "ms": took.as_millis()}));
        assert_eq!(
            code,
            Some(close::SESSION_REVOKED),
            "{label}: a logout on n0 closes the session's sockets with 4003"
        );
        assert!(
            took <= WITHIN,
            "{label}: closed {took:?} after the logout on n0"
        );
    }
    // The other session is untouched, on every node.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut others = Vec::new();
    for (label, mut socket) in [
        ("session2@n0", a2),
        ("session2@n1", b2),
        ("session2@n2", c2),
    ] {
        let pong = socket.request(ClientRequest::Ping).await;
        assert!(
            matches!(pong, Ok(ServerFrame::Pong(_))),
            "{label}: another session's socket stays open after a logout: {pong:?}"
        );
        others.push((label, socket));
    }
    // The revoked token no longer authenticates anywhere.
    for (node, url) in cluster.ws_urls.iter().enumerate() {
        let refused = connect(url, &s1.token).await;
        assert!(
            refused.is_err(),
            "n{node}: a logged-out session's token still authenticates"
        );
    }
    // A password change on n2 ends every session of the user.
    let closing: Vec<_> = others.into_iter().map(watch_close).collect();
    let change_at = Instant::now();
    let (status, body) = cluster
        .rest(
            2,
            Method::POST,
            "/api/auth/change-password",
            Some(&s2.token),
            Some(
                json!({"currentPassword": PASSWORD, "newPassword": "another horse battery staple"}),
            ),
        )
        .await;
    assert_eq!(status, 204, "change-password on n2: {body}");
    for closed in closing {
        let (label, code, at) = closed.await.expect("a close watcher");
        let code = code.unwrap_or_else(|e| panic!("{label}: {e}"));
        let took = at.duration_since(change_at);
        figures.push(json!({"socket": label, "code": code, "ms": took.as_millis()}));
        assert_eq!(
            code,
            Some(close::SESSION_REVOKED),
            "{label}: a password change on n2 closes every session's sockets with 4003"
        );
        assert!(
            took <= WITHIN,
            "{label}: closed {took:?} after the password change on n2"
        );
    }

    // Presence: `pu` on n0 and n1, `pm` watching on n2.
    let pu = cluster.user("puser", 0).await;
    let pm = cluster.user("pwatcher", 1).await;
    let room = cluster.channel(&pm, "room", &[&pu], 2).await;
    let mut watcher = cluster.client(2, &pm).await;
    watcher.join(room, None).await.expect("pm joins on n2");
    let is_presence = |status: PresenceStatus| {
        let user = pu.id;
        move |f: &ServerFrame| matches!(f, ServerFrame::Presence(p) if p.user_id == user && p.status == status)
    };
    let mut on_n0 = cluster.client(0, &pu).await;
    let joined_at = Instant::now();
    on_n0.join(room, None).await.expect("pu joins on n0");
    let online = watcher
        .next_push_matching(Duration::from_secs(5), is_presence(PresenceStatus::Online))
        .await;
    assert!(
        online.is_ok(),
        "pm on n2 did not see pu (joined on n0) online: {online:?}"
    );
    let online_ms = joined_at.elapsed().as_millis();
    let mut on_n1 = cluster.client(1, &pu).await;
    on_n1.join(room, None).await.expect("pu joins on n1");
    // A fresh join on n2 lists pu among the channel's online users.
    let mut second = cluster.client(2, &pm).await;
    let view = second.join(room, None).await.expect("pm joins again on n2");
    let _ = second.close().await;
    // pu's connection on n0 closes; the one on n1 remains: still online.
    on_n0.close().await.expect("close pu on n0");
    let early = watcher
        .next_push_matching(Duration::from_secs(2), is_presence(PresenceStatus::Offline))
        .await;
    assert!(
        matches!(early, Err(ClientError::Timeout(_))),
        "pm saw pu offline while pu was still connected on n1: {early:?}"
    );
    let last_closed_at = Instant::now();
    on_n1.close().await.expect("close pu on n1");
    let offline = watcher
        .next_push_matching(Duration::from_secs(5), is_presence(PresenceStatus::Offline))
        .await;
    let offline_ms = last_closed_at.elapsed().as_millis();
    assert!(
        offline.is_ok(),
        "pm did not see pu offline after pu's last connection (n1) closed: {offline:?}"
    );
    // A node dies (SIGKILL) holding a user's only connection: once its
    // lease is gone, the others say `offline`.
    let pk = cluster.user("pkilled", 0).await;
    let (status, body) = cluster
        .rest(
            0,
            Method::POST,
            &format!("/api/channels/{room}/members"),
            Some(&pm.token),
            Some(json!({"userId": pk.id.to_string()})),
        )
        .await;
    assert_eq!(status, 201, "add pkilled to the room: {body}");
    let mut doomed = cluster.client(1, &pk).await;
    doomed.join(room, None).await.expect("pkilled joins on n1");
    let pk_is = |status: PresenceStatus| {
        let user = pk.id;
        move |f: &ServerFrame| matches!(f, ServerFrame::Presence(p) if p.user_id == user && p.status == status)
    };
    let seen_online = watcher
        .next_push_matching(Duration::from_secs(5), pk_is(PresenceStatus::Online))
        .await;
    assert!(
        seen_online.is_ok(),
        "pm on n2 did not see pkilled (joined on n1) online: {seen_online:?}"
    );
    let killed_at = Instant::now();
    cluster.kill(1).await;
    drop(doomed);
    let within = Duration::from_millis(LEASE_MS) + Duration::from_secs(5);
    let gone = watcher
        .next_push_matching(within, pk_is(PresenceStatus::Offline))
        .await;
    let gone_ms = killed_at.elapsed().as_millis();
    // ... and no longer list them online.
    let mut late = cluster.client(0, &pm).await;
    let after_kill = late.join(room, None).await.expect("pm joins on n0");
    let _ = late.close().await;
    report(&json!({
        "test": "revocation_presence", "closes": figures, "onlineMs": online_ms,
        "offlineMs": offline_ms, "onlineListedOnN2": view.online.contains(&pu.id),
        "offlineAfterSigkillMs": gone.is_ok().then_some(gone_ms),
        "listedOnlineAfterSigkill": after_kill.online.contains(&pk.id),
    }));
    assert!(
        gone.is_ok(),
        "pm on n2 did not see pkilled offline within {within:?} of the SIGKILL of n1, which \
         held pkilled's only connection: {gone:?}"
    );
    assert!(
        !after_kill.online.contains(&pk.id),
        "{:?} after the SIGKILL of n1 (pkilled's only connection), a join on n0 still lists \
         pkilled ({}) online: {:?}",
        killed_at.elapsed(),
        pk.id,
        after_kill.online
    );
    // Checked last, so that a failure here does not hide the ones above.
    assert!(
        view.online.contains(&pu.id),
        "a join on n2 does not list pu (connected on n0 and n1) online: {:?} (pu is {}, \
         pm is {})",
        view.online,
        pu.id,
        pm.id
    );
    let _ = watcher.close().await;
    cluster.stop().await;
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// A user, logged in (one session).
#[derive(Clone, Debug)]
struct User {
    id: UserId,
    token: String,
}

/// One PostgreSQL database, one NATS, three nodes.
struct Cluster {
    db_url: String,
    nats: Nats,
    /// Between the node `proxied` names and NATS, when it is partitioned.
    proxy: Option<Proxy>,
    specs: Vec<BrokerSpec>,
    nodes: Vec<Option<Broker>>,
    /// Each node's WebSocket URL (a killed node's stays: connecting fails).
    ws_urls: Vec<String>,
    http: reqwest::Client,
    dir: Option<TempDir>,
    keep: bool,
}

impl Cluster {
    /// A fresh database, NATS and three nodes; the node `proxied` names
    /// reaches NATS through a [`Proxy`]. `None` when PostgreSQL is
    /// unreachable outside CI.
    async fn start(proxied: Option<usize>) -> Option<Cluster> {
        let db_url = support::fresh_postgres_url().await?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let nats = Nats::start().await;
        let proxy = match proxied {
            Some(_) => Some(Proxy::start(nats.addr).await),
            None => None,
        };
        let keys = Keyring::generate().to_spec();
        let specs: Vec<BrokerSpec> = (0..NODES)
            .map(|i| {
                let nats_url = match (&proxy, proxied) {
                    (Some(proxy), Some(p)) if p == i => proxy.nats_url(),
                    _ => nats.url(),
                };
                BrokerSpec::new(&dir.path().join(format!("n{i}")), &db_url)
                    .cluster_node(&format!("n{i}"), &nats_url)
                    .master_keys(&keys)
                    .with("COURIER_CLUSTER_LEASE_MS", LEASE_MS)
                    .with("COURIER_CLUSTER_FORWARD_TIMEOUT_MS", FORWARD_TIMEOUT_MS)
                    .with("COURIER_REGISTER_PER_HOUR", 100_000_000)
            })
            .collect();
        let mut cluster = Cluster {
            db_url,
            nats,
            proxy,
            specs,
            nodes: (0..NODES).map(|_| None).collect(),
            ws_urls: vec![String::new(); NODES],
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
            dir: Some(dir),
            keep: std::env::var_os("COURIER_CLUSTER_KEEP_DIRS").is_some(),
        };
        // One after the other: the first runs the migrations.
        for i in 0..NODES {
            cluster.restart(i).await;
        }
        Some(cluster)
    }

    fn node(&self, i: usize) -> &Broker {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("n{i} is not running"))
    }

    fn live(&self) -> Vec<usize> {
        (0..NODES).filter(|&i| self.nodes[i].is_some()).collect()
    }

    fn running(&mut self, i: usize) -> bool {
        self.nodes[i].as_mut().is_some_and(|b| b.is_running())
    }

    /// SIGKILL (the node's log must show no panic).
    async fn kill(&mut self, i: usize) {
        let broker = self.nodes[i].take().expect("a running node");
        broker.kill().await;
    }

    /// Starts (again) node `i`, same data directory and node id, new port.
    async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "n{i} is running");
        let broker = self.specs[i].start().await;
        self.ws_urls[i] = broker.ws_url();
        self.nodes[i] = Some(broker);
    }

    /// Waits until every node of `which` answers `/ready` 200; when they
    /// all did, or `None` after `within`.
    async fn wait_ready(&self, which: &[usize], within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        let mut pending: Vec<usize> = which.to_vec();
        while Instant::now() < deadline {
            let mut still = Vec::new();
            for &i in &pending {
                if self.node(i).ready_status().await != Some(200) {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Any REST call on node `node`: status and JSON body (`Null` when empty).
    async fn rest(
        &self,
        node: usize,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.node(node).http_url());
        let mut request = self.http.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} on n{node}: {e}"));
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, body)
    }

    /// Registers `name` on node `node` and logs in on the next node.
    async fn user(&self, name: &str, node: usize) -> User {
        let (status, body) = self
            .rest(
                node,
                Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"username": name, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, 201, "register {name} on n{node}: {body}");
        self.login(name, (node + 1) % NODES).await
    }

    /// Logs in on node `node`: a new session.
    async fn login(&self, name: &str, node: usize) -> User {
        let (status, body) = self
            .rest(
                node,
                Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"username": name, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, 200, "login {name} on n{node}: {body}");
        User {
            id: body["user"]["id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("login answer without user.id: {body}")),
            token: body["token"]
                .as_str()
                .unwrap_or_else(|| panic!("login answer without token: {body}"))
                .to_owned(),
        }
    }

    /// A private channel of `owner`'s, made on node `node`, with `members`
    /// added one by one on the other nodes.
    async fn channel(&self, owner: &User, name: &str, members: &[&User], node: usize) -> ChannelId {
        let (status, body) = self
            .rest(
                node,
                Method::POST,
                "/api/channels",
                Some(&owner.token),
                Some(json!({"name": name, "kind": "private"})),
            )
            .await;
        assert_eq!(status, 201, "create channel {name} on n{node}: {body}");
        let id: ChannelId = body["channel"]["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("channel answer without channel.id: {body}"));
        for (k, member) in members.iter().enumerate() {
            let on = (node + k + 1) % NODES;
            let (status, body) = self
                .rest(
                    on,
                    Method::POST,
                    &format!("/api/channels/{id}/members"),
                    Some(&owner.token),
                    Some(json!({"userId": member.id.to_string()})),
                )
                .await;
            assert_eq!(status, 201, "add a member to {name} on n{on}: {body}");
        }
        id
    }

    /// An authenticated client of `user` on node `node`.
    async fn client(&self, node: usize, user: &User) -> Client {
        connect(&self.ws_urls[node], &user.token)
            .await
            .unwrap_or_else(|e| panic!("connect to n{node}: {e}"))
    }

    /// The whole history of `channel` over REST, oldest first, from every
    /// running node.
    async fn histories(&self, reader: &User, channel: ChannelId) -> Vec<(usize, Vec<MessageView>)> {
        let mut all = Vec::new();
        for node in self.live() {
            all.push((node, self.history(node, reader, channel).await));
        }
        all
    }

    async fn history(&self, node: usize, reader: &User, channel: ChannelId) -> Vec<MessageView> {
        let mut messages: Vec<MessageView> = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let path = match before {
                Some(seq) => format!("/api/channels/{channel}/messages?limit=100&beforeSeq={seq}"),
                None => format!("/api/channels/{channel}/messages?limit=100"),
            };
            let (status, body) = self
                .rest(node, Method::GET, &path, Some(&reader.token), None)
                .await;
            assert_eq!(status, 200, "history of {channel} on n{node}: {body}");
            let page: Vec<MessageView> = serde_json::from_value(body["messages"].clone())
                .unwrap_or_else(|e| panic!("history page on n{node}: {e}: {body}"));
            let oldest = page.iter().map(|m| m.seq).min();
            messages.extend(page);
            match oldest {
                Some(seq) if body["hasMore"].as_bool() == Some(true) => before = Some(seq),
                _ => break,
            }
        }
        messages.sort_by_key(|m| m.seq);
        messages
    }

    /// `cluster.channelsOwned` of `/health` on node `node`.
    async fn channels_owned(&self, node: usize) -> Option<u64> {
        let health = self.nodes[node].as_ref()?.health().await?;
        health["cluster"]["channelsOwned"].as_u64()
    }

    /// `channelsOwned` of every running node.
    async fn owned(&self) -> BTreeMap<String, Option<u64>> {
        let mut owned = BTreeMap::new();
        for node in self.live() {
            owned.insert(format!("n{node}"), self.channels_owned(node).await);
        }
        owned
    }

    /// `courier_cluster_forwarded_total` of every running node.
    async fn forwarded(&self) -> BTreeMap<String, Option<f64>> {
        let mut forwarded = BTreeMap::new();
        for node in self.live() {
            let text = self.node(node).metrics().await.unwrap_or_default();
            forwarded.insert(
                format!("n{node}"),
                metric_sum(&text, "courier_cluster_forwarded_total"),
            );
        }
        forwarded
    }

    /// Sends one message (`clientMsgId` `client_msg_id`) to the fresh
    /// `channel` through node `via`, and finds its owner: the one node whose
    /// `channelsOwned` grows (no other changing). Returns it with the ack.
    async fn discover_owner(
        &self,
        user: &User,
        channel: ChannelId,
        via: usize,
        client_msg_id: &str,
    ) -> (usize, SendResult) {
        let live = self.live();
        let mut before = BTreeMap::new();
        for &i in &live {
            let owned = self
                .channels_owned(i)
                .await
                .unwrap_or_else(|| panic!("n{i}: /health has no cluster.channelsOwned"));
            before.insert(i, owned);
        }
        let mut client = self.client(via, user).await;
        let mut request = SendMessage::text(channel, format!("{client_msg_id} warm-up"));
        request.client_msg_id = Some(client_msg_id.to_owned());
        let sent = match client.ack(ClientRequest::SendMessage(request)).await {
            Ok(Ack {
                result: AckResult::Sent(sent),
                ..
            }) => sent,
            other => panic!("the warm-up send on n{via} was not acked: {other:?}"),
        };
        let _ = client.close().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut now = BTreeMap::new();
            for &i in &live {
                now.insert(i, self.channels_owned(i).await.unwrap_or(0));
            }
            let grew: Vec<usize> = live
                .iter()
                .copied()
                .filter(|i| now[i] > before[i])
                .collect();
            let shrank = live.iter().any(|i| now[i] < before[i]);
            if grew.len() == 1 && !shrank {
                return (grew[0], sent);
            }
            assert!(
                Instant::now() < deadline,
                "which node owns {channel}? channelsOwned before the first send {before:?}, \
                 10 s after {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `courier audit verify` against the shared database; must be ok.
    async fn audit_verify(&self) -> Value {
        let (report, status) = self.specs[0].audit_verify().await;
        assert!(
            report.ok && status.success(),
            "courier audit verify: {report:?} ({status})"
        );
        json!({"ok": report.ok, "entries": report.entries})
    }

    /// SIGTERM every node (each must exit 0, its log showing no panic),
    /// stop NATS, hand the database back.
    async fn stop(mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(broker) = node.take() {
                let (status, _) = broker.terminate(Duration::from_secs(30)).await;
                assert!(status.success(), "n{i} exits 0 on SIGTERM: {status}");
            }
        }
        self.nats.stop().await;
        support::release_postgres_db(&self.db_url).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, spec) in self.specs.iter().enumerate() {
                eprintln!(
                    "----- n{i} ({}) log ends:\n{}",
                    if self.nodes[i].is_some() {
                        "running"
                    } else {
                        "down"
                    },
                    file_tail(&spec.log_path(), 60)
                );
            }
            eprintln!("----- nats-server log ends:\n{}", self.nats.log_tail(20));
            self.keep = true;
        }
        if self.keep {
            if let Some(dir) = self.dir.take() {
                eprintln!("cluster data directories kept in {}", dir.keep().display());
            }
        }
    }
}

fn file_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An authenticated client of `url`.
async fn connect(url: &str, token: &str) -> Result<Client, ClientError> {
    let mut client = Client::builder(url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let response = client.authenticate(token).await?;
    match response.result {
        Ok(_) => Ok(client),
        Err(e) => Err(ClientError::Usage(format!(
            "authentication refused: {} {}",
            e.code.as_str(),
            e.message
        ))),
    }
}

/// Waits (3 s at most) for the server to close `socket`: its label, close
/// code and when.
type Closed = (&'static str, Result<Option<u16>, String>, Instant);

fn watch_close((label, mut socket): (&'static str, Client)) -> tokio::task::JoinHandle<Closed> {
    tokio::spawn(async move {
        let code = socket
            .wait_closed(Duration::from_secs(3))
            .await
            .map_err(|e| format!("not closed by the server: {e}"));
        (label, code, Instant::now())
    })
}

/// Readers (0..3) and publishers (3..6), one of each per node, each a user
/// of `people` (six).
fn mixed_plans(
    cluster: &Cluster,
    people: &[User],
    channel: ChannelId,
    prefix: &str,
    moving: bool,
    target: &Arc<AtomicU64>,
) -> Vec<Plan> {
    (0..6)
        .map(|i| {
            let publishes = i >= 3;
            Plan {
                label: format!("{}{}", if publishes { "pub" } else { "reader" }, i % NODES),
                prefix: format!("{prefix}c{i}"),
                token: people[i].token.clone(),
                channel,
                urls: cluster.ws_urls.clone(),
                home: i % NODES,
                sticky: !moving,
                window: if publishes { 4 } else { 0 },
                limit: if publishes { u64::MAX } else { 0 },
                pace: Duration::from_millis(30),
                reads: !publishes,
                target: target.clone(),
                moves: None,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Clients: publishers that resend until acked, readers that check the order
// ---------------------------------------------------------------------------

/// What a client does.
#[derive(Clone)]
struct Plan {
    label: String,
    /// Its clientMsgIds are `<prefix>m<n>`.
    prefix: String,
    token: String,
    channel: ChannelId,
    /// Every node's WebSocket URL.
    urls: Vec<String>,
    /// The node it connects to first.
    home: usize,
    /// Reconnects to `home` only; otherwise it moves to the next node when
    /// a connection cannot be made.
    sticky: bool,
    /// Sends in flight at most (0: it never sends).
    window: usize,
    /// New messages at most.
    limit: u64,
    /// Pause between new messages.
    pace: Duration,
    /// Joins the channel and checks every push.
    reads: bool,
    /// The seq a reader must reach before it ends (0: not known yet).
    target: Arc<AtomicU64>,
    /// When the flag is raised, it leaves its node for this one (and stays).
    moves: Option<(usize, Arc<AtomicBool>)>,
}

/// What the tasks of a test share.
#[derive(Clone)]
struct Shared {
    /// No new messages from now on (what is unacked is still resent).
    stop: Arc<AtomicBool>,
    /// Clients whose sends are all acked (readers count at once).
    done: Arc<AtomicUsize>,
    /// Readers that joined once.
    joined: Arc<AtomicUsize>,
    acks: Arc<AtomicU64>,
    /// Every ack, as it came.
    notes: Arc<Mutex<Vec<AckNote>>>,
}

/// One ack, for the test to watch while the load runs.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)] // the fields are printed in failure messages
struct AckNote {
    client: usize,
    channel: ChannelId,
    node: usize,
    seq: u64,
    /// When the acked attempt was put on the wire.
    sent_at: Instant,
    acked_at: Instant,
    duplicate: bool,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            stop: Arc::default(),
            done: Arc::default(),
            joined: Arc::default(),
            acks: Arc::default(),
            notes: Arc::default(),
        }
    }

    fn acks(&self) -> u64 {
        self.acks.load(Ordering::SeqCst)
    }

    fn notes(&self) -> Vec<AckNote> {
        self.notes.lock().expect("notes").clone()
    }

    /// Waits until `n` acks came back.
    async fn wait_acks(&self, n: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.acks() < n {
            assert!(
                Instant::now() < deadline,
                "traffic did not start: {} acks in {within:?}",
                self.acks()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `clients` clients are done sending.
    async fn wait_done(&self, clients: usize, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        while self.done.load(Ordering::SeqCst) < clients {
            assert!(
                Instant::now() < deadline,
                "not {what} within {within:?}: {} of {clients} clients done",
                self.done.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a fresh (not duplicate) ack to one of `clients` of a send
    /// put on the wire after `after`; when it came.
    async fn wait_fresh_ack(
        &self,
        clients: &[usize],
        after: Instant,
        within: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + within;
        loop {
            let first = self
                .notes()
                .iter()
                .filter(|n| clients.contains(&n.client) && !n.duplicate && n.sent_at > after)
                .map(|n| n.acked_at)
                .min();
            if first.is_some() {
                return first;
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every one of `clients` has a fresh ack of a send put on
    /// the wire after `after`; when the last of them came.
    async fn wait_every_fresh_ack(
        &self,
        clients: &[usize],
        after: Instant,
        within: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + within;
        loop {
            let notes = self.notes();
            let firsts: Vec<Option<Instant>> = clients
                .iter()
                .map(|c| {
                    notes
                        .iter()
                        .filter(|n| n.client == *c && !n.duplicate && n.sent_at > after)
                        .map(|n| n.acked_at)
                        .min()
                })
                .collect();
            if firsts.iter().all(Option::is_some) {
                return firsts.into_iter().flatten().max();
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What one client did and saw.
#[derive(Debug)]
struct ClientLog {
    label: String,
    home: usize,
    channel: ChannelId,
    window: usize,
    reads: bool,
    /// Every clientMsgId it made, in order.
    sent: Vec<String>,
    texts: HashMap<String, String>,
    /// Times each clientMsgId was put on the wire.
    attempts: HashMap<String, u32>,
    acked: HashMap<String, Acked>,
    refusals: Vec<Refusal>,
    /// Sends not answered within [`ANSWER_TIMEOUT`] (then resent).
    unanswered: Vec<String>,
    /// Frames that made no sense (an answer to nothing, ...).
    odd: Vec<String>,
    seen: Seen,
    /// Every connection made: when, and to which node.
    connections: Vec<(Instant, usize)>,
    /// How each connection ended.
    ends: Vec<String>,
    connect_failures: u64,
    join_failures: u64,
    last_error: Option<String>,
    /// Everything acked and, for a reader, the target reached.
    finished: bool,
}

impl ClientLog {
    fn connection_nodes(&self) -> Vec<usize> {
        self.connections.iter().map(|c| c.1).collect()
    }
}

#[derive(Clone, Copy, Debug)]
struct Acked {
    seq: u64,
    id: MessageId,
    duplicate: bool,
    node: usize,
}

#[derive(Clone, Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
    node: usize,
    at: Instant,
}

/// The `new_message` pushes a reader saw, checked one by one.
#[derive(Debug, Default)]
struct Seen {
    last: u64,
    order: Vec<(u64, MessageId)>,
    violations: Vec<String>,
}

impl Seen {
    fn push(&mut self, m: &MessageView, node: usize) {
        if m.seq != self.last + 1 && self.violations.len() < 20 {
            self.violations
                .push(format!("seq {} after {} (on n{node})", m.seq, self.last));
        }
        if m.seq > self.last {
            self.last = m.seq;
            self.order.push((m.seq, m.id));
        }
    }
}

/// The client tasks of a test.
struct Load {
    plans: Vec<Plan>,
    tasks: Vec<tokio::task::JoinHandle<ClientLog>>,
}

impl Load {
    /// Starts the readers, waits until each joined, then the publishers.
    async fn start(plans: Vec<Plan>, shared: &Shared) -> Load {
        let mut tasks: Vec<Option<tokio::task::JoinHandle<ClientLog>>> =
            (0..plans.len()).map(|_| None).collect();
        let readers = plans.iter().filter(|p| p.reads).count();
        for (i, plan) in plans.iter().enumerate().filter(|(_, p)| p.reads) {
            tasks[i] = Some(tokio::spawn(run_client(i, plan.clone(), shared.clone())));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while shared.joined.load(Ordering::SeqCst) < readers {
            assert!(
                Instant::now() < deadline,
                "readers did not join within 30 s: {} of {readers}",
                shared.joined.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (i, plan) in plans.iter().enumerate().filter(|(_, p)| !p.reads) {
            tasks[i] = Some(tokio::spawn(run_client(i, plan.clone(), shared.clone())));
        }
        Load {
            plans,
            tasks: tasks.into_iter().map(|t| t.expect("a task")).collect(),
        }
    }

    fn len(&self) -> usize {
        self.plans.len()
    }

    /// The indexes of the clients whose plan `pick` selects.
    fn indexes(&self, pick: impl Fn(&Plan) -> bool) -> Vec<usize> {
        (0..self.plans.len())
            .filter(|&i| pick(&self.plans[i]))
            .collect()
    }

    /// Every client's log, once each has finished (or given up).
    async fn finish(self) -> Vec<ClientLog> {
        let mut logs = Vec::new();
        for task in self.tasks {
            let log = tokio::time::timeout(TASK_DEADLINE + Duration::from_secs(30), task)
                .await
                .expect("a client task ends")
                .expect("a client task does not panic");
            logs.push(log);
        }
        logs
    }
}

/// One client: connects (moving to the next node when it cannot, unless
/// sticky), joins with `sinceSeq` if it reads, sends new messages and
/// resends every unacked or refused one with the same clientMsgId until it
/// is acked, reconnecting whenever the connection ends.
async fn run_client(index: usize, plan: Plan, shared: Shared) -> ClientLog {
    let mut log = ClientLog {
        label: plan.label.clone(),
        home: plan.home,
        channel: plan.channel,
        window: plan.window,
        reads: plan.reads,
        sent: Vec::new(),
        texts: HashMap::new(),
        attempts: HashMap::new(),
        acked: HashMap::new(),
        refusals: Vec::new(),
        unanswered: Vec::new(),
        odd: Vec::new(),
        seen: Seen::default(),
        connections: Vec::new(),
        ends: Vec::new(),
        connect_failures: 0,
        join_failures: 0,
        last_error: None,
        finished: false,
    };
    let started = Instant::now();
    let nodes = plan.urls.len();
    let mut node = plan.home;
    // Made but not acked, not in flight: sent first on the next chance.
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut made = 0u64;
    let mut next_new_at = Instant::now();
    let mut resume_at = Instant::now();
    let mut pause = BACKOFF.0;
    let mut counted_done = false;
    let mut counted_joined = false;
    let mut moved = false;
    'connection: while started.elapsed() < TASK_DEADLINE {
        let mut client = match connect(&plan.urls[node], &plan.token).await {
            Ok(client) => client,
            Err(e) => {
                log.connect_failures += 1;
                log.last_error = Some(format!("n{node}: {e}"));
                if !plan.sticky && !moved {
                    node = (node + 1) % nodes;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if plan.reads {
            if let Err(e) = client.join(plan.channel, Some(log.seen.last)).await {
                log.join_failures += 1;
                log.last_error = Some(format!("join on n{node}: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if !counted_joined {
                counted_joined = true;
                shared.joined.fetch_add(1, Ordering::SeqCst);
            }
        }
        log.connections.push((Instant::now(), node));
        let (mut tx, mut rx) = client.split();
        let mut in_flight: HashMap<Ref, (String, Instant)> = HashMap::new();
        let ended: String = loop {
            // Fill the window: resends first, then new messages at the pace.
            let mut broken = None;
            while in_flight.len() < plan.window && Instant::now() >= resume_at {
                let now = Instant::now();
                let id = if let Some(id) = queue.pop_front() {
                    id
                } else if !shared.stop.load(Ordering::SeqCst)
                    && made < plan.limit
                    && now >= next_new_at
                {
                    let id = format!("{}m{made}", plan.prefix);
                    made += 1;
                    next_new_at = now + plan.pace;
                    log.texts.insert(id.clone(), format!("{id} {}", plan.label));
                    log.sent.push(id.clone());
                    id
                } else {
                    break;
                };
                let mut request = SendMessage::text(plan.channel, log.texts[&id].clone());
                request.client_msg_id = Some(id.clone());
                *log.attempts.entry(id.clone()).or_default() += 1;
                match tx.send(ClientRequest::SendMessage(request)).await {
                    Ok(reference) => {
                        in_flight.insert(reference, (id, Instant::now()));
                    }
                    Err(e) => {
                        queue.push_front(id);
                        broken = Some(format!("send: {e}"));
                        break;
                    }
                }
            }
            if let Some(why) = broken {
                break why;
            }
            let sending_done = queue.is_empty()
                && in_flight.is_empty()
                && (shared.stop.load(Ordering::SeqCst) || made >= plan.limit);
            if sending_done && !counted_done {
                counted_done = true;
                shared.done.fetch_add(1, Ordering::SeqCst);
            }
            let target = plan.target.load(Ordering::SeqCst);
            let reading_done = !plan.reads || (target > 0 && log.seen.last >= target);
            if sending_done && reading_done {
                log.finished = true;
                let _ = tx.close().await;
                break 'connection;
            }
            if started.elapsed() > TASK_DEADLINE {
                break 'connection;
            }
            if let Some((to, now)) = &plan.moves {
                if !moved && now.load(Ordering::SeqCst) {
                    moved = true;
                    node = *to;
                    let _ = tx.close().await;
                    break format!("moved to n{to} by the test");
                }
            }
            match rx.next_frame(Duration::from_millis(20)).await {
                Err(ClientError::Timeout(_)) => {}
                Ok(ServerFrame::Ack(ack)) => {
                    let Some((id, sent_at)) =
                        ack.reference.as_ref().and_then(|r| in_flight.remove(r))
                    else {
                        continue;
                    };
                    match ack.result {
                        AckResult::Sent(sent) => {
                            let acked = Acked {
                                seq: sent.seq,
                                id: sent.message_id,
                                duplicate: sent.duplicate,
                                node,
                            };
                            shared.notes.lock().expect("notes").push(AckNote {
                                client: index,
                                channel: plan.channel,
                                node,
                                seq: sent.seq,
                                sent_at,
                                acked_at: Instant::now(),
                                duplicate: sent.duplicate,
                            });
                            shared.acks.fetch_add(1, Ordering::SeqCst);
                            pause = BACKOFF.0;
                            if let Some(first) = log.acked.get(&id) {
                                if first.seq != acked.seq || first.id != acked.id {
                                    log.odd.push(format!(
                                        "{id} acked twice, differently: {first:?} then {acked:?}"
                                    ));
                                }
                            } else {
                                log.acked.insert(id, acked);
                            }
                        }
                        other => {
                            log.odd
                                .push(format!("send {id} acked without a result: {other:?}"));
                            queue.push_back(id);
                        }
                    }
                }
                Ok(ServerFrame::Error(e)) => {
                    match e.reference.as_ref().and_then(|r| in_flight.remove(r)) {
                        Some((id, _)) => {
                            let now = Instant::now();
                            log.refusals.push(Refusal {
                                code: e.code,
                                message: e.message.clone(),
                                node,
                                at: now,
                            });
                            queue.push_back(id);
                            if now >= resume_at {
                                resume_at = now + pause;
                                pause = (pause * 2).min(BACKOFF.1);
                            }
                        }
                        None => log.odd.push(format!(
                            "an error answering nothing on n{node}: {} {}",
                            e.code.as_str(),
                            e.message
                        )),
                    }
                }
                Ok(ServerFrame::NewMessage(push)) => {
                    if plan.reads && push.data.channel_id == plan.channel {
                        log.seen.push(&push.data, node);
                    }
                }
                Ok(_) => {}
                Err(ClientError::Closed { code, reason }) => {
                    break format!("closed by n{node} ({code:?}): {reason}")
                }
                Err(e) => break format!("n{node}: {e}"),
            }
            let now = Instant::now();
            let stale: Vec<Ref> = in_flight
                .iter()
                .filter(|(_, (_, at))| now.saturating_duration_since(*at) > ANSWER_TIMEOUT)
                .map(|(r, _)| r.clone())
                .collect();
            for reference in stale {
                if let Some((id, _)) = in_flight.remove(&reference) {
                    log.unanswered.push(id.clone());
                    queue.push_back(id);
                }
            }
        };
        // The connection ended: what was in flight goes first on the next.
        log.ends.push(ended);
        let mut pending: Vec<(String, Instant)> = in_flight.into_values().collect();
        pending.sort_by_key(|(_, at)| *at);
        for (id, _) in pending.into_iter().rev() {
            queue.push_front(id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    log
}

// ---------------------------------------------------------------------------
// The verdict on one channel
// ---------------------------------------------------------------------------

/// Everything a channel's history and its clients must agree on.
struct Verdict {
    figures: Value,
    problems: Vec<String>,
}

impl Verdict {
    /// Checks one channel: `histories` (per node), the clients of that
    /// channel, the warm-up sends made outside them, and which error codes
    /// a send may be answered with.
    fn of(
        channel: ChannelId,
        histories: &[(usize, Vec<MessageView>)],
        logs: &[&ClientLog],
        warm: &[(String, SendResult)],
        allowed: &[ErrorCode],
    ) -> Verdict {
        fn brief(h: &[MessageView]) -> Vec<(u64, MessageId, String)> {
            h.iter().map(|m| (m.seq, m.id, m.text.clone())).collect()
        }
        let mut problems = Vec::new();
        let (first_node, history) = histories
            .first()
            .map(|(n, h)| (*n, h.clone()))
            .expect("a history");
        for (node, other) in &histories[1..] {
            if brief(other) != brief(&history) {
                let at = brief(other)
                    .iter()
                    .zip(brief(&history).iter())
                    .position(|(a, b)| a != b);
                problems.push(format!(
                    "{channel}: history on n{node} ({} messages) differs from n{first_node}'s ({}), \
                     first at index {at:?}",
                    other.len(),
                    history.len()
                ));
            }
        }
        let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
        let last = seqs.last().copied().unwrap_or(0);
        if seqs != (1..=last).collect::<Vec<_>>() {
            let missing: Vec<u64> = (1..=last)
                .filter(|s| seqs.binary_search(s).is_err())
                .take(10)
                .collect();
            problems.push(format!(
                "{channel}: seq not gap-free: {} messages up to seq {last}, first missing {missing:?}",
                seqs.len()
            ));
        }
        let mut stored: HashMap<&str, Vec<&MessageView>> = HashMap::new();
        for m in &history {
            stored.entry(client_msg_id_of(&m.text)).or_default().push(m);
        }
        let duplicated: usize = stored.values().map(|v| v.len() - 1).sum();
        if duplicated > 0 {
            let examples: Vec<&&str> = stored
                .iter()
                .filter(|(_, v)| v.len() > 1)
                .map(|(k, _)| k)
                .take(5)
                .collect();
            problems.push(format!(
                "{channel}: {duplicated} messages stored twice, e.g. {examples:?}"
            ));
        }

        let mut known: HashSet<&str> = HashSet::new();
        let mut by_seq: HashMap<u64, HashSet<MessageId>> = HashMap::new();
        let (mut sent, mut acked, mut lost, mut mismatched, mut unacked) = (0, 0, 0, 0, 0);
        let mut duplicate_acks = 0;
        let mut wrong_duplicate_acks = 0;
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        let mut examples: Vec<String> = Vec::new();
        let mut example = |what: String| {
            if examples.len() < 10 {
                examples.push(what);
            }
        };
        for (id, ack) in warm {
            known.insert(id.as_str());
            by_seq.entry(ack.seq).or_default().insert(ack.message_id);
            match stored.get(id.as_str()).and_then(|v| v.first()) {
                Some(m) if m.seq == ack.seq && m.id == ack.message_id => {}
                Some(_) => mismatched += 1,
                None => lost += 1,
            }
        }
        for log in logs {
            for id in &log.sent {
                sent += 1;
                known.insert(id.as_str());
                let Some(ack) = log.acked.get(id) else {
                    unacked += 1;
                    example(format!("{}: {id} never acked", log.label));
                    continue;
                };
                acked += 1;
                duplicate_acks += usize::from(ack.duplicate);
                by_seq.entry(ack.seq).or_default().insert(ack.id);
                match stored.get(id.as_str()).and_then(|v| v.first()) {
                    None => {
                        lost += 1;
                        example(format!(
                            "{}: {id} acked as seq {} by n{}, not stored",
                            log.label, ack.seq, ack.node
                        ));
                    }
                    Some(m) if m.seq != ack.seq || m.id != ack.id || m.text != log.texts[id] => {
                        mismatched += 1;
                        example(format!(
                            "{}: {id} acked as seq {} ({}) by n{}, stored as seq {} ({})",
                            log.label, ack.seq, ack.id, ack.node, m.seq, m.id
                        ));
                    }
                    Some(_) => {}
                }
                // Only a resend may be answered `duplicate: true`.
                if ack.duplicate && log.attempts.get(id).copied().unwrap_or(0) < 2 {
                    wrong_duplicate_acks += 1;
                    example(format!(
                        "{}: {id}, sent once, acked as a duplicate",
                        log.label
                    ));
                }
            }
            for r in &log.refusals {
                *codes.entry(r.code.as_str().to_owned()).or_default() += 1;
                if !allowed.contains(&r.code) {
                    problems.push(format!(
                        "{}: a send answered `{}` by n{}: {}",
                        log.label,
                        r.code.as_str(),
                        r.node,
                        r.message
                    ));
                }
            }
            if !log.unanswered.is_empty() {
                problems.push(format!(
                    "{}: {} sends not answered within {ANSWER_TIMEOUT:?}, e.g. {:?}",
                    log.label,
                    log.unanswered.len(),
                    &log.unanswered[..log.unanswered.len().min(3)]
                ));
            }
            if !log.odd.is_empty() {
                problems.push(format!(
                    "{}: {:?}",
                    log.label,
                    &log.odd[..log.odd.len().min(5)]
                ));
            }
            if !log.finished {
                problems.push(format!(
                    "{}: did not finish (acked {} of {}, saw up to seq {} of {last}); last error {:?}, \
                     connections {:?}, ends {:?}",
                    log.label,
                    log.acked.len(),
                    log.sent.len(),
                    log.seen.last,
                    log.last_error,
                    log.connection_nodes(),
                    log.ends
                ));
            }
        }
        for (what, n) in [
            ("acked messages not stored", lost),
            (
                "acked messages stored under another seq, id or text",
                mismatched,
            ),
            ("sends never acked", unacked),
            ("fresh sends acked as duplicates", wrong_duplicate_acks),
        ] {
            if n > 0 {
                problems.push(format!("{channel}: {n} {what}"));
            }
        }
        if !examples.is_empty() {
            problems.push(format!("{channel}: e.g. {examples:#?}"));
        }
        let splits: Vec<(u64, usize)> = by_seq
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|(seq, ids)| (*seq, ids.len()))
            .collect();
        if !splits.is_empty() {
            problems.push(format!(
                "{channel}: split order: one seq acked for different messages: {:?}",
                &splits[..splits.len().min(10)]
            ));
        }
        let strangers: Vec<&&str> = stored
            .keys()
            .filter(|id| !known.contains(**id))
            .take(5)
            .collect();
        if !strangers.is_empty() {
            problems.push(format!(
                "{channel}: stored messages no client sent: {strangers:?}"
            ));
        }
        // Every reader saw exactly the history, in order, without a gap.
        let expected: Vec<(u64, MessageId)> = history.iter().map(|m| (m.seq, m.id)).collect();
        let mut readers = Vec::new();
        for log in logs.iter().filter(|l| l.reads) {
            if !log.seen.violations.is_empty() {
                problems.push(format!(
                    "{}: live pushes out of order: {:?}",
                    log.label, log.seen.violations
                ));
            }
            if log.seen.order != expected {
                let at = log
                    .seen
                    .order
                    .iter()
                    .zip(expected.iter())
                    .position(|(a, b)| a != b);
                problems.push(format!(
                    "{}: saw {} messages, history holds {}; first difference at index {at:?}",
                    log.label,
                    log.seen.order.len(),
                    expected.len()
                ));
            }
            readers.push(json!({
                "label": log.label, "home": log.home, "connections": log.connection_nodes(),
                "seen": log.seen.order.len(), "violations": log.seen.violations.len(),
                "connectFailures": log.connect_failures, "joinFailures": log.join_failures,
            }));
        }
        let publishers: Vec<Value> = logs
            .iter()
            .filter(|l| l.window > 0)
            .map(|l| {
                json!({
                    "label": l.label, "home": l.home, "connections": l.connection_nodes(),
                    "sent": l.sent.len(), "acked": l.acked.len(),
                    "attempts": l.attempts.values().sum::<u32>(), "refusals": refusal_codes(l),
                    "connectFailures": l.connect_failures,
                })
            })
            .collect();
        let figures = json!({
            "channel": channel.to_string(), "stored": history.len(), "lastSeq": last,
            "sent": sent, "acked": acked, "lost": lost, "mismatched": mismatched,
            "duplicated": duplicated, "unacked": unacked, "duplicateAcks": duplicate_acks,
            "wrongDuplicateAcks": wrong_duplicate_acks, "splits": splits.len(),
            "refusals": codes, "readers": readers, "publishers": publishers,
        });
        Verdict { figures, problems }
    }

    #[track_caller]
    fn assert_sound(&self, when: &str) {
        assert!(
            self.figures["acked"].as_u64().unwrap_or(0) > 0,
            "{when}: nothing was acked, nothing was tested"
        );
        assert!(
            self.problems.is_empty(),
            "{when}: {} problems:\n{}",
            self.problems.len(),
            self.problems.join("\n")
        );
    }
}

/// The clientMsgId a text carries (its first word).
fn client_msg_id_of(text: &str) -> &str {
    text.split(' ').next().unwrap_or(text)
}

fn refusal_codes(log: &ClientLog) -> BTreeMap<String, usize> {
    let mut codes = BTreeMap::new();
    for r in &log.refusals {
        *codes.entry(r.code.as_str().to_owned()).or_default() += 1;
    }
    codes
}

/// The last seq of the first node's history.
fn last_seq(histories: &[(usize, Vec<MessageView>)]) -> u64 {
    histories
        .first()
        .and_then(|(_, h)| h.last())
        .map_or(0, |m| m.seq)
}

// ---------------------------------------------------------------------------
// /ready, sampled
// ---------------------------------------------------------------------------

/// Samples `/ready` of some nodes every 100 ms, labelled by phase.
struct Probe {
    phase: Arc<Mutex<&'static str>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Clone, Debug)]
struct Sample {
    phase: &'static str,
    node: usize,
    /// `None`: no answer within 1 s.
    status: Option<u16>,
    /// `failing` names `cluster`.
    cluster_failing: bool,
}

impl Probe {
    fn start(cluster: &Cluster, nodes: &[usize]) -> Probe {
        let phase = Arc::new(Mutex::new("before"));
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for &node in nodes {
            let url = format!("{}/ready", cluster.node(node).http_url());
            let (phase, samples, stop) = (phase.clone(), samples.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(1))
                    .build()
                    .expect("http client");
                while !stop.load(Ordering::SeqCst) {
                    let asked_in = *phase.lock().expect("phase");
                    let (status, body) = match http.get(&url).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            (Some(status), r.json::<Value>().await.unwrap_or(Value::Null))
                        }
                        Err(_) => (None, Value::Null),
                    };
                    let cluster_failing = body["failing"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|v| v == "cluster"));
                    samples.lock().expect("samples").push(Sample {
                        phase: asked_in,
                        node,
                        status,
                        cluster_failing,
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        Probe {
            phase,
            samples,
            stop,
            tasks,
        }
    }

    fn phase(&self, name: &'static str) {
        *self.phase.lock().expect("phase") = name;
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let _ = task.await;
        }
        let samples = self.samples.lock().expect("samples").clone();
        samples
    }
}

/// `/ready` answers of one node in one phase, counted by status.
fn statuses(samples: &[Sample], node: usize, phase: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.node == node && s.phase == phase)
    {
        let key = match (s.status, s.cluster_failing) {
            (Some(status), true) => format!("{status} cluster"),
            (Some(status), false) => status.to_string(),
            (None, _) => "no answer".to_owned(),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

// ---------------------------------------------------------------------------
// Seeds and figures
// ---------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a non-negative integer")),
        Err(_) => default,
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64 % 1_000_000)
}

/// SplitMix64: a tiny seeded generator, so that a seed names a run.
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Prints one run's figures and appends them to `COURIER_CLUSTER_REPORT`.
fn report(figures: &Value) {
    println!("cluster figures {figures}");
    if let Ok(path) = std::env::var("COURIER_CLUSTER_REPORT") {
        use std::io::Write;
        let line = format!("{figures}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            eprintln!("cannot append to COURIER_CLUSTER_REPORT={path}: {e}");
        }
    }
}
