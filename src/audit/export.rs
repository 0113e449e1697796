//! Exports of the trail: JSON lines, CSV (RFC 4180) and a PDF report, each produced event by
//! event so an export of any size streams in bounded memory.
//!
//! The PDF is written by hand: the PDF crates build the whole document in memory, while a
//! report is simple enough to stream (fixed-width table in the built-in Courier font, one
//! content stream a page, the page tree and cross-reference table written at the end from
//! a list of object offsets).

use crate::audit::query::EventRow;
use crate::clock::to_rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Json,
    Csv,
    Pdf,
}

impl ExportFormat {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "json" => Some(ExportFormat::Json),
            "csv" => Some(ExportFormat::Csv),
            "pdf" => Some(ExportFormat::Pdf),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Json => "application/x-ndjson",
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Pdf => "application/pdf",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Json => "jsonl",
            ExportFormat::Csv => "csv",
            ExportFormat::Pdf => "pdf",
        }
    }
}

const CSV_HEADER: [&str; 12] = [
    "id",
    "occurred_at",
    "action",
    "success",
    "user_id",
    "actor_ip",
    "user_agent",
    "resource_type",
    "resource_id",
    "lab_id",
    "details",
    "request_id",
];

pub enum Exporter {
    Json,
    Csv,
    Pdf(Box<PdfReport>),
}

impl Exporter {
    pub fn new(format: ExportFormat, filter: &str, generated_at: i64) -> Self {
        match format {
            ExportFormat::Json => Exporter::Json,
            ExportFormat::Csv => Exporter::Csv,
            ExportFormat::Pdf => Exporter::Pdf(Box::new(PdfReport::new(filter, generated_at))),
        }
    }

    pub fn begin(&mut self) -> Vec<u8> {
        match self {
            Exporter::Json => Vec::new(),
            Exporter::Csv => csv_line(&CSV_HEADER.map(String::from)),
            Exporter::Pdf(report) => report.begin(),
        }
    }

    pub fn event(&mut self, row: &EventRow) -> Vec<u8> {
        match self {
            Exporter::Json => {
                let mut line = serde_json::to_vec(&row.view()).unwrap_or_default();
                line.push(b'\n');
                line
            }
            Exporter::Csv => {
                let event = &row.event;
                let optional = |value: Option<String>| value.unwrap_or_default();
                csv_line(&[
                    row.id.to_string(),
                    to_rfc3339(event.occurred_at),
                    event.action.clone(),
                    event.success.to_string(),
                    optional(event.user_id.map(|id| id.to_string())),
                    optional(event.actor_ip.clone()),
                    optional(event.user_agent.clone()),
                    optional(event.resource_type.clone()),
                    optional(event.resource_id.clone()),
                    optional(event.lab_id.map(|id| id.to_string())),
                    event.details.clone(),
                    optional(event.request_id.clone()),
                ])
            }
            Exporter::Pdf(report) => report.event(row),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            Exporter::Json | Exporter::Csv => Vec::new(),
            Exporter::Pdf(report) => report.finish(),
        }
    }
}

/// One CSV record. Every CSV the service writes goes through here, so every cell is
/// neutralised against formula injection.
pub(crate) fn csv_line(fields: &[String]) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let _ = writer.write_record(
        fields
            .iter()
            .map(|field| neutralise_formula(field).into_owned()),
    );
    writer.into_inner().unwrap_or_default()
}

