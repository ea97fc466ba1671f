//! Per-locale data: the display names Exchange gives its well-known folders, user folder
//! names, people's names and the words bodies are made of.

/// Locales the generator assigns to mailboxes (round robin) when `localized` is set.
pub const LOCALES: &[&str] = &["en-US", "de-DE", "zh-CN", "fr-FR", "ja-JP", "es-ES"];

/// Distinguished folder ids of the well-known folders, in the order of the name tables below.
pub const WELL_KNOWN: &[&str] = &[
    "inbox",
    "sentitems",
    "deleteditems",
    "drafts",
    "junkemail",
    "outbox",
    "calendar",
    "contacts",
    "tasks",
    "notes",
    "journal",
];

const EN: [&str; 11] = [
    "Inbox",
    "Sent Items",
    "Deleted Items",
    "Drafts",
    "Junk Email",
    "Outbox",
    "Calendar",
    "Contacts",
    "Tasks",
    "Notes",
    "Journal",
];
const DE: [&str; 11] = [
    "Posteingang",
    "Gesendete Elemente",
    "Gelöschte Elemente",
    "Entwürfe",
    "Junk-E-Mail",
    "Postausgang",
    "Kalender",
    "Kontakte",
    "Aufgaben",
    "Notizen",
    "Journal",
];
const ZH: [&str; 11] = [
    "收件箱",
    "已发送邮件",
    "已删除邮件",
    "草稿",
    "垃圾邮件",
    "发件箱",
    "日历",
    "联系人",
    "任务",
    "便笺",
    "日记",
];
const FR: [&str; 11] = [
    "Boîte de réception",
    "Éléments envoyés",
    "Éléments supprimés",
    "Brouillons",
    "Courrier indésirable",
    "Boîte d'envoi",
    "Calendrier",
    "Contacts",
    "Tâches",
    "Notes",
    "Journal",
];
const JA: [&str; 11] = [
    "受信トレイ",
    "送信済みアイテム",
    "削除済みアイテム",
    "下書き",
    "迷惑メール",
    "送信トレイ",
    "予定表",
    "連絡先",
    "タスク",
    "メモ",
    "履歴",
];
const ES: [&str; 11] = [
    "Bandeja de entrada",
    "Elementos enviados",
    "Elementos eliminados",
    "Borradores",
    "Correo no deseado",
    "Bandeja de salida",
    "Calendario",
    "Contactos",
    "Tareas",
    "Notas",
    "Diario",
];

fn table(locale: &str) -> &'static [&'static str; 11] {
    match locale {
        "de-DE" | "de-AT" | "de-CH" => &DE,
        "zh-CN" => &ZH,
        "fr-FR" => &FR,
        "ja-JP" => &JA,
        "es-ES" => &ES,
        _ => &EN,
    }
}

/// The display name Exchange gives a well-known folder in a mailbox of `locale`
/// (`None` for an unknown distinguished id). Unknown locales fall back to en-US.
pub fn well_known_folder_name(locale: &str, distinguished: &str) -> Option<&'static str> {
    let i = WELL_KNOWN.iter().position(|d| *d == distinguished)?;
    Some(table(locale)[i])
}

/// Every (distinguished id, display name) of a locale.
pub fn well_known_folders(locale: &str) -> Vec<(&'static str, &'static str)> {
    WELL_KNOWN
        .iter()
        .copied()
        .zip(table(locale).iter().copied())
        .collect()
}

/// The distinguished id whose display name in *any* supported locale is `name`.
pub fn distinguished_for_name(name: &str) -> Option<&'static str> {
    [&EN, &DE, &ZH, &FR, &JA, &ES].iter().find_map(|t| {
        t.iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .map(|i| WELL_KNOWN[i])
    })
}

/// User folders created under the Inbox (and one level below).
pub(crate) fn user_folders(locale: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match locale {
        "de-DE" => (
            &["Projekte", "Kunden", "Archiv 2023", "Rundschreiben"],
            &["Q1", "Q2", "Ausschreibung Müller GmbH"],
        ),
        "zh-CN" => (
            &["项目", "客户", "2023 存档", "通讯"],
            &["第一季度", "第二季度"],
        ),
        "fr-FR" => (
            &[
                "Projets",
                "Clients",
                "Archives 2023",
                "Lettres d'information",
            ],
            &["T1", "T2", "Appel d'offres"],
        ),
        "ja-JP" => (
            &["プロジェクト", "顧客", "アーカイブ 2023", "ニュースレター"],
            &["第1四半期", "第2四半期"],
        ),
        "es-ES" => (
            &["Proyectos", "Clientes", "Archivo 2023", "Boletines"],
            &["T1", "T2", "Licitación"],
        ),
        _ => (
            &["Projects", "Customers", "Archive 2023", "Newsletters"],
            &["Q1", "Q2", "Tender Northwind"],
        ),
    }
}

