//! An in-process message bus with JetStream's delivery semantics, for the single-process
//! (`mailvault` all-in-one) mode: the same pipeline code runs over it as over NATS.
//!
//! * **Streams** capture subjects by filter (`*` = one token, `>` = one or more trailing
//!   tokens), hold at most `max_msgs` messages and `max_bytes` payload bytes: a publish into a
//!   full stream **waits** (back-pressure); nothing is ever dropped for lack of room.
//! * **De-duplication**: a publish carrying [`MSG_ID_HEADER`] whose id was seen within
//!   `duplicate_window` is answered with the original sequence and `duplicate = true`.
//! * **Retention = interest** (JetStream `RetentionPolicy::Interest`): a message is kept until
//!   every consumer whose filter matched it *when it was published* has acked or termed it,
//!   then removed. A message no consumer is interested in is not retained (counted in
//!   [`StreamInfo::unrouted`]) — create consumers before publishing.
//! * **Durable pull consumers** ([`Consumer`], cloneable: clones are competing workers):
//!   [`Consumer::fetch`] hands out up to N messages, each with its delivery attempt (1 on first
//!   delivery), at most `max_ack_pending` unsettled at once. A delivered message is invisible to
//!   other workers until settled or until its deadline passes: `ack_wait` after delivery or
//!   after the last `progress`, or the `nak` delay. Then it is redelivered (attempt + 1).
//!   `ack`/`term` settle it; an ack from a stale delivery (one that was redelivered meanwhile)
//!   still settles — the work was done — while a stale `nak`/`progress` is ignored.
//! * Everything is in memory. The single-process mode keeps guarantee 1 without persisting the
//!   bus: its collector publisher waits until the aggregator settled what it published (see
//!   [`Bus::wait_settled`]) before the collector may checkpoint, so a killed process loses
//!   only work that is read again from Exchange on the next pass.
//!
//! Time is tokio's ([`tokio::time::Instant`]), so tests can pause and advance it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

/// The de-duplication header, as in JetStream.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Message headers.
pub type Headers = BTreeMap<String, String>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("no stream {0:?}")]
    NoStream(String),
    #[error("no stream captures subject {0:?}")]
    NoRoute(String),
    #[error("stream {stream:?}: subject filter {filter:?} overlaps stream {other:?}")]
    Overlap {
        stream: String,
        filter: String,
        other: String,
    },
    #[error("stream {stream:?}: {reason}")]
    InvalidConfig { stream: String, reason: String },
    #[error("stream {stream:?}: message of {size} bytes exceeds max_bytes {max}")]
    TooLarge {
        stream: String,
        size: usize,
        max: u64,
    },
}

/// Whether `subject` matches `filter` (NATS wildcards: `*` one token, `>` the rest, ≥ 1 token).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether two filters can match a common subject.
fn filters_overlap(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A stream's settings.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    /// Messages held at most; a publish beyond waits.
    pub max_msgs: usize,
    /// Payload bytes held at most; a publish beyond waits (one message larger is refused).
    pub max_bytes: u64,
    pub duplicate_window: Duration,
}

impl StreamConfig {
    pub fn new(name: &str, subjects: &[&str]) -> Self {
        StreamConfig {
            name: name.to_owned(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            max_msgs: 10_000,
            max_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// A durable pull consumer's settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub name: String,
    /// Subjects delivered (empty = every subject of the stream).
    pub filter_subjects: Vec<String>,
    pub ack_wait: Duration,
    /// Unsettled deliveries at most (all workers together).
    pub max_ack_pending: usize,
}

impl ConsumerConfig {
    pub fn new(name: &str, filter_subjects: &[&str]) -> Self {
        ConsumerConfig {
            name: name.to_owned(),
            filter_subjects: filter_subjects.iter().map(|s| (*s).to_owned()).collect(),
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 2000,
        }
    }

    fn wants(&self, subject: &str) -> bool {
        self.filter_subjects.is_empty()
            || self
                .filter_subjects
                .iter()
                .any(|f| subject_matches(f, subject))
    }
}

/// What a publish got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    pub seq: u64,
    /// Same message id seen within the window: not stored again; `seq` is the original's.
    pub duplicate: bool,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub stream: String,
    pub seq: u64,
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
}

/// Counters of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamInfo {
    /// Messages held now.
    pub messages: usize,
    pub bytes: u64,
    pub last_seq: u64,
    pub duplicates: u64,
    /// Messages published while no consumer was interested (not retained).
    pub unrouted: u64,
}

/// Counters of a consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Interested messages never delivered yet.
    pub num_pending: usize,
    /// Delivered, not yet settled.
    pub num_ack_pending: usize,
    /// Of those, due for redelivery now.
    pub num_redelivery_due: usize,
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub termed: u64,
}

