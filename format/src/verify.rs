//! `verify`: checks every object's structure (and optionally every blob's bytes) and names each
//! damaged object together with the items it affects.

use std::collections::HashMap;

use mailvault_proto::storage::v1::{BlobKind, ItemManifest};
use prost::Message;

use crate::crypto::{self, Kind};
use crate::error::{FormatError, Result};
use crate::id::{BlobId, names};
use crate::index::{self, GroupLoc, Location};
use crate::keys;
use crate::pack;
use crate::repo::{Repository, read_pack_header};

#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions {
    /// Read and authenticate every blob, not only headers and manifests.
    pub read_data: bool,
}

/// One damaged or inconsistent object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub object: String,
    pub cause: String,
    /// Items that cannot be restored exactly because of it: "mailbox item_id (manifest id)".
    pub items: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub keys: usize,
    pub index_objects: usize,
    pub packs: usize,
    pub blobs: usize,
    pub blobs_read: usize,
    pub manifests: usize,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Checker {
    report: VerifyReport,
    /// Blob id → index of the problem that damages it.
    damaged: HashMap<BlobId, usize>,
}

impl Checker {
    fn problem(&mut self, object: impl Into<String>, cause: impl std::fmt::Display) -> usize {
        self.report.problems.push(Problem {
            object: object.into(),
            cause: cause.to_string(),
            items: Vec::new(),
        });
        self.report.problems.len() - 1
    }

    fn error(&mut self, object: &str, e: FormatError) -> usize {
        match e {
            FormatError::Corrupt { object, cause } => self.problem(object, cause),
            other => self.problem(object, other),
        }
    }
}

