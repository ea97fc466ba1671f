//! Packs the small messages of one publish into `ItemBatch` messages before they go on the
//! wire: a mailbox of 10 KB items would otherwise cost one JetStream message, one publish ack,
//! one delivery and one consumer ack per item, which is most of what moving it costs.
//!
//! A pack holds consecutive items with inline bodies and changes of one mailbox, in their
//! order. Anything else (an item whose body is in the Object Store, a quarantine record, a
//! reconciliation) and a message that would be a pack of one stay as they are. The pack's
//! `Nats-Msg-Id` is a hash of its members' ids, so publishing the same messages again
//! (a retried publish, a repeated page) is de-duplicated by the stream like a single message.

use mailvault_proto::ingest::v1 as pb;
use mailvault_proto::ingest_wire::KIND_BATCH;
use prost::Message as _;

use crate::sync::{OutMessage, subject};

/// How large a pack may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Entries per pack; 1 turns packing off.
    pub max_entries: usize,
    /// Encoded bytes of a pack's entries, at most (a larger single entry travels alone). Keep
    /// it well below NATS's 1 MiB payload limit.
    pub max_bytes: usize,
}

impl Default for PackLimits {
    fn default() -> Self {
        PackLimits {
            max_entries: 64,
            max_bytes: 512 * 1024,
        }
    }
}

/// Which mailbox a packable message is about.
fn packable_mailbox(m: &OutMessage) -> Option<&str> {
    use pb::ingest_message::Message;
    match &m.message.message {
        Some(Message::Item(env))
            if !matches!(env.body, Some(pb::item_envelope::Body::Object(_))) =>
        {
            Some(&env.mailbox)
        }
        Some(Message::Change(c)) => Some(&c.mailbox),
        _ => None,
    }
}

/// Packs `msgs` (see the module docs); the order of entries is kept.
pub fn pack(msgs: Vec<OutMessage>, limits: PackLimits) -> Vec<OutMessage> {
    if limits.max_entries <= 1 || msgs.len() <= 1 {
        return msgs;
    }
    let mut out = Vec::with_capacity(msgs.len());
    let mut open: Vec<OutMessage> = Vec::new();
    let mut open_bytes = 0usize;
    for m in msgs {
        let Some(mailbox) = packable_mailbox(&m) else {
            seal(&mut open, &mut out);
            open_bytes = 0;
            out.push(m);
            continue;
        };
        let len = m.message.encoded_len();
        let fits = open.len() < limits.max_entries
            && open_bytes + len <= limits.max_bytes
            && open
                .first()
                .and_then(packable_mailbox)
                .is_none_or(|first| first.eq_ignore_ascii_case(mailbox));
        if !fits {
            seal(&mut open, &mut out);
            open_bytes = 0;
        }
        open_bytes += len;
        open.push(m);
    }
    seal(&mut open, &mut out);
    out
}

