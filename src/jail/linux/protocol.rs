//! The messages between httpjail and its jail supervisor, and their encoding.
//!
//! One Unix stream socket pair connects the two. Each message is a frame: a 4-byte
//! little-endian length (of what follows), a 1-byte kind, the payload. File descriptors ride
//! along as `SCM_RIGHTS` on the same `sendmsg` as their frame and are received close-on-exec.
//! Both ends are the same binary, so the encoding needs no versioning; it is still checked
//! field by field, and anything unexpected ends the jail rather than being guessed at.
//!
//! The same [`Encoder`]/[`Decoder`] serve the short messages between the supervisor and the
//! jail's init, which travel over pipes.

use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use super::{ExitOutcome, RunAs, UserIdentity};

/// Frames larger than this are refused: the largest legitimate one is the spec, whose
/// environment and arguments the kernel itself limits to a few MiB at `exec`.
const MAX_FRAME: usize = 64 << 20;
/// At most this many descriptors arrive with one frame (the listeners: 8).
const MAX_FDS: usize = 16;

/// Kinds of frames. httpjail to supervisor: `SPEC`, `START`, `SIGNAL`, `KILL`.
/// Supervisor to httpjail: `READY` (with the listeners), `FAILED`, `EXIT`.
pub(crate) mod kind {
    pub(crate) const SPEC: u8 = 1;
    pub(crate) const START: u8 = 2;
    pub(crate) const SIGNAL: u8 = 3;
    pub(crate) const KILL: u8 = 4;
    pub(crate) const READY: u8 = 10;
    pub(crate) const FAILED: u8 = 11;
    pub(crate) const EXIT: u8 = 12;
}

/// A received frame.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Why the other end could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("the other end closed the channel")]
    Closed,
    #[error("reading the channel failed: {0}")]
    Os(#[from] Errno),
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// Sends one frame, with `fds` attached to its first byte.
pub(crate) fn write_frame(
    socket: BorrowedFd<'_>,
    kind: u8,
    payload: &[u8],
    fds: &[RawFd],
) -> Result<(), Errno> {
    let len = u32::try_from(payload.len() + 1).map_err(|_| Errno::EMSGSIZE)?;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind;
    let mut sent = 0;
    let total = head.len() + payload.len();
    while sent < total {
        let (a, b) = if sent < head.len() {
            (&head[sent..], payload)
        } else {
            (&[][..], &payload[sent - head.len()..])
        };
        let iov = [IoSlice::new(a), IoSlice::new(b)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if sent == 0 && !fds.is_empty() {
            &rights
        } else {
            &[]
        };
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one frame, blocking.
pub(crate) fn read_frame(socket: BorrowedFd<'_>) -> Result<Frame, ReadError> {
    let mut fds = Vec::new();
    let mut head = [0u8; 5];
    read_exact(socket, &mut head, &mut fds)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(ReadError::Malformed("frame length"));
    }
    let mut payload = vec![0u8; len - 1];
    read_exact(socket, &mut payload, &mut fds)?;
    Ok(Frame {
        kind: head[4],
        payload,
        fds,
    })
}

fn read_exact(
    socket: BorrowedFd<'_>,
    mut buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), ReadError> {
    while !buf.is_empty() {
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(buf)];
        let received = match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                for cmsg in msg.cmsgs().map_err(ReadError::Os)? {
                    if let ControlMessageOwned::ScmRights(raw) = cmsg {
                        for fd in raw {
                            // SAFETY: the kernel just installed this descriptor in our table
                            // for us (SCM_RIGHTS); nothing else owns it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                    return Err(ReadError::Malformed("too many file descriptors"));
                }
                msg.bytes
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if received == 0 {
            return Err(ReadError::Closed);
        }
        buf = &mut buf[received..];
    }
    Ok(())
}

/// Builds a payload.
#[derive(Debug, Default)]
pub(crate) struct Encoder(pub(crate) Vec<u8>);

impl Encoder {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Lengths are bounded by MAX_FRAME long before they could overflow u32.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
        self
    }

    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
}

/// Reads a payload written by [`Encoder`]; every getter fails on truncation.
#[derive(Debug)]
pub(crate) struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    pub(crate) fn new(payload: &'a [u8]) -> Self {
        Self(payload)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        if self.0.len() < n {
            return Err(ReadError::Malformed("truncated payload"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ReadError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ReadError> {
        let b = self.take(4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], ReadError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    pub(crate) fn string(&mut self) -> Result<String, ReadError> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    pub(crate) fn os_string(&mut self) -> Result<OsString, ReadError> {
        Ok(OsString::from_vec(self.bytes()?.to_vec()))
    }

    /// A count of items that follow, bounded by the bytes left (each item takes at least one).
    pub(crate) fn count(&mut self) -> Result<usize, ReadError> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return Err(ReadError::Malformed("item count"));
        }
        Ok(n)
    }

    pub(crate) fn finish(self) -> Result<(), ReadError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ReadError::Malformed("trailing bytes"))
        }
    }
}

/// What the supervisor needs to know about the command. Built from [`super::JailSpec`]; the
/// standard streams, if given, travel as descriptors beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireSpec {
    pub(crate) command: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) cwd: PathBuf,
    pub(crate) run_as: RunAs,
    /// Which of stdin, stdout, stderr are replaced by the descriptors sent with the spec, in
    /// that order (bit 0 = stdin).
    pub(crate) stdio_mask: u8,
}

