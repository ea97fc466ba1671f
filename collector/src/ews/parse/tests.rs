//! Parser tests on hand-written fixtures shaped like Microsoft's documented examples
//! (office-developer-exchange-docs: SyncFolderHierarchy/SyncFolderItems/GetItem operation pages,
//! "EWS throttling in Exchange").

use std::time::Duration;

use super::*;

const HEAD: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">
  <s:Header>
    <h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="6"
      xmlns:h="http://schemas.microsoft.com/exchange/services/2006/types"
      xmlns="http://schemas.microsoft.com/exchange/services/2006/types"
      xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>
  </s:Header>
  <s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">"#;
const TAIL: &str = "</s:Body></s:Envelope>";

fn doc(body: &str) -> Element {
    let xml = format!("{HEAD}{body}{TAIL}");
    parse_envelope(xml.as_bytes()).expect("fixture parses")
}

const HIERARCHY: &str = r#"
<m:SyncFolderHierarchyResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
    xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
  <m:ResponseMessages>
    <m:SyncFolderHierarchyResponseMessage ResponseClass="Success">
      <m:ResponseCode>NoError</m:ResponseCode>
      <m:SyncState>H4sIAAAAAAAEAO29B2AcSZY=</m:SyncState>
      <m:IncludesLastFolderInRange>true</m:IncludesLastFolderInRange>
      <m:Changes>
        <t:Create>
          <t:Folder>
            <t:FolderId Id="AAMkADIn" ChangeKey="AQAAABYA"/>
            <t:ParentFolderId Id="AAMkADRoot" ChangeKey="AQAAAA=="/>
            <t:FolderClass>IPF.Note</t:FolderClass>
            <t:DisplayName>Posteingang</t:DisplayName>
            <t:TotalCount>12</t:TotalCount>
            <t:ChildFolderCount>0</t:ChildFolderCount>
            <t:EffectiveRights><t:CreateAssociated>true</t:CreateAssociated></t:EffectiveRights>
            <t:UnreadCount>3</t:UnreadCount>
          </t:Folder>
        </t:Create>
        <t:Create>
          <t:CalendarFolder>
            <t:FolderId Id="AAMkADCal" ChangeKey="AgAAABYA"/>
            <t:ParentFolderId Id="AAMkADRoot"/>
            <t:FolderClass>IPF.Appointment</t:FolderClass>
            <t:DisplayName>Calendar</t:DisplayName>
            <t:TotalCount>0</t:TotalCount>
          </t:CalendarFolder>
        </t:Create>
        <t:Update>
          <t:Folder>
            <t:FolderId Id="AAMkADSent" ChangeKey="AQAAAB"/>
            <t:ParentFolderId Id="AAMkADRoot"/>
            <t:DisplayName>Sent &amp; Stored</t:DisplayName>
          </t:Folder>
        </t:Update>
        <t:Delete><t:FolderId Id="AAMkADOld" ChangeKey="AQAAAC"/></t:Delete>
        <t:FutureChangeKind><t:Whatever/></t:FutureChangeKind>
      </m:Changes>
    </m:SyncFolderHierarchyResponseMessage>
  </m:ResponseMessages>
</m:SyncFolderHierarchyResponse>"#;

#[test]
fn sync_folder_hierarchy_exchange_prefixes() {
    let page = sync_folder_hierarchy(&doc(HIERARCHY)).expect("parses");
    assert_eq!(page.sync_state, "H4sIAAAAAAAEAO29B2AcSZY=");
    assert!(page.includes_last);
    assert_eq!(page.changes.len(), 4);
    let FolderChange::Create(inbox) = &page.changes[0] else {
        panic!("expected create, got {:?}", page.changes[0]);
    };
    assert_eq!(inbox.id, "AAMkADIn");
    assert_eq!(inbox.parent_id, "AAMkADRoot");
    assert_eq!(inbox.display_name, "Posteingang");
    assert_eq!(inbox.folder_class, "IPF.Note");
    assert_eq!(inbox.total_count, Some(12));
    assert!(matches!(&page.changes[1], FolderChange::Create(f) if f.element == "CalendarFolder"));
    assert!(
        matches!(&page.changes[2], FolderChange::Update(f) if f.display_name == "Sent & Stored")
    );
    assert_eq!(
        page.changes[3],
        FolderChange::Delete {
            id: "AAMkADOld".into()
        }
    );
}

