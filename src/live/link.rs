//! What a session and its shard share: the session's outbox (frames the shard queued and
//! the session has not written yet) and when its client was last heard from.
//!
//! The shard and the session run on the same thread (the HTTP worker that accepted the
//! connection), so the lock is never contended; it is a lock only because actix messages
//! must be `Send`.

use super::protocol::EventFrame;
use super::stall::ConnHandle;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much one session may have queued and not yet written (`live.max_buffered_frames`,
/// `live.max_buffered_bytes`); over either, it is closed with 1013.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub frames: usize,
    pub bytes: usize,
}

/// What queueing a batch of frames did.
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    /// Nothing of the batch was for this session.
    Nothing,
    /// Queued behind frames the session has already been told to take.
    Behind,
    /// Queued in an empty outbox: the session must be told to take it.
    Wake,
    /// Over a bound: the outbox was emptied, the session must close with 1013.
    Over,
}

#[derive(Default)]
struct Outbox {
    frames: VecDeque<EventFrame>,
    bytes: usize,
    /// The session has been (or is about to be) told to take what is here.
    flagged: bool,
    /// The session is over a bound and closing: nothing more is queued.
    over: bool,
}

pub struct Link {
    outbox: Mutex<Outbox>,
    epoch: Instant,
    /// When the client was last heard from, in ms since `epoch`.
    last_heard_ms: AtomicU64,
    conn: Option<ConnHandle>,
}

impl Link {
    pub fn new(conn: Option<ConnHandle>) -> Self {
        Self {
            outbox: Mutex::new(Outbox::default()),
            epoch: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            conn,
        }
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the frames of `batch` that `wanted` keeps, in order.
    pub fn queue<'a>(
        &self,
        batch: impl IntoIterator<Item = &'a EventFrame>,
        wanted: impl Fn(&EventFrame) -> bool,
        bounds: Bounds,
    ) -> Queued {
        let mut outbox = self.outbox();
        if outbox.over {
            return Queued::Nothing;
        }
        let mut any = false;
        for frame in batch.into_iter().filter(|f| wanted(f)) {
            // One frame alone is never over the byte bound (it would never be sent).
            let too_many = outbox.frames.len() >= bounds.frames;
            let too_big =
                !outbox.frames.is_empty() && outbox.bytes + frame.text.len() > bounds.bytes;
            if too_many || too_big {
                // The client resumes with `since`: what it has not taken is of no use.
                outbox.frames = VecDeque::new();
                outbox.bytes = 0;
                outbox.over = true;
                return Queued::Over;
            }
            outbox.bytes += frame.text.len();
            outbox.frames.push_back(frame.clone());
            any = true;
        }
        match (any, outbox.flagged) {
            (false, _) => Queued::Nothing,
            (true, true) => Queued::Behind,
            (true, false) => {
                outbox.flagged = true;
                Queued::Wake
            }
        }
    }

    /// The oldest frames queued, up to `max_bytes` of them (at least one), and whether more
    /// remain (the session is then still flagged: it takes them on its next turn). Once the
    /// outbox is empty, the next frame queued needs a new wake.
    pub fn take(&self, max_bytes: usize) -> (Vec<EventFrame>, bool) {
        let mut outbox = self.outbox();
        let mut taken = Vec::new();
        let mut bytes = 0;
        while let Some(next) = outbox.frames.front() {
            if !taken.is_empty() && bytes + next.text.len() > max_bytes {
                break;
            }
            bytes += next.text.len();
            taken.extend(outbox.frames.pop_front());
        }
        outbox.bytes -= bytes;
        let more = !outbox.frames.is_empty();
        if !more {
            outbox.flagged = false;
            // An outbox that grew under a burst does not keep its capacity.
            outbox.frames = VecDeque::new();
        }
        (taken, more)
    }

    /// Frames and bytes queued and not yet taken.
    pub fn queued(&self) -> (usize, usize) {
        let outbox = self.outbox();
        (outbox.frames.len(), outbox.bytes)
    }