struct Stored {
    subject: String,
    headers: Headers,
    payload: Bytes,
    /// Consumers that still have to settle it.
    interest: HashSet<String>,
}

struct InFlight {
    attempt: u64,
    /// Redeliverable from then on.
    deadline: Instant,
}

struct ConsumerState {
    cfg: ConsumerConfig,
    /// Never-delivered interested messages, in order.
    fresh: VecDeque<u64>,
    in_flight: BTreeMap<u64, InFlight>,
    info: ConsumerInfo,
}

struct StreamState {
    cfg: StreamConfig,
    next_seq: u64,
    msgs: BTreeMap<u64, Stored>,
    bytes: u64,
    /// msg id → (seq, seen at), and the ids in arrival order for expiry.
    dedupe: HashMap<String, (u64, Instant)>,
    dedupe_order: VecDeque<(Instant, String)>,
    consumers: HashMap<String, ConsumerState>,
    info: StreamInfo,
}

impl StreamState {
    fn expire_dedupe(&mut self, now: Instant) {
        while let Some((t, _)) = self.dedupe_order.front() {
            if now.saturating_duration_since(*t) < self.cfg.duplicate_window {
                break;
            }
            if let Some((_, id)) = self.dedupe_order.pop_front() {
                self.dedupe.remove(&id);
            }
        }
    }

    /// Removes `consumer`'s interest in `seq`; drops the message when nobody is left.
    fn settle(&mut self, consumer: &str, seq: u64) -> bool {
        let Some(m) = self.msgs.get_mut(&seq) else {
            return false;
        };
        if !m.interest.remove(consumer) {
            return false;
        }
        if m.interest.is_empty()
            && let Some(m) = self.msgs.remove(&seq)
        {
            self.bytes -= m.payload.len() as u64;
        }
        true
    }
}

struct StreamShared {
    state: Mutex<StreamState>,
    /// Bumped on every state change that may unblock a waiter.
    changed: watch::Sender<u64>,
}

