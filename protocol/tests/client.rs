//! The typed client against a scripted in-process WebSocket peer (no Courier
//! server): refs, buffering of pushes, fire-and-forget sends, close codes,
//! refused upgrades.
#![cfg(feature = "client")]
// tungstenite's handshake callback type fixes the size of its Err variant.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use courier_protocol::client::{Client, ClientError, Message};
use courier_protocol::codec::{decode_client, encode_server, Encoding};
use courier_protocol::frames::*;
use courier_protocol::{ChannelId, ErrorCode, MessageId, SessionId, UserId};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const WAIT: Duration = Duration::from_secs(5);

fn presence() -> ServerFrame {
    ServerFrame::Presence(Presence {
        user_id: UserId(uuid::Uuid::nil()),
        status: PresenceStatus::Online,
        last_seen: 1,
    })
}

/// A peer that answers like Courier would, pushing a `presence` before
/// every `pong` and a `new_message` before every send `ack`; it closes
/// with 4003 on `leave_channel` and answers garbage with a ref-less error.
async fn scripted_peer() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let origin_seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = origin_seen.clone();
        let callback = move |req: &Request, resp: Response| {
            *seen.lock().unwrap() = req
                .headers()
                .get("origin")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok::<_, ErrorResponse>(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
            .await
            .unwrap();
        while let Some(Ok(message)) = ws.next().await {
            let (bytes, encoding) = match &message {
                Message::Binary(b) => (b.to_vec(), Encoding::MessagePack),
                Message::Text(t) => (t.as_bytes().to_vec(), Encoding::Json),
                _ => continue,
            };
            let mut out = Vec::new();
            match decode_client(&bytes, encoding) {
                Err(e) => out.push(e.to_error_frame()),
                Ok(frame) => match frame.request {
                    ClientRequest::Authenticate(a) => {
                        let result = if a.token == "good" {
                            Ok(AuthSuccess {
                                user: AuthUser {
                                    id: UserId(uuid::Uuid::nil()),
                                    username: origin_seen
                                        .lock()
                                        .unwrap()
                                        .clone()
                                        .unwrap_or_default(),
                                    role: "user".into(),
                                },
                                session_id: SessionId::new(),
                                server_time: 1,
                                heartbeat_ms: 30_000,
                                frames: courier_protocol::compact::FrameStyle::Standard,
                            })
                        } else {
                            Err(ErrorBody {
                                code: ErrorCode::AuthFailed,
                                message: "bad token".into(),
                            })
                        };
                        out.push(ServerFrame::AuthenticationResponse(
                            AuthenticationResponse {
                                reference: frame.reference,
                                result,
                            },
                        ));
                    }
                    ClientRequest::Ping => {
                        out.push(presence());
                        out.push(ServerFrame::Pong(Pong {
                            reference: frame.reference,
                            server_time: 2,
                        }));
                    }
                    ClientRequest::SendMessage(s) => {
                        let seq = match &frame.reference {
                            Some(Ref::Int(n)) => *n as u64,
                            _ => 0,
                        };
                        let id = MessageId::new();
                        out.push(ServerFrame::new_message(MessageView {
                            id,
                            channel_id: s.channel_id,
                            seq,
                            sender_id: UserId(uuid::Uuid::nil()),
                            sender: "ann".into(),
                            text: s.text,
                            timestamp: 3,
                            contains_phi: false,
                            reply_to: None,
                            edited_at: None,
                            expires_at: None,
                            flagged: None,
                            flag_reason: None,
                            flagged_by: None,
                            flagged_at: None,
                            kind: Default::default(),
                            attachments: Vec::new(),
                            patient_ref: None,
                            mentions: Vec::new(),
                        }));
                        out.push(ServerFrame::Ack(Ack {
                            reference: frame.reference,
                            result: AckResult::Sent(SendResult {
                                message_id: id,
                                seq,
                                timestamp: 3,
                                duplicate: false,
                            }),
                        }));
                    }
                    ClientRequest::LeaveChannel(_) => {
                        let close = CloseFrame {
                            code: CloseCode::from(4003),
                            reason: "session revoked".into(),
                        };
                        ws.send(Message::Close(Some(close))).await.unwrap();
                        continue;
                    }
                    _ => out.push(ServerFrame::error(
                        frame.reference,
                        ErrorCode::Forbidden,
                        "no",
                    )),
                },
            }
            for f in out {
                let bytes = encode_server(&f, encoding);
                let message = match encoding {
                    Encoding::MessagePack => Message::Binary(bytes),
                    Encoding::Json => Message::Text(bytes.try_into().unwrap()),
                };
                if ws.send(message).await.is_err() {
                    return;
                }
            }
        }
    });
    format!("ws://{addr}/ws")
}

