//! SOAP round trips over real HTTP against an in-process simulator.

mod common;

use std::collections::BTreeSet;

use common::*;
use mailvault_ews_sim::{Account, FaultKind, FaultRule, SimConfig, Simulator};

fn config() -> SimConfig {
    let mut c = SimConfig::generated(11);
    if let Some(g) = c.generate.as_mut() {
        g.users = 6;
        g.messages = 120;
    }
    c.accounts.push(Account {
        name: "CONTOSO\\helpdesk".into(),
        password: "pw".into(),
        impersonation: false,
    });
    c
}

/// A mailbox whose locale is not en-US, and its address.
fn german(sim: &mailvault_ews_sim::SimHandle) -> String {
    sim.mailboxes()
        .into_iter()
        .find(|m| sim.mailbox_locale(m).as_deref() == Some("de-DE"))
        .expect("a de-DE mailbox")
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
enum Ch {
    Create(String),
    Update(String),
    Delete(String),
    Read(String, bool),
}

/// Runs SyncFolderItems to the end of the range: (changes, final state, calls).
async fn sync_all(
    addr: std::net::SocketAddr,
    mb: &str,
    folder: &str,
    state: &str,
    max: usize,
) -> (Vec<Ch>, String, usize) {
    let mut state = state.to_owned();
    let mut out = Vec::new();
    let mut calls = 0;
    loop {
        let r = call(addr, mb, &sync_items(folder, &state, max)).await;
        calls += 1;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.find("ResponseCode").text, "NoError", "{}", r.body);
        let changes = r.find("Changes");
        assert!(changes.children.len() <= max);
        for c in &changes.children {
            let id = find(c, "ItemId")
                .and_then(|i| i.attr("Id"))
                .expect("change has an ItemId")
                .to_owned();
            out.push(match c.name.as_str() {
                "Create" => Ch::Create(id),
                "Update" => Ch::Update(id),
                "Delete" => Ch::Delete(id),
                "ReadFlagChange" => Ch::Read(id, c.child_text("IsRead") == Some("true")),
                other => panic!("unexpected change {other}"),
            });
        }
        state = r.find("SyncState").text;
        if r.find("IncludesLastItemInRange").text == "true" {
            return (out, state, calls);
        }
    }
}

#[tokio::test]
async fn auth_and_impersonation_check() {
    let sim = Simulator::start(config()).await.expect("start");
    let addr = sim.addr();
    let mb = german(&sim);
    let body = "<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id=\"inbox\"/><t:DistinguishedFolderId Id=\"sentitems\"/><t:DistinguishedFolderId Id=\"archivemsgfolderroot\"/></m:FolderIds></m:GetFolder>";

    let ok = call(addr, &mb, body).await;
    assert_eq!(ok.status, 200);
    assert!(ok.body.contains("ServerVersionInfo"));
    let names: Vec<String> = ok.all("DisplayName").into_iter().map(|e| e.text).collect();
    assert_eq!(names, ["Posteingang", "Gesendete Elemente"]);
    let codes: Vec<String> = ok.all("ResponseCode").into_iter().map(|e| e.text).collect();
    assert_eq!(codes, ["NoError", "NoError", "ErrorFolderNotFound"]);

    let denied = post(
        addr,
        Some(("CONTOSO\\helpdesk", "pw")),
        envelope(Some(&mb), body),
    )
    .await;
    assert_eq!(denied.status, 500);
    assert_eq!(
        denied.fault_code().as_deref(),
        Some("ErrorImpersonateUserDenied")
    );

    let nobody = call(addr, "nobody@contoso.com", body).await;
    assert_eq!(
        nobody.fault_code().as_deref(),
        Some("ErrorNonExistentMailbox")
    );

    let bad = post(
        addr,
        Some(("svc-mailvault", "wrong")),
        envelope(Some(&mb), body),
    )
    .await;
    assert_eq!(bad.status, 401);
    let anon = post(addr, None, envelope(Some(&mb), body)).await;
    assert_eq!(anon.status, 401);

    let bad_version = post(
        addr,
        Some(SVC),
        envelope(Some(&mb), body).replace("Exchange2016", "Exchange1999"),
    )
    .await;
    assert_eq!(
        bad_version.fault_code().as_deref(),
        Some("ErrorInvalidServerVersion")
    );

    let s = sim.stats();
    assert_eq!(s.impersonation_denied, 1);
    assert_eq!(s.auth_failures, 2);
}