const ITEMS: &str = r#"
<m:SyncFolderItemsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
    xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
  <m:ResponseMessages>
    <m:SyncFolderItemsResponseMessage ResponseClass="Success">
      <m:ResponseCode>NoError</m:ResponseCode>
      <m:SyncState>H4sIAAAAAAAEAGNgYGMA</m:SyncState>
      <m:IncludesLastItemInRange>false</m:IncludesLastItemInRange>
      <m:Changes>
        <t:Create>
          <t:Message>
            <t:ItemId Id="AAMkItem1" ChangeKey="CQAAABYA1"/>
            <t:ItemClass>IPM.Note</t:ItemClass>
            <t:Size>2048</t:Size>
            <t:IsRead>false</t:IsRead>
          </t:Message>
        </t:Create>
        <t:Create>
          <t:CalendarItem>
            <t:ItemId Id="AAMkItem2" ChangeKey="DwAAABYA2"/>
            <t:ItemClass>IPM.Appointment</t:ItemClass>
          </t:CalendarItem>
        </t:Create>
        <t:Update>
          <t:Message>
            <t:ItemId Id="AAMkItem3" ChangeKey="CQAAABYA3"/>
            <t:ItemClass>IPM.Note</t:ItemClass>
            <t:IsRead>true</t:IsRead>
          </t:Message>
        </t:Update>
        <t:Delete><t:ItemId Id="AAMkItem4" ChangeKey="CQAAABYA4"/></t:Delete>
        <t:ReadFlagChange>
          <t:ItemId Id="AAMkItem5" ChangeKey="CQAAABYA5"/>
          <t:IsRead>true</t:IsRead>
        </t:ReadFlagChange>
      </m:Changes>
    </m:SyncFolderItemsResponseMessage>
  </m:ResponseMessages>
</m:SyncFolderItemsResponse>"#;

fn expected_items() -> Vec<ItemChange> {
    let id = |i: &str, ck: &str| ItemId {
        id: i.into(),
        change_key: ck.into(),
    };
    vec![
        ItemChange::Create(ItemSummary {
            id: id("AAMkItem1", "CQAAABYA1"),
            item_class: "IPM.Note".into(),
            is_read: Some(false),
            size: Some(2048),
            element: "Message".into(),
        }),
        ItemChange::Create(ItemSummary {
            id: id("AAMkItem2", "DwAAABYA2"),
            item_class: "IPM.Appointment".into(),
            is_read: None,
            size: None,
            element: "CalendarItem".into(),
        }),
        ItemChange::Update(ItemSummary {
            id: id("AAMkItem3", "CQAAABYA3"),
            item_class: "IPM.Note".into(),
            is_read: Some(true),
            size: None,
            element: "Message".into(),
        }),
        ItemChange::Delete(id("AAMkItem4", "CQAAABYA4")),
        ItemChange::ReadFlag {
            id: id("AAMkItem5", "CQAAABYA5"),
            is_read: true,
        },
    ]
}

#[test]
fn sync_folder_items_exchange_prefixes() {
    let page = sync_folder_items(&doc(ITEMS)).expect("parses");
    assert_eq!(page.sync_state, "H4sIAAAAAAAEAGNgYGMA");
    assert!(!page.includes_last);
    assert_eq!(page.changes, expected_items());
}

#[test]
fn sync_folder_items_other_prefixes_and_default_namespace() {
    // Same document with the messages namespace as default and types bound to `ty:`; the
    // envelope uses `soap:`.
    let body = ITEMS
        .replace("m:", "")
        .replace("xmlns:m=", "xmlns=")
        .replace("t:", "ty:")
        .replace("xmlns:t=", "xmlns:ty=");
    let xml = format!(
        r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>{body}</soap:Body></soap:Envelope>"#
    );
    let root = parse_envelope(xml.as_bytes()).expect("parses");
    let page = sync_folder_items(&root).expect("parses");
    assert_eq!(page.changes, expected_items());
}

#[test]
fn wrong_namespace_is_not_accepted_by_name_alone() {
    // Right local names, wrong namespace: must not be mistaken for EWS.
    let body = ITEMS.replace(
        "http://schemas.microsoft.com/exchange/services/2006/messages",
        "urn:not-ews",
    );
    let err = sync_folder_items(&doc(&body)).expect_err("not EWS");
    assert_eq!(err.kind(), ErrorKind::MalformedResponse);
}

#[test]
fn invalid_sync_state() {
    let body = r#"<m:SyncFolderItemsResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
      <m:ResponseMessages>
        <m:SyncFolderItemsResponseMessage ResponseClass="Error">
          <m:MessageText>Synchronization state data is corrupted or otherwise invalid.</m:MessageText>
          <m:ResponseCode>ErrorInvalidSyncStateData</m:ResponseCode>
          <m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>
          <m:SyncState/>
          <m:IncludesLastItemInRange>true</m:IncludesLastItemInRange>
        </m:SyncFolderItemsResponseMessage>
      </m:ResponseMessages></m:SyncFolderItemsResponse>"#;
    let err = sync_folder_items(&doc(body)).expect_err("error");
    assert_eq!(err.kind(), ErrorKind::InvalidSyncState);
}

