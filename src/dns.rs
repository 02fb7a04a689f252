//! The strong jail's resolver: every name is `6.6.6.6`, and no name ever leaves httpjail.
//!
//! Inside a strong jail all DNS traffic (UDP and TCP port 53, to any server) is redirected to the
//! sockets served here. [`answer`] is pure: it turns one query into one reply without looking
//! the name up, forwarding it, or remembering it, so a jailed program cannot use DNS to send
//! data out (SPEC section 7). The name the command wanted reaches the proxy later through the
//! Host header or SNI, where the rule decides; the proxy resolves it itself.
//!
//! Answers: `A`/`IN` gets one record, [`ANSWER_V4`] with a [`ANSWER_TTL`]-second TTL; every
//! other type (`AAAA` included, so that clients use IPv4) gets an empty `NOERROR` answer.
//! Malformed packets, responses, and anything but a standard one-question query get no reply.
//!
//! [`serve_udp`] and [`serve_tcp`] run until their task is dropped; every wait on a client has
//! a deadline and the number of TCP clients is bounded. This module does not bind sockets: the
//! jail creates them inside its namespace and hands them over.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

/// The address every `A` query is answered with. Arbitrary but recognisable; connections to it
/// on ports 80/443 are redirected to the proxy like those to any other address.
pub const ANSWER_V4: Ipv4Addr = Ipv4Addr::new(6, 6, 6, 6);

/// TTL of the answer, in seconds: short, so that nothing caches the fake answer for long if it
/// ever escaped the jail (for example into a file the command writes).
pub const ANSWER_TTL: u32 = 10;

/// Largest query accepted over TCP. Real queries are under 300 bytes (a name is at most 255);
/// the bound only stops a client from making us buffer 64 KiB per connection.
const MAX_TCP_QUERY: usize = 4096;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Writing one reply to a TCP client that does not read.
const TCP_WRITE: Duration = Duration::from_secs(5);
/// TCP clients served at once; more are disconnected at accept (UDP is unaffected).
const MAX_TCP_CLIENTS: usize = 128;
/// Pause after a failed `accept` (e.g. out of file descriptors), so that a persistent error
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const HEADER_LEN: usize = 12;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const OPCODE_MASK: u16 = 0x7800;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const MAX_NAME_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;
/// A compression pointer to offset 12, where the question's name starts.
const NAME_POINTER: [u8; 2] = [0xc0, 0x0c];

/// The reply to one DNS query in wire format, or `None` when the packet is not a well-formed
/// standard query with exactly one question (it is then dropped, never answered with an error,
/// so that we cannot be used to reflect traffic).
pub fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..HEADER_LEN)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & FLAG_QR != 0 || flags & OPCODE_MASK != 0 {
        return None;
    }
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    if qdcount != 1 {
        return None;
    }
    let name_len = question_name_len(&query[HEADER_LEN..])?;
    let question_end = HEADER_LEN + name_len + 4;
    let question = query.get(HEADER_LEN..question_end)?;
    let qtype = u16::from_be_bytes([question[name_len], question[name_len + 1]]);
    let qclass = u16::from_be_bytes([question[name_len + 2], question[name_len + 3]]);
    let answers: u16 = u16::from(qtype == TYPE_A && qclass == CLASS_IN);

    let reply_flags = FLAG_QR | FLAG_AA | (flags & FLAG_RD) | FLAG_RA;
    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&header[..2]);
    reply.extend_from_slice(&reply_flags.to_be_bytes());
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    // The question is echoed byte for byte: resolvers that randomise the case of the name
    // (DNS 0x20) compare it with what they sent.
    reply.extend_from_slice(question);
    if answers == 1 {
        reply.extend_from_slice(&NAME_POINTER);
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&ANSWER_TTL.to_be_bytes());
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ANSWER_V4.octets());
    }
    Some(reply)
}