#[tokio::test]
async fn requests_are_matched_by_ref_and_pushes_kept_in_order() {
    for encoding in [Encoding::MessagePack, Encoding::Json] {
        let url = scripted_peer().await;
        let mut client = Client::builder(url)
            .encoding(encoding)
            .origin("https://chat.example")
            .timeout(WAIT)
            .connect()
            .await
            .unwrap();

        let auth = client.authenticate("good").await.unwrap();
        assert_eq!(auth.reference, Some(Ref::Int(1)));
        let user = auth.result.unwrap().user;
        assert_eq!(
            user.username, "https://chat.example",
            "Origin header reached the peer"
        );

        // The presence pushed before the pong is kept for next_push.
        let pong = client.request(ClientRequest::Ping).await.unwrap();
        assert!(
            matches!(
                pong,
                ServerFrame::Pong(Pong {
                    reference: Some(Ref::Int(2)),
                    ..
                })
            ),
            "{pong:?}"
        );

        let channel = ChannelId::new();
        let sent = client.send_text(channel, "one").await.unwrap();
        assert_eq!(sent.seq, 3);

        // Errors come back as frames from request, as Err from ack.
        let forbidden = client.request(ClientRequest::Heartbeat).await.unwrap();
        assert!(matches!(
            forbidden,
            ServerFrame::Error(ErrorFrame {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
        let err = client
            .ack(ClientRequest::DeleteMessage(DeleteMessage {
                message_id: MessageId::new(),
            }))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ClientError::Server(ErrorFrame {
                code: ErrorCode::Forbidden,
                ..
            })
        ));

        assert_eq!(client.next_push(WAIT).await.unwrap(), presence());
        let push = client.next_push(WAIT).await.unwrap();
        assert!(
            matches!(push, ServerFrame::NewMessage(ref m) if m.data.text == "one" && m.data.seq == 3),
            "{push:?}"
        );
        assert!(matches!(
            client.next_push(Duration::from_millis(50)).await,
            Err(ClientError::Timeout(_))
        ));

        // typing_indicator gets no answer, so request refuses to wait for one.
        let typing = ClientRequest::TypingIndicator(TypingIndicator {
            channel_id: channel,
            is_typing: true,
        });
        assert!(matches!(
            client.request(typing).await,
            Err(ClientError::Usage(_))
        ));

        // Garbage gets a ref-less error: a push, by this client's model.
        client
            .send_raw(Message::Binary(vec![0xc1].into()))
            .await
            .unwrap();
        let push = client.next_push(WAIT).await.unwrap();
        assert!(
            matches!(
                push,
                ServerFrame::Error(ErrorFrame {
                    code: ErrorCode::InvalidFrame,
                    reference: None,
                    ..
                })
            ),
            "{push:?}"
        );

        client.close().await.unwrap();
    }
}

#[tokio::test]
async fn split_halves_fire_and_collect() {
    let url = scripted_peer().await;
    let client = Client::connect(&url).await.unwrap();
    let (mut tx, mut rx) = client.split();
    let channel = ChannelId::new();
    let sends =
        (0..200).map(|i| ClientRequest::SendMessage(SendMessage::text(channel, format!("m{i}"))));
    let refs = tx.send_batch(sends).await.unwrap();
    assert_eq!(refs.len(), 200);

    let reader = tokio::spawn(async move {
        let (mut acks, mut pushes) = (Vec::new(), Vec::new());
        while acks.len() < 200 {
            match rx.next_frame(WAIT).await.unwrap() {
                ServerFrame::Ack(a) => acks.push(a.reference.unwrap()),
                ServerFrame::NewMessage(m) => pushes.push(m.data.text),
                other => panic!("unexpected {other:?}"),
            }
        }
        (acks, pushes)
    });
    let (acks, pushes) = reader.await.unwrap();
    assert_eq!(acks, refs, "acks arrive in send order, one per ref");
    assert_eq!(
        pushes,
        (0..200).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_close_code_is_reported() {
    let url = scripted_peer().await;
    let mut client = Client::builder(url)
        .encoding(Encoding::Json)
        .connect()
        .await
        .unwrap();
    let leave = ClientRequest::LeaveChannel(LeaveChannel {
        channel_id: ChannelId::new(),
    });
    let reference = client.send(leave).await.unwrap();
    assert_eq!(reference, Ref::Int(1));
    assert_eq!(client.wait_closed(WAIT).await.unwrap(), Some(4003));
    assert_eq!(client.close_code(), Some(4003));
    let after = client.request(ClientRequest::Ping).await;
    assert!(
        matches!(
            after,
            Err(ClientError::Closed {
                code: Some(4003),
                ..
            }) | Err(ClientError::WebSocket(_))
        ),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_refused_upgrade_reports_its_status() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let refuse = |_: &Request, _: Response| {
            let mut resp = ErrorResponse::new(Some("bad origin".into()));
            *resp.status_mut() = StatusCode::FORBIDDEN;
            Err(resp)
        };
        let _ = tokio_tungstenite::accept_hdr_async(tcp, refuse).await;
    });
    let result = Client::builder(format!("ws://{addr}/ws"))
        .origin("https://evil.example")
        .connect()
        .await;
    assert!(
        matches!(result, Err(ClientError::Refused { status: 403 })),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn a_failed_authentication_is_an_answer() {
    let url = scripted_peer().await;
    let mut client = Client::connect(&url).await.unwrap();
    let auth = client.authenticate("bad").await.unwrap();
    assert_eq!(auth.result.unwrap_err().code, ErrorCode::AuthFailed);
}
