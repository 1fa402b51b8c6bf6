//! The connection and channel against a scripted broker over an in-memory stream: what the
//! client writes, byte for byte, and how it handles answers a real broker rarely gives.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::Duration;

use amqp_wire::frame::Frame;
use amqp_wire::method::{Close, Method};
use amqp_wire::{
    AmqpUrl, BasicProperties, ConnectOptions, Connection, DecodeError, Error, FieldTable,
    FieldValue, Transport,
};

/// Plays the broker's bytes, records the client's. When the script runs out, reads would
/// block (or hit end of file with `eof`).
struct Scripted {
    input: Vec<u8>,
    pos: usize,
    eof: bool,
    output: Rc<RefCell<Vec<u8>>>,
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.input.len() {
            if self.eof {
                return Ok(0);
            }
            std::thread::sleep(Duration::from_millis(5));
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // Dribble: at most 3 bytes per read, to exercise partial frames.
        let n = buf.len().min(3).min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Scripted {}

fn method(channel: u16, method: Method) -> Frame {
    Frame::Method { channel, method }
}

fn start(mechanisms: &str) -> Frame {
    method(
        0,
        Method::ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: FieldTable::new().with("product", "Scripted"),
            mechanisms: mechanisms.into(),
            locales: "en_US".into(),
        },
    )
}

fn tune(frame_max: u32) -> Frame {
    method(
        0,
        Method::ConnectionTune {
            channel_max: 10,
            frame_max,
            heartbeat: 60,
        },
    )
}

/// start, tune, open-ok, channel.open-ok, confirm.select-ok.
fn ready(frame_max: u32) -> Vec<Frame> {
    vec![
        start("AMQPLAIN PLAIN"),
        tune(frame_max),
        method(0, Method::ConnectionOpenOk),
        method(1, Method::ChannelOpenOk),
        method(1, Method::ConfirmSelectOk),
    ]
}

fn close(code: u16, text: &str) -> Close {
    Close {
        reply_code: code,
        reply_text: text.into(),
        class_id: 0,
        method_id: 0,
    }
}

fn bytes(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out).unwrap();
    }
    out
}

/// What the client wrote, shared with the test.
type Written = Rc<RefCell<Vec<u8>>>;

fn open(script: Vec<u8>, eof: bool) -> (Result<Connection<Scripted>, Error>, Written) {
    let output = Rc::new(RefCell::new(Vec::new()));
    let stream = Scripted {
        input: script,
        pos: 0,
        eof,
        output: output.clone(),
    };
    let url = AmqpUrl::parse("amqp://user:pa%3Ass@ignored/%2f").unwrap();
    let options = ConnectOptions {
        timeout: Duration::from_millis(300),
        connection_name: Some("scripted".into()),
        ..ConnectOptions::default()
    };
    (Connection::open(stream, &url, &options), output)
}

/// The frames the client wrote after its protocol header.
fn written(output: &RefCell<Vec<u8>>) -> Vec<Frame> {
    let out = output.borrow();
    assert_eq!(&out[..8], b"AMQP\x00\x00\x09\x01");
    let mut rest = &out[8..];
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let (frame, used) = Frame::decode(rest, 0).unwrap().expect("whole frames only");
        frames.push(frame);
        rest = &rest[used..];
    }
    frames
}