impl StreamShared {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// The bus: a set of streams. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Bus {
    streams: Arc<Mutex<BTreeMap<String, Arc<StreamShared>>>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("Bus").field("streams", &names).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<StreamShared>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stream(&self, name: &str) -> Result<Arc<StreamShared>, BusError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| BusError::NoStream(name.to_owned()))
    }

    /// Creates the stream, or returns Ok if it exists (its settings are kept, like JetStream's
    /// `get_or_create_stream`).
    pub fn get_or_create_stream(&self, cfg: StreamConfig) -> Result<(), BusError> {
        let invalid = |reason: &str| BusError::InvalidConfig {
            stream: cfg.name.clone(),
            reason: reason.to_owned(),
        };
        if cfg.subjects.is_empty() {
            return Err(invalid("no subjects"));
        }
        if cfg.max_msgs == 0 || cfg.max_bytes == 0 {
            return Err(invalid("max_msgs and max_bytes must be positive"));
        }
        let mut streams = self.lock();
        if streams.contains_key(&cfg.name) {
            return Ok(());
        }
        for (other, s) in streams.iter() {
            let st = s.lock();
            for f in &cfg.subjects {
                if st.cfg.subjects.iter().any(|g| filters_overlap(f, g)) {
                    return Err(BusError::Overlap {
                        stream: cfg.name.clone(),
                        filter: f.clone(),
                        other: other.clone(),
                    });
                }
            }
        }
        let (changed, _) = watch::channel(0);
        let name = cfg.name.clone();
        streams.insert(
            name,
            Arc::new(StreamShared {
                state: Mutex::new(StreamState {
                    cfg,
                    next_seq: 1,
                    msgs: BTreeMap::new(),
                    bytes: 0,
                    dedupe: HashMap::new(),
                    dedupe_order: VecDeque::new(),
                    consumers: HashMap::new(),
                    info: StreamInfo::default(),
                }),
                changed,
            }),
        );
        Ok(())
    }

    /// Creates the durable consumer if missing (existing settings are kept) and returns a
    /// handle. Messages already in the stream are not delivered to a new consumer (it was not
    /// interested when they were published).
    pub fn get_or_create_consumer(
        &self,
        stream: &str,
        cfg: ConsumerConfig,
    ) -> Result<Consumer, BusError> {
        let s = self.stream(stream)?;
        if cfg.max_ack_pending == 0 {
            return Err(BusError::InvalidConfig {
                stream: stream.to_owned(),
                reason: format!("consumer {:?}: max_ack_pending must be positive", cfg.name),
            });
        }
        let name = cfg.name.clone();
        s.lock()
            .consumers
            .entry(name.clone())
            .or_insert_with(|| ConsumerState {
                cfg,
                fresh: VecDeque::new(),
                in_flight: BTreeMap::new(),
                info: ConsumerInfo::default(),
            });
        Ok(Consumer { stream: s, name })
    }

    /// Publishes to the stream capturing `subject`; waits while that stream is full. Returns
    /// once the message is stored (or recognised as a duplicate).
    pub async fn publish(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<PubAck, BusError> {
        let s = self.route(subject)?;
        let mut rx = s.changed.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let mut st = s.lock();
                let now = Instant::now();
                st.expire_dedupe(now);
                let id = headers.get(MSG_ID_HEADER).filter(|i| !i.is_empty());
                if let Some(id) = id
                    && let Some((seq, _)) = st.dedupe.get(id)
                {
                    let seq = *seq;
                    st.info.duplicates += 1;
                    return Ok(PubAck {
                        seq,
                        duplicate: true,
                    });
                }
                let size = payload.len() as u64;
                if size > st.cfg.max_bytes {
                    return Err(BusError::TooLarge {
                        stream: st.cfg.name.clone(),
                        size: payload.len(),
                        max: st.cfg.max_bytes,
                    });
                }
                let full = st.msgs.len() >= st.cfg.max_msgs
                    || (st.bytes + size > st.cfg.max_bytes && !st.msgs.is_empty());
                if !full {
                    let seq = st.next_seq;
                    st.next_seq += 1;
                    st.info.last_seq = seq;
                    if let Some(id) = id {
                        st.dedupe.insert(id.clone(), (seq, now));
                        st.dedupe_order.push_back((now, id.clone()));
                    }
                    let mut interest = HashSet::new();
                    for (name, c) in st.consumers.iter_mut() {
                        if c.cfg.wants(subject) {
                            interest.insert(name.clone());
                            c.fresh.push_back(seq);
                        }
                    }
                    if interest.is_empty() {
                        st.info.unrouted += 1;
                    } else {
                        st.bytes += size;
                        st.msgs.insert(
                            seq,
                            Stored {
                                subject: subject.to_owned(),
                                headers,
                                payload,
                                interest,
                            },
                        );
                    }
                    drop(st);
                    s.bump();
                    return Ok(PubAck {
                        seq,
                        duplicate: false,
                    });
                }
            }
            // Full: wait for a settlement to make room.
            if rx.changed().await.is_err() {
                return Err(BusError::NoStream(subject.to_owned()));
            }
        }
    }

    fn route(&self, subject: &str) -> Result<Arc<StreamShared>, BusError> {
        self.lock()
            .values()
            .find(|s| {
                s.lock()
                    .cfg
                    .subjects
                    .iter()
                    .any(|f| subject_matches(f, subject))
            })
            .cloned()
            .ok_or_else(|| BusError::NoRoute(subject.to_owned()))
    }

    /// Waits until message `seq` of `stream` has been settled by every consumer interested in
    /// it (it is no longer held).
    pub async fn wait_settled(&self, stream: &str, seq: u64) -> Result<(), BusError> {
        let s = self.stream(stream)?;
        let mut rx = s.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if !s.lock().msgs.contains_key(&seq) {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    pub fn stream_info(&self, stream: &str) -> Result<StreamInfo, BusError> {
        let s = self.stream(stream)?;
        let st = s.lock();
        Ok(StreamInfo {
            messages: st.msgs.len(),
            bytes: st.bytes,
            ..st.info
        })
    }
}

/// A handle on a durable pull consumer. Clones are competing workers of the same consumer.
#[derive(Clone)]
pub struct Consumer {
    stream: Arc<StreamShared>,
    name: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One delivered message and how to settle it.
#[derive(Debug)]
pub struct Delivered {
    pub message: Message,
    /// 1 on first delivery.
    pub attempt: u64,
    pub acker: AckHandle,
}

/// Settles one delivery. Dropping it without settling leaves the message to redelivery after
/// `ack_wait`.
#[derive(Clone)]
pub struct AckHandle {
    stream: Arc<StreamShared>,
    consumer: String,
    seq: u64,
    attempt: u64,
}

impl std::fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckHandle")
            .field("consumer", &self.consumer)
            .field("seq", &self.seq)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl AckHandle {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn finish(&self, term: bool) {
        {
            let mut st = self.stream.lock();
            let Some(c) = st.consumers.get_mut(&self.consumer) else {
                return;
            };
            c.in_flight.remove(&self.seq);
            if !st.settle(&self.consumer, self.seq) {
                return;
            }
            if let Some(c) = st.consumers.get_mut(&self.consumer) {
                if term {
                    c.info.termed += 1;
                } else {
                    c.info.acked += 1;
                }
            }
        }
        self.stream.bump();
    }

    /// Done: never redeliver. Also settles when the message was redelivered meanwhile.
    pub fn ack(&self) {
        self.finish(false);
    }

    /// Poison: never redeliver (retention treats it as settled).
    pub fn term(&self) {
        self.finish(true);
    }

    /// Redeliver after `delay`. Ignored if this delivery is stale.
    pub fn nak(&self, delay: Duration) {
        self.set_deadline(|_| delay);
    }

    /// Still working: the deadline moves to `ack_wait` from now. Ignored if stale.
    pub fn progress(&self) {
        self.set_deadline(|c| c.ack_wait);
    }

    fn set_deadline(&self, d: impl FnOnce(&ConsumerConfig) -> Duration) {
        {
            let mut st = self.stream.lock();
            let Some(c) = st.consumers.get_mut(&self.consumer) else {
                return;
            };
            let delay = d(&c.cfg);
            match c.in_flight.get_mut(&self.seq) {
                Some(f) if f.attempt == self.attempt => f.deadline = Instant::now() + delay,
                _ => return,
            }
        }
        self.stream.bump();
    }
}

impl Consumer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes what is deliverable now: due redeliveries first (oldest sequence first), then
    /// fresh messages; never more than `max_ack_pending` unsettled in total.
    fn take(&self, max: usize, max_bytes: usize) -> (Vec<Delivered>, Option<Instant>) {
        let mut st = self.stream.lock();
        let now = Instant::now();
        let st = &mut *st;
        let Some(c) = st.consumers.get_mut(&self.name) else {
            return (Vec::new(), None);
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let ack_wait = c.cfg.ack_wait;
        let full = |out: &Vec<Delivered>, bytes: usize| {
            out.len() >= max || (bytes >= max_bytes && !out.is_empty())
        };
        let deliver = |seq: u64, attempt: u64, out: &mut Vec<Delivered>, bytes: &mut usize| {
            let Some(m) = st.msgs.get(&seq) else {
                return false;
            };
            *bytes += m.payload.len();
            out.push(Delivered {
                message: Message {
                    stream: st.cfg.name.clone(),
                    seq,
                    subject: m.subject.clone(),
                    headers: m.headers.clone(),
                    payload: m.payload.clone(),
                },
                attempt,
                acker: AckHandle {
                    stream: self.stream.clone(),
                    consumer: self.name.clone(),
                    seq,
                    attempt,
                },
            });
            true
        };
        let due: Vec<u64> = c
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            if full(&out, bytes) {
                break;
            }
            let Some(f) = c.in_flight.get_mut(&seq) else {
                continue;
            };
            if deliver(seq, f.attempt + 1, &mut out, &mut bytes) {
                f.attempt += 1;
                f.deadline = now + ack_wait;
                c.info.redelivered += 1;
                c.info.delivered += 1;
            } else {
                c.in_flight.remove(&seq);
            }
        }
        while !full(&out, bytes) && c.in_flight.len() < c.cfg.max_ack_pending {
            let Some(seq) = c.fresh.pop_front() else {
                break;
            };
            if deliver(seq, 1, &mut out, &mut bytes) {
                c.in_flight.insert(
                    seq,
                    InFlight {
                        attempt: 1,
                        deadline: now + ack_wait,
                    },
                );
                c.info.delivered += 1;
            }
        }
        let next = c.in_flight.values().map(|f| f.deadline).min();
        (out, next)
    }

    /// Up to `max` messages (and about `max_bytes`), waiting at most `expires` for the first.
    /// Empty when nothing became deliverable in time. Cancel-safe: dropping the future while
    /// it waits hands nothing out.
    pub async fn fetch(&self, max: usize, max_bytes: usize, expires: Duration) -> Vec<Delivered> {
        let until = Instant::now() + expires;
        let mut rx = self.stream.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let (got, next_deadline) = self.take(max.max(1), max_bytes.max(1));
            if !got.is_empty() {
                return got;
            }
            let wake = next_deadline.map_or(until, |d| d.min(until));
            if Instant::now() >= until {
                return Vec::new();
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Vec::new() },
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    pub fn info(&self) -> ConsumerInfo {
        let st = self.stream.lock();
        let now = Instant::now();
        st.consumers
            .get(&self.name)
            .map(|c| ConsumerInfo {
                num_pending: c.fresh.len(),
                num_ack_pending: c.in_flight.len(),
                num_redelivery_due: c.in_flight.values().filter(|f| f.deadline <= now).count(),
                ..c.info
            })
            .unwrap_or_default()
    }

    /// Waits until this consumer has nothing undelivered and nothing unsettled.
    pub async fn wait_idle(&self) {
        let mut rx = self.stream.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let i = self.info();
            if i.num_pending == 0 && i.num_ack_pending == 0 {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "bus/tests.rs"]
mod tests;
