//! The report as one self-contained HTML page: inline CSS and SVG, a few lines of script to
//! sort tables, no reference to anything outside it. It is drawn from the report document
//! alone (the JSON of `cairn report --json`), so every figure on it is one of the document's:
//! each number carries its place in the document (`data-path`) and its exact value
//! (`data-value`) beside the rounded text people read.
//!
//! One file (over 600 lines) for one page: its style, its sections in the order the page shows
//! them, and the helpers every section shares (escaping, numbers with their place).

use std::collections::HashMap;
use std::fmt::Write;

use serde_json::Value;

/// How much of the document the page lists.
#[derive(Debug, Clone, Copy)]
pub struct PageOptions {
    /// The newest points listed per VM (the rest summed in one line); the charts cover them
    /// all.
    pub points_per_vm: usize,
    /// Served by `cairn serve`: each VM links to its own page (`vm/NAME`), which lists every
    /// point.
    pub vm_pages: bool,
    /// Served by a `cairn serve` that reads the store's files (it holds no key of an
    /// encrypted one): each point links to its browse page (`/point/ID/files/`).
    pub browse_links: bool,
}

impl Default for PageOptions {
    fn default() -> Self {
        Self {
            points_per_vm: 30,
            vm_pages: false,
            browse_links: false,
        }
    }
}

