//! A minimal NFQUEUE client: bind a queue (metadata only), read packet ids, send verdicts.
//!
//! Just what `shoal-netem` needs, over a plain netlink socket (`rustix`, no unsafe code, no
//! libnetfilter_queue). The message codec ([`encode_config`], [`encode_verdict`], [`decode`])
//! is pure and tested on bytes; [`QueueSocket`] does the IO.
//!
//! Call order: [`QueueSocket::bind`], then repeatedly [`QueueSocket::wait`] and
//! [`QueueSocket::recv`], answering every packet id once with [`QueueSocket::verdict`] or,
//! for a run of the oldest packets, one [`QueueSocket::verdict_up_to`]. Packets never
//! answered are dropped by the kernel when the socket closes.
//!
//! See: `include/uapi/linux/netfilter/nfnetlink_queue.h` and `net/netfilter/nfnetlink_queue.c`
//! in the Linux sources (message and attribute layouts, batch verdicts).

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

const NLMSG_HDR_LEN: usize = 16;
const NFGEN_HDR_LEN: usize = 4;
const NLA_HDR_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
/// Attribute type bits (the top two are flags: nested, network byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NFQA_CFG_F_GSO: u32 = 4;

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// Receive buffer: a metadata-only packet message is ~100 bytes; anything longer is cut.
const RECV_BUF_LEN: usize = 64 * 1024;
/// How long bind waits for each of the kernel's acknowledgements.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// What happens to a queued packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it continue through the stack.
    Accept,
    /// Drop it.
    Drop,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Self::Accept => NF_ACCEPT,
            Self::Drop => NF_DROP,
        }
    }
}

/// A configuration setting for one queue (`NFQNL_MSG_CONFIG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// Take this queue's packets (`NFQNL_CFG_CMD_BIND`).
    Bind,
    /// Copy only metadata (no payload) to user space.
    CopyMetadataOnly,
    /// The most packets the kernel keeps waiting for a verdict; more are dropped.
    MaxLen(u32),
    /// Take GSO packets whole (no segmentation for the queue); they are only held here.
    Gso(bool),
    /// Accept instead of drop when the queue is full.
    FailOpen(bool),
}

/// One message from the kernel, as far as `shoal-netem` cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// A queued packet, to be answered with a verdict naming this id.
    Packet {
        /// The kernel's packet id.
        id: u32,
    },
    /// An acknowledgement (`error == 0`) or an error (a negative errno) for request `seq`.
    Ack {
        /// The sequence number of the request answered.
        seq: u32,
        /// 0, or a negative errno.
        error: i32,
    },
    /// Anything else (other message types, a packet without its header).
    Other,
}

fn push_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_ne_bytes());
}

fn push_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(NLA_HDR_LEN + payload.len()).expect("attributes here are a few bytes");
    push_u16(out, len);
    push_u16(out, kind);
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A netlink message of the queue subsystem: header, `nfgenmsg` (res_id = queue), attributes.
fn message(kind: u16, flags: u16, seq: u32, queue: u16, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; 4]); // length, filled in below
    push_u16(&mut out, (NFNL_SUBSYS_QUEUE << 8) | kind);
    push_u16(&mut out, flags);
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    out.push(0); // AF_UNSPEC
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&queue.to_be_bytes());
    for (kind, payload) in attrs {
        push_attr(&mut out, *kind, payload);
    }
    let len = u32::try_from(out.len()).expect("messages here are a few bytes");
    out[..4].copy_from_slice(&len.to_ne_bytes());
    out
}

/// The `NFQNL_MSG_CONFIG` request for one setting, asking for an acknowledgement.
#[must_use]
pub fn encode_config(seq: u32, queue: u16, setting: Config) -> Vec<u8> {
    let flags_attrs = |flag: u32, on: bool| {
        vec![
            (
                NFQA_CFG_FLAGS,
                (if on { flag } else { 0 }).to_be_bytes().to_vec(),
            ),
            (NFQA_CFG_MASK, flag.to_be_bytes().to_vec()),
        ]
    };
    let attrs = match setting {
        // struct nfqnl_msg_config_cmd { u8 command; u8 pad; be16 pf } (pf unused since 3.8)
        Config::Bind => vec![(NFQA_CFG_CMD, vec![NFQNL_CFG_CMD_BIND, 0, 0, 0])],
        // struct nfqnl_msg_config_params { be32 copy_range; u8 copy_mode } (packed)
        Config::CopyMetadataOnly => vec![(NFQA_CFG_PARAMS, vec![0, 0, 0, 0, NFQNL_COPY_META])],
        Config::MaxLen(n) => vec![(NFQA_CFG_QUEUE_MAXLEN, n.to_be_bytes().to_vec())],
        Config::Gso(on) => flags_attrs(NFQA_CFG_F_GSO, on),
        Config::FailOpen(on) => flags_attrs(NFQA_CFG_F_FAIL_OPEN, on),
    };
    message(
        NFQNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        queue,
        &attrs,
    )
}

