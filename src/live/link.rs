//! What a shard and its sessions share: the shard's log of the frames it was sent (each
//! frame once, for all its sessions), and per session a `Link`: where the session is in
//! that log, how much it has waiting (frames and bytes of the types it wants), and when its
//! client was last heard from.
//!
//! A session that falls behind costs no memory of its own: what it has not written yet is
//! the shard's log from its cursor on, which the shard trims to the slowest session (and
//! sessions over their bounds are closed). The shard and its sessions run on the same
//! thread (the HTTP worker that accepted the connections), so the locks are never
//! contended; they are locks only because actix messages must be `Send`.

use super::filter::TypeFilter;
use super::protocol::EventFrame;
use super::stall::ConnHandle;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How much one session may have waiting (`live.max_buffered_frames`,
/// `live.max_buffered_bytes`); over either, it is closed with 1013.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub frames: usize,
    pub bytes: usize,
}

impl Bounds {
    /// How far (in frames of any type) a session's cursor may trail the log's end: a
    /// session waiting for a few frames of a rare type must not hold the whole stream.
    fn stream(self) -> u64 {
        u64::try_from(self.frames.saturating_mul(4)).unwrap_or(u64::MAX)
    }
}

/// The frames a shard was sent, from the oldest one a session still needs.
#[derive(Default)]
struct ShardLog {
    frames: VecDeque<EventFrame>,
    /// The position of `frames[0]` in the shard's stream (every frame it was sent, counted
    /// from 0).
    base: u64,
}

impl ShardLog {
    /// The position the next frame will have.
    fn end(&self) -> u64 {
        self.base + self.frames.len() as u64
    }

    fn get(&self, pos: u64) -> Option<&EventFrame> {
        self.frames
            .get(usize::try_from(pos.checked_sub(self.base)?).ok()?)
    }

    fn append(&mut self, batch: &[EventFrame]) -> u64 {
        let first = self.end();
        self.frames.extend(batch.iter().cloned());
        first
    }

    /// Forgets the frames before `pos` (no session needs them).
    fn trim_before(&mut self, pos: u64) {
        while self.base < pos && self.frames.pop_front().is_some() {
            self.base += 1;
        }
        if self.frames.is_empty() {
            // A log that grew under a burst does not keep its capacity.
            self.frames = VecDeque::new();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.frames.len()
    }
}

/// A shard's log, shared with its sessions' links.
#[derive(Clone, Default)]
pub struct SharedLog(Arc<Mutex<ShardLog>>);

impl SharedLog {
    /// Appends frames; returns the position of the first.
    pub fn append(&self, batch: &[EventFrame]) -> u64 {
        lock(&self.0).append(batch)
    }

    /// Keeps what the sessions need: from `keep` on (`None`: nothing).
    pub fn trim(&self, keep: Option<u64>) {
        let mut log = lock(&self.0);
        let end = log.end();
        log.trim_before(keep.unwrap_or(end));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.0).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What queueing a batch of frames did to one session.
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    /// Nothing of the batch was for this session.
    Nothing,
    /// It waits behind frames the session has already been told to take.
    Behind,
    /// The session had nothing waiting: it must be told to take it.
    Wake,
    /// Over a bound: the session must close with 1013; nothing more is queued for it.
    Over,
}

struct Cursor {
    /// The position in the shard's log of the next frame to consider.
    next: u64,
    /// Frames (of the wanted types) waiting from `next` on, and their bytes.
    frames: usize,
    bytes: usize,
    filter: TypeFilter,
    /// Events up to this seq are not sent: the client has them.
    skip_upto: i64,
    /// The session has been (or is about to be) told to take what waits.
    flagged: bool,
    /// Over a bound, closing: nothing more is queued.
    over: bool,
}

impl Cursor {
    fn wants(&self, frame: &EventFrame) -> bool {
        frame.seq > self.skip_upto && self.filter.matches(frame.kind)
    }
}

pub struct Link {
    log: SharedLog,
    cursor: Mutex<Cursor>,
    epoch: Instant,
    /// When the client was last heard from, in ms since `epoch`.
    last_heard_ms: AtomicU64,
    conn: Option<ConnHandle>,
}

impl Link {
    pub fn new(log: SharedLog, filter: TypeFilter, conn: Option<ConnHandle>) -> Self {
        Self {
            log,
            cursor: Mutex::new(Cursor {
                next: 0,
                frames: 0,
                bytes: 0,
                filter,
                skip_upto: 0,
                flagged: false,
                over: false,
            }),
            epoch: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            conn,
        }
    }