pub async fn verify(repo: &Repository, opts: VerifyOptions) -> Result<VerifyReport> {
    let store = repo.store().clone();
    let keys_ = repo.keys();
    let mut ck = Checker {
        report: VerifyReport::default(),
        damaged: HashMap::new(),
    };

    match store.get(names::CONFIG).await {
        Ok(b) => {
            if let Err(e) = keys_.open_object(Kind::Config, names::CONFIG, &b) {
                ck.error(names::CONFIG, e);
            }
        }
        Err(e) => {
            ck.problem(names::CONFIG, e);
        }
    }
    for name in store.list(names::KEYS).await? {
        ck.report.keys += 1;
        let b = store.get(&name).await?;
        if let Err(e) = keys::parse(&name, &b) {
            ck.error(&name, e);
        }
    }
    for name in store.list(names::DICTS).await? {
        let id = u32::from_str_radix(name.trim_start_matches(names::DICTS), 16).unwrap_or(0);
        if let Err(e) = repo.read_dictionary(&name, id).await {
            ck.error(&name, e);
        }
    }

    for name in store.list(names::AUDIT).await? {
        match store.get(&name).await {
            Ok(bytes) => {
                if let Err(e) = repo
                    .keys()
                    .open_object(crate::crypto::Kind::Audit, &name, &bytes)
                {
                    ck.error(&name, e);
                }
            }
            Err(e) => {
                ck.error(&name, e.into());
            }
        }
    }

    // Everything the index objects claim, read afresh (not the cached in-memory index).
    let mut located: HashMap<BlobId, Location> = HashMap::new();
    let mut by_pack: HashMap<BlobId, Vec<(BlobId, Location)>> = HashMap::new();
    for name in store.list(names::INDEX).await? {
        ck.report.index_objects += 1;
        let bytes = store.get(&name).await?;
        let file = match index::decode(keys_, &name, &bytes) {
            Ok(f) => f,
            Err(e) => {
                ck.error(&name, e);
                continue;
            }
        };
        for p in file.packs {
            let Some(pid) = BlobId::from_slice(&p.pack_id) else {
                ck.problem(&name, "pack id is not 32 bytes");
                continue;
            };
            for g in &p.groups {
                let group = GroupLoc::from_entry(pid, g);
                for b in &g.blobs {
                    let Some(bid) = BlobId::from_slice(&b.id) else {
                        ck.problem(&name, "blob id is not 32 bytes");
                        continue;
                    };
                    let loc = Location::new(group, b);
                    located.entry(bid).or_insert(loc);
                    by_pack.entry(pid).or_default().push((bid, loc));
                }
            }
        }
    }
    ck.report.blobs = located.len();

    let pack_names = store.list(names::PACKS).await?;
    let mut present = std::collections::HashSet::new();
    for name in &pack_names {
        ck.report.packs += 1;
        let Some(pid) = names::pack_id(name) else {
            ck.problem(name, "pack name is not a pack id");
            continue;
        };
        present.insert(pid);
        let claimed = by_pack.get(&pid).cloned().unwrap_or_default();
        let header = if opts.read_data {
            let bytes = store.get(name).await?;
            match pack::parse(keys_, name, &bytes) {
                Ok(h) => {
                    for g in &h.groups {
                        let group = GroupLoc::from_entry(pid, g);
                        let span = g.offset as usize..(g.offset + u64::from(g.stored_len)) as usize;
                        let ids: Vec<Option<BlobId>> =
                            g.blobs.iter().map(|b| BlobId::from_slice(&b.id)).collect();
                        ck.report.blobs_read += g.blobs.len();
                        match repo.decode_group(name, &group, &bytes[span]) {
                            Ok(plain) => {
                                for (b, bid) in g.blobs.iter().zip(&ids) {
                                    let Some(bid) = bid else { continue };
                                    if let Err(err) =
                                        repo.extract(name, bid, &Location::new(group, b), &plain)
                                    {
                                        let p = ck.error(name, err);
                                        ck.damaged.insert(*bid, p);
                                    }
                                }
                            }
                            Err(err) => {
                                let p = ck.error(name, err);
                                for bid in ids.into_iter().flatten() {
                                    ck.damaged.insert(bid, p);
                                }
                            }
                        }
                    }
                    Ok(h)
                }
                Err(e) => Err(e),
            }
        } else {
            let prefix = store.get_range(name, 0, crypto::HEADER_LEN as u64).await;
            match prefix {
                Ok(p) => match crypto::check_header(name, &p, Kind::Pack) {
                    Ok(()) => read_pack_header(repo, name).await.map(|(_, h)| h),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e.into()),
            }
        };
        match header {
            Ok(h) => {
                let mut entries: HashMap<BlobId, Location> = HashMap::new();
                for g in &h.groups {
                    let group = GroupLoc::from_entry(pid, g);
                    for b in &g.blobs {
                        if let Some(bid) = BlobId::from_slice(&b.id) {
                            entries.insert(bid, Location::new(group, b));
                        }
                    }
                }
                for (bid, loc) in &claimed {
                    if entries.get(bid) != Some(loc) {
                        let p = ck.problem(
                            name,
                            format!(
                                "index locates blob {bid} where the pack header has no such blob"
                            ),
                        );
                        ck.damaged.insert(*bid, p);
                    }
                }
            }
            Err(e) => {
                let p = ck.error(name, e);
                for (bid, _) in &claimed {
                    ck.damaged.insert(*bid, p);
                }
            }
        }
    }
    for (pid, blobs) in &by_pack {
        if !present.contains(pid) {
            let p = ck.problem(
                names::pack(pid),
                "missing: the index refers to it but it is not in the store",
            );
            for (bid, _) in blobs {
                ck.damaged.insert(*bid, p);
            }
        }
    }

    // Manifests: readable, and every chunk they reference located and undamaged.
    let mut manifests: Vec<(BlobId, Location)> = located
        .iter()
        .filter(|(_, l)| l.kind == BlobKind::Manifest)
        .map(|(id, l)| (*id, *l))
        .collect();
    manifests.sort_by_key(|(id, _)| *id);
    for (mid, loc) in manifests {
        ck.report.manifests += 1;
        let label_unknown = format!("manifest {mid}");
        if let Some(&p) = ck.damaged.get(&mid) {
            ck.report.problems[p].items.push(label_unknown);
            continue;
        }
        let m = match repo.read_at(&mid, &loc).await.and_then(|raw| {
            ItemManifest::decode(raw.as_slice()).map_err(|e| {
                FormatError::corrupt(names::pack(&loc.group.pack), format!("manifest {mid}: {e}"))
            })
        }) {
            Ok(m) => m,
            Err(e) => {
                let p = ck.error(&names::pack(&loc.group.pack), e);
                ck.report.problems[p].items.push(label_unknown);
                continue;
            }
        };
        let label = format!("{} {} (manifest {mid})", m.mailbox, m.item_id);
        let mut dangling = 0usize;
        let mut hit = Vec::new();
        for c in &m.chunks {
            match BlobId::from_slice(c) {
                Some(cid) if located.contains_key(&cid) => {
                    if let Some(&p) = ck.damaged.get(&cid) {
                        hit.push(p);
                    }
                }
                _ => dangling += 1,
            }
        }
        hit.sort_unstable();
        hit.dedup();
        for p in hit {
            ck.report.problems[p].items.push(label.clone());
        }
        if dangling > 0 {
            let p = ck.problem(
                label_unknown,
                format!("{dangling} chunk(s) referenced but not in any index"),
            );
            ck.report.problems[p].items.push(label);
        }
    }
    Ok(ck.report)
}