    pub fn heard(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_heard_ms.store(ms, Ordering::Relaxed);
    }

    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Cuts the TCP connection under a session that cannot act for itself (see `stall`).
    pub fn cut(&self) {
        if let Some(conn) = &self.conn {
            conn.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::EventType;
    use crate::domain::time::Timestamp;

    fn frame(seq: i64, len: usize) -> EventFrame {
        EventFrame {
            seq,
            kind: EventType::OrderCreated,
            at: Timestamp::from_millis(0),
            text: "x".repeat(len).into(),
        }
    }

    const ROOMY: Bounds = Bounds {
        frames: 100,
        bytes: 1 << 20,
    };

    #[test]
    fn the_first_frame_wakes_and_the_next_queue_behind_until_taken() {
        let link = Link::new(None);
        assert_eq!(link.queue(&[frame(1, 10)], |_| true, ROOMY), Queued::Wake);
        assert_eq!(link.queue(&[frame(2, 10)], |_| true, ROOMY), Queued::Behind);
        assert_eq!(link.queued(), (2, 20));
        let (taken, more) = link.take(1 << 20);
        assert_eq!(taken.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(!more);
        assert_eq!(link.queued(), (0, 0));
        assert_eq!(link.queue(&[frame(3, 10)], |_| true, ROOMY), Queued::Wake);
    }

    #[test]
    fn a_turn_takes_up_to_its_bytes_and_the_rest_waits_for_the_next() {
        let link = Link::new(None);
        let batch: Vec<EventFrame> = (1..=5).map(|seq| frame(seq, 10)).collect();
        assert_eq!(link.queue(&batch, |_| true, ROOMY), Queued::Wake);
        let (taken, more) = link.take(25);
        assert_eq!(taken.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(more);
        assert_eq!(link.queued(), (3, 30));
        // Still flagged: a new frame does not ask for another wake.
        assert_eq!(link.queue(&[frame(6, 10)], |_| true, ROOMY), Queued::Behind);
        let (taken, more) = link.take(5);
        assert_eq!(taken.len(), 1, "at least one frame per turn");
        assert!(more);
        let (taken, more) = link.take(1 << 20);
        assert_eq!(taken.iter().map(|f| f.seq).collect::<Vec<_>>(), [4, 5, 6]);
        assert!(!more);
        assert_eq!(link.queue(&[frame(7, 10)], |_| true, ROOMY), Queued::Wake);
    }

    #[test]
    fn frames_not_wanted_are_not_queued() {
        let link = Link::new(None);
        let batch = [frame(1, 10), frame(2, 10), frame(3, 10)];
        assert_eq!(link.queue(&batch, |f| f.seq == 9, ROOMY), Queued::Nothing);
        assert_eq!(link.queue(&batch, |f| f.seq != 2, ROOMY), Queued::Wake);
        let taken: Vec<i64> = link.take(1 << 20).0.iter().map(|f| f.seq).collect();
        assert_eq!(taken, [1, 3]);
    }

    #[test]
    fn over_either_bound_empties_the_outbox_and_takes_nothing_more() {
        let by_bytes = Link::new(None);
        let bounds = Bounds {
            frames: 100,
            bytes: 25,
        };
        assert_eq!(
            by_bytes.queue(&[frame(1, 10), frame(2, 10)], |_| true, bounds),
            Queued::Wake
        );
        assert_eq!(
            by_bytes.queue(&[frame(3, 10)], |_| true, bounds),
            Queued::Over
        );
        assert_eq!(by_bytes.queued(), (0, 0));
        assert_eq!(
            by_bytes.queue(&[frame(4, 1)], |_| true, bounds),
            Queued::Nothing
        );

        let by_frames = Link::new(None);
        let bounds = Bounds {
            frames: 2,
            bytes: 1 << 20,
        };
        let batch = [frame(1, 1), frame(2, 1), frame(3, 1)];
        assert_eq!(by_frames.queue(&batch, |_| true, bounds), Queued::Over);
        assert!(by_frames.take(1 << 20).0.is_empty());

        let small = Link::new(None);
        let bounds = Bounds {
            frames: 100,
            bytes: 5,
        };
        assert_eq!(small.queue(&[frame(1, 50)], |_| true, bounds), Queued::Wake);
        assert_eq!(small.take(1 << 20).0.len(), 1, "a frame alone always fits");
    }
}