/// Length in bytes of the uncompressed name at the start of `bytes`, terminator included.
/// Compression pointers and extended label types are refused: a query's question has no
/// earlier name to point at.
fn question_name_len(bytes: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let len = usize::from(*bytes.get(pos)?);
        if len == 0 {
            return Some(pos + 1);
        }
        if len > MAX_LABEL_LEN {
            return None;
        }
        pos += 1 + len;
        if pos + 1 > MAX_NAME_LEN {
            return None;
        }
    }
}

/// Answers every datagram on `socket` until the task is dropped. Receive errors (such as an
/// ICMP error reported for an earlier reply) are skipped.
pub async fn serve_udp(socket: UdpSocket) {
    // Large enough for any EDNS query; a longer datagram is truncated and then fails to parse
    // only if its question was cut, which a real query's cannot be.
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!("dns: udp receive failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if let Some(reply) = answer(&buf[..len])
            && let Err(e) = socket.send_to(&reply, peer).await
        {
            tracing::debug!("dns: udp reply to {peer} failed: {e}");
        }
    }
}

/// Serves DNS over TCP (RFC 1035 section 4.2.2: each message preceded by its 2-byte length)
/// on `listener` until the task is dropped. Each connection may carry several queries; it is
/// closed on a malformed query, after 10 s without one, or when too many are open.
pub async fn serve_tcp(listener: TcpListener) {
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("dns: tcp accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&clients).try_acquire_owned() else {
            tracing::debug!("dns: too many tcp clients, closing a new connection");
            continue;
        };
        tokio::spawn(async move {
            serve_tcp_client(stream).await;
            drop(permit);
        });
    }
}