use crate::ews::ErrorKind;

#[test]
fn get_item_mime_and_per_id_errors() {
    let body = r#"<m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
        xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
      <m:ResponseMessages>
        <m:GetItemResponseMessage ResponseClass="Success">
          <m:ResponseCode>NoError</m:ResponseCode>
          <m:Items>
            <t:Message>
              <t:MimeContent CharacterSet="UTF-8">U3ViamVjdDogSGkNCg0KYm9keQ0K</t:MimeContent>
              <t:ItemId Id="AAMkItem1" ChangeKey="CQAAABYA9"/>
              <t:ItemClass>IPM.Note</t:ItemClass>
              <t:IsRead>true</t:IsRead>
              <t:Unknown><t:Deep>x</t:Deep></t:Unknown>
            </t:Message>
          </m:Items>
        </m:GetItemResponseMessage>
        <m:GetItemResponseMessage ResponseClass="Error">
          <m:MessageText>The specified object was not found in the store.</m:MessageText>
          <m:ResponseCode>ErrorItemNotFound</m:ResponseCode>
          <m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>
          <m:Items/>
        </m:GetItemResponseMessage>
      </m:ResponseMessages></m:GetItemResponse>"#;
    let res = get_items_mime(&doc(body)).expect("parses");
    assert_eq!(res.len(), 2);
    let first = res[0].as_ref().expect("first ok");
    assert_eq!(first.mime, b"Subject: Hi\r\n\r\nbody\r\n");
    assert_eq!(first.id.change_key, "CQAAABYA9");
    assert_eq!(first.is_read, Some(true));
    let second = res[1].as_ref().expect_err("second missing");
    assert_eq!(second.kind(), ErrorKind::ItemNotFound);
}

#[test]
fn get_item_bad_base64_is_malformed() {
    let body = r#"<m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
        xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages>
        <m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>
        <m:Items><t:Message><t:MimeContent>!!!not base64!!!</t:MimeContent><t:ItemId Id="x"/></t:Message></m:Items>
        </m:GetItemResponseMessage></m:ResponseMessages></m:GetItemResponse>"#;
    let xml = format!("{HEAD}{body}{TAIL}");
    let err = parse_envelope(xml.as_bytes()).expect_err("bad base64");
    assert_eq!(err.kind(), ErrorKind::MalformedResponse);
}

#[test]
fn server_busy_in_response_message() {
    let body = r#"<m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
        xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages>
        <m:GetItemResponseMessage ResponseClass="Error">
          <m:MessageText>The server cannot service this request right now. Try again later.</m:MessageText>
          <m:ResponseCode>ErrorServerBusy</m:ResponseCode>
          <m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>
          <m:MessageXml><t:Value Name="BackOffMilliseconds">1500</t:Value></m:MessageXml>
          <m:Items/>
        </m:GetItemResponseMessage></m:ResponseMessages></m:GetItemResponse>"#;
    let res = get_items_mime(&doc(body)).expect("parses");
    let err = res[0].as_ref().expect_err("busy");
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert_eq!(err.back_off(), Some(Duration::from_millis(1500)));
}

#[test]
fn server_busy_soap_fault() {
    let body = r#"<s:Fault>
      <faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode>
      <faultstring xml:lang="en-US">The server cannot service this request right now. Try again later.</faultstring>
      <detail>
        <e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy</e:ResponseCode>
        <e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">The server cannot service this request right now. Try again later.</e:Message>
        <t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
          <t:Value Name="BackOffMilliseconds">297749</t:Value>
        </t:MessageXml>
      </detail>
    </s:Fault>"#;
    let err = sync_folder_items(&doc(body)).expect_err("fault");
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert_eq!(err.back_off(), Some(Duration::from_millis(297_749)));
}

#[test]
fn truncated_and_malformed_responses() {
    let full = format!("{HEAD}{ITEMS}{TAIL}");
    for cut in [full.len() / 3, full.len() / 2, full.len() - 10] {
        let err = parse_envelope(&full.as_bytes()[..cut]).expect_err("truncated");
        assert_eq!(err.kind(), ErrorKind::MalformedResponse, "cut at {cut}");
    }
    let err = parse_envelope(&b"<html><body>Service Unavailable</body></html>"[..])
        .expect_err("not soap");
    assert_eq!(err.kind(), ErrorKind::MalformedResponse);
    let err = parse_envelope(&b"<a><b></a>"[..]).expect_err("mismatched");
    assert_eq!(err.kind(), ErrorKind::MalformedResponse);
}