/// A cell that a spreadsheet would read as a formula (it starts with `=`, `+`, `-`, `@`, a
/// tab or a carriage return) gets a leading apostrophe, so it shows as the text it is
/// (OWASP's advice for CSV injection). Names, user agents and ids are chosen by clients.
fn neutralise_formula(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

const PAGE_WIDTH: f32 = 842.0;
const PAGE_HEIGHT: f32 = 595.0;
const MARGIN: f32 = 36.0;
const FONT_SIZE: f32 = 7.0;
const LINE_HEIGHT: f32 = 9.0;
const LINES_PER_PAGE: usize = ((PAGE_HEIGHT - 2.0 * MARGIN - 48.0) / LINE_HEIGHT) as usize;
/// Courier glyphs are 0.6 em wide.
const CHARACTERS_PER_LINE: usize = ((PAGE_WIDTH - 2.0 * MARGIN) / (FONT_SIZE * 0.6)) as usize;

/// A streaming PDF: objects 1 (catalog), 2 (page tree) and 3 (font) are fixed; each page adds
/// a content stream and a page object.
pub struct PdfReport {
    title: String,
    filter: String,
    generated_at: String,
    written: usize,
    /// Byte offset of each object, indexed by object number.
    offsets: Vec<usize>,
    pages: Vec<usize>,
    lines: Vec<String>,
    events: u64,
}

impl PdfReport {
    pub fn new(filter: &str, generated_at: i64) -> Self {
        PdfReport {
            title: "UMS audit log".into(),
            filter: filter.to_string(),
            generated_at: to_rfc3339(generated_at),
            written: 0,
            offsets: vec![0; 4],
            pages: Vec::new(),
            lines: Vec::new(),
            events: 0,
        }
    }

    fn emit(&mut self, output: &mut Vec<u8>, bytes: &[u8]) {
        output.extend_from_slice(bytes);
        self.written += bytes.len();
    }

    fn object(&mut self, output: &mut Vec<u8>, number: usize, body: &[u8]) {
        if self.offsets.len() <= number {
            self.offsets.resize(number + 1, 0);
        }
        self.offsets[number] = self.written;
        self.emit(output, format!("{number} 0 obj\n").as_bytes());
        self.emit(output, body);
        self.emit(output, b"\nendobj\n");
    }

    fn begin(&mut self) -> Vec<u8> {
        let mut output = Vec::new();
        self.emit(&mut output, b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n");
        self.object(
            &mut output,
            3,
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier /Encoding /WinAnsiEncoding >>",
        );
        output
    }

    fn table_header() -> String {
        format!(
            "{:<24} {:<30} {:<3} {:>7} {:<15} {:<22} {:>5} {}",
            "time (UTC)", "action", "ok", "user", "ip", "resource", "lab", "details"
        )
    }

    fn event(&mut self, row: &EventRow) -> Vec<u8> {
        let event = &row.event;
        let resource = match (&event.resource_type, &event.resource_id) {
            (Some(kind), Some(id)) => format!("{kind}:{id}"),
            (Some(kind), None) => kind.clone(),
            _ => String::new(),
        };
        let line = format!(
            "{:<24} {:<30} {:<3} {:>7} {:<15} {:<22} {:>5} {}",
            to_rfc3339(event.occurred_at),
            clip(&event.action, 30),
            if event.success { "yes" } else { "no" },
            event.user_id.map(|id| id.to_string()).unwrap_or_default(),
            clip(event.actor_ip.as_deref().unwrap_or_default(), 15),
            clip(&resource, 22),
            event.lab_id.map(|id| id.to_string()).unwrap_or_default(),
            event.details,
        );
        self.lines.push(clip(&line, CHARACTERS_PER_LINE));
        self.events += 1;
        if self.lines.len() == LINES_PER_PAGE {
            self.flush_page()
        } else {
            Vec::new()
        }
    }

    fn flush_page(&mut self) -> Vec<u8> {
        let mut output = Vec::new();
        let page_number = self.pages.len() + 1;
        let top = PAGE_HEIGHT - MARGIN;
        let mut content = String::new();
        content += &format!(
            "BT /F1 12 Tf {MARGIN} {top} Td ({}) Tj ET\n",
            pdf_text(&self.title)
        );
        content += &format!(
            "BT /F1 8 Tf {MARGIN} {} Td (Filter: {}   Generated: {}) Tj ET\n",
            top - 14.0,
            pdf_text(&self.filter),
            pdf_text(&self.generated_at)
        );
        content += &format!(
            "BT /F1 8 Tf {} {} Td (Page {page_number}) Tj ET\n",
            PAGE_WIDTH - MARGIN - 50.0,
            MARGIN - 14.0
        );
        content += &format!(
            "BT /F1 {FONT_SIZE} Tf {LINE_HEIGHT} TL {MARGIN} {} Td\n",
            top - 36.0
        );
        content += &format!("({}) Tj T*\n", pdf_text(&Self::table_header()));
        for line in self.lines.drain(..) {
            content += &format!("({}) Tj T*\n", pdf_text(&line));
        }
        content += "ET\n";
        let content_number = self.offsets.len().max(4);
        let page_number_object = content_number + 1;
        let stream = format!(
            "<< /Length {} >>\nstream\n{content}endstream",
            content.len()
        );
        self.object(&mut output, content_number, stream.as_bytes());
        let page = format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}] \
             /Resources << /Font << /F1 3 0 R >> >> /Contents {content_number} 0 R >>"
        );
        self.object(&mut output, page_number_object, page.as_bytes());
        self.pages.push(page_number_object);
        output
    }

    fn finish(mut self) -> Vec<u8> {
        let mut output = Vec::new();
        if self.events == 0 {
            self.lines.push("(no events match the filter)".into());
        }
        if !self.lines.is_empty() || self.pages.is_empty() {
            output.extend(self.flush_page());
        }
        let kids = self
            .pages
            .iter()
            .map(|page| format!("{page} 0 R"))
            .collect::<Vec<_>>()
            .join(" ");
        let tree = format!(
            "<< /Type /Pages /Kids [{kids}] /Count {} >>",
            self.pages.len()
        );
        self.object(&mut output, 2, tree.as_bytes());
        self.object(&mut output, 1, b"<< /Type /Catalog /Pages 2 0 R >>");
        let xref_offset = self.written;
        let mut xref = format!("xref\n0 {}\n0000000000 65535 f \n", self.offsets.len());
        for offset in &self.offsets[1..] {
            xref += &format!("{offset:010} 00000 n \n");
        }
        xref += &format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref_offset}\n%%EOF\n",
            self.offsets.len()
        );
        self.emit(&mut output, xref.as_bytes());
        output
    }
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut clipped: String = text.chars().take(width.saturating_sub(1)).collect();
        clipped.push('~');
        clipped
    }
}

