//! Response parsers: SOAP envelope → typed results. Namespace-aware (see [`super::xml`]),
//! tolerant of unknown elements, strict about what they need.

use std::io::BufRead;
use std::time::Duration;

use super::xml::{Element, NS_ERRORS, NS_MESSAGES, NS_SOAP, NS_TYPES, ParseOptions, XmlError};
use super::{
    ErrorContext, EwsError, FindPage, Folder, FolderChange, HierarchyPage, ItemChange, ItemId,
    ItemSummary, ItemsPage, MimeItem,
};

/// Parses a SOAP response document from a (streaming) reader.
pub fn parse_envelope<R: BufRead>(input: R) -> Result<Element, EwsError> {
    let root = super::xml::parse(input, ParseOptions::default()).map_err(|e| match e {
        XmlError::Base64 { .. } => EwsError::malformed(format!("bad MIME content: {e}")),
        other => EwsError::malformed(other.to_string()),
    })?;
    if !root.is(NS_SOAP, "Envelope") {
        return Err(EwsError::malformed(format!(
            "root element is {{{}}}{}, not a SOAP envelope",
            root.ns, root.name
        )));
    }
    Ok(root)
}

/// Finds `BackOffMilliseconds` in a `MessageXml` (any namespace prefix; Exchange uses `t:Value`).
fn back_off_in(el: &Element) -> Option<Duration> {
    fn walk(el: &Element) -> Option<u64> {
        if el.name == "Value" && el.attr("Name") == Some("BackOffMilliseconds") {
            return el.text.trim().parse().ok();
        }
        el.children.iter().find_map(walk)
    }
    walk(el).map(Duration::from_millis)
}

/// Returns the operation's response element (`{messages}<op>Response`), or the error a SOAP
/// fault carries.
pub fn operation_response<'a>(root: &'a Element, op: &str) -> Result<&'a Element, EwsError> {
    let body = root
        .child(NS_SOAP, "Body")
        .ok_or_else(|| EwsError::malformed("SOAP envelope without Body"))?;
    if let Some(fault) = body.child(NS_SOAP, "Fault") {
        return Err(fault_error(fault));
    }
    let name = format!("{op}Response");
    body.child(NS_MESSAGES, &name)
        .ok_or_else(|| EwsError::malformed(format!("SOAP Body without {name}")))
}

fn fault_error(fault: &Element) -> EwsError {
    let faultcode = fault
        .children
        .iter()
        .find(|c| c.name == "faultcode")
        .map(|c| c.text.trim().to_owned())
        .unwrap_or_default();
    let faultstring = fault
        .children
        .iter()
        .find(|c| c.name == "faultstring")
        .map(|c| c.text.trim().to_owned())
        .unwrap_or_default();
    let detail = fault.children.iter().find(|c| c.name == "detail");
    let code = detail
        .and_then(|d| d.find(NS_ERRORS, "ResponseCode"))
        .map(|c| c.text.trim().to_owned())
        .unwrap_or_else(|| faultcode.rsplit(':').next().unwrap_or_default().to_owned());
    let back_off = detail.and_then(back_off_in);
    let message = detail
        .and_then(|d| d.find(NS_ERRORS, "Message"))
        .map(|m| m.text.trim().to_owned())
        .unwrap_or(faultstring);
    let code = if code.is_empty() {
        "SoapFault".to_owned()
    } else {
        code
    };
    EwsError::from_response_code(&code, &message, back_off, ErrorContext::default())
}

/// The per-request response messages (`m:ResponseMessages/*`).
pub fn response_messages(resp: &Element) -> Result<&[Element], EwsError> {
    resp.child(NS_MESSAGES, "ResponseMessages")
        .map(|m| m.children.as_slice())
        .ok_or_else(|| EwsError::malformed(format!("{} without ResponseMessages", resp.name)))
}

/// Checks one response message's `ResponseClass`/`ResponseCode`.
pub fn check_status(msg: &Element) -> Result<(), EwsError> {
    let class = msg.attr("ResponseClass").unwrap_or("Success");
    let code = msg
        .child_text(NS_MESSAGES, "ResponseCode")
        .unwrap_or("NoError");
    if class == "Success" && code == "NoError" {
        return Ok(());
    }
    if class == "Success" {
        // Success with an odd code: trust the class.
        return Ok(());
    }
    let text = msg.child_text(NS_MESSAGES, "MessageText").unwrap_or("");
    let back_off = msg.child(NS_MESSAGES, "MessageXml").and_then(back_off_in);
    Err(EwsError::from_response_code(
        code,
        text,
        back_off,
        ErrorContext::default(),
    ))
}

