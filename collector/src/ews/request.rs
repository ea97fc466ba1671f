//! SOAP 1.1 request builders. Plain functions from parameters to XML text.

use std::fmt::Write as _;

use quick_xml::escape::escape;

use super::ItemId;
use super::xml::{NS_MESSAGES, NS_SOAP, NS_TYPES};

/// SOAP headers common to every request.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    /// `RequestServerVersion/@Version`, e.g. `Exchange2013_SP1`.
    pub server_version: &'a str,
    /// Mailbox to impersonate (`ExchangeImpersonation/ConnectingSID/PrimarySmtpAddress`).
    pub impersonate: Option<&'a str>,
}

/// Wraps an operation body into a SOAP envelope with the EWS headers.
pub fn envelope(h: Headers<'_>, body: &str) -> String {
    let mut s = String::with_capacity(body.len() + 640);
    let _ = write!(
        s,
        r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{NS_SOAP}" xmlns:t="{NS_TYPES}" xmlns:m="{NS_MESSAGES}"><soap:Header><t:RequestServerVersion Version="{}"/>"#,
        escape(h.server_version)
    );
    if let Some(smtp) = h.impersonate {
        let _ = write!(
            s,
            "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>",
            escape(smtp)
        );
    }
    s.push_str("</soap:Header><soap:Body>");
    s.push_str(body);
    s.push_str("</soap:Body></soap:Envelope>");
    s
}

/// SyncFolderHierarchy below a distinguished folder (`None`: the whole mailbox).
pub fn sync_folder_hierarchy(root: Option<&str>, sync_state: Option<&str>) -> String {
    let mut s = String::from(
        "<m:SyncFolderHierarchy><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape>",
    );
    if let Some(root) = root {
        let _ = write!(
            s,
            r#"<m:SyncFolderId><t:DistinguishedFolderId Id="{}"/></m:SyncFolderId>"#,
            escape(root)
        );
    }
    if let Some(st) = sync_state.filter(|s| !s.is_empty()) {
        let _ = write!(s, "<m:SyncState>{}</m:SyncState>", escape(st));
    }
    s.push_str("</m:SyncFolderHierarchy>");
    s
}

/// GetFolder for distinguished folder ids of `mailbox`.
pub fn get_distinguished_folders(mailbox: &str, ids: &[&str]) -> String {
    let mut s = String::from(
        "<m:GetFolder><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape><m:FolderIds>",
    );
    for id in ids {
        let _ = write!(
            s,
            r#"<t:DistinguishedFolderId Id="{}"><t:Mailbox><t:EmailAddress>{}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"#,
            escape(*id),
            escape(mailbox)
        );
    }
    s.push_str("</m:FolderIds></m:GetFolder>");
    s
}

const ITEM_PROPS: &str = r#"<t:AdditionalProperties><t:FieldURI FieldURI="item:ItemClass"/><t:FieldURI FieldURI="item:Size"/><t:FieldURI FieldURI="message:IsRead"/></t:AdditionalProperties>"#;

/// SyncFolderItems for one folder; `max_changes` is clamped to EWS's 1..=512.
pub fn sync_folder_items(folder_id: &str, sync_state: Option<&str>, max_changes: u32) -> String {
    let mut s = format!(
        r#"<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>{ITEM_PROPS}</m:ItemShape><m:SyncFolderId><t:FolderId Id="{}"/></m:SyncFolderId>"#,
        escape(folder_id)
    );
    if let Some(st) = sync_state.filter(|s| !s.is_empty()) {
        let _ = write!(s, "<m:SyncState>{}</m:SyncState>", escape(st));
    }
    let _ = write!(
        s,
        "<m:MaxChangesReturned>{}</m:MaxChangesReturned><m:SyncScope>NormalItems</m:SyncScope></m:SyncFolderItems>",
        max_changes.clamp(1, 512)
    );
    s
}