/// A name as a piece of a URL path: RFC 3986's unreserved characters kept, every other byte
/// percent-encoded (a `/` too).
#[must_use]
pub fn url_piece(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// Samples a chart draws at most (a VM of 1000 points is drawn from 240 of them).
const CHART_SAMPLES: usize = 240;

/// VMs the front page ranks by what deleting them frees (the rest are counted in one line).
pub const RANKED_VMS: usize = 100;

/// VMs the front page shows in detail (a chart and their newest points): the ones whose
/// deletion frees most. The others have a page each (`vm/NAME`, or `--vm NAME`).
pub const DETAILED_VMS: usize = 20;

/// Rows of the short rankings (oldest last backups, most growth) and of damage lists.
const SHORT_LIST: usize = 20;

/// Rows of a list of damage (chunks of the last verify) the page shows at most.
const DAMAGE_ROWS: usize = 100;

/// Bytes for people: `1.25 GiB`.
#[must_use]
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Text for an HTML body or attribute.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A figure of the document: its text, and its path and exact value for checking.
fn num(doc_path: &str, v: &Value, kind: Kind) -> String {
    let text = match (kind, v) {
        (_, Value::Null) => return "<span class=\"na\">–</span>".to_owned(),
        (Kind::Bytes, v) => human_bytes(v.as_u64().unwrap_or(0)),
        (Kind::Ratio, v) => format!("{:.2}×", v.as_f64().unwrap_or(0.0)),
        (Kind::Count, v) => v.to_string(),
    };
    format!(
        "<span class=\"num\" data-path=\"{}\" data-value=\"{}\">{}</span>",
        esc(doc_path),
        esc(&v.to_string()),
        esc(&text)
    )
}

/// How a figure reads.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bytes,
    Ratio,
    Count,
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The VM a row names, as people read it.
fn vm_label(v: &Value) -> String {
    let mut name = s(&v["vm"]).to_owned();
    if let Some(p) = v["pool"].as_str() {
        let _ = write!(name, " ({p})");
    }
    name
}

pub(crate) const STYLE: &str = r#"
:root{--fg:#1d2330;--mute:#5d6678;--line:#dde1e8;--bg:#f6f7f9;--card:#fff;--a:#2f6fdf;--b:#13a37f;--c:#e0a100;--d:#c8433a}
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2330;color:#fff;padding:18px 24px}header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c5cbd6}
main{max-width:1200px;margin:0 auto;padding:16px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px;margin:0 0 16px}
h2{font-size:18px;margin:0 0 12px}h3{font-size:16px;margin:16px 0 8px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px}.card b{display:block;font-size:20px}.card small{color:var(--mute)}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:14px}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{cursor:pointer;color:var(--mute);font-weight:600;user-select:none}
th.sorted::after{content:" ▾"}.na{color:var(--mute)}.flag{font-size:12px;border-radius:4px;padding:1px 5px;margin-left:2px}
.key{background:#e3ecfd;color:#1f4fa8}.prot{background:#fde8e6;color:#9b2a22}.boots{background:#e2f5ee;color:#0d7a5f}.noboot{background:#c8433a;color:#fff}.ok{color:var(--b);font-weight:600}.bad{color:var(--d);font-weight:600}
svg{width:100%;display:block}svg.growth{height:120px}svg.vm{height:160px}
.axis{display:flex;justify-content:space-between;color:var(--mute);font-size:12px}
.bar{display:grid;grid-template-columns:150px 1fr 110px;gap:8px;align-items:center;margin:6px 0}
.track{background:#eef0f4;border-radius:3px;height:22px}.fill{height:22px;border-radius:3px;min-width:2px}
.bar .val{text-align:right}
@media (max-width:600px){.bar{grid-template-columns:95px 1fr 80px;font-size:13px}}.legend span{margin-right:14px;font-size:13px;color:var(--mute)}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.note{color:var(--mute);font-size:13px}
@media (max-width:600px){main{padding:8px}section{padding:10px}.card b{font-size:17px}th,td{padding:5px 6px;font-size:13px}}
"#;

const SCRIPT: &str = r#"
document.querySelectorAll("table.sortable").forEach(function(t){
  t.querySelectorAll("th").forEach(function(th,i){
    th.addEventListener("click",function(){
      var rows=Array.prototype.slice.call(t.tBodies[0].rows);
      var down=!th.classList.contains("sorted");
      t.querySelectorAll("th").forEach(function(h){h.classList.remove("sorted")});
      if(down)th.classList.add("sorted");
      function key(r){var c=r.cells[i];var n=c.querySelector(".num");return n?parseFloat(n.dataset.value):c.textContent}
      rows.sort(function(a,b){var x=key(a),y=key(b);var r=(typeof x==="number"&&typeof y==="number")?x-y:String(x).localeCompare(String(y));return down?-r:r});
      rows.forEach(function(r){t.tBodies[0].appendChild(r)});
    });
  });
});
"#;

/// The page of `doc` (a report document, schema 1).
#[must_use]
pub fn render(doc: &Value, options: &PageOptions) -> String {
    let mut h = String::with_capacity(64 << 10);
    let generated = s(&doc["generated"]);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>cairn report</title><style>{STYLE}</style></head><body>\
         <header><h1>cairn store report</h1><p>made {}</p></header><main>",
        esc(generated)
    );
    let fleet = Fleet::of(doc, options);
    store_section(&mut h, doc);
    savings_section(&mut h, doc);
    growth_section(&mut h, doc);
    verify_section(&mut h, doc);
    jobs_section(&mut h, doc);
    last_backups_section(&mut h, doc, &fleet);
    ranking_section(&mut h, &fleet);
    growers_section(&mut h, doc, &fleet);
    vm_sections(&mut h, &fleet);
    let _ = write!(h, "</main><script>{SCRIPT}</script></body></html>");
    h
}

fn card(h: &mut String, label: &str, value: &str, hint: &str) {
    let _ = write!(
        h,
        "<div class=\"card\"><small>{}</small><b>{value}</b><small>{}</small></div>",
        esc(label),
        esc(hint)
    );
}

fn store_section(h: &mut String, doc: &Value) {
    let st = &doc["store"];
    if st.is_null() {
        return;
    }
    h.push_str("<section id=\"store\"><h2>The store</h2><div class=\"cards\">");
    // (label, field of `store`, kind, what it is)
    let cards = [
        (
            "stored",
            "stored_bytes",
            Kind::Bytes,
            "in packs, every chunk once",
        ),
        (
            "disks backed up",
            "logical_bytes",
            Kind::Bytes,
            "the points' disk sizes, summed",
        ),
        (
            "data in them",
            "allocated_bytes",
            Kind::Bytes,
            "their non-zero chunks",
        ),
        ("points", "points", Kind::Count, "recovery points"),
        (
            "dedup",
            "dedup_ratio",
            Kind::Ratio,
            "data over distinct chunks",
        ),
        (
            "compression",
            "compression_ratio",
            Kind::Ratio,
            "distinct chunks over stored",
        ),
    ];
    for (label, field, kind, what) in cards {
        card(
            h,
            label,
            &num(&format!("store.{field}"), &st[field], kind),
            what,
        );
    }
    if !doc["reclaimable_bytes"].is_null() {
        let orphans = doc["orphan_packs"].as_u64().unwrap_or(0);
        card(
            h,
            "reclaimable now",
            &num("reclaimable_bytes", &doc["reclaimable_bytes"], Kind::Bytes),
            &format!(
                "what `cairn gc` frees: {} of unreferenced chunks, {} in {orphans} orphan pack{}",
                human_bytes(doc["garbage_bytes"].as_u64().unwrap_or(0)),
                human_bytes(doc["orphan_bytes"].as_u64().unwrap_or(0)),
                if orphans == 1 { "" } else { "s" }
            ),
        );
    }
    if let Some(fs) = doc["filesystem"].as_object() {
        let free = fs.get("free_bytes").cloned().unwrap_or(Value::Null);
        card(
            h,
            "free on the file system",
            &num("filesystem.free_bytes", &free, Kind::Bytes),
            "",
        );
    }
    h.push_str("</div></section>");
}

/// Horizontal bars, each `(label, doc path, value, colour)`, scaled to the largest: HTML, so
/// that their words stay readable at any width.
fn bars(h: &mut String, rows: &[(&str, &str, &Value, &str)]) {
    let max = rows.iter().map(|r| u(r.2)).max().unwrap_or(0).max(1) as f64;
    for (label, path, v, color) in rows {
        let w = u(v) as f64 / max * 100.0;
        let _ = write!(
            h,
            "<div class=\"bar\"><span>{}</span><div class=\"track\"><div class=\"fill\" \
             style=\"width:{w:.1}%;background:{color}\"></div></div><span class=\"val\">{}</span></div>",
            esc(label),
            num(path, v, Kind::Bytes)
        );
    }
}

fn savings_section(h: &mut String, doc: &Value) {
    let st = &doc["store"];
    if st.is_null() {
        return;
    }
    h.push_str("<section id=\"savings\"><h2>What the same points would take elsewhere</h2>");
    bars(
        h,
        &[
            (
                "full backups",
                "store.full_backups_bytes",
                &st["full_backups_bytes"],
                "#c8433a",
            ),
            (
                "XO VHD deltas",
                "store.xo_vhd_deltas_bytes",
                &st["xo_vhd_deltas_bytes"],
                "#e0a100",
            ),
            (
                "data, deduplicated",
                "store.allocated_bytes",
                &st["allocated_bytes"],
                "#2f6fdf",
            ),
            (
                "cairn (stored)",
                "store.stored_bytes",
                &st["stored_bytes"],
                "#13a37f",
            ),
        ],
    );
    let (full, stored) = (u(&st["full_backups_bytes"]), u(&st["stored_bytes"]));
    if full > 0 {
        let _ = write!(
            h,
            "<p class=\"note\">cairn stores {:.1} % of what uncompressed full backups of these \
             points would, and {:.1} % of what Xen Orchestra's VHD deltas (whole 2 MiB blocks) \
             would.</p>",
            stored as f64 * 100.0 / full as f64,
            stored as f64 * 100.0 / u(&st["xo_vhd_deltas_bytes"]).max(1) as f64
        );
    }
    h.push_str("</section>");
}

fn growth_section(h: &mut String, doc: &Value) {
    let g = &doc["growth"];
    let Some(days) = g["days"].as_array() else {
        return;
    };
    h.push_str("<section id=\"growth\"><h2>Growth</h2>");
    let max = days
        .iter()
        .map(|d| u(&d["new_stored_bytes"]))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = days.len().max(1);
    let bw = 600.0 / n as f64;
    let _ = write!(
        h,
        "<div class=\"axis\"><span>{} a day at most</span></div><svg class=\"growth\" viewBox=\"0 0 600 120\" \
         preserveAspectRatio=\"none\" role=\"img\" aria-label=\"new bytes per day\">",
        esc(&human_bytes(max as u64))
    );
    for (i, d) in days.iter().enumerate() {
        let b = u(&d["new_stored_bytes"]);
        let bh = (b as f64 / max * 110.0).max(if b > 0 { 1.0 } else { 0.0 });
        let _ = write!(
            h,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#2f6fdf\"><title>{}: {}</title></rect>",
            i as f64 * bw + 1.0,
            120.0 - bh,
            (bw - 2.0).max(1.0),
            esc(s(&d["day"])),
            esc(&human_bytes(b))
        );
    }
    let _ = write!(
        h,
        "</svg><div class=\"axis\"><span>{}</span><span>{}</span></div>",
        esc(days.first().map_or("", |d| s(&d["day"]))),
        esc(days.last().map_or("", |d| s(&d["day"])))
    );
    let _ = write!(
        h,
        "<p>New data over the last {} days: {} a day on average.",
        g["window_days"],
        num("growth.bytes_per_day", &g["bytes_per_day"], Kind::Bytes)
    );
    match (&g["days_until_full"], doc["filesystem"].as_object()) {
        (Value::Number(n), Some(fs)) => {
            let _ = write!(
                h,
                " At that rate the file system ({} free of {}) is full in {} days.",
                num(
                    "filesystem.free_bytes",
                    fs.get("free_bytes").unwrap_or(&Value::Null),
                    Kind::Bytes
                ),
                num(
                    "filesystem.total_bytes",
                    fs.get("total_bytes").unwrap_or(&Value::Null),
                    Kind::Bytes
                ),
                num(
                    "growth.days_until_full",
                    &Value::Number(n.clone()),
                    Kind::Count
                )
            );
        }
        (_, Some(_)) => h.push_str(" At that rate the file system does not fill."),
        _ => {}
    }
    h.push_str("</p></section>");
}

/// Each job's last run, a failed one in red (`cairn job`).
fn jobs_section(h: &mut String, doc: &Value) {
    let Some(jobs) = doc["jobs"].as_array().filter(|j| !j.is_empty()) else {
        return;
    };
    h.push_str(
        "<section id=\"jobs\"><h2>Jobs</h2><table><thead><tr><th>Job</th><th>Last run</th>\
         <th>Outcome</th><th>Points</th><th>Last success</th></tr></thead><tbody>",
    );
    for j in jobs {
        let last = &j["last_run"];
        let outcome = s(&last["outcome"]);
        let (class, word) = match outcome {
            "ok" => ("ok", "ok".to_owned()),
            "skipped" => ("", "skipped".to_owned()),
            _ => (
                "bad",
                format!(
                    "FAILED{}{}",
                    last["exit_code"]
                        .as_i64()
                        .map(|c| format!(" (exit {c})"))
                        .unwrap_or_default(),
                    last["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            ),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(s(&j["job"])),
            esc(s(&last["started"])),
            esc(&word),
            last["points"].as_u64().unwrap_or(0),
            esc(j["last_success"].as_str().unwrap_or("never")),
        );
    }
    h.push_str("</tbody></table></section>");
}

fn verify_section(h: &mut String, doc: &Value) {
    if doc["growth"].is_null() && doc["store"].is_null() {
        return;
    }
    h.push_str("<section id=\"verify\"><h2>Last verify</h2>");
    let v = &doc["last_verify"];
    if v.is_null() {
        h.push_str("<p class=\"bad\">No verify has run on this store: run <code>cairn verify</code> (all chunks) or <code>cairn verify --sample 5%</code> regularly.</p></section>");
        return;
    }
    let clean = v["clean"].as_bool().unwrap_or(false);
    let _ = write!(
        h,
        "<p><span class=\"{}\">{}</span> — {} ({}): {} chunks read, {}, in {:.0} s.</p>",
        if clean { "ok" } else { "bad" },
        if clean { "clean" } else { "damage found" },
        esc(s(&v["time"])),
        esc(s(&v["scope"])),
        num(
            "last_verify.chunks_checked",
            &v["chunks_checked"],
            Kind::Count
        ),
        num("last_verify.bytes_read", &v["bytes_read"], Kind::Bytes),
        v["seconds"].as_f64().unwrap_or(0.0)
    );
    if !clean {
        let _ = write!(
            h,
            "<p>Blast radius: {} bad or missing chunks damage {} points of {} VMs ({}).</p>",
            num(
                "last_verify.damaged_chunks",
                &v["damaged_chunks"],
                Kind::Count
            ),
            num(
                "last_verify.points_damaged",
                &v["points_damaged"],
                Kind::Count
            ),
            v["vms_damaged"].as_array().map_or(0, Vec::len),
            esc(&v["vms_damaged"]
                .as_array()
                .map(|a| a
                    .iter()
                    .map(|x| s(x).to_owned())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default())
        );
        h.push_str("<div class=\"scroll\"><table><thead><tr><th>chunk</th><th>kind</th><th>state</th><th>points damaged</th><th>what</th></tr></thead><tbody>");
        let damaged = v["damaged"].as_array().map_or(&[][..], Vec::as_slice);
        for (i, d) in damaged.iter().enumerate().take(DAMAGE_ROWS) {
            let pts = d["points"].as_array().map_or(0, Vec::len);
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
                esc(&s(&d["chunk"])[..16.min(s(&d["chunk"]).len())]),
                esc(s(&d["kind"])),
                esc(s(&d["state"])),
                num(
                    &format!("last_verify.damaged[{i}].points.length"),
                    &Value::from(pts),
                    Kind::Count
                ),
                esc(s(&d["what"]))
            );
        }
        h.push_str("</tbody></table></div>");
        if damaged.len() > DAMAGE_ROWS {
            let _ = write!(
                h,
                "<p class=\"note\">{} more damaged chunks are not listed: \
                 <code>cairn verify --json</code> lists every one.</p>",
                damaged.len() - DAMAGE_ROWS
            );
        }
        h.push_str("<p class=\"note\">A key backup of each damaged disk (<code>cairn backup --key</code>) stores the chunks again and repairs every point.</p>");
    }
    h.push_str("</section>");
}

/// The document's VMs as the page shows them: each VM's points, their order by what deleting
/// them would free, the ones shown in detail.
struct Fleet<'d> {
    vms: &'d [Value],
    /// Each VM's points (index in the document's points, the row), oldest first.
    of_vm: Vec<Vec<(usize, &'d Value)>>,
    /// VM indices, most to free first.
    ranked: Vec<usize>,
    /// The VMs shown in detail (the first [`DETAILED_VMS`] ranked).
    detailed: Vec<usize>,
    options: &'d PageOptions,
}

impl<'d> Fleet<'d> {
    fn of(doc: &'d Value, options: &'d PageOptions) -> Self {
        let vms = doc["vms"].as_array().map_or(&[][..], Vec::as_slice);
        let points = doc["points"].as_array().map_or(&[][..], Vec::as_slice);
        // Each VM's points, in the document's order (oldest first), found in one pass.
        let mut by_vm: HashMap<_, Vec<(usize, &Value)>> = HashMap::new();
        for (k, p) in points.iter().enumerate() {
            by_vm.entry(super::row_vm_key(p)).or_default().push((k, p));
        }
        let of_vm = vms
            .iter()
            .map(|v| by_vm.remove(&super::row_vm_key(v)).unwrap_or_default())
            .collect();
        let mut ranked: Vec<usize> = (0..vms.len()).collect();
        ranked.sort_by_key(|&i| std::cmp::Reverse(u(&vms[i]["unique_stored_bytes"])));
        let detailed = ranked.iter().copied().take(DETAILED_VMS).collect();
        Self {
            vms,
            of_vm,
            ranked,
            detailed,
            options,
        }
    }

    /// VM `i`'s name, linked to where its points are: its section on this page, else its own
    /// page when served.
    fn link(&self, i: usize) -> String {
        let vm = &self.vms[i];
        let name = esc(&vm_label(vm));
        if self.detailed.contains(&i) {
            format!("<a href=\"#vm-{i}\">{name}</a>")
        } else if self.options.vm_pages {
            format!("<a href=\"vm/{}\">{name}</a>", url_piece(s(&vm["vm"])))
        } else {
            name
        }
    }
}

/// Where the points of a VM not shown in detail are: its page, or the command that draws it.
fn elsewhere(options: &PageOptions) -> &'static str {
    if options.vm_pages {
        "each VM's name links to its page, which lists every point"
    } else {
        "<code>cairn report --html FILE --vm NAME</code> draws one VM's page with every point"
    }
}

fn ranking_section(h: &mut String, fleet: &Fleet<'_>) {
    let (vms, ranked) = (fleet.vms, &fleet.ranked);
    if vms.is_empty() {
        return;
    }
    h.push_str(
        "<section id=\"vms\"><h2>VMs by what deleting them would free</h2><div class=\"scroll\">\
         <table class=\"sortable\"><thead><tr><th>VM</th><th>frees</th><th>stored</th>\
         <th>points</th><th>disks</th><th>data</th><th>dedup</th><th>compression</th>\
         <th>XO deltas</th><th>full backups</th></tr></thead><tbody>",
    );
    for &i in ranked.iter().take(RANKED_VMS) {
        let v = &vms[i];
        let p = |f: &str| format!("vms[{i}].{f}");
        let cells = [
            ("unique_stored_bytes", Kind::Bytes),
            ("stored_bytes", Kind::Bytes),
            ("points", Kind::Count),
            ("logical_bytes", Kind::Bytes),
            ("allocated_bytes", Kind::Bytes),
            ("dedup_ratio", Kind::Ratio),
            ("compression_ratio", Kind::Ratio),
            ("xo_vhd_deltas_bytes", Kind::Bytes),
            ("full_backups_bytes", Kind::Bytes),
        ];
        let _ = write!(h, "<tr><td>{}</td>", fleet.link(i));
        for (field, kind) in cells {
            let _ = write!(h, "<td>{}</td>", num(&p(field), &v[field], kind));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>");
    if ranked.len() > RANKED_VMS {
        let _ = write!(
            h,
            "<p class=\"note\">{} more VMs, each freeing less, are not listed here \
             (<code>cairn report --json</code> has every one).</p>",
            ranked.len() - RANKED_VMS
        );
    }
    h.push_str("<p class=\"note\">“frees”: the stored bytes no other VM holds. The disks column is the points' disk sizes, summed.</p></section>");
}

/// When the document was made, as a time.
fn generated(doc: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(s(&doc["generated"])).ok()
}

/// The VMs whose newest point is oldest: a backup that stopped shows here first.
fn last_backups_section(h: &mut String, doc: &Value, fleet: &Fleet<'_>) {
    let (vms, of_vm) = (fleet.vms, &fleet.of_vm);
    if vms.len() < 2 {
        return;
    }
    let newest = |i: usize| {
        of_vm[i]
            .iter()
            .filter_map(|(_, p)| chrono::DateTime::parse_from_rfc3339(s(&p["time"])).ok())
            .max()
    };
    let mut order: Vec<(Option<chrono::DateTime<chrono::FixedOffset>>, usize)> =
        (0..vms.len()).map(|i| (newest(i), i)).collect();
    order.sort();
    let now = generated(doc);
    let late = order
        .iter()
        .filter(|(t, _)| match (t, now) {
            (Some(t), Some(now)) => now.signed_duration_since(*t) > chrono::Duration::hours(48),
            _ => true,
        })
        .count();
    let _ = write!(
        h,
        "<section id=\"last-backups\"><h2>Last backups, oldest first</h2><p>{}</p>\
         <table><thead><tr><th>VM</th><th>newest point</th><th>age</th><th>points</th></tr></thead><tbody>",
        if late == 0 {
            "<span class=\"ok\">Every VM has a point from the last 48 hours.</span>".to_owned()
        } else {
            format!(
                "<span class=\"bad\">{late} of {} VMs have no point from the last 48 hours.</span>",
                vms.len()
            )
        }
    );
    for &(t, i) in order.iter().take(SHORT_LIST) {
        let age = match (t, now) {
            (Some(t), Some(now)) => {
                let hours = now.signed_duration_since(t).num_hours().max(0);
                if hours >= 48 {
                    format!("<span class=\"bad\">{} days</span>", hours / 24)
                } else {
                    format!("{hours} h")
                }
            }
            _ => "<span class=\"na\">–</span>".to_owned(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{age}</td><td>{}</td></tr>",
            fleet.link(i),
            esc(&t.map(|t| t.to_rfc3339()).unwrap_or_default()),
            num(&format!("vms[{i}].points"), &vms[i]["points"], Kind::Count),
        );
    }
    h.push_str("</tbody></table></section>");
}

/// The VMs whose backups added most to the store over the growth window.
fn growers_section(h: &mut String, doc: &Value, fleet: &Fleet<'_>) {
    let (vms, of_vm) = (fleet.vms, &fleet.of_vm);
    let Some(first) = doc["growth"]["days"][0]["day"].as_str() else {
        return;
    };
    if vms.len() < 2 {
        return;
    }
    // Point times are RFC 3339 in the store's zone, the window's days too: the date is the
    // first ten characters.
    let mut added: Vec<(u64, usize)> = of_vm
        .iter()
        .enumerate()
        .map(|(i, points)| {
            let sum = points
                .iter()
                .filter(|(_, p)| s(&p["time"]).get(..10).is_some_and(|d| d >= first))
                .map(|(_, p)| u(&p["new_stored_bytes"]))
                .sum();
            (sum, i)
        })
        .filter(|(sum, _)| *sum > 0)
        .collect();
    if added.is_empty() {
        return;
    }
    added.sort_by_key(|&(sum, i)| (std::cmp::Reverse(sum), i));
    let _ = write!(
        h,
        "<section id=\"growers\"><h2>VMs that grew most since {}</h2><table><thead><tr>\
         <th>VM</th><th>added</th><th>stored</th></tr></thead><tbody>",
        esc(first)
    );
    for &(sum, i) in added.iter().take(SHORT_LIST) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            fleet.link(i),
            esc(&human_bytes(sum)),
            num(
                &format!("vms[{i}].stored_bytes"),
                &vms[i]["stored_bytes"],
                Kind::Bytes
            ),
        );
    }
    h.push_str("</tbody></table><p class=\"note\">“added”: what the VM's backups of those days stored that the store did not hold.</p></section>");
}

/// A chart of a VM's points over time: each point's disk size and data, and the VM's stored
/// bytes so far (what its backups added, summed).
fn vm_chart(h: &mut String, points: &[(usize, &Value)]) {
    if points.is_empty() {
        return;
    }
    let step = points.len().div_ceil(CHART_SAMPLES).max(1);
    let mut so_far = 0u64;
    let mut samples: Vec<(u64, u64, u64)> = Vec::new();
    for (k, (_, p)) in points.iter().enumerate() {
        so_far += u(&p["new_stored_bytes"]);
        if k % step == 0 || k + 1 == points.len() {
            samples.push((u(&p["logical_bytes"]), u(&p["allocated_bytes"]), so_far));
        }
    }
    let max = samples
        .iter()
        .map(|s| s.0.max(s.1).max(s.2))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = samples.len();
    let x = |i: usize| {
        if n == 1 {
            300.0
        } else {
            i as f64 * 600.0 / (n - 1) as f64
        }
    };
    let y = |v: u64| 150.0 - v as f64 / max * 140.0;
    let _ = write!(
        h,
        "<div class=\"axis\"><span>{}</span></div><svg class=\"vm\" viewBox=\"0 0 600 160\" \
         preserveAspectRatio=\"none\" role=\"img\" aria-label=\"bytes over time\">\
         <line x1=\"0\" y1=\"150\" x2=\"600\" y2=\"150\" stroke=\"#dde1e8\"/>",
        esc(&human_bytes(max as u64))
    );
    for (sel, color) in [(0usize, "#c8433a"), (1, "#2f6fdf"), (2, "#13a37f")] {
        let mut d = String::new();
        for (i, s) in samples.iter().enumerate() {
            let v = [s.0, s.1, s.2][sel];
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { "L" },
                x(i),
                y(v)
            );
        }
        let _ = write!(
            h,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" \
             vector-effect=\"non-scaling-stroke\"/>"
        );
    }
    let _ = write!(
        h,
        "</svg><div class=\"axis\"><span>{}</span><span>{}</span></div>\
         <p class=\"legend\"><span><i style=\"background:#c8433a\"></i>disk size</span>\
         <span><i style=\"background:#2f6fdf\"></i>data in the point</span>\
         <span><i style=\"background:#13a37f\"></i>stored so far</span></p>",
        esc(points.first().map_or("", |(_, p)| s(&p["time"]))),
        esc(points.last().map_or("", |(_, p)| s(&p["time"])))
    );
}

fn vm_sections(h: &mut String, fleet: &Fleet<'_>) {
    let (vms, detailed, options) = (fleet.vms, &fleet.detailed, fleet.options);
    for &i in detailed {
        let vm = &vms[i];
        let mine = &fleet.of_vm[i];
        let _ = write!(
            h,
            "<section id=\"vm-{i}\"><h2>{}</h2><p>{} points, {} stored, {} of it only this VM's.",
            esc(&vm_label(vm)),
            num(&format!("vms[{i}].points"), &vm["points"], Kind::Count),
            num(
                &format!("vms[{i}].stored_bytes"),
                &vm["stored_bytes"],
                Kind::Bytes
            ),
            num(
                &format!("vms[{i}].unique_stored_bytes"),
                &vm["unique_stored_bytes"],
                Kind::Bytes
            ),
        );
        retention_line(h, vm);
        h.push_str("</p>");
        vm_chart(h, mine);
        h.push_str(
            "<div class=\"scroll\"><table class=\"sortable\"><thead><tr><th>point</th><th>disk</th>\
             <th>new</th><th>frees</th><th>data</th><th>disk size</th><th>kept by</th></tr></thead><tbody>",
        );
        let listed = mine.len().saturating_sub(options.points_per_vm);
        for (k, p) in mine.iter().skip(listed).rev() {
            point_row(h, *k, p, options.browse_links);
        }
        h.push_str("</tbody></table></div>");
        older_points_note(h, vm, listed, options);
        h.push_str("<p class=\"note\">“new”: what the point's backup added to the store; “frees”: what deleting it alone frees; “kept by”: the rule of the VM's last prune that keeps it.</p></section>");
    }
    if vms.len() > detailed.len() {
        let _ = write!(
            h,
            "<section id=\"other-vms\"><p class=\"note\">The {} VMs that free most are shown in \
             detail above; the other {} are ranked above: {}.</p></section>",
            detailed.len(),
            vms.len() - detailed.len(),
            elsewhere(options)
        );
    }
}

/// When the VM was last pruned and with which rules.
fn retention_line(h: &mut String, vm: &Value) {
    if let Some(r) = vm["retention"].as_object() {
        let rules = r.get("rules").and_then(Value::as_object);
        let list: Vec<String> = rules
            .into_iter()
            .flatten()
            .filter(|(_, n)| u(n) > 0)
            .map(|(k, n)| format!("keep-{k} {n}"))
            .collect();
        let _ = write!(
            h,
            " Last pruned {} with {}.",
            esc(r.get("time").map_or("", s)),
            esc(&list.join(", "))
        );
    } else {
        h.push_str(" Never pruned: every point stays until a prune.");
    }
}

/// One point's row: its time and flags, disk, new, frees, data, disk size and the rule that
/// keeps it (`k`: its index in the document's points).
fn point_row(h: &mut String, k: usize, p: &Value, browse: bool) {
    let f = |f: &str| format!("points[{k}].{f}");
    let mut flags = String::new();
    if p["key"].as_bool() == Some(true) {
        flags.push_str("<span class=\"flag key\">key</span>");
    }
    if p["protected"].as_bool() == Some(true) {
        flags.push_str("<span class=\"flag prot\">protected</span>");
    }
    // Its last boot check: a mark, linked to the screenshot where the server shows it.
    if let Some(c) = p["boot_check"].as_object() {
        let booted = c.get("booted").and_then(Value::as_bool) == Some(true);
        let title = format!(
            "check-boot {}: {}{}",
            c.get("time").map_or("", s),
            c.get("why").map_or("", s),
            c.get("seconds")
                .and_then(Value::as_f64)
                .map(|n| format!(" ({n} s)"))
                .unwrap_or_default()
        );
        let (class, word) = if booted {
            ("boots", "boots")
        } else {
            ("noboot", "no boot")
        };
        let mark = format!(
            "<span class=\"flag {class}\" title=\"{}\">{word}</span>",
            esc(&title)
        );
        if browse && c.get("screenshot").and_then(Value::as_bool) == Some(true) {
            let _ = write!(
                flags,
                "<a href=\"/point/{}/boot-check.png\">{mark}</a>",
                url_piece(s(&p["id"]))
            );
        } else {
            flags.push_str(&mark);
        }
    }
    let kept = match p["kept_by"].as_str() {
        Some("none") => "<span class=\"bad\">the next prune</span>".to_owned(),
        Some(r) => esc(r),
        None => "<span class=\"na\">–</span>".to_owned(),
    };
    let time = if browse {
        format!(
            "<a href=\"/point/{}/files/\" title=\"browse its files\">{}</a>",
            url_piece(s(&p["id"])),
            esc(s(&p["time"]))
        )
    } else {
        esc(s(&p["time"]))
    };
    let _ = write!(
        h,
        "<tr><td title=\"{}\">{time} {flags}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{kept}</td></tr>",
        esc(s(&p["id"])),
        esc(s(&p["disk"])),
        num(&f("new_stored_bytes"), &p["new_stored_bytes"], Kind::Bytes),
        num(
            &f("unique_stored_bytes"),
            &p["unique_stored_bytes"],
            Kind::Bytes
        ),
        num(&f("allocated_bytes"), &p["allocated_bytes"], Kind::Bytes),
        num(&f("logical_bytes"), &p["logical_bytes"], Kind::Bytes),
    );
}

/// Says how many older points are not listed, and where they are.
fn older_points_note(h: &mut String, vm: &Value, listed: usize, options: &PageOptions) {
    if listed > 0 && options.vm_pages {
        let _ = write!(
            h,
            "<p class=\"note\">{listed} older points are not listed (the chart shows them): \
         <a href=\"vm/{}\">this VM's page</a> lists every point.</p>",
            url_piece(s(&vm["vm"]))
        );
    } else if listed > 0 {
        let _ = write!(
            h,
            "<p class=\"note\">{listed} older points are not listed (the chart shows them): \
         <code>cairn report --html FILE --vm {}</code> lists every point of this VM.</p>",
            esc(s(&vm["vm"]))
        );
    }
}

/// A report document of `vms` made-up VMs with `points` points each (one a day, one disk),
/// with every field the page draws: for measuring the page at scale (the benchmark's report
/// section, the size test below).
#[must_use]
pub fn synthetic_document(vms: usize, points: usize) -> Value {
    let gib = 1u64 << 30;
    let start = chrono::DateTime::parse_from_rfc3339("2024-01-01T02:00:00Z")
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_default();
    let cost = |n: u64, k: u64| {
        serde_json::json!({
            "points": n, "logical_bytes": n * 100 * gib, "allocated_bytes": n * 20 * gib,
            "stored_bytes": 12 * gib + k * 100_003, "unique_stored_bytes": 3 * gib + k * 7_919,
            "new_stored_bytes": 12 * gib, "dedup_ratio": 1.0 + (k % 7) as f64 / 3.0,
            "compression_ratio": 1.5, "full_backups_bytes": n * 20 * gib,
            "xo_vhd_deltas_bytes": n * gib,
        })
    };
    let mut vm_rows = Vec::with_capacity(vms);
    let mut point_rows = Vec::with_capacity(vms * points);
    for v in 0..vms {
        let mut row = cost(points as u64, v as u64);
        row["vm"] = Value::from(format!("vm{v:03}"));
        row["vm_uuid"] = Value::from(format!("00000000-0000-4000-8000-{v:012}"));
        row["pool"] = Value::from("pool-a");
        row["retention"] = serde_json::json!({"rules": {"daily": 7, "monthly": 12}, "time": "2026-12-01T03:00:00Z"});
        for p in 0..points {
            let mut pr = cost(1, (v * points + p) as u64);
            pr["new_stored_bytes"] = Value::from(((v * 31 + p * 17) % 997) as u64 * (1 << 20));
            pr["id"] = Value::from(format!("{:032x}", v * points + p));
            pr["vm"] = row["vm"].clone();
            pr["vm_uuid"] = row["vm_uuid"].clone();
            pr["pool"] = row["pool"].clone();
            pr["disk"] = Value::from("xvda");
            pr["time"] = Value::from(
                (start + chrono::Duration::days(p as i64))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            pr["key"] = Value::from(p % 7 == 0);
            pr["protected"] = Value::from(p == 0);
            pr["kept_by"] = Value::from(if p % 30 == 0 {
                "keep-monthly"
            } else {
                "keep-daily"
            });
            point_rows.push(pr);
        }
        vm_rows.push(row);
    }
    let days: Vec<Value> = (0..30)
        .map(|d| serde_json::json!({"day": format!("2026-11-{:02}", d + 1), "new_stored_bytes": d * 1_000_000}))
        .collect();
    serde_json::json!({
        "schema_version": super::SCHEMA_VERSION,
        "generated": "2026-12-03T00:00:00Z",
        "store": cost((vms * points) as u64, 1),
        "filesystem": {"total_bytes": 100 * gib * 1024, "free_bytes": 40 * gib * 1024},
        "growth": {"window_days": 30, "days": days, "bytes_per_day": 14_500_000, "days_until_full": 3000},
        "last_verify": {"time": "2026-12-02T04:00:00Z", "scope": "every point", "clean": true,
                        "chunks_checked": 123_456, "bytes_read": 40 * gib, "seconds": 321.0,
                        "damaged_chunks": 0, "points_damaged": 0, "vms_damaged": [], "damaged": []},
        "garbage_bytes": gib,
        "vms": vm_rows,
        "disks": [],
        "points": point_rows,
        "damaged_points": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_page_of_a_fleet_ranks_and_summarises_in_a_bounded_size() {
        let mut sizes = Vec::new();
        for (vms, points) in [(100, 1000), (500, 20), (2000, 5)] {
            let doc = synthetic_document(vms, points);
            let page = render(&doc, &PageOptions::default());
            sizes.push(page.len());
            // The VMs that free most in detail, each with its newest points and a line for
            // the rest; a bounded ranking; no more point rows than the detailed VMs show.
            assert_eq!(page.matches("<section id=\"vm-").count(), DETAILED_VMS);
            let rows = page.matches("<tr>").count();
            assert!(
                rows <= RANKED_VMS + 2 * SHORT_LIST + DETAILED_VMS * 30 + 100,
                "{rows} rows for {vms} x {points}"
            );
            assert_eq!(
                page.contains(&format!(
                    "{} more VMs, each freeing less",
                    vms.saturating_sub(RANKED_VMS)
                )),
                vms > RANKED_VMS,
                "{vms} VMs"
            );
            assert!(page.len() <= 1 << 20, "{} bytes", page.len());
        }
        let doc = synthetic_document(100, 1000);
        let page = render(&doc, &PageOptions::default());
        assert_eq!(
            page.matches("970 older points are not listed").count(),
            DETAILED_VMS
        );
        // Served, a VM not shown in detail links to its own page.
        let served = render(
            &doc,
            &PageOptions {
                vm_pages: true,
                ..PageOptions::default()
            },
        );
        assert!(served.contains("<a href=\"vm/"), "no VM page links");
        eprintln!("front page sizes: {sizes:?}");
    }

    #[test]
    fn a_vm_whose_backups_stopped_comes_first_and_is_counted() {
        let vm = |name: &str| serde_json::json!({"vm": name, "vm_uuid": null, "pool": null, "points": 1});
        let point = |name: &str, time: &str, new: u64| {
            serde_json::json!({"vm": name, "vm_uuid": null, "pool": null, "id": format!("{name}-{time}"),
                               "time": time, "disk": "xvda", "new_stored_bytes": new})
        };
        let doc = serde_json::json!({
            "generated": "2026-12-07T12:00:00Z",
            "growth": {"days": [{"day": "2026-11-08", "new_stored_bytes": 0}]},
            "vms": [vm("fresh"), vm("stopped"), vm("idle")],
            "points": [
                point("stopped", "2026-12-01T01:00:00Z", 5 << 30),
                point("fresh", "2026-12-06T01:00:00Z", 1 << 20),
                point("fresh", "2026-12-07T01:00:00Z", 2 << 20),
                point("idle", "2026-12-07T02:00:00Z", 0),
            ],
        });
        let page = render(&doc, &PageOptions::default());
        let last = &page[page.find("id=\"last-backups\"").expect("section")..];
        assert!(
            last.contains("1 of 3 VMs have no point from the last 48 hours"),
            "{last}"
        );
        let (stopped, fresh) = (
            last.find("stopped").expect("stopped"),
            last.find("fresh").expect("fresh"),
        );
        assert!(stopped < fresh, "the stopped VM first");
        assert!(last.contains("6 days"));
        // Growth: the VM that added most first; one that added nothing is not listed.
        let grew = &page[page.find("id=\"growers\"").expect("growers")..];
        let grew = &grew[..grew.find("</section>").expect("end")];
        assert!(
            grew.find("stopped") < grew.find("fresh") && grew.contains("5.00 GiB"),
            "{grew}"
        );
        assert!(!grew.contains("idle"), "{grew}");
    }

    #[test]
    fn names_are_escaped_and_nothing_is_fetched() {
        let doc = serde_json::json!({
            "generated": "2026-12-03T00:00:00Z",
            "store": {"stored_bytes": 10, "points": 1},
            "vms": [{"vm": "<script>alert(1)</script>", "vm_uuid": null, "pool": null, "points": 1}],
            "points": [{"vm": "<script>alert(1)</script>", "vm_uuid": null, "pool": null,
                        "id": "ab", "time": "t", "disk": "xvda\"", "new_stored_bytes": 10}],
        });
        let page = render(&doc, &PageOptions::default());
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(page.contains("data-path=\"points[0].new_stored_bytes\" data-value=\"10\""));
    }
}