#[tokio::test]
async fn folder_tree_with_paging_and_hierarchy_sync() {
    let sim = Simulator::start(config()).await.expect("start");
    let addr = sim.addr();
    let mb = german(&sim);
    let expected = sim.folders(&mb);
    let mut got = Vec::new();
    let mut offset = 0;
    loop {
        let r = call(addr, &mb, &format!("<m:FindFolder Traversal=\"Deep\"><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape><m:IndexedPageFolderView MaxEntriesReturned=\"3\" Offset=\"{offset}\" BasePoint=\"Beginning\"/><m:ParentFolderIds>{}</m:ParentFolderIds></m:FindFolder>", dist("msgfolderroot"))).await;
        let root = r.find("RootFolder");
        assert_eq!(
            root.attr("TotalItemsInView"),
            Some(expected.len().to_string().as_str())
        );
        let folders = r.all("FolderId");
        assert!(folders.len() <= 3);
        got.extend(
            folders
                .iter()
                .filter_map(|f| f.attr("Id").map(str::to_owned)),
        );
        offset = root
            .attr("IndexedPagingOffset")
            .and_then(|o| o.parse().ok())
            .expect("offset");
        if root.attr("IncludesLastItemInRange") == Some("true") {
            break;
        }
    }
    let want: Vec<String> = expected.iter().map(|f| f.id.clone()).collect();
    assert_eq!(got, want);

    // hierarchy sync: everything first, nothing next, a new folder after that
    let body = |state: &str| {
        format!(
            "<m:SyncFolderHierarchy><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape><m:SyncState>{state}</m:SyncState></m:SyncFolderHierarchy>"
        )
    };
    let first = call(addr, &mb, &body("")).await;
    let creates = first.all("Create").len();
    assert!(creates >= expected.len(), "{creates}");
    assert!(
        first
            .body
            .contains("<t:DisplayName>Kalender</t:DisplayName>")
    );
    assert!(first.body.contains("<t:CalendarFolder>"));
    let state = first.find("SyncState").text;
    let again = call(addr, &mb, &body(&state)).await;
    assert!(again.find("Changes").children.is_empty());
    let inbox = sim.distinguished_folder_id(&mb, "inbox").expect("inbox");
    sim.create_folder(&inbox, "Rechnungen")
        .expect("create folder");
    let after = call(addr, &mb, &body(&again.find("SyncState").text)).await;
    assert_eq!(after.all("Create").len(), 1);
    assert!(after.body.contains("Rechnungen"));
}

