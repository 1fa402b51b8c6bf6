//! Against a real RabbitMQ: `scripts/dev-services start`, then `eval "$(scripts/dev-services env)"`
//! for `AMQP_URL` and `RABBITMQ_MGMT_URL`. Every test uses its own queues and deletes them.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amqp_wire::reply_code::{NOT_ALLOWED, NOT_FOUND, NO_ROUTE, PRECONDITION_FAILED};
use amqp_wire::{
    connect, BasicProperties, ConnectOptions, Connection, Error, FieldTable, FieldValue,
    QueueOptions,
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need RabbitMQ. Run `scripts/dev-services start` and \
             `eval \"$(scripts/dev-services env)\"` first"
        )
    })
}

fn amqp_url() -> String {
    env("AMQP_URL")
}

/// A queue name no other test (or run) uses.
fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "amqp-wire-test-{what}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `POST /api/queues/%2f/<q>/get` through the management API (requeueing the message).
fn management_get(queue: &str) -> serde_json::Value {
    let url = format!("{}/api/queues/%2f/{queue}/get", env("RABBITMQ_MGMT_URL"));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "-m",
            "10",
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(r#"{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}"#)
        .arg(&url)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "management API: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("management API answers JSON")
}

#[test]
fn persistent_publish_with_confirm_lands_in_the_durable_queue() {
    let queue = unique("video");
    let options = ConnectOptions {
        connection_name: Some("amqp-wire broker test".into()),
        ..ConnectOptions::default()
    };
    let mut conn = Connection::connect(&amqp_url(), options).unwrap();
    let product = conn
        .server_properties()
        .get("product")
        .and_then(FieldValue::as_str);
    assert_eq!(product, Some("RabbitMQ"));
    assert!(conn.tuning().frame_max >= 4096);

    let mut ch = conn.open_channel().unwrap();
    let args = FieldTable::new()
        .with("x-queue-type", "classic")
        .with("x-dead-letter-exchange", "")
        .with("x-dead-letter-routing-key", format!("{queue}.dead"));
    let ok = ch
        .queue_declare(&queue, QueueOptions::durable(), args)
        .unwrap();
    assert_eq!((ok.queue.as_str(), ok.message_count), (queue.as_str(), 0));

    let body = br#"{"video_fid":"v1","mp3_fid":null,"username":"a@b.c","job_id":"j1"}"#;
    let props = BasicProperties::persistent("application/json")
        .with_message_id("j1")
        .with_headers(FieldTable::new().with("attempt", 1).with("source", "test"));
    ch.publish_confirmed("", &queue, &props, body).unwrap();

    // Seen by the broker itself, through the management API.
    let got = management_get(&queue);
    let msg = &got[0];
    assert_eq!(msg["payload"].as_str().unwrap().as_bytes(), body);
    assert_eq!(msg["properties"]["delivery_mode"], 2);
    assert_eq!(msg["properties"]["message_id"], "j1");
    assert_eq!(msg["properties"]["content_type"], "application/json");
    assert_eq!(msg["properties"]["headers"]["attempt"], 1);
    assert_eq!(msg["properties"]["headers"]["source"], "test");

    // And through basic.get.
    let got = ch.basic_get(&queue, true).unwrap().expect("one message");
    assert_eq!(got.body, body);
    assert_eq!(got.properties, props);
    assert_eq!(got.message_count, 0);
    assert!(ch.basic_get(&queue, true).unwrap().is_none());

    assert_eq!(ch.queue_delete(&queue).unwrap(), 0);
    ch.close().unwrap();
    conn.close().unwrap();
}

#[test]
fn many_publishes_one_wait_and_acks_by_tag() {
    let queue = unique("batch");
    let mut conn = connect(&amqp_url()).unwrap();
    let mut ch = conn.open_channel().unwrap();
    ch.queue_declare(&queue, QueueOptions::durable(), FieldTable::new())
        .unwrap();
    ch.confirm_select().unwrap();
    let props = BasicProperties::persistent("text/plain");
    for i in 1..=200u64 {
        assert_eq!(
            ch.basic_publish("", &queue, true, &props, format!("m{i}").as_bytes())
                .unwrap(),
            i
        );
    }
    ch.wait_for_confirms(Duration::from_secs(30)).unwrap();
    let passive = QueueOptions {
        passive: true,
        ..QueueOptions::default()
    };
    assert_eq!(
        ch.queue_declare(&queue, passive, FieldTable::new())
            .unwrap()
            .message_count,
        200
    );
    let first = ch.basic_get(&queue, false).unwrap().unwrap();
    assert_eq!(first.body, b"m1");
    ch.basic_ack(first.delivery_tag, false).unwrap();
    assert_eq!(ch.queue_delete(&queue).unwrap(), 199);
    ch.close().unwrap();
    conn.close().unwrap();
}

#[test]
fn wrong_password_is_an_authentication_error() {
    let mut url = amqp_wire::AmqpUrl::parse(&amqp_url()).unwrap();
    url.password.push_str("-wrong");
    let bad = format!(
        "amqp://{}:{}@{}:{}/%2f",
        url.user, url.password, url.host, url.port
    );
    match connect(&bad) {
        Err(Error::AuthenticationFailed(text)) => {
            assert!(text.contains("ACCESS_REFUSED"), "{text}")
        }
        Err(other) => panic!("expected an authentication error, got {other:?}"),
        Ok(_) => panic!("connected with a wrong password"),
    }
}

#[test]
fn unknown_vhost_is_a_typed_connection_error() {
    let url = amqp_url().replace("/%2f", "/amqp-wire-no-such-vhost");
    match connect(&url) {
        Err(e @ Error::ConnectionClosed { .. }) => {
            assert_eq!(e.reply_code(), Some(NOT_ALLOWED), "{e}")
        }
        other => panic!("expected connection.close 530, got {:?}", other.err()),
    }
}

#[test]
fn nothing_listening_is_connection_refused() {
    // Port 1 on loopback: nobody listens there.
    let err = connect("amqp://u:p@127.0.0.1:1/%2f")
        .err()
        .expect("no broker on port 1");
    assert!(matches!(err, Error::ConnectionRefused(_)), "{err:?}");
    assert_eq!(err.to_string(), "connection refused");
}

#[test]
fn publishing_to_a_missing_exchange_closes_the_channel_with_404() {
    let mut conn = connect(&amqp_url()).unwrap();
    let mut ch = conn.open_channel().unwrap();
    ch.confirm_select().unwrap();
    let exchange = unique("no-such-exchange");
    ch.basic_publish(&exchange, "k", false, &BasicProperties::default(), b"x")
        .unwrap();
    let err = ch.wait_for_confirms(Duration::from_secs(10)).unwrap_err();
    match &err {
        Error::ChannelClosed {
            code,
            text,
            class_id,
            method_id,
        } => {
            assert_eq!((*code, *class_id, *method_id), (NOT_FOUND, 60, 40));
            assert!(text.contains(&exchange), "{text}");
        }
        other => panic!("expected channel.close 404, got {other:?}"),
    }
    assert!(matches!(
        ch.basic_publish("", "k", false, &BasicProperties::default(), b"x"),
        Err(Error::Usage(_))
    ));
    drop(ch);
    // The connection survives a channel error.
    let queue = unique("after-404");
    let mut ch = conn.open_channel().unwrap();
    ch.queue_declare(&queue, QueueOptions::durable(), FieldTable::new())
        .unwrap();
    ch.queue_delete(&queue).unwrap();
    ch.close().unwrap();
    conn.close().unwrap();
}

#[test]
fn mandatory_unroutable_message_is_returned() {
    let mut conn = connect(&amqp_url()).unwrap();
    let mut ch = conn.open_channel().unwrap();
    let key = unique("nowhere");
    let props = BasicProperties::persistent("text/plain").with_message_id("lost-1");
    let err = ch.publish_confirmed("", &key, &props, b"lost").unwrap_err();
    assert_eq!(err.reply_code(), Some(NO_ROUTE), "{err}");
    let Error::Returned(returned) = err else {
        panic!("expected a return")
    };
    assert_eq!(
        (returned.routing_key.as_str(), returned.body.as_slice()),
        (key.as_str(), &b"lost"[..])
    );
    assert_eq!(returned.properties.message_id.as_deref(), Some("lost-1"));
    // Not mandatory: silently dropped, and confirmed.
    ch.basic_publish("", &key, false, &props, b"dropped")
        .unwrap();
    ch.wait_for_confirms(Duration::from_secs(10)).unwrap();
    ch.close().unwrap();
    conn.close().unwrap();
}

#[test]
fn redeclaring_with_other_arguments_is_precondition_failed() {
    let queue = unique("quorum");
    let mut conn = connect(&amqp_url()).unwrap();
    let mut ch = conn.open_channel().unwrap();
    let quorum = FieldTable::new()
        .with("x-queue-type", "quorum")
        .with("x-dead-letter-exchange", "");
    ch.queue_declare(&queue, QueueOptions::durable(), quorum)
        .unwrap();
    let err = ch.queue_declare(
        &queue,
        QueueOptions::durable(),
        FieldTable::new().with("x-queue-type", "classic"),
    );
    assert_eq!(err.unwrap_err().reply_code(), Some(PRECONDITION_FAILED));
    drop(ch);
    let mut ch = conn.open_channel().unwrap();
    ch.queue_delete(&queue).unwrap();
    ch.close().unwrap();
    conn.close().unwrap();
}

fn one_mib_round_trip(options: ConnectOptions) {
    let queue = unique("big");
    let mut conn = Connection::connect(&amqp_url(), options).unwrap();
    let frame_max = conn.tuning().frame_max;
    let mut ch = conn.open_channel().unwrap();
    ch.queue_declare(&queue, QueueOptions::durable(), FieldTable::new())
        .unwrap();
    let body: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i * 7 + i / 1000) as u8)
        .collect();
    ch.publish_confirmed(
        "",
        &queue,
        &BasicProperties::persistent("application/octet-stream"),
        &body,
    )
    .unwrap();
    let got = ch
        .basic_get(&queue, true)
        .unwrap()
        .expect("the big message");
    assert!(
        got.body == body,
        "1 MiB body differs after the round trip (frame_max {frame_max})"
    );
    ch.queue_delete(&queue).unwrap();
    ch.close().unwrap();
    conn.close().unwrap();
}

#[test]
fn one_mib_body_is_split_into_frames() {
    one_mib_round_trip(ConnectOptions::default());
}

#[test]
fn one_mib_body_with_the_smallest_frame_max() {
    // 4096-byte frames: about 260 body frames each way.
    one_mib_round_trip(ConnectOptions {
        frame_max: 4096,
        ..ConnectOptions::default()
    });
}

#[test]
fn heartbeats_keep_an_idle_connection_alive() {
    // With 1 s heartbeats RabbitMQ drops a client that stays silent for about 2 s.
    let mut conn = connect(&format!("{}?heartbeat=1", amqp_url())).unwrap();
    assert_eq!(conn.tuning().heartbeat, 1);
    conn.idle(Duration::from_millis(3500)).unwrap();
    let queue = unique("hb");
    let mut ch = conn
        .open_channel()
        .expect("the connection is still open after 3.5 s idle");
    ch.queue_declare(&queue, QueueOptions::durable(), FieldTable::new())
        .unwrap();
    ch.queue_delete(&queue).unwrap();
    ch.close().unwrap();
    conn.close().unwrap();
}