impl WireSpec {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.u32(len_u32(self.command.len()));
        for arg in &self.command {
            e.bytes(arg.as_bytes());
        }
        e.u32(len_u32(self.env.len()));
        for (k, v) in &self.env {
            e.bytes(k.as_bytes()).bytes(v.as_bytes());
        }
        e.bytes(self.cwd.as_os_str().as_bytes());
        match &self.run_as {
            RunAs::Current => {
                e.u8(0);
            }
            RunAs::User(u) => {
                e.u8(1)
                    .u32(u.uid)
                    .u32(u.gid)
                    .bytes(u.name.as_bytes())
                    .bytes(u.home.as_os_str().as_bytes());
                e.u32(len_u32(u.groups.len()));
                for g in &u.groups {
                    e.u32(*g);
                }
            }
        }
        e.u8(self.stdio_mask);
        e.0
    }

    pub(crate) fn decode(payload: &[u8]) -> Result<Self, ReadError> {
        let mut d = Decoder::new(payload);
        let command = (0..d.count()?)
            .map(|_| d.os_string())
            .collect::<Result<Vec<_>, _>>()?;
        let env = (0..d.count()?)
            .map(|_| Ok((d.os_string()?, d.os_string()?)))
            .collect::<Result<Vec<_>, ReadError>>()?;
        let cwd = PathBuf::from(d.os_string()?);
        let run_as = match d.u8()? {
            0 => RunAs::Current,
            1 => {
                let uid = d.u32()?;
                let gid = d.u32()?;
                let name = d.string()?;
                let home = PathBuf::from(d.os_string()?);
                let groups = (0..d.count()?)
                    .map(|_| d.u32())
                    .collect::<Result<Vec<_>, _>>()?;
                RunAs::User(UserIdentity {
                    name,
                    uid,
                    gid,
                    groups,
                    home,
                })
            }
            _ => return Err(ReadError::Malformed("run_as")),
        };
        let stdio_mask = d.u8()?;
        d.finish()?;
        Ok(Self {
            command,
            env,
            cwd,
            run_as,
            stdio_mask,
        })
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Encodes how the command ended, for init → supervisor → httpjail.
pub(crate) fn encode_outcome(outcome: &ExitOutcome) -> Vec<u8> {
    let mut e = Encoder::default();
    match outcome {
        ExitOutcome::Exited(code) => e.u8(0).i32(*code),
        ExitOutcome::Signaled(sig) => e.u8(1).i32(*sig),
        ExitOutcome::NotFound => e.u8(2),
        ExitOutcome::NotExecutable { errno } => e.u8(3).i32(*errno),
        ExitOutcome::Failed(message) => e.u8(4).str(message),
    };
    e.0
}

pub(crate) fn decode_outcome(payload: &[u8]) -> Result<ExitOutcome, ReadError> {
    let mut d = Decoder::new(payload);
    let outcome = match d.u8()? {
        0 => ExitOutcome::Exited(d.i32()?),
        1 => ExitOutcome::Signaled(d.i32()?),
        2 => ExitOutcome::NotFound,
        3 => ExitOutcome::NotExecutable { errno: d.i32()? },
        4 => ExitOutcome::Failed(d.string()?),
        _ => return Err(ReadError::Malformed("outcome")),
    };
    d.finish()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn spec() -> WireSpec {
        WireSpec {
            command: vec![
                "sh".into(),
                "-c".into(),
                OsString::from_vec(vec![0xff, b'x']),
            ],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("EMPTY".into(), "".into()),
            ],
            cwd: "/tmp".into(),
            run_as: RunAs::User(UserIdentity {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 27, 44],
                home: "/home/alice".into(),
            }),
            stdio_mask: 0b010,
        }
    }

    #[test]
    fn spec_round_trips_including_non_utf8_arguments() {
        let s = spec();
        assert_eq!(WireSpec::decode(&s.encode()).unwrap(), s);
        let current = WireSpec {
            run_as: RunAs::Current,
            ..spec()
        };
        assert_eq!(WireSpec::decode(&current.encode()).unwrap(), current);
    }

    #[test]
    fn truncated_or_padded_spec_is_refused() {
        let bytes = spec().encode();
        for cut in [0, 1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(WireSpec::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(WireSpec::decode(&padded).is_err());
    }

    #[test]
    fn outcomes_round_trip() {
        for o in [
            ExitOutcome::Exited(3),
            ExitOutcome::Signaled(9),
            ExitOutcome::NotFound,
            ExitOutcome::NotExecutable { errno: 13 },
            ExitOutcome::Failed("cannot enter `/x`".into()),
        ] {
            assert_eq!(decode_outcome(&encode_outcome(&o)).unwrap(), o);
        }
    }

    #[test]
    fn frames_carry_payload_and_descriptors() {
        use std::os::fd::AsFd;
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let big = vec![7u8; 300_000];
        let writer = std::thread::spawn(move || {
            write_frame(a.as_fd(), kind::READY, b"hello", &[file.as_raw_fd()]).unwrap();
            write_frame(a.as_fd(), kind::SPEC, &big, &[]).unwrap();
        });
        let first = read_frame(b.as_fd()).unwrap();
        assert_eq!(
            (first.kind, first.payload.as_slice()),
            (kind::READY, &b"hello"[..])
        );
        assert_eq!(first.fds.len(), 1);
        let flags = nix::fcntl::fcntl(&first.fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received descriptors are close-on-exec"
        );
        let second = read_frame(b.as_fd()).unwrap();
        assert_eq!(second.payload.len(), 300_000);
        assert!(second.fds.is_empty());
        writer.join().unwrap();
        assert!(matches!(read_frame(b.as_fd()), Err(ReadError::Closed)));
    }
}