/// A verdict for packet `id`; with `batch`, for every packet still queued up to and
/// including `id`, in queue order (`NFQNL_MSG_VERDICT_BATCH`).
#[must_use]
pub fn encode_verdict(seq: u32, queue: u16, id: u32, verdict: Verdict, batch: bool) -> Vec<u8> {
    // struct nfqnl_msg_verdict_hdr { be32 verdict; be32 id }
    let mut hdr = verdict.code().to_be_bytes().to_vec();
    hdr.extend_from_slice(&id.to_be_bytes());
    let kind = if batch {
        NFQNL_MSG_VERDICT_BATCH
    } else {
        NFQNL_MSG_VERDICT
    };
    message(kind, NLM_F_REQUEST, seq, queue, &[(NFQA_VERDICT_HDR, hdr)])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The messages in one datagram from the kernel. Stops at the first malformed length (the
/// rest of a cut datagram is not trusted).
#[must_use]
pub fn decode(mut buf: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDR_LEN {
        let (Some(len), Some(kind)) = (u32_at(buf, 0), u16_at(buf, 4)) else {
            break;
        };
        let Ok(len) = usize::try_from(len) else { break };
        if len < NLMSG_HDR_LEN || len > buf.len() {
            break;
        }
        let msg = &buf[..len];
        out.push(decode_one(kind, msg));
        let next = len.next_multiple_of(4).min(buf.len());
        buf = &buf[next..];
    }
    out
}

fn decode_one(kind: u16, msg: &[u8]) -> Message {
    if kind == NLMSG_ERROR {
        // struct nlmsgerr { int error; struct nlmsghdr msg; }: the request's seq is at 8.
        let body = &msg[NLMSG_HDR_LEN..];
        return match (body.get(..4), u32_at(body, 4 + 8)) {
            (Some(e), Some(seq)) => Message::Ack {
                seq,
                error: i32::from_ne_bytes(e.try_into().expect("4 bytes")),
            },
            _ => Message::Other,
        };
    }
    if kind != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
        return Message::Other;
    }
    let mut attrs = msg.get(NLMSG_HDR_LEN + NFGEN_HDR_LEN..).unwrap_or_default();
    while attrs.len() >= NLA_HDR_LEN {
        let (Some(len), Some(kind)) = (u16_at(attrs, 0), u16_at(attrs, 2)) else {
            break;
        };
        let len = usize::from(len);
        if len < NLA_HDR_LEN || len > attrs.len() {
            break;
        }
        if kind & NLA_TYPE_MASK == NFQA_PACKET_HDR {
            // struct nfqnl_msg_packet_hdr { be32 packet_id; be16 hw_protocol; u8 hook }
            if let Some(id) = attrs.get(NLA_HDR_LEN..NLA_HDR_LEN + 4) {
                let id = u32::from_be_bytes(id.try_into().expect("4 bytes"));
                return Message::Packet { id };
            }
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    Message::Other
}

/// A netlink socket bound to one NFQUEUE.
#[derive(Debug)]
pub struct QueueSocket {
    fd: OwnedFd,
    queue: u16,
    seq: u32,
    buf: Vec<u8>,
    /// Errors the kernel sent back for verdicts (a negative errno each), since the last look.
    errors: Vec<i32>,
}

impl QueueSocket {
    /// Opens a netlink socket, binds `queue` (metadata only, GSO packets whole, no fail-open,
    /// at most `max_len` packets waiting in the kernel) and enlarges the socket's receive
    /// buffer to `recv_buffer_bytes` (so bursts are not lost between two reads).
    ///
    /// # Errors
    ///
    /// The socket calls' errors; the kernel's refusal of a setting (`EPERM` without
    /// CAP_NET_ADMIN, `EBUSY` when another socket has the queue); `TimedOut` when the kernel
    /// does not acknowledge a setting.
    pub fn bind(queue: u16, max_len: u32, recv_buffer_bytes: usize) -> io::Result<Self> {
        let fd = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::RAW,
            Some(netlink::NETFILTER),
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        // Past net.core.rmem_max needs CAP_NET_ADMIN (we have it to bind a queue at all).
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, recv_buffer_bytes).is_err()
        {
            rustix::net::sockopt::set_socket_recv_buffer_size(&fd, recv_buffer_bytes)?;
        }
        let mut s = Self {
            fd,
            queue,
            seq: 0,
            buf: vec![0; RECV_BUF_LEN],
            errors: Vec::new(),
        };
        for setting in [
            Config::Bind,
            Config::CopyMetadataOnly,
            Config::MaxLen(max_len),
            Config::FailOpen(false),
            Config::Gso(true),
        ] {
            s.configure(setting)?;
        }
        Ok(s)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        rustix::net::sendto(
            &self.fd,
            msg,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        Ok(())
    }

    fn configure(&mut self, setting: Config) -> io::Result<()> {
        let seq = self.next_seq();
        self.send(&encode_config(seq, self.queue, setting))?;
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait(left)? {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no acknowledgement of {setting:?} from the kernel"),
                ));
            }
            let n = match rustix::net::recv(&self.fd, &mut self.buf[..], RecvFlags::DONTWAIT) {
                Ok((n, _)) => n,
                Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => continue,
                Err(e) => return Err(e.into()),
            };
            for m in decode(&self.buf[..n]) {
                match m {
                    Message::Ack { seq: s, error } if s == seq => {
                        return if error == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-error))
                        };
                    }
                    // Packets cannot come before the bind is acknowledged; anything else
                    // is not ours to answer.
                    _ => {}
                }
            }
        }
    }

    /// Waits until a message can be read or `timeout` passes; true when readable. A signal
    /// ends the wait early (false).
    ///
    /// # Errors
    ///
    /// poll's errors other than `EINTR`.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads, without blocking, what waits in the socket (at most `max` datagrams) and
    /// appends the packet ids to `ids`; returns the datagrams read. Errors the kernel sent
    /// back for verdicts are kept for [`take_errors`](Self::take_errors).
    ///
    /// # Errors
    ///
    /// recv's errors other than "nothing to read"; `ENOBUFS` means the socket overflowed and
    /// the kernel dropped packets (reading can go on).
    pub fn recv(&mut self, ids: &mut Vec<u32>, max: usize) -> io::Result<usize> {
        let mut read = 0;
        while read < max {
            let n = match rustix::net::recv(&self.fd, &mut self.buf[..], RecvFlags::DONTWAIT) {
                Ok((n, _)) => n,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            };
            read += 1;
            for m in decode(&self.buf[..n]) {
                match m {
                    Message::Packet { id } => ids.push(id),
                    Message::Ack { error, .. } if error != 0 => self.errors.push(error),
                    _ => {}
                }
            }
        }
        Ok(read)
    }

    /// Errors (negative errnos) the kernel sent back since the last call.
    pub fn take_errors(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.errors)
    }

    /// Answers one packet.
    ///
    /// # Errors
    ///
    /// sendto's errors.
    pub fn verdict(&mut self, id: u32, verdict: Verdict) -> io::Result<()> {
        let seq = self.next_seq();
        self.send(&encode_verdict(seq, self.queue, id, verdict, false))
    }

    /// Answers every packet still waiting for a verdict, oldest first, up to and including
    /// packet `id`: one message for a whole run of due packets.
    ///
    /// # Errors
    ///
    /// sendto's errors.
    pub fn verdict_up_to(&mut self, id: u32, verdict: Verdict) -> io::Result<()> {
        let seq = self.next_seq();
        self.send(&encode_verdict(seq, self.queue, id, verdict, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }

    fn ne32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    #[test]
    fn verdict_message_layout() {
        let m = encode_verdict(7, 3, 0x0102_0304, Verdict::Accept, false);
        let mut want = Vec::new();
        want.extend_from_slice(&ne32(32)); // 16 header + 4 nfgenmsg + 12 attribute
        want.extend_from_slice(&ne16(0x0301)); // queue subsystem, NFQNL_MSG_VERDICT
        want.extend_from_slice(&ne16(1)); // NLM_F_REQUEST
        want.extend_from_slice(&ne32(7));
        want.extend_from_slice(&ne32(0));
        want.extend_from_slice(&[0, 0, 0, 3]); // AF_UNSPEC, V0, queue 3 (big-endian)
        want.extend_from_slice(&ne16(12));
        want.extend_from_slice(&ne16(2)); // NFQA_VERDICT_HDR
        want.extend_from_slice(&[0, 0, 0, 1, 1, 2, 3, 4]); // NF_ACCEPT, id, big-endian
        assert_eq!(m, want);
        let b = encode_verdict(7, 3, 9, Verdict::Drop, true);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0303);
        assert_eq!(&b[24..32], &[0, 0, 0, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn config_messages_ask_for_an_ack_and_pad_attributes() {
        let bind = encode_config(1, 0, Config::Bind);
        assert_eq!(bind.len(), 28);
        assert_eq!(
            u16::from_ne_bytes([bind[6], bind[7]]),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(&bind[20..28], &[8, 0, 1, 0, 1, 0, 0, 0][..]);
        // 5-byte params: attribute length 9, padded to 12.
        let params = encode_config(2, 0, Config::CopyMetadataOnly);
        assert_eq!(params.len(), 32);
        assert_eq!(u16::from_ne_bytes([params[20], params[21]]), 9);
        assert_eq!(&params[24..29], &[0, 0, 0, 0, 1]);
        let gso = encode_config(3, 0, Config::Gso(true));
        assert_eq!(&gso[24..28], &4u32.to_be_bytes()); // flags
        assert_eq!(&gso[32..36], &4u32.to_be_bytes()); // mask
        let maxlen = encode_config(4, 0, Config::MaxLen(24_096));
        assert_eq!(&maxlen[24..28], &24_096u32.to_be_bytes());
    }

    fn packet_message(id: u32, with_other_attr_first: bool) -> Vec<u8> {
        let mut attrs = Vec::new();
        if with_other_attr_first {
            push_attr(&mut attrs, 5, &[1, 2, 3]); // e.g. NFQA_IFINDEX_INDEV, odd length
        }
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 2]);
        push_attr(&mut attrs, NFQA_PACKET_HDR, &hdr);
        let mut m = Vec::new();
        m.extend_from_slice(&ne32(u32::try_from(20 + attrs.len()).unwrap()));
        m.extend_from_slice(&ne16(0x0300));
        m.extend_from_slice(&ne16(0));
        m.extend_from_slice(&ne32(0));
        m.extend_from_slice(&ne32(0));
        m.extend_from_slice(&[2, 0, 0, 0]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn decodes_packets_and_acks() {
        let mut dgram = packet_message(42, false);
        dgram.extend_from_slice(&packet_message(0xdead_beef, true));
        let mut ack = Vec::new();
        ack.extend_from_slice(&ne32(36));
        ack.extend_from_slice(&ne16(NLMSG_ERROR));
        ack.extend_from_slice(&ne16(0));
        ack.extend_from_slice(&ne32(0));
        ack.extend_from_slice(&ne32(0));
        ack.extend_from_slice(&(-16i32).to_ne_bytes()); // EBUSY
        ack.extend_from_slice(&ne32(28)); // the request's header: len, type, flags, seq, pid
        ack.extend_from_slice(&ne16(0x0302));
        ack.extend_from_slice(&ne16(5));
        ack.extend_from_slice(&ne32(9));
        ack.extend_from_slice(&ne32(0));
        dgram.extend_from_slice(&ack);
        assert_eq!(
            decode(&dgram),
            vec![
                Message::Packet { id: 42 },
                Message::Packet { id: 0xdead_beef },
                Message::Ack { seq: 9, error: -16 },
            ]
        );
    }

    #[test]
    fn cut_or_garbage_input_decodes_to_what_is_whole() {
        let whole = packet_message(1, true);
        for cut in 0..whole.len() {
            let got = decode(&whole[..cut]);
            assert!(got.is_empty(), "cut at {cut}: {got:?}");
        }
        let mut bad_len = whole.clone();
        bad_len[..4].copy_from_slice(&ne32(3));
        assert!(decode(&bad_len).is_empty());
        // An attribute claiming more than the message holds: not a packet.
        let mut bad_attr = packet_message(1, false);
        bad_attr[20..22].copy_from_slice(&ne16(200));
        assert_eq!(decode(&bad_attr), vec![Message::Other]);
    }
}