/// GetItem with MIME content for a batch of ids. The change key is not sent: we want the
/// current version, whose change key comes back in the response.
pub fn get_items_mime(ids: &[ItemId]) -> String {
    let mut s = String::from(
        r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:IncludeMimeContent>true</t:IncludeMimeContent><t:AdditionalProperties><t:FieldURI FieldURI="item:ItemClass"/><t:FieldURI FieldURI="message:IsRead"/></t:AdditionalProperties></m:ItemShape><m:ItemIds>"#,
    );
    for id in ids {
        let _ = write!(s, r#"<t:ItemId Id="{}"/>"#, escape(id.id.as_str()));
    }
    s.push_str("</m:ItemIds></m:GetItem>");
    s
}

/// A parent folder for FindFolder / FindItem.
#[derive(Debug, Clone, Copy)]
pub enum FolderRef<'a> {
    Id(&'a str),
    Distinguished(&'a str),
}

fn folder_ref(r: FolderRef<'_>) -> String {
    match r {
        FolderRef::Id(id) => format!(r#"<t:FolderId Id="{}"/>"#, escape(id)),
        FolderRef::Distinguished(id) => {
            format!(r#"<t:DistinguishedFolderId Id="{}"/>"#, escape(id))
        }
    }
}

/// FindFolder (shallow) with IndexedPageFolderView paging — the public-folder path.
pub fn find_folder(parent: FolderRef<'_>, offset: u32, page: u32) -> String {
    format!(
        r#"<m:FindFolder Traversal="Shallow"><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape><m:IndexedPageFolderView MaxEntriesReturned="{page}" Offset="{offset}" BasePoint="Beginning"/><m:ParentFolderIds>{}</m:ParentFolderIds></m:FindFolder>"#,
        folder_ref(parent)
    )
}

/// FindItem (shallow) with IndexedPageItemView paging — the public-folder path.
pub fn find_item(parent: FolderRef<'_>, offset: u32, page: u32) -> String {
    format!(
        r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>{ITEM_PROPS}</m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="{page}" Offset="{offset}" BasePoint="Beginning"/><m:ParentFolderIds>{}</m:ParentFolderIds></m:FindItem>"#,
        folder_ref(parent)
    )
}

/// ExportItems (full-fidelity blobs, Exchange 2010 SP1+).
pub fn export_items(ids: &[ItemId]) -> String {
    let mut s = String::from("<m:ExportItems><m:ItemIds>");
    for id in ids {
        let _ = write!(s, r#"<t:ItemId Id="{}"/>"#, escape(id.id.as_str()));
    }
    s.push_str("</m:ItemIds></m:ExportItems>");
    s
}

/// CreateFolder below `parent` (`t:Folder` with `DisplayName`, and `FolderClass` when given).
pub fn create_folder(
    parent: FolderRef<'_>,
    display_name: &str,
    folder_class: Option<&str>,
) -> String {
    let class = folder_class
        .filter(|c| !c.is_empty())
        .map(|c| format!("<t:FolderClass>{}</t:FolderClass>", escape(c)))
        .unwrap_or_default();
    format!(
        "<m:CreateFolder><m:ParentFolderId>{}</m:ParentFolderId><m:Folders><t:Folder>{class}<t:DisplayName>{}</t:DisplayName></t:Folder></m:Folders></m:CreateFolder>",
        folder_ref(parent),
        escape(display_name)
    )
}

/// FindItem (shallow, first `max` entries) in `folder_id` restricted to items whose
/// `message:InternetMessageId` equals `internet_message_id`.
pub fn find_items_by_message_id(folder_id: &str, internet_message_id: &str, max: u32) -> String {
    // Exchange keeps InternetMessageId as the header has it, in angle brackets; the archive
    // (mail-parser) keeps the id without them. Unbracketed, the restriction matches nothing and
    // every restore with collision `skip` writes a second copy.
    let trimmed = internet_message_id.trim();
    let bracketed = if trimmed.starts_with('<') && trimmed.ends_with('>') {
        trimmed.to_owned()
    } else {
        format!("<{trimmed}>")
    };
    let internet_message_id = bracketed.as_str();
    format!(
        r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:ItemClass"/><t:FieldURI FieldURI="message:InternetMessageId"/></t:AdditionalProperties></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="{}" Offset="0" BasePoint="Beginning"/><m:Restriction><t:IsEqualTo><t:FieldURI FieldURI="message:InternetMessageId"/><t:FieldURIOrConstant><t:Constant Value="{}"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction><m:ParentFolderIds><t:FolderId Id="{}"/></m:ParentFolderIds></m:FindItem>"#,
        max.max(1),
        escape(internet_message_id),
        escape(folder_id)
    )
}

/// `PR_MESSAGE_FLAGS` value for a restored message: `MSGFLAG_READ` (1) or 0. Leaving the
/// property out makes Exchange stamp `MSGFLAG_UNSENT | MSGFLAG_UNMODIFIED`: the restored mail
/// would show as an unsent draft.
pub fn restored_message_flags(is_read: bool) -> u32 {
    u32::from(is_read)
}

/// CreateItem of a message from MIME into `folder_id`, saved only (never sent), with
/// `PR_MESSAGE_FLAGS` (0x0E07) so it is not a draft, and `IsRead`.
pub fn create_item_mime(folder_id: &str, mime: &[u8], item_class: &str, is_read: bool) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(mime);
    let mut s = String::with_capacity(b64.len() + 1024);
    let _ = write!(
        s,
        r#"<m:CreateItem MessageDisposition="SaveOnly"><m:SavedItemFolderId><t:FolderId Id="{}"/></m:SavedItemFolderId><m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">"#,
        escape(folder_id)
    );
    s.push_str(&b64);
    s.push_str("</t:MimeContent>");
    if !item_class.is_empty() {
        let _ = write!(s, "<t:ItemClass>{}</t:ItemClass>", escape(item_class));
    }
    let _ = write!(
        s,
        r#"<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag="0x0E07" PropertyType="Integer"/><t:Value>{}</t:Value></t:ExtendedProperty><t:IsRead>{is_read}</t:IsRead></t:Message></m:Items></m:CreateItem>"#,
        restored_message_flags(is_read)
    );
    s
}

/// UploadItems (CreateNew) of one full-fidelity export blob into `folder_id`.
pub fn upload_item(folder_id: &str, data: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let mut s = String::with_capacity(b64.len() + 512);
    let _ = write!(
        s,
        r#"<m:UploadItems><m:Items><t:Item CreateAction="CreateNew"><t:ParentFolderId Id="{}"/><t:Data>"#,
        escape(folder_id)
    );
    s.push_str(&b64);
    s.push_str("</t:Data></t:Item></m:Items></m:UploadItems>");
    s
}

/// UpdateItem setting `message:IsRead` (saved only, overwriting).
pub fn update_is_read(id: &ItemId, is_read: bool) -> String {
    format!(
        r#"<m:UpdateItem MessageDisposition="SaveOnly" ConflictResolution="AlwaysOverwrite"><m:ItemChanges><t:ItemChange><t:ItemId Id="{}"/><t:Updates><t:SetItemField><t:FieldURI FieldURI="message:IsRead"/><t:Message><t:IsRead>{is_read}</t:IsRead></t:Message></t:SetItemField></t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>"#,
        escape(id.id.as_str())
    )
}

/// DeleteItem, hard (not to Deleted Items, not recoverable by the user). The calendar/task
/// attributes are required by Exchange when the item is a meeting or a task.
pub fn delete_item_hard(ids: &[ItemId]) -> String {
    let mut s = String::from(
        r#"<m:DeleteItem DeleteType="HardDelete" SendMeetingCancellations="SendToNone" AffectedTaskOccurrences="AllOccurrences"><m:ItemIds>"#,
    );
    for id in ids {
        let _ = write!(s, r#"<t:ItemId Id="{}"/>"#, escape(id.id.as_str()));
    }
    s.push_str("</m:ItemIds></m:DeleteItem>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ews::xml::{ParseOptions, parse};

    #[test]
    fn envelope_has_headers_and_is_well_formed() {
        let body = sync_folder_items("AQMk<&>", Some("H4sI"), 9999);
        let xml = envelope(
            Headers {
                server_version: "Exchange2016",
                impersonate: Some("bob@example.com"),
            },
            &body,
        );
        let root = parse(xml.as_bytes(), ParseOptions::default()).expect("well-formed");
        let header = root.child(NS_SOAP, "Header").expect("header");
        assert_eq!(
            header
                .child(NS_TYPES, "RequestServerVersion")
                .and_then(|v| v.attr("Version")),
            Some("Exchange2016")
        );
        let sid = header
            .find(NS_TYPES, "PrimarySmtpAddress")
            .expect("impersonation");
        assert_eq!(sid.text, "bob@example.com");
        let op = root
            .child(NS_SOAP, "Body")
            .and_then(|b| b.child(NS_MESSAGES, "SyncFolderItems"))
            .expect("op");
        assert_eq!(
            op.child_text(NS_MESSAGES, "MaxChangesReturned"),
            Some("512")
        );
        assert_eq!(
            op.find(NS_TYPES, "FolderId").and_then(|f| f.attr("Id")),
            Some("AQMk<&>")
        );
    }

    #[test]
    fn create_item_is_save_only_with_message_flags() {
        let body = create_item_mime("F<1>", b"Subject: x\r\n\r\nhi", "IPM.Note", false);
        let xml = envelope(
            Headers {
                server_version: "Exchange2016",
                impersonate: None,
            },
            &body,
        );
        let root = parse(xml.as_bytes(), ParseOptions::default()).expect("well-formed");
        let op = root.find(NS_MESSAGES, "CreateItem").expect("op");
        assert_eq!(op.attr("MessageDisposition"), Some("SaveOnly"));
        assert_eq!(
            op.find(NS_TYPES, "FolderId").and_then(|f| f.attr("Id")),
            Some("F<1>")
        );
        let uri = op
            .find(NS_TYPES, "ExtendedFieldURI")
            .expect("extended property");
        assert_eq!(uri.attr("PropertyTag"), Some("0x0E07"));
        assert_eq!(uri.attr("PropertyType"), Some("Integer"));
        let prop = op.find(NS_TYPES, "ExtendedProperty").expect("prop");
        assert_eq!(prop.child_text(NS_TYPES, "Value"), Some("0"));
        assert_eq!(
            op.find(NS_TYPES, "MimeContent")
                .and_then(|m| m.binary.clone()),
            Some(b"Subject: x\r\n\r\nhi".to_vec())
        );
        assert_eq!(restored_message_flags(true), 1);
    }

    #[test]
    fn find_by_message_id_escapes_the_constant() {
        let body = find_items_by_message_id("F1", "<a&b@example.com>", 10);
        let xml = envelope(
            Headers {
                server_version: "Exchange2016",
                impersonate: None,
            },
            &body,
        );
        let root = parse(xml.as_bytes(), ParseOptions::default()).expect("well-formed");
        let c = root.find(NS_TYPES, "Constant").expect("constant");
        assert_eq!(c.attr("Value"), Some("<a&b@example.com>"));
        let f = root.find(NS_TYPES, "IsEqualTo").expect("IsEqualTo");
        assert_eq!(
            f.child(NS_TYPES, "FieldURI")
                .and_then(|u| u.attr("FieldURI")),
            Some("message:InternetMessageId")
        );
    }

    #[test]
    fn no_impersonation_header_when_off() {
        let xml = envelope(
            Headers {
                server_version: "Exchange2013_SP1",
                impersonate: None,
            },
            &sync_folder_hierarchy(None, None),
        );
        assert!(!xml.contains("ExchangeImpersonation"));
        assert!(!xml.contains("SyncState"));
    }
}