/// (display name part, ASCII form for the address).
pub(crate) type NamePart = (&'static str, &'static str);

/// First names, family names, and whether the family name comes first in the display name.
pub(crate) fn names(locale: &str) -> (&'static [NamePart], &'static [NamePart], bool) {
    match locale {
        "de-DE" => (
            &[
                ("Jürgen", "juergen"),
                ("Käthe", "kaethe"),
                ("Björn", "bjoern"),
                ("Anna", "anna"),
                ("Lukas", "lukas"),
                ("Sören", "soeren"),
                ("Marie", "marie"),
                ("Jörg", "joerg"),
            ],
            &[
                ("Müller", "mueller"),
                ("Schröder", "schroeder"),
                ("Weiß", "weiss"),
                ("Becker", "becker"),
                ("Hoffmann", "hoffmann"),
                ("Krüger", "krueger"),
                ("Schäfer", "schaefer"),
            ],
            false,
        ),
        "zh-CN" => (
            &[
                ("伟", "wei"),
                ("娜", "na"),
                ("敏", "min"),
                ("洋", "yang"),
                ("静", "jing"),
                ("强", "qiang"),
                ("磊", "lei"),
            ],
            &[
                ("王", "wang"),
                ("李", "li"),
                ("张", "zhang"),
                ("刘", "liu"),
                ("陈", "chen"),
                ("赵", "zhao"),
            ],
            true,
        ),
        "fr-FR" => (
            &[
                ("François", "francois"),
                ("Hélène", "helene"),
                ("Jérôme", "jerome"),
                ("Chloé", "chloe"),
                ("Noël", "noel"),
                ("Camille", "camille"),
            ],
            &[
                ("Lefèvre", "lefevre"),
                ("Dubois", "dubois"),
                ("Garçon", "garcon"),
                ("Moreau", "moreau"),
                ("Bézier", "bezier"),
            ],
            false,
        ),
        "ja-JP" => (
            &[
                ("健", "ken"),
                ("花子", "hanako"),
                ("翔太", "shota"),
                ("美咲", "misaki"),
                ("大輔", "daisuke"),
            ],
            &[
                ("佐藤", "sato"),
                ("鈴木", "suzuki"),
                ("高橋", "takahashi"),
                ("田中", "tanaka"),
                ("渡辺", "watanabe"),
            ],
            true,
        ),
        "es-ES" => (
            &[
                ("José", "jose"),
                ("Lucía", "lucia"),
                ("Martín", "martin"),
                ("Sofía", "sofia"),
                ("Íñigo", "inigo"),
            ],
            &[
                ("Martínez", "martinez"),
                ("García", "garcia"),
                ("Núñez", "nunez"),
                ("Fernández", "fernandez"),
                ("López", "lopez"),
            ],
            false,
        ),
        _ => (
            &[
                ("James", "james"),
                ("Mary", "mary"),
                ("Robert", "robert"),
                ("Patricia", "patricia"),
                ("Michael", "michael"),
                ("Linda", "linda"),
                ("David", "david"),
                ("Susan", "susan"),
            ],
            &[
                ("Smith", "smith"),
                ("Johnson", "johnson"),
                ("Williams", "williams"),
                ("O'Brien", "obrien"),
                ("Brown", "brown"),
                ("Davis", "davis"),
                ("Miller", "miller"),
            ],
            false,
        ),
    }
}

/// Which word list a locale writes its bodies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lang {
    En,
    De,
    Zh,
}

pub(crate) fn lang(locale: &str) -> Lang {
    match locale {
        "de-DE" => Lang::De,
        "zh-CN" | "ja-JP" => Lang::Zh,
        _ => Lang::En,
    }
}

pub(crate) const EN_WORDS: &[&str] = &[
    "the",
    "project",
    "budget",
    "review",
    "meeting",
    "customer",
    "report",
    "quarter",
    "team",
    "deadline",
    "update",
    "proposal",
    "contract",
    "invoice",
    "schedule",
    "please",
    "attached",
    "draft",
    "version",
    "server",
    "migration",
    "approval",
    "feedback",
    "we",
    "should",
    "will",
    "need",
    "to",
    "discuss",
    "next",
    "week",
    "before",
    "after",
    "with",
    "for",
    "and",
    "on",
    "the",
    "latest",
    "numbers",
    "figures",
    "forecast",
    "sales",
    "pipeline",
    "risk",
    "issue",
    "status",
    "rollout",
    "training",
    "delivery",
    "vendor",
    "license",
    "renewal",
    "support",
    "ticket",
    "escalation",
    "agenda",
    "minutes",
    "action",
    "items",
    "owner",
    "follow",
    "up",
    "confirm",
    "availability",
    "tomorrow",
    "Monday",
    "Friday",
    "morning",
    "afternoon",
    "call",
    "slides",
    "spreadsheet",
    "summary",
    "details",
    "questions",
    "comments",
    "changes",
    "is",
    "are",
    "a",
];