#[tokio::test]
async fn sync_items_paging_changes_and_mime() {
    let sim = Simulator::start(config()).await.expect("start");
    let addr = sim.addr();
    let mb = german(&sim);
    let inbox = sim.distinguished_folder_id(&mb, "inbox").expect("inbox");
    let items = sim.items(&inbox);
    assert!(items.len() > 12, "{}", items.len());

    let (changes, state, calls) = sync_all(addr, &mb, &dist("inbox"), "", 5).await;
    assert_eq!(
        calls,
        items.len().div_ceil(5) + usize::from(items.len() % 5 == 0)
    );
    let ids: Vec<String> = changes
        .iter()
        .map(|c| match c {
            Ch::Create(id) => id.clone(),
            other => panic!("initial sync has only creates: {other:?}"),
        })
        .collect();
    let want: BTreeSet<String> = items.iter().map(|i| i.id.clone()).collect();
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), want);

    // MIME over GetItem, in batches, equals the stored bytes
    for batch in ids.chunks(7) {
        let r = call(addr, &mb, &get_items_mime(batch)).await;
        let msgs = r.all("GetItemResponseMessage");
        assert_eq!(msgs.len(), batch.len());
        for (m, id) in msgs.iter().zip(batch) {
            let mime = find(m, "MimeContent").expect("MimeContent");
            assert_eq!(mime.attr("CharacterSet"), Some("UTF-8"));
            let item = sim.item(id).expect("item exists");
            assert_eq!(b64(&mime.text), &item.mime[..]);
        }
    }

    // no change → nothing
    let (none, state, _) = sync_all(addr, &mb, &dist("inbox"), &state, 512).await;
    assert!(none.is_empty());

    // add 2, change 1, delete 1, move 1, flip 1 read flag
    let a1 = sim
        .add_item(&inbox, b"Subject: new one\r\n\r\nbody\r\n", "IPM.Note")
        .expect("add");
    let a2 = sim
        .add_item(&inbox, b"Subject: new two\r\n\r\nbody\r\n", "IPM.Note")
        .expect("add");
    let changed = sim
        .change_item(&items[0].id, b"Subject: edited\r\n\r\nnew\r\n")
        .expect("change");
    assert_ne!(changed.change_key, items[0].change_key);
    sim.delete_item(&items[1].id).expect("delete");
    let deleted = sim
        .distinguished_folder_id(&mb, "deleteditems")
        .expect("deleteditems");
    let moved = sim.move_item(&items[2].id, &deleted).expect("move");
    assert_ne!(moved.id, items[2].id, "a moved item gets a new id");
    let before = items[3].is_read;
    sim.set_read(&items[3].id, !before).expect("read flag");
    sim.delete_item(&a2.id)
        .expect("created and deleted before the sync: invisible");

    let (mut delta, _state, _) = sync_all(addr, &mb, &dist("inbox"), &state, 2).await;
    delta.sort();
    let mut want = vec![
        Ch::Create(a1.id.clone()),
        Ch::Update(items[0].id.clone()),
        Ch::Delete(items[1].id.clone()),
        Ch::Delete(items[2].id.clone()),
        Ch::Read(items[3].id.clone(), !before),
    ];
    want.sort();
    assert_eq!(delta, want);

    // the vanished item: ErrorItemNotFound for its id, the others still answered
    let r = call(
        addr,
        &mb,
        &get_items_mime(&[items[1].id.clone(), a1.id.clone()]),
    )
    .await;
    let codes: Vec<String> = r.all("ResponseCode").into_iter().map(|e| e.text).collect();
    assert_eq!(codes, ["ErrorItemNotFound", "NoError"]);
}

#[tokio::test]
async fn invalid_sync_states() {
    let sim = Simulator::start(config()).await.expect("start");
    let addr = sim.addr();
    let mb = german(&sim);
    let garbage = call(
        addr,
        &mb,
        &sync_items(&dist("inbox"), "bm90IGEgc3RhdGU=", 10),
    )
    .await;
    assert_eq!(
        garbage.find("ResponseCode").text,
        "ErrorInvalidSyncStateData"
    );
    let (_, state, _) = sync_all(addr, &mb, &dist("inbox"), "", 512).await;
    // a state of one folder is not valid for another
    let other = call(addr, &mb, &sync_items(&dist("sentitems"), &state, 10)).await;
    assert_eq!(other.find("ResponseCode").text, "ErrorInvalidSyncStateData");
    sim.invalidate_sync_states(Some(&mb));
    let stale = call(addr, &mb, &sync_items(&dist("inbox"), &state, 10)).await;
    assert_eq!(stale.find("ResponseCode").text, "ErrorInvalidSyncStateData");
    let too_many = call(addr, &mb, &sync_items(&dist("inbox"), "", 513)).await;
    assert_eq!(
        too_many.fault_code().as_deref(),
        Some("ErrorSchemaValidation")
    );
}

