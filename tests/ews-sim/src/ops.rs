//! The EWS operations: request element in, `s:Body` content (or a SOAP fault) out.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::mime::iso8601;
use crate::store::{
    Folder, IdKind, Item, ItemRef, Store, StoreError, SyncState, change_key, decode_id, folder_id,
    item_id,
};
use crate::xml::{El, NS_M, NS_T, esc};

/// A SOAP fault (HTTP 500), as Exchange sends for request-level errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub code: &'static str,
    pub message: String,
    pub backoff_ms: Option<u64>,
}

impl Fault {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Fault {
            code,
            message: message.into(),
            backoff_ms: None,
        }
    }
}

/// Who is asking, and for which mailbox.
#[derive(Debug)]
pub struct Ctx {
    /// The mailbox the request acts on (impersonated, else the caller's own), if any.
    pub mailbox: Option<usize>,
    /// Whether the caller holds the ApplicationImpersonation-like right (may name other
    /// mailboxes explicitly).
    pub can_impersonate: bool,
}

/// Operations that change the store (the server takes a write lock for them).
pub fn is_mutating(op: &str) -> bool {
    matches!(
        op,
        "CreateItem" | "CreateFolder" | "UploadItems" | "DeleteItem" | "MoveItem" | "UpdateItem"
    )
}

pub const OPERATIONS: &[&str] = &[
    "GetFolder",
    "FindFolder",
    "SyncFolderHierarchy",
    "SyncFolderItems",
    "FindItem",
    "GetItem",
    "ExportItems",
    "UploadItems",
    "CreateItem",
    "CreateFolder",
    "ResolveNames",
    "DeleteItem",
    "MoveItem",
    "UpdateItem",
];

pub fn dispatch(store: &mut Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    match op.name.as_str() {
        "GetFolder" => get_folder(store, ctx, op),
        "FindFolder" => find_folder(store, ctx, op),
        "SyncFolderHierarchy" => sync_folder_hierarchy(store, ctx, op),
        "SyncFolderItems" => sync_folder_items(store, ctx, op),
        "FindItem" => find_item(store, ctx, op),
        "GetItem" => get_item(store, ctx, op),
        "ExportItems" => export_items(store, ctx, op),
        "UploadItems" => upload_items(store, ctx, op),
        "CreateItem" => create_item(store, ctx, op),
        "CreateFolder" => create_folder(store, ctx, op),
        "ResolveNames" => resolve_names(store, op),
        "DeleteItem" => delete_item(store, ctx, op),
        "MoveItem" => move_item(store, ctx, op),
        "UpdateItem" => update_item(store, ctx, op),
        other => Err(Fault::new(
            "ErrorInvalidRequest",
            format!("The request is invalid: unknown operation {other}."),
        )),
    }
}

/// Read-only operations run through this with a shared borrow.
pub fn dispatch_read(store: &Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    match op.name.as_str() {
        "GetFolder" => get_folder(store, ctx, op),
        "FindFolder" => find_folder(store, ctx, op),
        "SyncFolderHierarchy" => sync_folder_hierarchy(store, ctx, op),
        "SyncFolderItems" => sync_folder_items(store, ctx, op),
        "FindItem" => find_item(store, ctx, op),
        "GetItem" => get_item(store, ctx, op),
        "ExportItems" => export_items(store, ctx, op),
        "ResolveNames" => resolve_names(store, op),
        other => Err(Fault::new(
            "ErrorInvalidRequest",
            format!("The request is invalid: unknown operation {other}."),
        )),
    }
}

// ------------------------------------------------------------------------ response helpers

fn wrap(op: &str, messages: &str) -> String {
    format!(
        "<m:{op}Response xmlns:m=\"{NS_M}\" xmlns:t=\"{NS_T}\"><m:ResponseMessages>{messages}</m:ResponseMessages></m:{op}Response>"
    )
}

fn ok(op: &str, content: &str) -> String {
    format!(
        "<m:{op}ResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode>{content}</m:{op}ResponseMessage>"
    )
}

fn err(op: &str, code: &str, text: &str, content: &str) -> String {
    format!(
        "<m:{op}ResponseMessage ResponseClass=\"Error\"><m:MessageText>{}</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{content}</m:{op}ResponseMessage>",
        esc(text)
    )
}

fn error_text(code: &str) -> &'static str {
    match code {
        "ErrorItemNotFound" => "The specified object was not found in the store.",
        "ErrorFolderNotFound" => "The specified folder could not be found in the store.",
        "ErrorInvalidIdMalformed" => "Id is malformed.",
        "ErrorInvalidSyncStateData" => {
            "Synchronization state data is corrupt or otherwise invalid."
        }
        "ErrorAccessDenied" => "Access is denied. Check credentials and try again.",
        "ErrorFolderExists" => "A folder with the specified name already exists.",
        "ErrorNameResolutionNoResults" => "No results were found.",
        "ErrorNameResolutionMultipleResults" => "Multiple results were found.",
        "ErrorMessageDispositionRequired" => {
            "MessageDisposition attribute is required for this operation."
        }
        "ErrorInvalidOperation" => "The operation is not supported by this server.",
        "ErrorCorruptData" => "The item data is corrupt.",
        "ErrorMissingArgument" => "A required argument is missing.",
        "ErrorInvalidPropertySet" => "The property cannot be set (simulator: only message:IsRead).",
        _ => "The request failed.",
    }
}

fn shape_err(op: &str, code: &'static str, content: &str) -> String {
    err(op, code, error_text(code), content)
}

fn schema(msg: &str) -> Fault {
    Fault::new(
        "ErrorSchemaValidation",
        format!("The request failed schema validation: {msg}"),
    )
}

fn need_mailbox(ctx: &Ctx) -> Result<usize, Fault> {
    ctx.mailbox.ok_or_else(|| {
        Fault::new(
            "ErrorNonExistentMailbox",
            "The SMTP address has no mailbox associated with it.",
        )
    })
}

// ------------------------------------------------------------------------ ids and shapes