async fn serve_tcp_client(mut stream: TcpStream) {
    loop {
        let mut len = [0u8; 2];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 || len > MAX_TCP_QUERY {
            return;
        }
        let mut query = vec![0u8; len];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(reply) = answer(&query) else {
            return;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(
            tokio::time::timeout(TCP_WRITE, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPE_AAAA: u16 = 28;
    const TYPE_MX: u16 = 15;

    /// A query as a stub resolver builds it: ID, flags (RD set), one question, optionally an
    /// EDNS OPT record in the additional section.
    fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&FLAG_RD.to_be_bytes());
        q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(u8::try_from(label.len()).unwrap());
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        q
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn a_query_gets_one_answer_with_the_fixed_address() {
        let q = query(0xbeef, "Api.Example.COM", TYPE_A, false);
        let r = answer(&q).expect("answered");
        assert_eq!(u16_at(&r, 0), 0xbeef, "ID echoed");
        let flags = u16_at(&r, 2);
        assert_eq!(flags & FLAG_QR, FLAG_QR, "is a response");
        assert_eq!(flags & FLAG_RD, FLAG_RD, "RD copied");
        assert_eq!(flags & 0x000f, 0, "NOERROR");
        assert_eq!(flags & 0x0200, 0, "not truncated");
        assert_eq!(
            [u16_at(&r, 4), u16_at(&r, 6), u16_at(&r, 8), u16_at(&r, 10)],
            [1, 1, 0, 0]
        );
        let question = &q[12..];
        assert_eq!(
            &r[12..12 + question.len()],
            question,
            "question echoed as sent"
        );
        let rr = &r[12 + question.len()..];
        assert_eq!(rr, [0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 10, 0, 4, 6, 6, 6, 6]);
    }

    #[test]
    fn aaaa_and_other_types_get_an_empty_noerror_answer() {
        for qtype in [TYPE_AAAA, TYPE_MX, 16, 255] {
            let q = query(7, "example.com", qtype, false);
            let r = answer(&q).expect("answered");
            assert_eq!(u16_at(&r, 2) & 0x000f, 0, "NOERROR for type {qtype}");
            assert_eq!(u16_at(&r, 6), 0, "no answer records for type {qtype}");
            assert_eq!(
                r.len(),
                q.len(),
                "header and question only for type {qtype}"
            );
        }
    }

    #[test]
    fn a_query_in_another_class_gets_no_address() {
        let mut q = query(7, "example.com", TYPE_A, false);
        let end = q.len();
        q[end - 1] = 3; // class CH
        let r = answer(&q).expect("answered");
        assert_eq!(u16_at(&r, 6), 0);
    }

    #[test]
    fn edns_queries_are_answered_without_echoing_the_opt_record() {
        let q = query(9, "example.com", TYPE_A, true);
        let r = answer(&q).expect("answered");
        assert_eq!(u16_at(&r, 10), 0, "no additional records");
        assert_eq!(&r[r.len() - 4..], [6, 6, 6, 6]);
    }

    #[test]
    fn the_root_name_is_a_valid_question() {
        let r = answer(&query(1, "", TYPE_A, false)).expect("answered");
        assert_eq!(r[12], 0, "root name echoed");
        assert_eq!(u16_at(&r, 6), 1);
    }

    #[test]
    fn malformed_or_unexpected_packets_are_dropped() {
        let good = query(1, "example.com", TYPE_A, false);
        let mut response = good.clone();
        response[2] |= 0x80;
        let mut notify = good.clone();
        notify[2] |= 4 << 3;
        let mut two_questions = good.clone();
        two_questions[5] = 2;
        let mut no_question = good.clone();
        no_question[5] = 0;
        let mut pointer = good.clone();
        pointer[12] = 0xc0;
        let mut long_label = good.clone();
        long_label[12] = 64;
        let mut long_name = good[..12].to_vec();
        for _ in 0..5 {
            long_name.push(63);
            long_name.extend_from_slice(&[b'a'; 63]);
        }
        long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
        let cases: [(&str, &[u8]); 10] = [
            ("empty", &[]),
            ("short header", &good[..11]),
            ("a response", &response),
            ("opcode NOTIFY", &notify),
            ("two questions", &two_questions),
            ("no question", &no_question),
            ("compression pointer", &pointer),
            ("label over 63", &long_label),
            ("name over 255", &long_name),
            ("question cut", &good[..good.len() - 1]),
        ];
        for (what, packet) in cases {
            assert_eq!(answer(packet), None, "{what}");
        }
    }

    #[test]
    fn a_name_of_exactly_255_bytes_is_accepted() {
        let mut q = query(1, "", TYPE_A, false)[..12].to_vec();
        // 3 labels of 63 + 1 of 61: 4 * 1 + 3 * 63 + 61 + terminator = 255.
        for len in [63, 63, 63, 61] {
            q.push(len);
            q.extend(std::iter::repeat_n(b'a', usize::from(len)));
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(answer(&q).is_some());
    }

    #[tokio::test]
    async fn udp_and_tcp_servers_answer_and_frame() {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp_addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let servers = [tokio::spawn(serve_udp(udp)), tokio::spawn(serve_tcp(tcp))];

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(&[1, 2, 3], udp_addr).await.unwrap();
        let q = query(0x1234, "x.test", TYPE_A, false);
        client.send_to(&q, udp_addr).await.unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("udp reply in time")
            .unwrap();
        assert_eq!(u16_at(&buf, 0), 0x1234, "the garbage datagram got no reply");
        assert_eq!(&buf[n - 4..n], [6, 6, 6, 6]);

        let mut stream = TcpStream::connect(tcp_addr).await.unwrap();
        for id in [1u16, 2] {
            let q = query(id, "y.test", TYPE_A, false);
            let mut framed = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            stream.write_all(&framed).await.unwrap();
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.unwrap();
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut reply).await.unwrap();
            assert_eq!(u16_at(&reply, 0), id);
            assert_eq!(&reply[reply.len() - 4..], [6, 6, 6, 6]);
        }
        stream.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("closed in time");
        assert_eq!(read.unwrap(), 0, "a malformed query closes the connection");
        for s in servers {
            s.abort();
        }
    }
}