/// A PDF string literal's contents: ASCII only (the standard fonts), with `\`, `(`, `)` escaped.
fn pdf_text(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '\\' | '(' | ')' => {
                escaped.push('\\');
                escaped.push(character);
            }
            ' '..='~' => escaped.push(character),
            _ => escaped.push('?'),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_a_spreadsheet_would_run_as_formulas_are_neutralised() {
        let line = csv_line(&[
            "=HYPERLINK(\"https://evil.example\")".into(),
            "+1".into(),
            "-2+3".into(),
            "@SUM(A1)".into(),
            "\tx".into(),
            "\rx".into(),
            "alice".into(),
            "{\"a\":1}".into(),
        ]);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "\"'=HYPERLINK(\"\"https://evil.example\"\")\",'+1,'-2+3,'@SUM(A1),'\tx,\"'\rx\",alice,\"{\"\"a\"\":1}\"\r\n"
        );
    }
    use crate::audit::StoredEvent;

    fn row(seq: i64) -> EventRow {
        EventRow {
            id: seq,
            prev_hash: String::new(),
            hash: String::new(),
            event: StoredEvent {
                seq,
                occurred_at: 1_700_000_000_000 + seq,
                action: "auth.login".into(),
                success: true,
                user_id: Some(7),
                actor_ip: Some("10.0.0.1".into()),
                user_agent: Some("agent, \"quoted\"".into()),
                resource_type: Some("session".into()),
                resource_id: Some("abc".into()),
                lab_id: None,
                details: r#"{"a":"(b)"}"#.into(),
                request_id: None,
                subject_id: None,
                sealed: None,
            },
            person_keys: (None, None),
            erased: false,
        }
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        let mut exporter = Exporter::new(ExportFormat::Csv, "all", 0);
        let mut bytes = exporter.begin();
        bytes.extend(exporter.event(&row(1)));
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("id,occurred_at,action"));
        assert!(text.contains("\"agent, \"\"quoted\"\"\""));
        assert!(text.ends_with("\r\n"));
    }

    #[test]
    fn the_pdf_has_a_page_per_page_of_events_and_a_valid_cross_reference() {
        let mut report = PdfReport::new("all events", 0);
        let mut bytes = report.begin();
        for seq in 0..(LINES_PER_PAGE as i64 + 3) {
            bytes.extend(report.event(&row(seq)));
        }
        bytes.extend(report.finish());
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("%PDF-1.4"));
        assert!(text.contains("/Count 2"));
        assert!(text.contains("(Page 2) Tj"));
        assert!(text.contains("\\(b\\)"));
        let startxref: usize = text
            .rsplit("startxref\n")
            .next()
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(bytes[startxref..].starts_with(b"xref"));
    }
}