#[tokio::test]
async fn find_item_paging() {
    let sim = Simulator::start(config()).await.expect("start");
    let addr = sim.addr();
    let mb = german(&sim);
    let total = sim
        .items(&sim.distinguished_folder_id(&mb, "inbox").expect("inbox"))
        .len();
    let mut seen = BTreeSet::new();
    let mut offset = 0;
    loop {
        let r = call(addr, &mb, &format!("<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>Default</t:BaseShape></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned=\"4\" Offset=\"{offset}\" BasePoint=\"Beginning\"/><m:ParentFolderIds>{}</m:ParentFolderIds></m:FindItem>", dist("inbox"))).await;
        let root = r.find("RootFolder");
        assert_eq!(
            root.attr("TotalItemsInView"),
            Some(total.to_string().as_str())
        );
        for id in r.all("ItemId") {
            assert!(seen.insert(id.attr("Id").expect("Id").to_owned()));
        }
        assert!(r.all("Subject").len() <= 4);
        offset = root
            .attr("IndexedPagingOffset")
            .and_then(|o| o.parse().ok())
            .expect("offset");
        if root.attr("IncludesLastItemInRange") == Some("true") {
            break;
        }
    }
    assert_eq!(seen.len(), total);
}

#[tokio::test]
async fn concurrency_limit_gives_server_busy_with_backoff() {
    let mut cfg = config();
    cfg.max_concurrent_per_account = 2;
    cfg.busy_backoff_ms = 1234;
    let sim = Simulator::start(cfg).await.expect("start");
    let addr = sim.addr();
    let mb = german(&sim);
    sim.hold();
    let body = format!(
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>{}</m:FolderIds></m:GetFolder>",
        dist("inbox")
    );
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (mb, body) = (mb.clone(), body.clone());
        tasks.push(tokio::spawn(async move { call(addr, &mb, &body).await }));
    }
    sim.wait_for(|s| s.in_flight == 2 && s.busy_responses == 3)
        .await;
    sim.release();
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        let r = t.await.expect("task");
        if r.status == 200 {
            ok += 1;
        } else {
            assert_eq!(r.fault_code().as_deref(), Some("ErrorServerBusy"));
            let v = r.find("Value");
            assert_eq!(v.attr("Name"), Some("BackOffMilliseconds"));
            assert_eq!(v.text, "1234");
            busy += 1;
        }
    }
    assert_eq!((ok, busy), (2, 3));
    let s = sim.stats();
    assert_eq!(s.max_concurrent_per_account, 2);
    assert_eq!(s.count("GetFolder"), 5);
}

#[tokio::test]
async fn scripted_and_random_faults() {
    let sim = Simulator::start(config()).await.expect("start");
    let addr = sim.addr();
    let mb = german(&sim);
    let body = format!(
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>{}</m:FolderIds></m:GetFolder>",
        dist("inbox")
    );
    for (kind, check) in [
        (FaultKind::Http503, 503u16),
        (FaultKind::Http500, 500),
        (FaultKind::ServerBusy, 500),
        (FaultKind::TruncatedXml, 200),
        (FaultKind::MalformedXml, 200),
    ] {
        sim.inject(FaultRule {
            operation: Some("GetFolder".into()),
            kind,
            remaining: 1,
        });
        let r = call(addr, &mb, &body).await;
        assert_eq!(r.status, check, "{kind:?}");
        if matches!(kind, FaultKind::TruncatedXml | FaultKind::MalformedXml) {
            assert!(
                mailvault_ews_sim::xml::parse(r.body.as_bytes()).is_err(),
                "{kind:?}"
            );
        }
        let next = call(addr, &mb, &body).await;
        assert_eq!(next.status, 200);
    }
    sim.inject(FaultRule {
        operation: Some("SyncFolderItems".into()),
        kind: FaultKind::InvalidSyncState,
        remaining: 1,
    });
    let r = call(addr, &mb, &sync_items(&dist("inbox"), "", 10)).await;
    assert_eq!(r.find("ResponseCode").text, "ErrorInvalidSyncStateData");

    // 30 % busy: some requests fail, the counter says how many
    sim.set_faults(mailvault_ews_sim::Faults {
        server_busy: 0.3,
        backoff_ms: 50,
        ..Default::default()
    });
    let mut failed = 0;
    for _ in 0..40 {
        if call(addr, &mb, &body).await.status != 200 {
            failed += 1;
        }
    }
    assert!((3..=25).contains(&failed), "{failed}");
    assert_eq!(
        sim.stats().injected.get("ServerBusy").copied(),
        Some(failed + 1)
    );
    sim.clear_faults();
    assert_eq!(call(addr, &mb, &body).await.status, 200);
}