/// Resolves a `t:FolderId` or `t:DistinguishedFolderId` element to (mailbox, folder).
fn resolve_folder(store: &Store, ctx: &Ctx, el: &El) -> Result<(usize, u32), &'static str> {
    match el.name.as_str() {
        "FolderId" => {
            let id = el.attr("Id").ok_or("ErrorInvalidIdMalformed")?;
            let (kind, key, serial) = decode_id(id).ok_or("ErrorInvalidIdMalformed")?;
            if kind != IdKind::Folder {
                return Err("ErrorInvalidIdMalformed");
            }
            let mb = store.mailbox_by_key(key).ok_or("ErrorFolderNotFound")?;
            if Some(mb) != ctx.mailbox && !ctx.can_impersonate {
                return Err("ErrorAccessDenied");
            }
            let serial = u32::try_from(serial).map_err(|_| "ErrorFolderNotFound")?;
            if (serial as usize) < store.mailboxes[mb].folders.len() {
                Ok((mb, serial))
            } else {
                Err("ErrorFolderNotFound")
            }
        }
        "DistinguishedFolderId" => {
            let d = el.attr("Id").ok_or("ErrorInvalidIdMalformed")?;
            let mb = match el.path(&["Mailbox", "EmailAddress"]) {
                Some(addr) => {
                    let mb = store
                        .mailbox_index(&addr.text)
                        .ok_or("ErrorNonExistentMailbox")?;
                    if Some(mb) != ctx.mailbox && !ctx.can_impersonate {
                        return Err("ErrorAccessDenied");
                    }
                    mb
                }
                None => ctx.mailbox.ok_or("ErrorNonExistentMailbox")?,
            };
            store
                .distinguished_folder(mb, d)
                .map(|f| (mb, f))
                .ok_or("ErrorFolderNotFound")
        }
        _ => Err("ErrorInvalidIdMalformed"),
    }
}

/// The first FolderId/DistinguishedFolderId child of `el`.
fn folder_child(el: &El) -> Option<&El> {
    el.children
        .iter()
        .find(|c| c.name == "FolderId" || c.name == "DistinguishedFolderId")
}

fn resolve_item(store: &Store, ctx: &Ctx, el: &El) -> Result<(usize, u64), &'static str> {
    let id = el.attr("Id").ok_or("ErrorInvalidIdMalformed")?;
    let (kind, key, serial) = decode_id(id).ok_or("ErrorInvalidIdMalformed")?;
    if kind != IdKind::Item {
        return Err("ErrorInvalidIdMalformed");
    }
    let mb = store.mailbox_by_key(key).ok_or("ErrorItemNotFound")?;
    if Some(mb) != ctx.mailbox && !ctx.can_impersonate {
        return Err("ErrorAccessDenied");
    }
    if store.mailboxes[mb].items.contains_key(&serial) {
        Ok((mb, serial))
    } else {
        Err("ErrorItemNotFound")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    IdOnly,
    Default,
    All,
}

#[derive(Debug)]
struct Shape {
    base: Base,
    mime: bool,
    props: BTreeSet<String>,
}

impl Shape {
    fn parse(el: Option<&El>) -> Result<Shape, Fault> {
        let Some(el) = el else {
            return Err(schema("the shape element is missing"));
        };
        let base = match el.child_text("BaseShape") {
            Some("IdOnly") => Base::IdOnly,
            Some("Default") => Base::Default,
            Some("AllProperties") => Base::All,
            other => return Err(schema(&format!("invalid BaseShape {other:?}"))),
        };
        let mut props = BTreeSet::new();
        if let Some(ap) = el.child("AdditionalProperties") {
            for p in &ap.children {
                if let Some(uri) = p.attr("FieldURI") {
                    props.insert(uri.to_owned());
                }
            }
        }
        let mime = el.child_text("IncludeMimeContent") == Some("true")
            || props.contains("item:MimeContent");
        Ok(Shape { base, mime, props })
    }

    /// Whether a property is returned: all of them for AllProperties, a documented subset
    /// for Default, only the additional ones for IdOnly.
    fn want(&self, uri: &str) -> bool {
        match self.base {
            Base::All => true,
            Base::Default => {
                matches!(
                    uri,
                    "item:Subject"
                        | "item:HasAttachments"
                        | "message:From"
                        | "message:IsRead"
                        | "item:DateTimeReceived"
                        | "item:Size"
                        | "folder:DisplayName"
                        | "folder:TotalCount"
                        | "folder:ChildFolderCount"
                        | "folder:UnreadCount"
                ) || self.props.contains(uri)
            }
            Base::IdOnly => self.props.contains(uri),
        }
    }
}

fn item_tag(class: &str) -> &'static str {
    let c = class.to_ascii_lowercase();
    if c.starts_with("ipm.appointment") {
        "CalendarItem"
    } else if c.starts_with("ipm.contact") {
        "Contact"
    } else if c.starts_with("ipm.task") {
        "Task"
    } else if c.starts_with("ipm.schedule.meeting.request") {
        "MeetingRequest"
    } else {
        "Message"
    }
}

fn folder_tag(f: &Folder) -> &'static str {
    match f.class {
        Some(c) if c.starts_with("IPF.Appointment") => "CalendarFolder",
        Some(c) if c.starts_with("IPF.Contact") => "ContactsFolder",
        Some(c) if c.starts_with("IPF.Task") => "TasksFolder",
        _ => "Folder",
    }
}

fn write_item_id(out: &mut String, tag: &str, key: u64, it: &Item) {
    let _ = write!(
        out,
        "<{tag} Id=\"{}\" ChangeKey=\"{}\"/>",
        item_id(key, it.serial),
        change_key(b'C', it.serial, it.version)
    );
}