fn single_message<'a>(root: &'a Element, op: &str) -> Result<&'a Element, EwsError> {
    let resp = operation_response(root, op)?;
    let msgs = response_messages(resp)?;
    let msg = msgs
        .first()
        .ok_or_else(|| EwsError::malformed(format!("{op}Response has no response message")))?;
    check_status(msg)?;
    Ok(msg)
}

fn parse_bool(s: Option<&str>) -> Option<bool> {
    match s? {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn item_id(el: &Element) -> Result<ItemId, EwsError> {
    let id = el
        .attr("Id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EwsError::malformed("ItemId without Id"))?;
    Ok(ItemId {
        id: id.to_owned(),
        change_key: el.attr("ChangeKey").unwrap_or_default().to_owned(),
    })
}

/// Parses a folder element (`t:Folder`, `t:CalendarFolder`, …).
pub fn folder(el: &Element) -> Result<Folder, EwsError> {
    let fid = el
        .child(NS_TYPES, "FolderId")
        .ok_or_else(|| EwsError::malformed(format!("{} without FolderId", el.name)))?;
    Ok(Folder {
        id: fid
            .attr("Id")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EwsError::malformed("FolderId without Id"))?
            .to_owned(),
        change_key: fid.attr("ChangeKey").unwrap_or_default().to_owned(),
        parent_id: el
            .child(NS_TYPES, "ParentFolderId")
            .and_then(|p| p.attr("Id"))
            .unwrap_or_default()
            .to_owned(),
        display_name: el
            .child_text(NS_TYPES, "DisplayName")
            .unwrap_or_default()
            .to_owned(),
        folder_class: el
            .child_text(NS_TYPES, "FolderClass")
            .unwrap_or_default()
            .to_owned(),
        total_count: el
            .child_text(NS_TYPES, "TotalCount")
            .and_then(|s| s.parse().ok()),
        element: el.name.clone(),
    })
}

fn first_typed_child(el: &Element) -> Option<&Element> {
    el.children.iter().find(|c| c.ns == NS_TYPES)
}

/// Parses a SyncFolderHierarchy response.
pub fn sync_folder_hierarchy(root: &Element) -> Result<HierarchyPage, EwsError> {
    let msg = single_message(root, "SyncFolderHierarchy")?;
    let mut page = HierarchyPage {
        sync_state: msg
            .child_text(NS_MESSAGES, "SyncState")
            .ok_or_else(|| EwsError::malformed("SyncFolderHierarchy without SyncState"))?
            .to_owned(),
        includes_last: parse_bool(msg.child_text(NS_MESSAGES, "IncludesLastFolderInRange"))
            .unwrap_or(true),
        changes: Vec::new(),
    };
    if let Some(changes) = msg.child(NS_MESSAGES, "Changes") {
        for c in changes.children.iter().filter(|c| c.ns == NS_TYPES) {
            match c.name.as_str() {
                "Create" | "Update" => {
                    let Some(f) = first_typed_child(c) else {
                        return Err(EwsError::malformed(format!("empty {}", c.name)));
                    };
                    let f = folder(f)?;
                    page.changes.push(if c.name == "Create" {
                        FolderChange::Create(f)
                    } else {
                        FolderChange::Update(f)
                    });
                }
                "Delete" => {
                    let id = c
                        .child(NS_TYPES, "FolderId")
                        .and_then(|f| f.attr("Id"))
                        .ok_or_else(|| EwsError::malformed("folder Delete without FolderId"))?;
                    page.changes
                        .push(FolderChange::Delete { id: id.to_owned() });
                }
                _ => {} // unknown change kinds are ignored
            }
        }
    }
    Ok(page)
}

fn item_summary(el: &Element) -> Result<ItemSummary, EwsError> {
    let id = el
        .child(NS_TYPES, "ItemId")
        .ok_or_else(|| EwsError::malformed(format!("{} without ItemId", el.name)))?;
    Ok(ItemSummary {
        id: item_id(id)?,
        item_class: el
            .child_text(NS_TYPES, "ItemClass")
            .unwrap_or_default()
            .to_owned(),
        is_read: parse_bool(el.child_text(NS_TYPES, "IsRead")),
        size: el.child_text(NS_TYPES, "Size").and_then(|s| s.parse().ok()),
        element: el.name.clone(),
    })
}

/// Parses a SyncFolderItems response.
pub fn sync_folder_items(root: &Element) -> Result<ItemsPage, EwsError> {
    let msg = single_message(root, "SyncFolderItems")?;
    let mut page = ItemsPage {
        sync_state: msg
            .child_text(NS_MESSAGES, "SyncState")
            .ok_or_else(|| EwsError::malformed("SyncFolderItems without SyncState"))?
            .to_owned(),
        includes_last: parse_bool(msg.child_text(NS_MESSAGES, "IncludesLastItemInRange"))
            .ok_or_else(|| {
                EwsError::malformed("SyncFolderItems without IncludesLastItemInRange")
            })?,
        changes: Vec::new(),
    };
    if let Some(changes) = msg.child(NS_MESSAGES, "Changes") {
        for c in changes.children.iter().filter(|c| c.ns == NS_TYPES) {
            match c.name.as_str() {
                "Create" | "Update" => {
                    let Some(it) = first_typed_child(c) else {
                        return Err(EwsError::malformed(format!("empty item {}", c.name)));
                    };
                    let s = item_summary(it)?;
                    page.changes.push(if c.name == "Create" {
                        ItemChange::Create(s)
                    } else {
                        ItemChange::Update(s)
                    });
                }
                "Delete" => {
                    let id = c
                        .child(NS_TYPES, "ItemId")
                        .ok_or_else(|| EwsError::malformed("item Delete without ItemId"))?;
                    page.changes.push(ItemChange::Delete(item_id(id)?));
                }
                "ReadFlagChange" => {
                    let id = c
                        .child(NS_TYPES, "ItemId")
                        .ok_or_else(|| EwsError::malformed("ReadFlagChange without ItemId"))?;
                    let is_read = parse_bool(c.child_text(NS_TYPES, "IsRead"))
                        .ok_or_else(|| EwsError::malformed("ReadFlagChange without IsRead"))?;
                    page.changes.push(ItemChange::ReadFlag {
                        id: item_id(id)?,
                        is_read,
                    });
                }
                _ => {}
            }
        }
    }
    Ok(page)
}

/// Parses a GetItem response: one result per response message, in request order.
pub fn get_items_mime(root: &Element) -> Result<Vec<Result<MimeItem, EwsError>>, EwsError> {
    let resp = operation_response(root, "GetItem")?;
    let mut out = Vec::new();
    for msg in response_messages(resp)? {
        out.push(check_status(msg).and_then(|()| {
            let items = msg
                .child(NS_MESSAGES, "Items")
                .ok_or_else(|| EwsError::malformed("GetItem response message without Items"))?;
            let it = first_typed_child(items)
                .ok_or_else(|| EwsError::malformed("GetItem response message with no item"))?;
            let id = it
                .child(NS_TYPES, "ItemId")
                .ok_or_else(|| EwsError::malformed("item without ItemId"))?;
            let mime = it
                .child(NS_TYPES, "MimeContent")
                .and_then(|m| m.binary.clone())
                .ok_or_else(|| EwsError::malformed("item without MimeContent"))?;
            Ok(MimeItem {
                id: item_id(id)?,
                item_class: it
                    .child_text(NS_TYPES, "ItemClass")
                    .unwrap_or_default()
                    .to_owned(),
                is_read: parse_bool(it.child_text(NS_TYPES, "IsRead")),
                mime,
            })
        }));
    }
    Ok(out)
}

/// Parses GetFolder: one result per requested folder.
pub fn get_folder(root: &Element) -> Result<Vec<Result<Folder, EwsError>>, EwsError> {
    let resp = operation_response(root, "GetFolder")?;
    let mut out = Vec::new();
    for msg in response_messages(resp)? {
        out.push(check_status(msg).and_then(|()| {
            msg.child(NS_MESSAGES, "Folders")
                .and_then(first_typed_child)
                .ok_or_else(|| EwsError::malformed("GetFolder response message with no folder"))
                .and_then(folder)
        }));
    }
    Ok(out)
}

fn root_folder_paging(rf: &Element) -> (bool, Option<u32>) {
    let last = parse_bool(rf.attr("IncludesLastItemInRange")).unwrap_or(true);
    let next = rf.attr("IndexedPagingOffset").and_then(|s| s.parse().ok());
    (last, if last { None } else { next })
}

/// One page of FindFolder or FindItem: the `RootFolder` paging attributes and the entries of
/// its `list` child, each parsed with `entry`.
fn find_page<T>(
    root: &Element,
    op: &str,
    list: &str,
    entry: impl Fn(&Element) -> Result<T, EwsError>,
) -> Result<FindPage<T>, EwsError> {
    let msg = single_message(root, op)?;
    let rf = msg
        .child(NS_MESSAGES, "RootFolder")
        .ok_or_else(|| EwsError::malformed(format!("{op} without RootFolder")))?;
    let (includes_last, next_offset) = root_folder_paging(rf);
    let entries = rf
        .child(NS_TYPES, list)
        .map(|f| {
            f.children
                .iter()
                .filter(|c| c.ns == NS_TYPES)
                .map(&entry)
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    Ok(FindPage {
        entries,
        includes_last,
        next_offset,
    })
}

/// Parses FindFolder (IndexedPageFolderView).
pub fn find_folder(root: &Element) -> Result<FindPage<Folder>, EwsError> {
    find_page(root, "FindFolder", "Folders", folder)
}

/// Parses FindItem (IndexedPageItemView).
pub fn find_item(root: &Element) -> Result<FindPage<ItemSummary>, EwsError> {
    find_page(root, "FindItem", "Items", item_summary)
}

/// One ExportItems result: the item id and its full-fidelity blob.
pub type ExportedItem = (ItemId, Vec<u8>);

/// Parses ExportItems: one `(ItemId, full-fidelity blob)` result per requested id.
pub fn export_items(root: &Element) -> Result<Vec<Result<ExportedItem, EwsError>>, EwsError> {
    let resp = operation_response(root, "ExportItems")?;
    let mut out = Vec::new();
    for msg in response_messages(resp)? {
        out.push(check_status(msg).and_then(|()| {
            let id = msg
                .child(NS_MESSAGES, "ItemId")
                .ok_or_else(|| EwsError::malformed("ExportItems message without ItemId"))
                .and_then(item_id)?;
            let data = msg
                .child(NS_MESSAGES, "Data")
                .and_then(|d| d.binary.clone())
                .ok_or_else(|| EwsError::malformed("ExportItems message without Data"))?;
            Ok((id, data))
        }));
    }
    Ok(out)
}

/// Parses CreateFolder: the new folder's id.
pub fn create_folder(root: &Element) -> Result<String, EwsError> {
    let msg = single_message(root, "CreateFolder")?;
    msg.child(NS_MESSAGES, "Folders")
        .and_then(first_typed_child)
        .and_then(|f| f.child(NS_TYPES, "FolderId"))
        .and_then(|f| f.attr("Id"))
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| EwsError::malformed("CreateFolder response without FolderId"))
}

/// Parses CreateItem (one item): the new item's id.
pub fn create_item(root: &Element) -> Result<ItemId, EwsError> {
    let msg = single_message(root, "CreateItem")?;
    msg.child(NS_MESSAGES, "Items")
        .and_then(first_typed_child)
        .and_then(|it| it.child(NS_TYPES, "ItemId"))
        .ok_or_else(|| EwsError::malformed("CreateItem response without ItemId"))
        .and_then(item_id)
}

/// Parses UploadItems (one item): the new item's id.
pub fn upload_item(root: &Element) -> Result<ItemId, EwsError> {
    let msg = single_message(root, "UploadItems")?;
    msg.child(NS_MESSAGES, "ItemId")
        .ok_or_else(|| EwsError::malformed("UploadItems response without ItemId"))
        .and_then(item_id)
}

/// Parses UpdateItem (one item): the item's id with its new change key.
pub fn update_item(root: &Element) -> Result<ItemId, EwsError> {
    let msg = single_message(root, "UpdateItem")?;
    msg.child(NS_MESSAGES, "Items")
        .and_then(first_typed_child)
        .and_then(|it| it.child(NS_TYPES, "ItemId"))
        .ok_or_else(|| EwsError::malformed("UpdateItem response without ItemId"))
        .and_then(item_id)
}

/// Parses DeleteItem: one status per requested id, in order.
pub fn delete_item(root: &Element) -> Result<Vec<Result<(), EwsError>>, EwsError> {
    let resp = operation_response(root, "DeleteItem")?;
    Ok(response_messages(resp)?.iter().map(check_status).collect())
}

/// Runs `input` through the envelope parser and, when that accepts it, through every operation's
/// parser; returns how many accepted. For hostile-input tests and fuzzing: whatever the bytes,
/// each parser returns a value or a typed error.
pub fn every_parser(input: &[u8]) -> usize {
    let Ok(root) = parse_envelope(input) else {
        return 0;
    };
    [
        sync_folder_hierarchy(&root).is_ok(),
        sync_folder_items(&root).is_ok(),
        get_items_mime(&root).is_ok(),
        get_folder(&root).is_ok(),
        find_folder(&root).is_ok(),
        find_item(&root).is_ok(),
        export_items(&root).is_ok(),
        create_folder(&root).is_ok(),
        create_item(&root).is_ok(),
        upload_item(&root).is_ok(),
        update_item(&root).is_ok(),
        delete_item(&root).is_ok(),
    ]
    .into_iter()
    .filter(|ok| *ok)
    .count()
}

#[cfg(test)]
mod tests;