    /// The session joins its shard: it is sent what the log gets from now on, except the
    /// events up to `skip_upto`.
    pub fn join(&self, skip_upto: i64) {
        let end = lock(&self.log.0).end();
        let mut cursor = lock(&self.cursor);
        cursor.next = end;
        cursor.skip_upto = skip_upto;
    }

    /// Counts what `batch`, just appended to the log at `first`, holds for this session.
    pub fn queue(&self, first: u64, batch: &[EventFrame], bounds: Bounds) -> Queued {
        let mut cursor = lock(&self.cursor);
        if cursor.over {
            return Queued::Nothing;
        }
        let end = first + batch.len() as u64;
        let (mut frames, mut bytes, mut first_wanted) = (0, 0, None);
        for (i, frame) in batch.iter().enumerate() {
            if cursor.wants(frame) {
                first_wanted.get_or_insert(i as u64);
                frames += 1;
                bytes += frame.text.len();
            }
        }
        if cursor.frames == 0 {
            // Nothing waited: the cursor need not hold the log back before this batch.
            cursor.next = first_wanted.map_or(end, |i| first + i);
            if frames == 0 {
                return Queued::Nothing;
            }
        }
        cursor.frames += frames;
        cursor.bytes += bytes;
        // One frame alone is never over the byte bound (it would never be sent).
        if cursor.frames > bounds.frames
            || (cursor.frames > 1 && cursor.bytes > bounds.bytes)
            || end - cursor.next > bounds.stream()
        {
            cursor.over = true;
            cursor.frames = 0;
            cursor.bytes = 0;
            return Queued::Over;
        }
        if frames == 0 {
            Queued::Nothing
        } else if cursor.flagged {
            Queued::Behind
        } else {
            cursor.flagged = true;
            Queued::Wake
        }
    }

    /// The position before which this session needs nothing of the log (`None`: it needs
    /// nothing at all).
    pub fn needs_from(&self) -> Option<u64> {
        let cursor = lock(&self.cursor);
        (cursor.frames > 0 && !cursor.over).then_some(cursor.next)
    }

    /// The oldest frames waiting, up to `max_bytes` of them (at least one), and whether more
    /// remain (the session is then still flagged: it takes them on its next turn). Once
    /// nothing waits, the next frame queued needs a new wake.
    pub fn take(&self, max_bytes: usize) -> (Vec<EventFrame>, bool) {
        let mut cursor = lock(&self.cursor);
        let log = lock(&self.log.0);
        let mut taken = Vec::new();
        let mut bytes = 0;
        while cursor.frames > 0 {
            let Some(frame) = log.get(cursor.next) else {
                // Trimmed past it: cannot happen while it waits (the shard keeps what a
                // waiting session needs); give up on what was counted.
                cursor.frames = 0;
                cursor.bytes = 0;
                break;
            };
            if !cursor.wants(frame) {
                cursor.next += 1;
                continue;
            }
            if !taken.is_empty() && bytes + frame.text.len() > max_bytes {
                break;
            }
            bytes += frame.text.len();
            taken.push(frame.clone());
            cursor.next += 1;
            cursor.frames -= 1;
            cursor.bytes -= frame.text.len();
        }
        let more = cursor.frames > 0;
        if !more {
            cursor.flagged = false;
            cursor.next = log.end();
        }
        (taken, more)
    }

    /// Frames and bytes waiting.
    #[cfg(test)]
    fn queued(&self) -> (usize, usize) {
        let cursor = lock(&self.cursor);
        (cursor.frames, cursor.bytes)
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
        frame_of(seq, len, EventType::OrderCreated)
    }