fn write_item(out: &mut String, store: &Store, mb: usize, it: &Item, shape: &Shape) {
    let m = &store.mailboxes[mb];
    let tag = item_tag(&it.item_class);
    let _ = write!(out, "<t:{tag}>");
    if shape.mime {
        out.push_str("<t:MimeContent CharacterSet=\"UTF-8\">");
        // Straight into the response: the simulator runs beside the tool it serves in the
        // benchmarks, so its copies count against the tool's CPU.
        B64.encode_string(&it.mime, out);
        out.push_str("</t:MimeContent>");
    }
    write_item_id(out, "t:ItemId", m.key, it);
    if shape.want("item:ParentFolderId") {
        let f = &m.folders[it.folder as usize];
        let _ = write!(
            out,
            "<t:ParentFolderId Id=\"{}\" ChangeKey=\"{}\"/>",
            folder_id(m.key, f.serial),
            change_key(b'F', u64::from(f.serial), f.version)
        );
    }
    if shape.want("item:ItemClass") {
        let _ = write!(out, "<t:ItemClass>{}</t:ItemClass>", esc(&it.item_class));
    }
    if shape.want("item:Subject") {
        let _ = write!(out, "<t:Subject>{}</t:Subject>", esc(&it.summary.subject));
    }
    if shape.want("item:Sensitivity") {
        out.push_str("<t:Sensitivity>Normal</t:Sensitivity>");
    }
    if shape.want("item:DateTimeReceived") {
        let _ = write!(
            out,
            "<t:DateTimeReceived>{}</t:DateTimeReceived>",
            iso8601(it.received)
        );
    }
    if shape.want("item:Size") {
        let _ = write!(out, "<t:Size>{}</t:Size>", it.mime.len());
    }
    if shape.want("item:Importance") {
        out.push_str("<t:Importance>Normal</t:Importance>");
    }
    if shape.want("item:IsDraft") {
        let _ = write!(out, "<t:IsDraft>{}</t:IsDraft>", it.draft);
    }
    if shape.want("item:DateTimeSent") {
        let _ = write!(
            out,
            "<t:DateTimeSent>{}</t:DateTimeSent>",
            iso8601(it.summary.date.unwrap_or(it.received))
        );
    }
    if shape.want("item:DateTimeCreated") {
        let _ = write!(
            out,
            "<t:DateTimeCreated>{}</t:DateTimeCreated>",
            iso8601(it.received)
        );
    }
    if shape.want("item:DisplayTo") {
        let _ = write!(out, "<t:DisplayTo>{}</t:DisplayTo>", esc(&it.summary.to));
    }
    if shape.want("item:HasAttachments") {
        let _ = write!(
            out,
            "<t:HasAttachments>{}</t:HasAttachments>",
            it.summary.has_attachments
        );
    }
    if tag == "Message" || tag == "MeetingRequest" {
        if shape.want("message:From") && !it.summary.from_addr.is_empty() {
            let _ = write!(
                out,
                "<t:From><t:Mailbox><t:Name>{}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>OneOff</t:MailboxType></t:Mailbox></t:From>",
                esc(if it.summary.from_name.is_empty() {
                    &it.summary.from_addr
                } else {
                    &it.summary.from_name
                }),
                esc(&it.summary.from_addr)
            );
        }
        if shape.want("message:InternetMessageId") && !it.summary.message_id.is_empty() {
            let _ = write!(
                out,
                "<t:InternetMessageId>{}</t:InternetMessageId>",
                esc(&it.summary.message_id)
            );
        }
        if shape.want("message:IsRead") {
            let _ = write!(out, "<t:IsRead>{}</t:IsRead>", it.is_read);
        }
    }
    let _ = write!(out, "</t:{tag}>");
}

fn write_folder(out: &mut String, store: &Store, mb: usize, f: &Folder, shape: &Shape) {
    let m = &store.mailboxes[mb];
    let tag = folder_tag(f);
    let _ = write!(
        out,
        "<t:{tag}><t:FolderId Id=\"{}\" ChangeKey=\"{}\"/>",
        folder_id(m.key, f.serial),
        change_key(b'F', u64::from(f.serial), f.version)
    );
    if shape.want("folder:ParentFolderId")
        && let Some(p) = f.parent
    {
        let pf = &m.folders[p as usize];
        let _ = write!(
            out,
            "<t:ParentFolderId Id=\"{}\" ChangeKey=\"{}\"/>",
            folder_id(m.key, p),
            change_key(b'F', u64::from(p), pf.version)
        );
    }
    if shape.want("folder:FolderClass")
        && let Some(c) = f.class
    {
        let _ = write!(out, "<t:FolderClass>{c}</t:FolderClass>");
    }
    if shape.want("folder:DisplayName") {
        let _ = write!(
            out,
            "<t:DisplayName>{}</t:DisplayName>",
            esc(&f.display_name)
        );
    }
    if shape.want("folder:TotalCount") {
        let _ = write!(out, "<t:TotalCount>{}</t:TotalCount>", f.items.len());
    }
    if shape.want("folder:ChildFolderCount") {
        let n = m
            .folders
            .iter()
            .filter(|c| c.parent == Some(f.serial))
            .count();
        let _ = write!(out, "<t:ChildFolderCount>{n}</t:ChildFolderCount>");
    }
    if (tag == "Folder" || tag == "TasksFolder") && shape.want("folder:UnreadCount") {
        let unread = f
            .items
            .iter()
            .filter(|s| m.items.get(s).is_some_and(|i| !i.is_read))
            .count();
        let _ = write!(out, "<t:UnreadCount>{unread}</t:UnreadCount>");
    }
    let _ = write!(out, "</t:{tag}>");
}

/// `IndexedPage…View`: (offset, max entries, from end).
fn paging(view: Option<&El>) -> Result<(usize, Option<usize>, bool), Fault> {
    let Some(v) = view else {
        return Ok((0, None, false));
    };
    let offset = match v.attr("Offset") {
        Some(o) => o.parse().map_err(|_| schema("invalid Offset"))?,
        None => 0,
    };
    let max = match v.attr("MaxEntriesReturned") {
        Some(m) => Some(
            m.parse::<usize>()
                .ok()
                .filter(|m| *m > 0)
                .ok_or_else(|| schema("invalid MaxEntriesReturned"))?,
        ),
        None => None,
    };
    let end = match v.attr("BasePoint") {
        Some("End") => true,
        Some("Beginning") | None => false,
        Some(other) => return Err(schema(&format!("invalid BasePoint {other}"))),
    };
    Ok((offset, max, end))
}

/// Applies paging to `total` entries: (range, next offset, includes last).
fn page(
    total: usize,
    offset: usize,
    max: Option<usize>,
    end: bool,
) -> (std::ops::Range<usize>, usize, bool) {
    let n = max.unwrap_or(usize::MAX);
    if end {
        let hi = total.saturating_sub(offset);
        let lo = hi.saturating_sub(n);
        (lo..hi, offset + (hi - lo), lo == 0)
    } else {
        let lo = offset.min(total);
        let hi = lo.saturating_add(n).min(total);
        (lo..hi, hi, hi >= total)
    }
}

// ------------------------------------------------------------------------ folders

fn get_folder(store: &Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    let shape = Shape::parse(op.child("FolderShape"))?;
    let ids = op
        .child("FolderIds")
        .ok_or_else(|| schema("FolderIds is missing"))?;
    let mut msgs = String::new();
    for id in &ids.children {
        match resolve_folder(store, ctx, id) {
            Ok((mb, f)) => {
                let mut c = String::from("<m:Folders>");
                write_folder(
                    &mut c,
                    store,
                    mb,
                    &store.mailboxes[mb].folders[f as usize],
                    &shape,
                );
                c.push_str("</m:Folders>");
                msgs.push_str(&ok("GetFolder", &c));
            }
            Err(code) => msgs.push_str(&shape_err("GetFolder", code, "")),
        }
    }
    Ok(wrap("GetFolder", &msgs))
}

