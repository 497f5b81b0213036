//! Where a worker channel's requests come from and its replies go: the channel's socket,
//! and its shared-memory mailbox once the daemon sent one (jobs), polled, then slept on.

use std::os::fd::OwnedFd;

use crate::mailbox::{self, Mailbox};
use crate::wire::{self, Broken, Reply, Request};

/// How often a polling channel with a mailbox looks at its socket too: every this many
/// polls of the mailbox (some microseconds).
const SOCKET_POLLS: u32 = 512;

/// Where one channel's requests come from: its socket, and its mailbox once it has one.
#[derive(Default)]
pub(crate) struct Inbox {
    /// The channel's mailbox, once the daemon sent it.
    pub(crate) mailbox: Option<Mailbox>,
    /// The last mailbox request taken.
    seen: u32,
    buf: Vec<u8>,
}

impl Inbox {
    /// The next request, its descriptors, and whether it came through the mailbox. Polls
    /// both for [`wire::POLL`], then sleeps on the socket (announced in the mailbox, so the
    /// daemon sends a wake-up with its next job).
    pub(crate) fn next(&mut self, sock: &OwnedFd) -> Result<(Request, Vec<OwnedFd>, bool), Broken> {
        let mut start = std::time::Instant::now();
        let mut polls = 0u32;
        loop {
            if let Some(mailbox) = &self.mailbox {
                if mailbox.take_request(&mut self.seen, &mut self.buf) {
                    let req = postcard::from_bytes(&self.buf).map_err(|e| Broken::Local(e.to_string()))?;
                    return Ok((req, Vec::new(), true));
                }
            }
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(8) {
                std::hint::spin_loop();
                continue;
            }
            let (req, fds) = if start.elapsed() < wire::POLL {
                // Once jobs come through the mailbox, the socket carries only what the
                // mailbox cannot (large requests, wake-ups): it is looked at every
                // SOCKET_POLLS polls, as a receive is a system call and a job landing in
                // the mailbox meanwhile waits for it to return (microseconds under gVisor,
                // where the lent GPU machines run).
                if self.mailbox.is_some() && !polls.is_multiple_of(SOCKET_POLLS) {
                    std::hint::spin_loop();
                    continue;
                }
                match wire::try_recv::<Request>(sock)? {
                    Some(got) => got,
                    None => {
                        std::hint::spin_loop();
                        continue;
                    }
                }
            } else {
                let waiting = self.mailbox.as_ref().is_some_and(|m| {
                    m.worker_sleeping(true);
                    m.request_waiting(self.seen)
                });
                let got = if waiting { None } else { Some(wire::recv::<Request>(sock)) };
                if let Some(m) = &self.mailbox {
                    m.worker_sleeping(false);
                }
                start = std::time::Instant::now();
                match got {
                    None => continue,
                    Some(got) => got?,
                }
            };
            match req {
                Request::Wake => continue,
                req => return Ok((req, fds, false)),
            }
        }
    }

    /// Sends `reply` back the way its request came (a reply too large for the mailbox is
    /// cut to fit: only error messages can be).
    pub(crate) fn answer(
        &self,
        sock: &OwnedFd,
        reply: Reply,
        fds: &[std::os::fd::BorrowedFd<'_>],
        via_mailbox: bool,
    ) -> Result<(), Broken> {
        let Some(mailbox) = self.mailbox.as_ref().filter(|_| via_mailbox) else {
            return wire::send(sock, &reply, fds);
        };
        let mut bytes = postcard::to_stdvec(&reply).map_err(|e| Broken::Local(e.to_string()))?;
        if bytes.len() > mailbox::AREA {
            if let Reply::Err { code, message, fatal } = reply {
                let message: String = message.chars().take(mailbox::AREA / 8).collect();
                bytes = postcard::to_stdvec(&Reply::Err { code, message, fatal })
                    .map_err(|e| Broken::Local(e.to_string()))?;
            }
        }
        mailbox.put_reply(self.seen, &bytes).map_err(|e| Broken::Local(e.message))?;
        if mailbox.daemon_sleeps() {
            wire::send(sock, &Reply::Wake, &[])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use accel_uapi::Errno;

    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        wire::socket_pair().unwrap()
    }

    /// A worker channel's loop without a GPU: takes a mailbox, answers `Free { id }` after
    /// `id` microseconds with `Err { code: EINVAL, message: id }`, `Hello` over the socket.
    fn fake_worker(sock: OwnedFd) -> std::thread::JoinHandle<u32> {
        std::thread::spawn(move || {
            let mut inbox = Inbox::default();
            let mut via = 0;
            loop {
                let (req, fds, via_mailbox) = match inbox.next(&sock) {
                    Ok(r) => r,
                    Err(_) => return via,
                };
                via += u32::from(via_mailbox);
                let reply = match req {
                    Request::Mailbox => {
                        inbox.mailbox = Some(Mailbox::import(fds.into_iter().next().unwrap()).unwrap());
                        Reply::Ok
                    }
                    Request::Free { id } => {
                        std::thread::sleep(std::time::Duration::from_micros(id));
                        Reply::Err { code: Errno::EINVAL, message: id.to_string(), fatal: false }
                    }
                    _ => Reply::Ok,
                };
                inbox.answer(&sock, reply, &[], via_mailbox).unwrap();
            }
        })
    }

    #[test]
    fn jobs_cross_the_mailbox_both_sides_sleep_and_wake_and_sockets_still_work() {
        let (daemon, worker) = pair();
        let fake = fake_worker(worker);
        let mailbox = Mailbox::new().unwrap();
        assert!(matches!(wire::call(&daemon, &Request::Mailbox, &[mailbox.fd()]).unwrap().0, Reply::Ok));
        // Quick answers, slow ones (the daemon sleeps: 2 ms is past its poll here), and gaps
        // after which the worker sleeps and must be woken.
        for (i, delay) in [0u64, 2000, 0, 5, 3000, 0].into_iter().enumerate() {
            if i % 2 == 1 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let reply = wire::call_mailbox(&daemon, &mailbox, &Request::Free { id: delay }, &|| false).unwrap();
            let Some(Reply::Err { code: Errno::EINVAL, message, .. }) = reply else { panic!("{reply:?}") };
            assert_eq!(message, delay.to_string());
            // A socket request between jobs gets its own answer, stale wake-ups skipped.
            assert!(matches!(wire::call(&daemon, &Request::Hello, &[]).unwrap().0, Reply::Ok));
        }
        // Done early: the reply is left behind, and the next job's is not confused with it.
        assert!(wire::call_mailbox(&daemon, &mailbox, &Request::Free { id: 1000 }, &|| true).unwrap().is_none());
        let reply = wire::call_mailbox(&daemon, &mailbox, &Request::Free { id: 7 }, &|| false).unwrap();
        assert!(matches!(reply, Some(Reply::Err { ref message, .. }) if message == "7"), "{reply:?}");
        drop(daemon);
        assert_eq!(fake.join().unwrap(), 8, "every job came through the mailbox");
    }
}