    fn frame_of(seq: i64, len: usize, kind: EventType) -> EventFrame {
        EventFrame {
            seq,
            kind,
            at: Timestamp::from_millis(0),
            text: "x".repeat(len).into(),
        }
    }

    const ROOMY: Bounds = Bounds {
        frames: 100,
        bytes: 1 << 20,
    };

    /// A shard's log with its sessions, as the shard drives them.
    struct Shard {
        log: SharedLog,
    }

    impl Shard {
        fn new() -> Self {
            Self {
                log: SharedLog::default(),
            }
        }

        fn link(&self, filter: TypeFilter) -> Link {
            let link = Link::new(self.log.clone(), filter, None);
            link.join(0);
            link
        }

        fn publish(&self, batch: &[EventFrame], links: &[&Link], bounds: Bounds) -> Vec<Queued> {
            let first = self.log.append(batch);
            let queued = links
                .iter()
                .map(|l| l.queue(first, batch, bounds))
                .collect();
            self.log
                .trim(links.iter().filter_map(|l| l.needs_from()).min());
            queued
        }
    }

    fn seqs(frames: &[EventFrame]) -> Vec<i64> {
        frames.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn the_first_frame_wakes_and_the_next_wait_behind_until_taken() {
        let shard = Shard::new();
        let link = shard.link(TypeFilter::ALL);
        assert_eq!(
            shard.publish(&[frame(1, 10)], &[&link], ROOMY),
            [Queued::Wake]
        );
        assert_eq!(
            shard.publish(&[frame(2, 10)], &[&link], ROOMY),
            [Queued::Behind]
        );
        assert_eq!(link.queued(), (2, 20));
        let (taken, more) = link.take(1 << 20);
        assert_eq!(seqs(&taken), [1, 2]);
        assert!(!more);
        assert_eq!(link.queued(), (0, 0));
        assert_eq!(
            shard.publish(&[frame(3, 10)], &[&link], ROOMY),
            [Queued::Wake]
        );
    }

    #[test]
    fn a_turn_takes_up_to_its_bytes_and_the_rest_waits_for_the_next() {
        let shard = Shard::new();
        let link = shard.link(TypeFilter::ALL);
        let batch: Vec<EventFrame> = (1..=5).map(|seq| frame(seq, 10)).collect();
        assert_eq!(shard.publish(&batch, &[&link], ROOMY), [Queued::Wake]);
        let (taken, more) = link.take(25);
        assert_eq!(seqs(&taken), [1, 2]);
        assert!(more);
        assert_eq!(link.queued(), (3, 30));
        // Still flagged: a new frame does not ask for another wake.
        assert_eq!(
            shard.publish(&[frame(6, 10)], &[&link], ROOMY),
            [Queued::Behind]
        );
        let (taken, more) = link.take(5);
        assert_eq!(taken.len(), 1, "at least one frame per turn");
        assert!(more);
        let (taken, more) = link.take(1 << 20);
        assert_eq!(seqs(&taken), [4, 5, 6]);
        assert!(!more);
        assert_eq!(
            shard.publish(&[frame(7, 10)], &[&link], ROOMY),
            [Queued::Wake]
        );
    }

    #[test]
    fn sessions_share_one_log_trimmed_to_the_slowest() {
        let shard = Shard::new();
        let (fast, slow) = (shard.link(TypeFilter::ALL), shard.link(TypeFilter::ALL));
        let batch: Vec<EventFrame> = (1..=4).map(|seq| frame(seq, 10)).collect();
        shard.publish(&batch, &[&fast, &slow], ROOMY);
        assert_eq!(seqs(&fast.take(1 << 20).0), [1, 2, 3, 4]);
        shard.publish(&[frame(5, 10)], &[&fast, &slow], ROOMY);
        assert_eq!(shard.log.len(), 5, "the slow one still needs them all");
        assert_eq!(seqs(&slow.take(25).0), [1, 2]);
        assert_eq!(seqs(&fast.take(1 << 20).0), [5]);
        shard.publish(&[frame(6, 10)], &[&fast, &slow], ROOMY);
        assert_eq!(shard.log.len(), 4, "3..6 for the slow one");
        assert_eq!(seqs(&slow.take(1 << 20).0), [3, 4, 5, 6]);
        assert_eq!(seqs(&fast.take(1 << 20).0), [6]);
        shard.publish(&[frame(7, 10)], &[&fast, &slow], ROOMY);
        assert_eq!(shard.log.len(), 1);
    }

    #[test]
    fn only_wanted_frames_count_and_are_taken() {
        let shard = Shard::new();
        let orders = shard.link(TypeFilter::parse("order.created").unwrap());
        let batch = [
            frame_of(1, 10, EventType::CustomerCreated),
            frame(2, 10),
            frame_of(3, 10, EventType::CustomerCreated),
            frame(4, 10),
        ];
        assert_eq!(
            shard.publish(&batch[..1], &[&orders], ROOMY),
            [Queued::Nothing]
        );
        assert_eq!(shard.log.len(), 0, "nothing waits: nothing kept");
        assert_eq!(
            shard.publish(&batch[1..], &[&orders], ROOMY),
            [Queued::Wake]
        );
        assert_eq!(orders.queued(), (2, 20));
        assert_eq!(seqs(&orders.take(1 << 20).0), [2, 4]);

        let resumed = Link::new(shard.log.clone(), TypeFilter::ALL, None);
        resumed.join(5);
        assert_eq!(
            shard.publish(&[frame(5, 10), frame(6, 10)], &[&resumed], ROOMY),
            [Queued::Wake]
        );
        assert_eq!(seqs(&resumed.take(1 << 20).0), [6], "it had 5 already");
    }

    #[test]
    fn over_a_bound_the_session_is_closed_and_holds_nothing() {
        let shard = Shard::new();
        let by_bytes = shard.link(TypeFilter::ALL);
        let bounds = Bounds {
            frames: 100,
            bytes: 25,
        };
        assert_eq!(
            shard.publish(&[frame(1, 10), frame(2, 10)], &[&by_bytes], bounds),
            [Queued::Wake]
        );
        assert_eq!(
            shard.publish(&[frame(3, 10)], &[&by_bytes], bounds),
            [Queued::Over]
        );
        assert_eq!(by_bytes.queued(), (0, 0));
        assert_eq!(shard.log.len(), 0, "a closing session holds no frames");
        assert_eq!(
            shard.publish(&[frame(4, 1)], &[&by_bytes], bounds),
            [Queued::Nothing]
        );

        let by_frames = shard.link(TypeFilter::ALL);
        let bounds = Bounds {
            frames: 2,
            bytes: 1 << 20,
        };
        let batch = [frame(5, 1), frame(6, 1), frame(7, 1)];
        assert_eq!(shard.publish(&batch, &[&by_frames], bounds), [Queued::Over]);
        assert!(by_frames.take(1 << 20).0.is_empty());

        let small = shard.link(TypeFilter::ALL);
        let bounds = Bounds {
            frames: 100,
            bytes: 5,
        };
        assert_eq!(
            shard.publish(&[frame(8, 50)], &[&small], bounds),
            [Queued::Wake]
        );
        assert_eq!(small.take(1 << 20).0.len(), 1, "a frame alone always fits");
    }

    #[test]
    fn a_rare_type_waiting_does_not_hold_the_whole_stream() {
        let shard = Shard::new();
        let rare = shard.link(TypeFilter::parse("customer.created").unwrap());
        let bounds = Bounds {
            frames: 2,
            bytes: 1 << 20,
        };
        let customer = frame_of(1, 10, EventType::CustomerCreated);
        assert_eq!(shard.publish(&[customer], &[&rare], bounds), [Queued::Wake]);
        // It never takes its frame; eight frames of other types later it is too far behind.
        let others: Vec<EventFrame> = (2..=9).map(|seq| frame(seq, 10)).collect();
        assert_eq!(
            shard.publish(&others[..7], &[&rare], bounds),
            [Queued::Nothing]
        );
        assert_eq!(
            shard.publish(&others[7..], &[&rare], bounds),
            [Queued::Over]
        );
    }
}