#[test]
fn get_folder_and_find_paging() {
    let body = r#"<m:GetFolderResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
        xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages>
        <m:GetFolderResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>
          <m:Folders><t:Folder><t:FolderId Id="AAInbox" ChangeKey="AQ"/><t:DisplayName>收件箱</t:DisplayName></t:Folder></m:Folders>
        </m:GetFolderResponseMessage>
        <m:GetFolderResponseMessage ResponseClass="Error"><m:MessageText>no</m:MessageText>
          <m:ResponseCode>ErrorFolderNotFound</m:ResponseCode><m:Folders/></m:GetFolderResponseMessage>
      </m:ResponseMessages></m:GetFolderResponse>"#;
    let res = get_folder(&doc(body)).expect("parses");
    assert_eq!(res[0].as_ref().expect("ok").display_name, "收件箱");
    assert_eq!(
        res[1].as_ref().expect_err("missing").kind(),
        ErrorKind::ItemNotFound
    );

    let body = r#"<m:FindItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
        xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><m:ResponseMessages>
        <m:FindItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>
          <m:RootFolder IndexedPagingOffset="2" TotalItemsInView="5" IncludesLastItemInRange="false">
            <t:Items>
              <t:PostItem><t:ItemId Id="P1" ChangeKey="c1"/><t:ItemClass>IPM.Post</t:ItemClass></t:PostItem>
              <t:Message><t:ItemId Id="P2" ChangeKey="c2"/></t:Message>
            </t:Items>
          </m:RootFolder>
        </m:FindItemResponseMessage></m:ResponseMessages></m:FindItemResponse>"#;
    let page = find_item(&doc(body)).expect("parses");
    assert_eq!(page.entries.len(), 2);
    assert!(!page.includes_last);
    assert_eq!(page.next_offset, Some(2));
}

/// Hostile responses: the documented shapes, cut, flipped, spliced and padded at random, then
/// parsed as every operation. Each parse ends in a value or a typed error; none panics or
/// hangs. (The same function is what `fuzz/` runs for hours; `MAILVAULT_FUZZ_CASES` widens
/// this run.)
mod hostile {
    use super::*;
    use proptest::prelude::*;

    const GET_ITEM: &str = r#"
<m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
    xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
  <m:ResponseMessages>
    <m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>
      <m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">U3ViamVjdDogaGkNCg0KYm9keQ0K</t:MimeContent>
        <t:ItemId Id="AAMkI1" ChangeKey="CQAAAB"/></t:Message></m:Items>
    </m:GetItemResponseMessage>
    <m:GetItemResponseMessage ResponseClass="Error"><m:MessageText>gone</m:MessageText>
      <m:ResponseCode>ErrorItemNotFound</m:ResponseCode><m:Items/></m:GetItemResponseMessage>
  </m:ResponseMessages>
</m:GetItemResponse>"#;

    /// One edit: truncate, overwrite, insert, delete or repeat a span.
    fn edit(mut b: Vec<u8>, kind: u8, at: usize, bytes: &[u8]) -> Vec<u8> {
        if b.is_empty() {
            return bytes.to_vec();
        }
        let at = at % b.len();
        match kind % 5 {
            0 => b.truncate(at),
            1 => {
                for (i, x) in bytes.iter().enumerate() {
                    if let Some(y) = b.get_mut(at + i) {
                        *y = *x;
                    }
                }
            }
            2 => {
                b.splice(at..at, bytes.iter().copied());
            }
            3 => {
                let end = (at + bytes.len() * 7).min(b.len());
                b.drain(at..end);
            }
            _ => {
                let end = (at + bytes.len() * 13).min(b.len());
                let span = b[at..end].to_vec();
                for _ in 0..(bytes.len() % 8) {
                    b.splice(at..at, span.iter().copied());
                }
            }
        }
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(mailvault_harness::fuzz_cases(256)))]

        #[test]
        fn a_mangled_response_is_a_value_or_a_typed_error(
            which in 0usize..3,
            edits in proptest::collection::vec(
                (any::<u8>(), any::<usize>(), proptest::collection::vec(any::<u8>(), 1..40)),
                0..6,
            ),
        ) {
            let body = [HIERARCHY, ITEMS, GET_ITEM][which];
            let mut xml = format!("{HEAD}{body}{TAIL}").into_bytes();
            for (kind, at, bytes) in &edits {
                xml = edit(xml, *kind, *at, bytes);
            }
            every_parser(&xml);
        }

        #[test]
        fn arbitrary_bytes_are_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            every_parser(&bytes);
        }
    }
}