#[tokio::test]
async fn create_export_upload_resolve() {
    let sim = Simulator::start(config()).await.expect("start");
    let addr = sim.addr();
    let mb = german(&sim);
    let mime =
        b"From: a@contoso.com\r\nSubject: =?utf-8?B?R3LDvMOfZQ==?=\r\n\r\nrestored\r\n".to_vec();
    let enc = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &mime);

    // CreateFolder, twice
    let body = format!(
        "<m:CreateFolder><m:ParentFolderId>{}</m:ParentFolderId><m:Folders><t:Folder><t:DisplayName>Wiederhergestellt</t:DisplayName></t:Folder></m:Folders></m:CreateFolder>",
        dist("inbox")
    );
    let r = call(addr, &mb, &body).await;
    let folder = r.find("FolderId").attr("Id").expect("folder id").to_owned();
    let again = call(addr, &mb, &body).await;
    assert_eq!(again.find("ResponseCode").text, "ErrorFolderExists");

    // CreateItem SaveOnly with MimeContent
    let r = call(addr, &mb, &format!("<m:CreateItem MessageDisposition=\"SaveOnly\"><m:SavedItemFolderId>{}</m:SavedItemFolderId><m:Items><t:Message><t:MimeContent CharacterSet=\"UTF-8\">{enc}</t:MimeContent></t:Message></m:Items></m:CreateItem>", fid(&folder))).await;
    assert_eq!(r.find("ResponseCode").text, "NoError", "{}", r.body);
    let id = r.find("ItemId").attr("Id").expect("id").to_owned();
    let got = call(addr, &mb, &get_items_mime(std::slice::from_ref(&id))).await;
    assert_eq!(b64(&got.find("MimeContent").text), mime);
    let no_disp = call(addr, &mb, &format!("<m:CreateItem><m:Items><t:Message><t:MimeContent>{enc}</t:MimeContent></t:Message></m:Items></m:CreateItem>")).await;
    assert_eq!(
        no_disp.find("ResponseCode").text,
        "ErrorMessageDispositionRequired"
    );

    // ExportItems → UploadItems elsewhere: same bytes
    let ex = call(
        addr,
        &mb,
        &format!("<m:ExportItems><m:ItemIds><t:ItemId Id=\"{id}\"/></m:ItemIds></m:ExportItems>"),
    )
    .await;
    let data = ex.find("Data").text;
    let up = call(addr, &mb, &format!("<m:UploadItems><m:Items><t:Item CreateAction=\"CreateNew\"><t:ParentFolderId Id=\"{}\"/><t:Data>{data}</t:Data></t:Item></m:Items></m:UploadItems>", sim.distinguished_folder_id(&mb, "drafts").expect("drafts"))).await;
    assert_eq!(up.find("ResponseCode").text, "NoError", "{}", up.body);
    let new_id = up
        .find("ItemId")
        .attr("Id")
        .expect("uploaded id")
        .to_owned();
    assert_eq!(&sim.item(&new_id).expect("uploaded").mime[..], &mime[..]);

    // ResolveNames
    let r = call(addr, &mb, &format!("<m:ResolveNames ReturnFullContactData=\"false\"><m:UnresolvedEntry>{mb}</m:UnresolvedEntry></m:ResolveNames>")).await;
    assert_eq!(r.find("EmailAddress").text, mb);
    let none = call(addr, &mb, "<m:ResolveNames ReturnFullContactData=\"false\"><m:UnresolvedEntry>DUMMY-nobody</m:UnresolvedEntry></m:ResolveNames>").await;
    assert_eq!(
        none.find("ResponseCode").text,
        "ErrorNameResolutionNoResults"
    );
}