fn find_folder(store: &Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    let shape = Shape::parse(op.child("FolderShape"))?;
    let deep = match op.attr("Traversal") {
        Some("Deep") => true,
        Some("Shallow") => false,
        Some("SoftDeleted") => false,
        other => return Err(schema(&format!("invalid Traversal {other:?}"))),
    };
    let (offset, max, end) = paging(op.child("IndexedPageFolderView"))?;
    let parents = op
        .child("ParentFolderIds")
        .ok_or_else(|| schema("ParentFolderIds is missing"))?;
    let mut msgs = String::new();
    for p in &parents.children {
        match resolve_folder(store, ctx, p) {
            Ok((mb, f)) => {
                let list = if deep {
                    store.descendants(mb, f)
                } else {
                    store.children(mb, f)
                };
                let (range, next, last) = page(list.len(), offset, max, end);
                let mut c = format!(
                    "<m:RootFolder IndexedPagingOffset=\"{next}\" TotalItemsInView=\"{}\" IncludesLastItemInRange=\"{last}\"><t:Folders>",
                    list.len()
                );
                for s in &list[range] {
                    write_folder(
                        &mut c,
                        store,
                        mb,
                        &store.mailboxes[mb].folders[*s as usize],
                        &shape,
                    );
                }
                c.push_str("</t:Folders></m:RootFolder>");
                msgs.push_str(&ok("FindFolder", &c));
            }
            Err(code) => msgs.push_str(&shape_err("FindFolder", code, "")),
        }
    }
    Ok(wrap("FindFolder", &msgs))
}

fn create_folder(store: &mut Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    let parent = op
        .child("ParentFolderId")
        .and_then(folder_child)
        .ok_or_else(|| schema("ParentFolderId is missing"))?;
    let folders = op
        .child("Folders")
        .ok_or_else(|| schema("Folders is missing"))?;
    let target = resolve_folder(store, ctx, parent);
    let mut msgs = String::new();
    for f in &folders.children {
        let (mb, p) = match target {
            Ok(t) => t,
            Err(code) => {
                msgs.push_str(&shape_err("CreateFolder", code, ""));
                continue;
            }
        };
        let Some(name) = f.child_text("DisplayName").filter(|n| !n.is_empty()) else {
            msgs.push_str(&shape_err("CreateFolder", "ErrorMissingArgument", ""));
            continue;
        };
        let class: Option<&'static str> = match (f.child_text("FolderClass"), f.name.as_str()) {
            (Some("IPF.Appointment"), _) | (_, "CalendarFolder") => Some("IPF.Appointment"),
            (Some("IPF.Contact"), _) | (_, "ContactsFolder") => Some("IPF.Contact"),
            (Some("IPF.Task"), _) | (_, "TasksFolder") => Some("IPF.Task"),
            (Some("IPF.StickyNote"), _) => Some("IPF.StickyNote"),
            (Some("IPF.Journal"), _) => Some("IPF.Journal"),
            (Some(_), _) => Some("IPF.Note"),
            (None, _) => None,
        };
        match store.create_folder(mb, p, name, class) {
            Ok(s) => {
                let m = &store.mailboxes[mb];
                let tag = folder_tag(&m.folders[s as usize]);
                let c = format!(
                    "<m:Folders><t:{tag}><t:FolderId Id=\"{}\" ChangeKey=\"{}\"/></t:{tag}></m:Folders>",
                    folder_id(m.key, s),
                    change_key(b'F', u64::from(s), 0)
                );
                msgs.push_str(&ok("CreateFolder", &c));
            }
            Err(_) => msgs.push_str(&shape_err("CreateFolder", "ErrorFolderExists", "")),
        }
    }
    Ok(wrap("CreateFolder", &msgs))
}