#[test]
fn handshake_then_publish_writes_the_expected_frames() {
    let mut script = ready(4096);
    script.push(method(
        1,
        Method::BasicAck {
            delivery_tag: 1,
            multiple: false,
        },
    ));
    let (conn, output) = open(bytes(&script), false);
    let mut conn = conn.unwrap();
    assert_eq!(conn.tuning().frame_max, 4096);
    assert_eq!(conn.tuning().channel_max, 10);
    assert_eq!(
        conn.tuning().heartbeat,
        0,
        "heartbeats are off unless asked for"
    );
    let mut ch = conn.open_channel().unwrap();
    let body = vec![b'x'; 10_000];
    let props = BasicProperties::persistent("application/json").with_message_id("job-7");
    ch.publish_confirmed("", "video", &props, &body).unwrap();
    drop(ch);

    let frames = written(&output);
    let Frame::Method {
        method:
            Method::ConnectionStartOk {
                client_properties,
                mechanism,
                response,
                ..
            },
        ..
    } = &frames[0]
    else {
        panic!("{:?}", frames[0]);
    };
    assert_eq!(
        (mechanism.as_str(), response.as_slice()),
        ("PLAIN", &b"\0user\0pa:ss"[..])
    );
    assert_eq!(
        client_properties
            .get("connection_name")
            .and_then(FieldValue::as_str),
        Some("scripted")
    );
    let Some(FieldValue::Table(caps)) = client_properties.get("capabilities") else {
        panic!()
    };
    assert_eq!(
        caps.get("publisher_confirms"),
        Some(&FieldValue::Bool(true))
    );
    assert_eq!(
        frames[1],
        method(
            0,
            Method::ConnectionTuneOk {
                channel_max: 10,
                frame_max: 4096,
                heartbeat: 0
            }
        )
    );
    assert_eq!(
        frames[2],
        method(
            0,
            Method::ConnectionOpen {
                virtual_host: "/".into()
            }
        )
    );
    assert_eq!(frames[3], method(1, Method::ChannelOpen));
    assert_eq!(
        frames[4],
        method(1, Method::ConfirmSelect { no_wait: false })
    );
    assert_eq!(
        frames[5],
        method(
            1,
            Method::BasicPublish {
                exchange: "".into(),
                routing_key: "video".into(),
                mandatory: true,
                immediate: false
            }
        )
    );
    assert_eq!(
        frames[6],
        Frame::Header {
            channel: 1,
            body_size: 10_000,
            properties: props
        }
    );
    let sizes: Vec<usize> = frames[7..]
        .iter()
        .map(|f| match f {
            Frame::Body { payload, .. } => payload.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sizes,
        [4088, 4088, 1824],
        "body frames fill frame_max minus 8 bytes of framing"
    );
}

#[test]
fn acks_with_multiple_and_nacks_are_tracked_by_tag() {
    let mut script = ready(131072);
    script.push(method(
        1,
        Method::BasicAck {
            delivery_tag: 2,
            multiple: true,
        },
    ));
    script.push(method(
        1,
        Method::BasicNack {
            delivery_tag: 3,
            multiple: false,
            requeue: false,
        },
    ));
    let (conn, _) = open(bytes(&script), false);
    let mut conn = conn.unwrap();
    let mut ch = conn.open_channel().unwrap();
    ch.confirm_select().unwrap();
    for tag in 1..=3 {
        assert_eq!(
            ch.basic_publish("", "q", false, &BasicProperties::default(), b"m")
                .unwrap(),
            tag
        );
    }
    let err = ch.wait_for_confirms(Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.to_string(), "broker refused the message");
    assert!(
        matches!(err, Error::Nacked { ref delivery_tags } if delivery_tags == &[3]),
        "{err:?}"
    );
}

#[test]
fn a_missing_confirm_times_out_and_may_be_awaited_again() {
    let (conn, _) = open(bytes(&ready(131072)), false);
    let mut conn = conn.unwrap();
    let mut ch = conn.open_channel().unwrap();
    ch.confirm_select().unwrap();
    ch.basic_publish("", "q", false, &BasicProperties::default(), b"m")
        .unwrap();
    let err = ch
        .wait_for_confirms(Duration::from_millis(100))
        .unwrap_err();
    assert_eq!(err.to_string(), "timed out waiting for publisher confirms");
    assert!(matches!(
        ch.wait_for_confirms(Duration::from_millis(50)),
        Err(Error::Timeout(_))
    ));
}

#[test]
fn broker_closing_the_connection_mid_wait_is_a_typed_error_and_is_answered() {
    let mut script = ready(131072);
    script.push(Frame::Heartbeat);
    script.push(method(
        0,
        Method::ConnectionBlocked {
            reason: "low on memory".into(),
        },
    ));
    script.push(method(
        0,
        Method::ConnectionClose(close(320, "CONNECTION_FORCED - shutdown")),
    ));
    let (conn, output) = open(bytes(&script), false);
    let mut conn = conn.unwrap();
    let mut ch = conn.open_channel().unwrap();
    ch.confirm_select().unwrap();
    ch.basic_publish("", "q", false, &BasicProperties::default(), b"m")
        .unwrap();
    let err = ch.wait_for_confirms(Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.reply_code(), Some(320));
    assert_eq!(
        err.to_string(),
        "connection closed by the broker: 320 CONNECTION_FORCED - shutdown"
    );
    drop(ch);
    assert_eq!(conn.blocked(), Some("low on memory"));
    assert_eq!(
        written(&output).last(),
        Some(&method(0, Method::ConnectionCloseOk))
    );
    assert!(matches!(conn.open_channel(), Err(Error::Broken)));
}

#[test]
fn refused_login_is_an_authentication_error() {
    let script = [
        start("PLAIN"),
        method(
            0,
            Method::ConnectionClose(close(403, "ACCESS_REFUSED - Login was refused")),
        ),
    ];
    let (conn, output) = open(bytes(&script), false);
    assert!(
        matches!(conn.err(), Some(Error::AuthenticationFailed(t)) if t.starts_with("ACCESS_REFUSED"))
    );
    assert_eq!(
        written(&output).last(),
        Some(&method(0, Method::ConnectionCloseOk))
    );
    // Brokers without authentication_failure_close just hang up.
    let (conn, _) = open(bytes(&[start("PLAIN")]), true);
    assert!(matches!(conn.err(), Some(Error::AuthenticationFailed(_))));
}

#[test]
fn handshake_refusals_are_clear() {
    let (conn, _) = open(b"AMQP\x01\x01\x00\x0a".to_vec(), true);
    assert!(matches!(conn.err(), Some(Error::ProtocolVersion(_))));
    let (conn, _) = open(bytes(&[start("EXTERNAL")]), false);
    assert_eq!(
        conn.err().unwrap().to_string(),
        "broker offers no PLAIN authentication (mechanisms: EXTERNAL)"
    );
    let (conn, _) = open(Vec::new(), false);
    assert_eq!(
        conn.err().unwrap().to_string(),
        "timed out waiting for connection.start"
    );
}

#[test]
fn an_oversize_frame_from_the_broker_is_a_frame_error() {
    let mut script = bytes(&ready(4096));
    script.extend_from_slice(&[3, 0, 1, 0, 0, 0x20, 0]); // an 8 KiB body frame announced
    let (conn, output) = open(script, false);
    let mut conn = conn.unwrap();
    let mut ch = conn.open_channel().unwrap();
    ch.confirm_select().unwrap();
    ch.basic_publish("", "q", false, &BasicProperties::default(), b"m")
        .unwrap();
    let err = ch.wait_for_confirms(Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Decode(DecodeError::FrameTooLarge {
                size: 8200,
                max: 4096
            })
        ),
        "{err:?}"
    );
    let Some(Frame::Method {
        method: Method::ConnectionClose(c),
        ..
    }) = written(&output).last().cloned()
    else {
        panic!()
    };
    assert_eq!(c.reply_code, 501);
}

#[test]
fn frames_we_send_respect_frame_max() {
    let (conn, _) = open(bytes(&ready(4096)), false);
    let mut conn = conn.unwrap();
    let mut ch = conn.open_channel().unwrap();
    let huge = FieldTable::new().with("h", "x".repeat(5000));
    let props = BasicProperties::default().with_headers(huge);
    let err = ch.basic_publish("", "q", false, &props, b"").unwrap_err();
    assert!(
        err.to_string()
            .contains("exceeds the negotiated frame_max of 4096"),
        "{err}"
    );
}