/// Turns the open pack into one message (a pack of one stays the message it is).
fn seal(open: &mut Vec<OutMessage>, out: &mut Vec<OutMessage>) {
    use pb::ingest_message::Message;
    if open.len() <= 1 {
        out.append(open);
        return;
    }
    let members = std::mem::take(open);
    let mut ids = blake3::Hasher::new();
    let mut batch = pb::ItemBatch::default();
    let mut mailbox = String::new();
    let traceparent = members[0].traceparent.clone();
    for m in members {
        ids.update(&(m.msg_id.len() as u64).to_le_bytes());
        ids.update(m.msg_id.as_bytes());
        match m.message.message {
            Some(Message::Item(env)) => {
                if mailbox.is_empty() {
                    mailbox.clone_from(&env.mailbox);
                }
                batch.items.push(env);
            }
            Some(Message::Change(c)) => {
                if mailbox.is_empty() {
                    mailbox.clone_from(&c.mailbox);
                }
                batch.changes.push(c);
            }
            // `pack` only opens packs with items and changes.
            _ => {}
        }
    }
    out.push(OutMessage {
        subject: subject(KIND_BATCH, &mailbox),
        msg_id: format!("pack-{}", &ids.finalize().to_hex()[..32]),
        traceparent,
        message: pb::IngestMessage {
            message: Some(Message::Batch(batch)),
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn item(mailbox: &str, id: &str, body: usize) -> OutMessage {
        OutMessage {
            subject: subject("item", mailbox),
            msg_id: format!("m-{id}"),
            traceparent: Some(format!("tp-{id}")),
            message: pb::IngestMessage {
                message: Some(pb::ingest_message::Message::Item(pb::ItemEnvelope {
                    mailbox: mailbox.into(),
                    item_id: id.into(),
                    body: Some(pb::item_envelope::Body::Inline(Bytes::from(vec![
                        b'x';
                        body
                    ]))),
                    ..Default::default()
                })),
            },
        }
    }

    fn change(mailbox: &str, id: &str) -> OutMessage {
        OutMessage {
            subject: subject("change", mailbox),
            msg_id: format!("c-{id}"),
            traceparent: None,
            message: pb::IngestMessage {
                message: Some(pb::ingest_message::Message::Change(pb::ItemChange {
                    mailbox: mailbox.into(),
                    item_id: id.into(),
                    ..Default::default()
                })),
            },
        }
    }

    fn entries(m: &OutMessage) -> Vec<String> {
        match &m.message.message {
            Some(pb::ingest_message::Message::Batch(b)) => b
                .items
                .iter()
                .map(|e| e.item_id.clone())
                .chain(b.changes.iter().map(|c| format!("~{}", c.item_id)))
                .collect(),
            Some(pb::ingest_message::Message::Item(e)) => vec![e.item_id.clone()],
            Some(pb::ingest_message::Message::Change(c)) => vec![format!("~{}", c.item_id)],
            _ => vec!["?".into()],
        }
    }

    const LIMITS: PackLimits = PackLimits {
        max_entries: 3,
        max_bytes: 10_000,
    };

    #[test]
    fn items_are_packed_in_order_up_to_the_entry_limit() {
        let msgs: Vec<_> = (0..7).map(|i| item("a@x", &i.to_string(), 100)).collect();
        let packed = pack(msgs, LIMITS);
        let got: Vec<_> = packed.iter().map(entries).collect();
        assert_eq!(
            got,
            vec![vec!["0", "1", "2"], vec!["3", "4", "5"], vec!["6"]]
        );
        assert_eq!(packed[0].subject, subject(KIND_BATCH, "a@x"));
        assert!(packed[0].msg_id.starts_with("pack-"));
        assert_eq!(packed[0].traceparent.as_deref(), Some("tp-0"));
        // The last is a pack of one: the original message, id and subject unchanged.
        assert_eq!(packed[2].msg_id, "m-6");
        assert_eq!(packed[2].subject, subject("item", "a@x"));
    }

    #[test]
    fn a_pack_ends_at_the_byte_limit_and_a_large_entry_travels_alone() {
        let msgs = vec![
            item("a@x", "a", 4_000),
            item("a@x", "b", 4_000),
            item("a@x", "c", 4_000),
            item("a@x", "big", 20_000),
            item("a@x", "d", 100),
        ];
        let packed = pack(msgs, LIMITS);
        let got: Vec<_> = packed.iter().map(entries).collect();
        assert_eq!(got, vec![vec!["a", "b"], vec!["c"], vec!["big"], vec!["d"]]);
    }

    #[test]
    fn object_bodies_quarantines_and_other_mailboxes_break_a_pack() {
        let mut obj = item("a@x", "obj", 0);
        if let Some(pb::ingest_message::Message::Item(e)) = &mut obj.message.message {
            e.body = Some(pb::item_envelope::Body::Object(pb::ObjectRef::default()));
        }
        let quarantine = OutMessage {
            message: pb::IngestMessage {
                message: Some(pb::ingest_message::Message::Quarantine(
                    pb::ItemQuarantine::default(),
                )),
            },
            ..item("a@x", "q", 0)
        };
        let msgs = vec![
            item("a@x", "1", 10),
            change("A@X", "2"),
            obj,
            item("a@x", "3", 10),
            item("a@x", "4", 10),
            quarantine,
            item("b@x", "5", 10),
            item("a@x", "6", 10),
        ];
        let got: Vec<_> = pack(msgs, LIMITS).iter().map(entries).collect();
        assert_eq!(
            got,
            vec![
                vec!["1", "~2"],
                vec!["obj"],
                vec!["3", "4"],
                vec!["?"],
                vec!["5"],
                vec!["6"]
            ]
        );
    }

    #[test]
    fn the_same_messages_make_the_same_pack_id_and_different_ones_do_not() {
        let a = || (0..3).map(|i| item("a@x", &i.to_string(), 10)).collect();
        let b: Vec<_> = (1..4).map(|i| item("a@x", &i.to_string(), 10)).collect();
        let (p1, p2, p3) = (pack(a(), LIMITS), pack(a(), LIMITS), pack(b, LIMITS));
        assert_eq!(p1[0].msg_id, p2[0].msg_id);
        assert_ne!(p1[0].msg_id, p3[0].msg_id);
    }

    #[test]
    fn an_entry_limit_of_one_leaves_everything_as_it_is() {
        let msgs: Vec<_> = (0..4).map(|i| item("a@x", &i.to_string(), 10)).collect();
        let limits = PackLimits {
            max_entries: 1,
            ..LIMITS
        };
        assert_eq!(pack(msgs.clone(), limits), msgs);
    }
}