fn sync_folder_hierarchy(store: &Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    let shape = Shape::parse(op.child("FolderShape"))?;
    let (mb, root) = match op.child("SyncFolderId").and_then(folder_child) {
        Some(el) => match resolve_folder(store, ctx, el) {
            Ok(t) => t,
            Err(code) => {
                return Ok(wrap(
                    "SyncFolderHierarchy",
                    &shape_err("SyncFolderHierarchy", code, ""),
                ));
            }
        },
        None => (need_mailbox(ctx)?, 0),
    };
    let m = &store.mailboxes[mb];
    let state_text = op.child_text("SyncState").unwrap_or("");
    let watermark = if state_text.is_empty() {
        0
    } else {
        match SyncState::decode(state_text) {
            Some(s)
                if s.hierarchy
                    && s.key == m.key
                    && s.folder == root
                    && s.epoch == m.hierarchy_epoch =>
            {
                s.watermark
            }
            _ => {
                return Ok(wrap(
                    "SyncFolderHierarchy",
                    &shape_err("SyncFolderHierarchy", "ErrorInvalidSyncStateData", ""),
                ));
            }
        }
    };
    let mut changes = String::new();
    for s in store.descendants(mb, root) {
        let f = &m.folders[s as usize];
        let kind = if f.created_seq > watermark {
            "Create"
        } else if f.changed_seq > watermark {
            "Update"
        } else {
            continue;
        };
        let _ = write!(changes, "<t:{kind}>");
        write_folder(&mut changes, store, mb, f, &shape);
        let _ = write!(changes, "</t:{kind}>");
    }
    let state = SyncState {
        hierarchy: true,
        key: m.key,
        folder: root,
        epoch: m.hierarchy_epoch,
        watermark: store.seq,
    };
    let c = format!(
        "<m:SyncState>{}</m:SyncState><m:IncludesLastFolderInRange>true</m:IncludesLastFolderInRange><m:Changes>{changes}</m:Changes>",
        state.encode()
    );
    Ok(wrap("SyncFolderHierarchy", &ok("SyncFolderHierarchy", &c)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Create,
    Update,
    Read,
    Delete,
}

fn sync_folder_items(store: &Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    const OP: &str = "SyncFolderItems";
    let shape = Shape::parse(op.child("ItemShape"))?;
    let max: usize = op
        .child_text("MaxChangesReturned")
        .and_then(|t| t.parse().ok())
        .filter(|n| (1..=512).contains(n))
        .ok_or_else(|| schema("MaxChangesReturned must be between 1 and 512"))?;
    let fel = op
        .child("SyncFolderId")
        .and_then(folder_child)
        .ok_or_else(|| schema("SyncFolderId is missing"))?;
    let (mb, fs) = match resolve_folder(store, ctx, fel) {
        Ok(t) => t,
        Err(code) => return Ok(wrap(OP, &shape_err(OP, code, ""))),
    };
    let m = &store.mailboxes[mb];
    let folder = &m.folders[fs as usize];
    let state_text = op.child_text("SyncState").unwrap_or("");
    let watermark = if state_text.is_empty() {
        0
    } else {
        match SyncState::decode(state_text) {
            Some(s)
                if !s.hierarchy && s.key == m.key && s.folder == fs && s.epoch == folder.epoch =>
            {
                s.watermark
            }
            _ => return Ok(wrap(OP, &shape_err(OP, "ErrorInvalidSyncStateData", ""))),
        }
    };
    let ignore: BTreeSet<&str> = op
        .child("Ignore")
        .map(|i| i.children.iter().filter_map(|c| c.attr("Id")).collect())
        .unwrap_or_default();
    let mut pending: Vec<(u64, Change, u64)> = Vec::new();
    for serial in &folder.items {
        let Some(it) = m.items.get(serial) else {
            continue;
        };
        let ls = it.last_seq();
        if ls <= watermark {
            continue;
        }
        let kind = if it.created_seq > watermark {
            Change::Create
        } else if it.content_seq > watermark {
            Change::Update
        } else {
            Change::Read
        };
        pending.push((ls, kind, *serial));
    }
    for (i, t) in folder.tombstones.iter().enumerate() {
        // Only items the client can know of: it consumed their position (created ≤ W) and
        // some sync response carried them.
        if t.seq > watermark && t.created_seq <= watermark && t.seen {
            pending.push((t.seq, Change::Delete, i as u64));
        }
    }
    pending.sort_by_key(|p| p.0);
    let all = pending.len() <= max;
    pending.truncate(max);
    let mut changes = String::new();
    for (_, kind, x) in &pending {
        match kind {
            Change::Create | Change::Update => {
                let Some(it) = m.items.get(x) else { continue };
                if ignore.contains(item_id(m.key, it.serial).as_str()) {
                    continue;
                }
                it.seen.store(true, std::sync::atomic::Ordering::Relaxed);
                let tag = if *kind == Change::Create {
                    "Create"
                } else {
                    "Update"
                };
                let _ = write!(changes, "<t:{tag}>");
                write_item(&mut changes, store, mb, it, &shape);
                let _ = write!(changes, "</t:{tag}>");
            }
            Change::Read => {
                let Some(it) = m.items.get(x) else { continue };
                it.seen.store(true, std::sync::atomic::Ordering::Relaxed);
                changes.push_str("<t:ReadFlagChange>");
                write_item_id(&mut changes, "t:ItemId", m.key, it);
                let _ = write!(
                    changes,
                    "<t:IsRead>{}</t:IsRead></t:ReadFlagChange>",
                    it.is_read
                );
            }
            Change::Delete => {
                let t = &folder.tombstones[*x as usize];
                let _ = write!(
                    changes,
                    "<t:Delete><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/></t:Delete>",
                    item_id(m.key, t.serial),
                    change_key(b'C', t.serial, t.version)
                );
            }
        }
    }
    let new_mark = if all {
        store.seq.max(watermark)
    } else {
        pending.last().map(|p| p.0).unwrap_or(watermark)
    };
    let state = SyncState {
        hierarchy: false,
        key: m.key,
        folder: fs,
        epoch: folder.epoch,
        watermark: new_mark,
    };
    let c = format!(
        "<m:SyncState>{}</m:SyncState><m:IncludesLastItemInRange>{all}</m:IncludesLastItemInRange><m:Changes>{changes}</m:Changes>",
        state.encode()
    );
    Ok(wrap(OP, &ok(OP, &c)))
}

// ------------------------------------------------------------------------ items

fn find_item(store: &Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    let shape = Shape::parse(op.child("ItemShape"))?;
    let traversal = op.attr("Traversal").unwrap_or("Shallow");
    if !matches!(traversal, "Shallow" | "SoftDeleted" | "Associated") {
        return Err(schema(&format!("invalid Traversal {traversal}")));
    }
    let (offset, max, end) = paging(op.child("IndexedPageItemView"))?;
    let restriction = match op.child("Restriction") {
        Some(r) => Some(
            r.children
                .first()
                .ok_or_else(|| schema("empty Restriction"))
                .and_then(Restriction::parse)?,
        ),
        None => None,
    };
    let parents = op
        .child("ParentFolderIds")
        .ok_or_else(|| schema("ParentFolderIds is missing"))?;
    let mut msgs = String::new();
    for p in &parents.children {
        match resolve_folder(store, ctx, p) {
            Ok((mb, f)) => {
                let m = &store.mailboxes[mb];
                // newest first, as Exchange's default view (DateTimeReceived descending)
                let mut list: Vec<&Item> = if traversal == "Shallow" {
                    m.folders[f as usize]
                        .items
                        .iter()
                        .filter_map(|s| m.items.get(s))
                        .collect()
                } else {
                    Vec::new()
                };
                if let Some(r) = &restriction {
                    list.retain(|it| r.matches(it));
                }
                list.sort_by(|a, b| b.received.cmp(&a.received).then(b.serial.cmp(&a.serial)));
                let (range, next, last) = page(list.len(), offset, max, end);
                let mut c = format!(
                    "<m:RootFolder IndexedPagingOffset=\"{next}\" TotalItemsInView=\"{}\" IncludesLastItemInRange=\"{last}\"><t:Items>",
                    list.len()
                );
                for it in &list[range] {
                    write_item(&mut c, store, mb, it, &shape);
                }
                c.push_str("</t:Items></m:RootFolder>");
                msgs.push_str(&ok("FindItem", &c));
            }
            Err(code) => msgs.push_str(&shape_err("FindItem", code, "")),
        }
    }
    Ok(wrap("FindItem", &msgs))
}

/// The FindItem `Restriction` subset the simulator evaluates: `IsEqualTo`, `IsNotEqualTo`,
/// `Contains` (substring, case-insensitive), `And`, `Or`, `Not` over a few item fields.
/// Other fields → fault `ErrorUnsupportedPathForQuery`, other expressions →
/// `ErrorUnsupportedQueryFilter` (both are real EWS codes).
#[derive(Debug)]
enum Restriction {
    Eq(&'static str, String),
    Ne(&'static str, String),
    Contains(&'static str, String),
    And(Vec<Restriction>),
    Or(Vec<Restriction>),
    Not(Box<Restriction>),
}

impl Restriction {
    fn parse(el: &El) -> Result<Restriction, Fault> {
        let field = || -> Result<(&'static str, String), Fault> {
            let uri = el
                .child("FieldURI")
                .and_then(|f| f.attr("FieldURI"))
                .ok_or_else(|| schema(&format!("{} without FieldURI", el.name)))?;
            let field = match uri {
                "message:InternetMessageId" => "message:InternetMessageId",
                "item:Subject" => "item:Subject",
                "item:ItemClass" => "item:ItemClass",
                "message:IsRead" => "message:IsRead",
                other => {
                    return Err(Fault::new(
                        "ErrorUnsupportedPathForQuery",
                        format!("The property {other} is not supported in a restriction."),
                    ));
                }
            };
            let value = el
                .path(&["FieldURIOrConstant", "Constant"])
                .or_else(|| el.child("Constant"))
                .and_then(|c| c.attr("Value"))
                .ok_or_else(|| schema(&format!("{} without Constant", el.name)))?;
            Ok((field, value.to_owned()))
        };
        let all = || {
            el.children
                .iter()
                .map(Restriction::parse)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match el.name.as_str() {
            "IsEqualTo" => {
                let (f, v) = field()?;
                Restriction::Eq(f, v)
            }
            "IsNotEqualTo" => {
                let (f, v) = field()?;
                Restriction::Ne(f, v)
            }
            "Contains" => {
                let (f, v) = field()?;
                Restriction::Contains(f, v.to_lowercase())
            }
            "And" => Restriction::And(all()?),
            "Or" => Restriction::Or(all()?),
            "Not" => Restriction::Not(Box::new(Restriction::parse(
                el.children.first().ok_or_else(|| schema("empty Not"))?,
            )?)),
            other => {
                return Err(Fault::new(
                    "ErrorUnsupportedQueryFilter",
                    format!("The restriction {other} is not supported."),
                ));
            }
        })
    }

    fn value(it: &Item, field: &str) -> String {
        match field {
            "message:InternetMessageId" => it.summary.message_id.clone(),
            "item:Subject" => it.summary.subject.clone(),
            "item:ItemClass" => it.item_class.clone(),
            "message:IsRead" => it.is_read.to_string(),
            _ => String::new(),
        }
    }

    fn matches(&self, it: &Item) -> bool {
        match self {
            // Exchange compares strings case-insensitively.
            Restriction::Eq(f, v) => Self::value(it, f).eq_ignore_ascii_case(v),
            Restriction::Ne(f, v) => !Self::value(it, f).eq_ignore_ascii_case(v),
            Restriction::Contains(f, v) => Self::value(it, f).to_lowercase().contains(v),
            Restriction::And(rs) => rs.iter().all(|r| r.matches(it)),
            Restriction::Or(rs) => rs.iter().any(|r| r.matches(it)),
            Restriction::Not(r) => !r.matches(it),
        }
    }
}

fn get_item(store: &Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    let shape = Shape::parse(op.child("ItemShape"))?;
    let ids = op
        .child("ItemIds")
        .ok_or_else(|| schema("ItemIds is missing"))?;
    let mut msgs = String::new();
    for id in &ids.children {
        match resolve_item(store, ctx, id) {
            Ok((mb, s)) => match store.mailboxes[mb].items.get(&s) {
                Some(it) if it.corrupt => {
                    msgs.push_str(&shape_err("GetItem", "ErrorCorruptData", "<m:Items/>"));
                }
                it => {
                    let mut c = String::from("<m:Items>");
                    if let Some(it) = it {
                        write_item(&mut c, store, mb, it, &shape);
                    }
                    c.push_str("</m:Items>");
                    msgs.push_str(&ok("GetItem", &c));
                }
            },
            Err(code) => msgs.push_str(&shape_err("GetItem", code, "<m:Items/>")),
        }
    }
    Ok(wrap("GetItem", &msgs))
}

const EXPORT_MAGIC: &[u8; 8] = b"MVSIMX01";

/// The opaque full-fidelity export blob: magic, read flag, item class, MIME.
pub fn export_blob(it: &Item) -> Vec<u8> {
    let mut b = Vec::with_capacity(it.mime.len() + 64);
    b.extend_from_slice(EXPORT_MAGIC);
    b.push(u8::from(it.is_read));
    let class = it.item_class.as_bytes();
    b.extend_from_slice(&(class.len() as u16).to_le_bytes());
    b.extend_from_slice(class);
    b.extend_from_slice(&(it.mime.len() as u64).to_le_bytes());
    b.extend_from_slice(&it.mime);
    b
}

/// (is_read, item class, MIME) of an export blob.
pub fn parse_export_blob(b: &[u8]) -> Option<(bool, String, Vec<u8>)> {
    let rest = b.strip_prefix(EXPORT_MAGIC)?;
    let (&read, rest) = rest.split_first()?;
    let cl = usize::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?));
    let class = std::str::from_utf8(rest.get(2..2 + cl)?).ok()?.to_owned();
    let rest = &rest[2 + cl..];
    let ml = usize::try_from(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)).ok()?;
    let mime = rest.get(8..8 + ml)?.to_vec();
    (rest.len() == 8 + ml).then_some((read == 1, class, mime))
}

fn export_items(store: &Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    let ids = op
        .child("ItemIds")
        .ok_or_else(|| schema("ItemIds is missing"))?;
    let mut msgs = String::new();
    for id in &ids.children {
        match resolve_item(store, ctx, id) {
            Ok((mb, s)) => {
                let m = &store.mailboxes[mb];
                if let Some(it) = m.items.get(&s) {
                    let mut c = String::new();
                    write_item_id(&mut c, "m:ItemId", m.key, it);
                    let _ = write!(c, "<m:Data>{}</m:Data>", B64.encode(export_blob(it)));
                    msgs.push_str(&ok("ExportItems", &c));
                }
            }
            Err(code) => msgs.push_str(&shape_err("ExportItems", code, "")),
        }
    }
    Ok(wrap("ExportItems", &msgs))
}

fn upload_items(store: &mut Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    let items = op
        .child("Items")
        .ok_or_else(|| schema("Items is missing"))?;
    let mut msgs = String::new();
    for el in &items.children {
        let action = el.attr("CreateAction").unwrap_or("CreateNew");
        let data = el
            .child_text("Data")
            .and_then(|d| B64.decode(d.split_whitespace().collect::<String>()).ok())
            .and_then(|b| parse_export_blob(&b));
        let Some((read, class, mime)) = data else {
            msgs.push_str(&shape_err("UploadItems", "ErrorCorruptData", ""));
            continue;
        };
        let target = match el.child("ParentFolderId") {
            Some(p) => {
                let as_folder = El {
                    name: "FolderId".into(),
                    ..p.clone()
                };
                resolve_folder(store, ctx, &as_folder)
            }
            None => Err("ErrorFolderNotFound"),
        };
        let result: Result<ItemRef, &'static str> = match action {
            "CreateNew" => target
                .map(|(mb, f)| {
                    let s = store.add_item(mb, f, mime.into(), &class, read);
                    store.item_ref(mb, s)
                })
                .and_then(|r| r.ok_or("ErrorItemNotFound")),
            "Update" | "UpdateOrCreate" => {
                let existing = el.child("ItemId").map(|i| resolve_item(store, ctx, i));
                match existing {
                    Some(Ok((mb, s))) => {
                        let r = store
                            .replace_content(mb, s, mime.into())
                            .and_then(|()| store.set_read(mb, s, read));
                        match r {
                            Ok(()) => store.item_ref(mb, s).ok_or("ErrorItemNotFound"),
                            Err(_) => Err("ErrorItemNotFound"),
                        }
                    }
                    _ if action == "UpdateOrCreate" => target
                        .map(|(mb, f)| {
                            let s = store.add_item(mb, f, mime.into(), &class, read);
                            store.item_ref(mb, s)
                        })
                        .and_then(|r| r.ok_or("ErrorItemNotFound")),
                    Some(Err(code)) => Err(code),
                    None => Err("ErrorMissingArgument"),
                }
            }
            _ => return Err(schema(&format!("invalid CreateAction {action}"))),
        };
        match result {
            Ok(r) => msgs.push_str(&ok(
                "UploadItems",
                &format!("<m:ItemId Id=\"{}\" ChangeKey=\"{}\"/>", r.id, r.change_key),
            )),
            Err(code) => msgs.push_str(&shape_err("UploadItems", code, "")),
        }
    }
    Ok(wrap("UploadItems", &msgs))
}

fn create_item(store: &mut Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    let items = op
        .child("Items")
        .ok_or_else(|| schema("Items is missing"))?;
    let disposition = op.attr("MessageDisposition");
    let saved = op.child("SavedItemFolderId").and_then(folder_child);
    let mut msgs = String::new();
    for el in &items.children {
        let tag = el.name.as_str();
        let class = el
            .child_text("ItemClass")
            .map(str::to_owned)
            .unwrap_or_else(|| {
                match tag {
                    "CalendarItem" => "IPM.Appointment",
                    "Contact" => "IPM.Contact",
                    "Task" => "IPM.Task",
                    _ => "IPM.Note",
                }
                .to_owned()
            });
        if tag == "Message" {
            match disposition {
                Some("SaveOnly") => {}
                None => {
                    msgs.push_str(&shape_err(
                        "CreateItem",
                        "ErrorMessageDispositionRequired",
                        "",
                    ));
                    continue;
                }
                Some(_) => {
                    msgs.push_str(&err(
                        "CreateItem",
                        "ErrorInvalidOperation",
                        "The simulator does not send mail; use MessageDisposition=\"SaveOnly\".",
                        "",
                    ));
                    continue;
                }
            }
        }
        let Some(mime) = el
            .child_text("MimeContent")
            .and_then(|d| B64.decode(d.split_whitespace().collect::<String>()).ok())
        else {
            msgs.push_str(&err(
                "CreateItem",
                "ErrorMissingArgument",
                "The simulator creates items from MimeContent only.",
                "",
            ));
            continue;
        };
        let target = match saved {
            Some(f) => resolve_folder(store, ctx, f),
            None => ctx.mailbox.ok_or("ErrorNonExistentMailbox").and_then(|mb| {
                let d = match tag {
                    "CalendarItem" => "calendar",
                    "Contact" => "contacts",
                    "Task" => "tasks",
                    _ => "drafts",
                };
                store
                    .distinguished_folder(mb, d)
                    .map(|f| (mb, f))
                    .ok_or("ErrorFolderNotFound")
            }),
        };
        // PR_MESSAGE_FLAGS (0x0E07) as an extended property sets the MAPI flags; without it
        // Exchange stamps a created message MSGFLAG_UNSENT | MSGFLAG_UNMODIFIED (a draft).
        let flags = message_flags(el);
        let read = el
            .child_text("IsRead")
            .map(|t| t == "true")
            .or(flags.map(|f| f & MSGFLAG_READ != 0))
            .unwrap_or(true);
        let draft = tag == "Message" && flags.is_none_or(|f| f & MSGFLAG_UNSENT != 0);
        match target {
            Ok((mb, f)) => {
                let s = store.add_item(mb, f, mime.into(), &class, read);
                if let Some(it) = store.mailboxes[mb].items.get_mut(&s) {
                    it.draft = draft;
                }
                let m = &store.mailboxes[mb];
                let mut c = format!("<m:Items><t:{}>", item_tag(&class));
                if let Some(it) = m.items.get(&s) {
                    write_item_id(&mut c, "t:ItemId", m.key, it);
                }
                let _ = write!(c, "</t:{}></m:Items>", item_tag(&class));
                msgs.push_str(&ok("CreateItem", &c));
            }
            Err(code) => msgs.push_str(&shape_err("CreateItem", code, "")),
        }
    }
    Ok(wrap("CreateItem", &msgs))
}

const MSGFLAG_READ: i64 = 0x1;
const MSGFLAG_UNSENT: i64 = 0x8;

/// The value of an `ExtendedProperty` for `PR_MESSAGE_FLAGS` (tag 0x0E07, Integer), if any.
fn message_flags(item: &El) -> Option<i64> {
    item.children
        .iter()
        .filter(|c| c.name == "ExtendedProperty")
        .find(|c| {
            c.child("ExtendedFieldURI").is_some_and(|u| {
                let tag = u.attr("PropertyTag").unwrap_or("");
                let is_flags = tag.eq_ignore_ascii_case("0x0e07") || tag == "3591";
                is_flags && u.attr("PropertyType") == Some("Integer")
            })
        })
        .and_then(|c| c.child_text("Value"))
        .and_then(|v| v.parse().ok())
}

fn delete_item(store: &mut Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    match op.attr("DeleteType") {
        Some("HardDelete" | "SoftDelete" | "MoveToDeletedItems") => {}
        other => return Err(schema(&format!("invalid DeleteType {other:?}"))),
    }
    let ids = op
        .child("ItemIds")
        .ok_or_else(|| schema("ItemIds is missing"))?;
    let mut msgs = String::new();
    for id in &ids.children {
        match resolve_item(store, ctx, id).and_then(|(mb, s)| {
            store
                .remove_item(mb, s)
                .map_err(|_: StoreError| "ErrorItemNotFound")
        }) {
            Ok(()) => msgs.push_str(&ok("DeleteItem", "")),
            Err(code) => msgs.push_str(&shape_err("DeleteItem", code, "")),
        }
    }
    Ok(wrap("DeleteItem", &msgs))
}

/// UpdateItem: `ConflictResolution` required; only `SetItemField message:IsRead` is applied
/// (other fields → `ErrorInvalidPropertySet`), always overwriting (no ChangeKey conflicts).
fn update_item(store: &mut Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    match op.attr("ConflictResolution") {
        Some("NeverOverwrite" | "AutoResolve" | "AlwaysOverwrite") => {}
        other => return Err(schema(&format!("invalid ConflictResolution {other:?}"))),
    }
    let changes = op
        .child("ItemChanges")
        .ok_or_else(|| schema("ItemChanges is missing"))?;
    let mut msgs = String::new();
    for ch in &changes.children {
        let Some(id) = ch.child("ItemId") else {
            msgs.push_str(&shape_err(
                "UpdateItem",
                "ErrorInvalidIdMalformed",
                "<m:Items/>",
            ));
            continue;
        };
        let updates = ch
            .child("Updates")
            .map(|u| u.children.as_slice())
            .unwrap_or(&[]);
        let r = resolve_item(store, ctx, id).and_then(|(mb, s)| {
            let is_message = store.mailboxes[mb]
                .items
                .get(&s)
                .is_some_and(|it| item_tag(&it.item_class) == "Message");
            if is_message && op.attr("MessageDisposition").is_none() {
                return Err("ErrorMessageDispositionRequired");
            }
            for u in updates {
                let field = u.child("FieldURI").and_then(|f| f.attr("FieldURI"));
                let read = u
                    .children
                    .iter()
                    .find_map(|c| c.child_text("IsRead"))
                    .map(|t| t == "true");
                match (u.name.as_str(), field, read) {
                    ("SetItemField", Some("message:IsRead"), Some(read)) => store
                        .set_read(mb, s, read)
                        .map_err(|_| "ErrorItemNotFound")?,
                    _ => return Err("ErrorInvalidPropertySet"),
                }
            }
            store.item_ref(mb, s).ok_or("ErrorItemNotFound")
        });
        match r {
            Ok(r) => msgs.push_str(&ok(
                "UpdateItem",
                &format!(
                    "<m:Items><t:Message><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/></t:Message></m:Items><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>",
                    r.id, r.change_key
                ),
            )),
            Err(code) => msgs.push_str(&shape_err("UpdateItem", code, "<m:Items/>")),
        }
    }
    Ok(wrap("UpdateItem", &msgs))
}

fn move_item(store: &mut Store, ctx: &Ctx, op: &El) -> Result<String, Fault> {
    let to = op
        .child("ToFolderId")
        .and_then(folder_child)
        .ok_or_else(|| schema("ToFolderId is missing"))?;
    let ids = op
        .child("ItemIds")
        .ok_or_else(|| schema("ItemIds is missing"))?;
    let target = resolve_folder(store, ctx, to);
    let mut msgs = String::new();
    for id in &ids.children {
        let r = resolve_item(store, ctx, id).and_then(|(mb, s)| {
            let (tmb, tf) = target?;
            if tmb != mb {
                return Err("ErrorInvalidOperation");
            }
            let n = store
                .move_item(mb, s, tf)
                .map_err(|_| "ErrorItemNotFound")?;
            store.item_ref(mb, n).ok_or("ErrorItemNotFound")
        });
        match r {
            Ok(r) => msgs.push_str(&ok(
                "MoveItem",
                &format!(
                    "<m:Items><t:Message><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/></t:Message></m:Items>",
                    r.id, r.change_key
                ),
            )),
            Err(code) => msgs.push_str(&shape_err("MoveItem", code, "<m:Items/>")),
        }
    }
    Ok(wrap("MoveItem", &msgs))
}

// ------------------------------------------------------------------------ names

fn resolve_names(store: &Store, op: &El) -> Result<String, Fault> {
    let entry = op
        .child_text("UnresolvedEntry")
        .ok_or_else(|| schema("UnresolvedEntry is missing"))?;
    let q = entry
        .trim()
        .trim_start_matches("smtp:")
        .trim_start_matches("SMTP:")
        .to_lowercase();
    let hits: Vec<&crate::store::MailboxData> = store
        .mailboxes
        .iter()
        .filter(|m| {
            let a = m.address.to_lowercase();
            !q.is_empty()
                && (a == q || a.starts_with(&q) || m.display_name.to_lowercase().contains(&q))
        })
        .collect();
    if hits.is_empty() {
        return Ok(wrap(
            "ResolveNames",
            &shape_err("ResolveNames", "ErrorNameResolutionNoResults", ""),
        ));
    }
    let mut set = format!(
        "<m:ResolutionSet TotalItemsInView=\"{}\" IncludesLastItemInRange=\"true\">",
        hits.len()
    );
    for m in &hits {
        let _ = write!(
            set,
            "<t:Resolution><t:Mailbox><t:Name>{}</t:Name><t:EmailAddress>{}</t:EmailAddress><t:RoutingType>SMTP</t:RoutingType><t:MailboxType>Mailbox</t:MailboxType></t:Mailbox></t:Resolution>",
            esc(&m.display_name),
            esc(&m.address)
        );
    }
    set.push_str("</m:ResolutionSet>");
    let msg = if hits.len() == 1 {
        ok("ResolveNames", &set)
    } else {
        format!(
            "<m:ResolveNamesResponseMessage ResponseClass=\"Warning\"><m:MessageText>{}</m:MessageText><m:ResponseCode>ErrorNameResolutionMultipleResults</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{set}</m:ResolveNamesResponseMessage>",
            error_text("ErrorNameResolutionMultipleResults")
        )
    };
    Ok(wrap("ResolveNames", &msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_math() {
        assert_eq!(page(10, 0, Some(4), false), (0..4, 4, false));
        assert_eq!(page(10, 8, Some(4), false), (8..10, 10, true));
        assert_eq!(page(10, 0, Some(4), true), (6..10, 4, false));
        assert_eq!(page(10, 12, Some(4), false), (10..10, 10, true));
        assert_eq!(page(3, 0, None, false), (0..3, 3, true));
    }
}