#[tokio::test]
async fn create_item_flags_restriction_and_hard_delete() {
    let sim = Simulator::start(config()).await.expect("start");
    let addr = sim.addr();
    let mb = german(&sim);
    let inbox = sim.distinguished_folder_id(&mb, "inbox").expect("inbox");
    let mime =
        b"From: a@contoso.com\r\nMessage-ID: <restore-1@contoso.com>\r\nSubject: r\r\n\r\nx\r\n";
    let enc = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, mime);
    let create = |flags: Option<u32>| {
        let prop = flags
            .map(|f| format!("<t:ExtendedProperty><t:ExtendedFieldURI PropertyTag=\"0x0E07\" PropertyType=\"Integer\"/><t:Value>{f}</t:Value></t:ExtendedProperty>"))
            .unwrap_or_default();
        format!(
            "<m:CreateItem MessageDisposition=\"SaveOnly\"><m:SavedItemFolderId>{}</m:SavedItemFolderId><m:Items><t:Message><t:MimeContent CharacterSet=\"UTF-8\">{enc}</t:MimeContent>{prop}</t:Message></m:Items></m:CreateItem>",
            fid(&inbox)
        )
    };
    // Without PR_MESSAGE_FLAGS Exchange makes an unsent draft; 1 = read, not a draft; 0 = unread.
    let mut ids = Vec::new();
    for (flags, draft, read) in [
        (None, true, true),
        (Some(1), false, true),
        (Some(0), false, false),
    ] {
        let r = call(addr, &mb, &create(flags)).await;
        assert_eq!(r.find("ResponseCode").text, "NoError", "{}", r.body);
        let id = r.find("ItemId").attr("Id").expect("id").to_owned();
        let it = sim.item(&id).expect("item");
        assert_eq!((it.is_draft, it.is_read), (draft, read), "flags {flags:?}");
        ids.push(id);
    }
    // FindItem with a Restriction on message:InternetMessageId finds exactly those three.
    let find = |field: &str, value: &str| {
        format!(
            "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI=\"message:InternetMessageId\"/><t:FieldURI FieldURI=\"item:IsDraft\"/></t:AdditionalProperties></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned=\"50\" Offset=\"0\" BasePoint=\"Beginning\"/><m:Restriction><t:IsEqualTo><t:FieldURI FieldURI=\"{field}\"/><t:FieldURIOrConstant><t:Constant Value=\"{value}\"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction><m:ParentFolderIds>{}</m:ParentFolderIds></m:FindItem>",
            fid(&inbox)
        )
    };
    let r = call(
        addr,
        &mb,
        &find("message:InternetMessageId", "&lt;RESTORE-1@contoso.com&gt;"),
    )
    .await;
    assert_eq!(r.find("ResponseCode").text, "NoError", "{}", r.body);
    assert!(r.body.contains("TotalItemsInView=\"3\""), "{}", r.body);
    assert!(r.body.contains("<t:IsDraft>true</t:IsDraft>"), "{}", r.body);
    let r = call(addr, &mb, &find("item:Body", "x")).await;
    assert!(
        r.body.contains("ErrorUnsupportedPathForQuery"),
        "{}",
        r.body
    );
    // DeleteItem needs DeleteType (schema); HardDelete removes the item.
    let del = |t: &str, id: &str| {
        format!("<m:DeleteItem{t}><m:ItemIds><t:ItemId Id=\"{id}\"/></m:ItemIds></m:DeleteItem>")
    };
    let r = call(addr, &mb, &del("", &ids[0])).await;
    assert!(r.body.contains("ErrorSchemaValidation"), "{}", r.body);
    assert!(sim.item(&ids[0]).is_some());
    let r = call(addr, &mb, &del(" DeleteType=\"HardDelete\"", &ids[0])).await;
    assert_eq!(r.find("ResponseCode").text, "NoError", "{}", r.body);
    assert!(sim.item(&ids[0]).is_none());
}