pub(crate) const DE_WORDS: &[&str] = &[
    "das",
    "Projekt",
    "Budget",
    "Besprechung",
    "Kunde",
    "Bericht",
    "Quartal",
    "Team",
    "Termin",
    "Angebot",
    "Vertrag",
    "Rechnung",
    "bitte",
    "anbei",
    "Entwurf",
    "Freigabe",
    "Rückmeldung",
    "wir",
    "sollten",
    "müssen",
    "nächste",
    "Woche",
    "vor",
    "nach",
    "mit",
    "für",
    "und",
    "über",
    "Zahlen",
    "Prognose",
    "Umsatz",
    "Risiko",
    "Störung",
    "Schulung",
    "Lieferung",
    "Lieferant",
    "Lizenz",
    "Verlängerung",
    "Unterstützung",
    "Tagesordnung",
    "Protokoll",
    "Maßnahmen",
    "Verantwortlicher",
    "bestätigen",
    "morgen",
    "Montag",
    "Freitag",
    "Vormittag",
    "Gespräch",
    "Folien",
    "Zusammenfassung",
    "Einzelheiten",
    "Fragen",
    "Änderungen",
    "ist",
    "sind",
    "eine",
    "größere",
    "Übersicht",
    "Grüße",
    "gemäß",
    "Straße",
];

pub(crate) const ZH_WORDS: &[&str] = &[
    "项目",
    "预算",
    "会议",
    "客户",
    "报告",
    "季度",
    "团队",
    "截止日期",
    "更新",
    "提案",
    "合同",
    "发票",
    "日程",
    "请",
    "附件",
    "草稿",
    "版本",
    "服务器",
    "迁移",
    "审批",
    "反馈",
    "我们",
    "需要",
    "讨论",
    "下周",
    "之前",
    "之后",
    "最新",
    "数据",
    "预测",
    "销售",
    "风险",
    "问题",
    "状态",
    "培训",
    "交付",
    "供应商",
    "许可证",
    "续约",
    "支持",
    "议程",
    "纪要",
    "负责人",
    "确认",
    "明天",
    "周一",
    "周五",
    "上午",
    "下午",
    "电话",
    "幻灯片",
    "表格",
    "总结",
    "细节",
];

pub(crate) fn greeting(locale: &str) -> (&'static str, &'static str) {
    match locale {
        "de-DE" => ("Hallo", "Viele Grüße"),
        "zh-CN" => ("您好", "此致敬礼"),
        "fr-FR" => ("Bonjour", "Bien cordialement"),
        "ja-JP" => ("お疲れ様です", "よろしくお願いいたします"),
        "es-ES" => ("Hola", "Un saludo"),
        _ => ("Hi", "Best regards"),
    }
}

pub(crate) fn reply_prefix(locale: &str) -> (&'static str, &'static str) {
    match locale {
        "de-DE" => ("AW: ", "WG: "),
        "zh-CN" => ("答复: ", "转发: "),
        "fr-FR" => ("RE: ", "TR: "),
        "ja-JP" => ("RE: ", "FW: "),
        "es-ES" => ("RE: ", "RV: "),
        _ => ("RE: ", "FW: "),
    }
}

pub(crate) fn utc_offset_minutes(locale: &str) -> i32 {
    match locale {
        "en-US" => -300,
        "zh-CN" => 480,
        "ja-JP" => 540,
        _ => 60,
    }
}

pub(crate) fn windows_zone(locale: &str) -> &'static str {
    match locale {
        "en-US" => "Eastern Standard Time",
        "zh-CN" => "China Standard Time",
        "ja-JP" => "Tokyo Standard Time",
        "fr-FR" => "Romance Standard Time",
        _ => "W. Europe Standard Time",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names() {
        assert_eq!(
            well_known_folder_name("de-DE", "inbox"),
            Some("Posteingang")
        );
        assert_eq!(well_known_folder_name("zh-CN", "notes"), Some("便笺"));
        assert_eq!(
            well_known_folder_name("xx-XX", "sentitems"),
            Some("Sent Items")
        );
        assert_eq!(
            distinguished_for_name("Gelöschte Elemente"),
            Some("deleteditems")
        );
        assert_eq!(distinguished_for_name("2019-12"), None);
    }
}
