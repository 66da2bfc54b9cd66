//! Tables for people: every column as wide as its widest cell measured in display columns (a
//! CJK name or an emoji takes two), two spaces between columns, figures right-aligned, no
//! trailing spaces. `list`, `report`, `prune`, `forget`, `protect`, `token list` and
//! `policy show` print through it, so no command pads by hand.

use comfy_table::{CellAlignment, ColumnConstraint, ContentArrangement};
use unicode_width::UnicodeWidthStr;

/// Where a column's cells sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Figures: sizes, counts, ratios.
    Right,
}

/// A table of text cells under a heading row.
pub struct Table {
    inner: comfy_table::Table,
    aligns: Vec<Align>,
}

impl Table {
    /// A table with these columns (heading, alignment).
    pub fn new(columns: &[(&str, Align)]) -> Self {
        let mut inner = comfy_table::Table::new();
        inner
            .load_style(comfy_table::presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(columns.iter().map(|(h, _)| *h));
        Table {
            inner,
            aligns: columns.iter().map(|(_, a)| *a).collect(),
        }
    }

    /// Adds a row; missing cells are empty.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let cells: Vec<String> = cells.into_iter().map(Into::into).collect();
        self.inner.add_row(cells);
    }

    /// The table as lines without trailing spaces.
    pub fn render(&mut self) -> String {
        let last = self.aligns.len().saturating_sub(1);
        for (i, column) in self.inner.column_iter_mut().enumerate() {
            column.set_padding((0, if i == last { 0 } else { 2 }));
            column.set_cell_alignment(match self.aligns.get(i) {
                Some(Align::Right) => CellAlignment::Right,
                _ => CellAlignment::Left,
            });
            column.set_constraint(ColumnConstraint::ContentWidth);
        }
        self.inner.trim_fmt()
    }

    /// Prints the table on standard output.
    pub fn print(mut self) {
        println!("{}", self.render());
    }
}

/// A table printed a row at a time, laid out as [`Table`] lays it out: its rows are measured
/// in a first pass ([`Rows::measure`]) and printed in a second ([`Rows::line`]), so that a list
/// of 100 000 points is never held in memory.
pub struct Rows {
    heads: Vec<String>,
    aligns: Vec<Align>,
    widths: Vec<usize>,
}

impl Rows {
    /// Rows under these columns (heading, alignment).
    pub fn new(columns: &[(&str, Align)]) -> Self {
        let mut rows = Rows {
            heads: columns.iter().map(|(h, _)| (*h).to_owned()).collect(),
            aligns: columns.iter().map(|(_, a)| *a).collect(),
            widths: vec![0; columns.len()],
        };
        let heads = rows.heads.clone();
        rows.measure(&heads);
        rows
    }

    /// Widens the columns to hold these cells.
    pub fn measure(&mut self, cells: &[String]) {
        for (w, c) in self.widths.iter_mut().zip(cells) {
            *w = (*w).max(UnicodeWidthStr::width(c.as_str()));
        }
    }

    /// Each column's width so far.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Widens the columns to at least these widths.
    pub fn widen(&mut self, widths: &[usize]) {
        for (w, x) in self.widths.iter_mut().zip(widths) {
            *w = (*w).max(*x);
        }
    }

    /// The heading line.
    pub fn heading(&self) -> String {
        self.line(&self.heads)
    }

    /// One row as a line: cells padded to their column's width (figures on the right), two
    /// spaces between columns, no trailing spaces.
    pub fn line(&self, cells: &[String]) -> String {
        let mut out = String::new();
        let last = self.widths.len().saturating_sub(1);
        for (i, w) in self.widths.iter().enumerate() {
            let cell = cells.get(i).map_or("", String::as_str);
            let pad = w.saturating_sub(UnicodeWidthStr::width(cell));
            match self.aligns.get(i) {
                Some(Align::Right) => {
                    out.extend(std::iter::repeat_n(' ', pad));
                    out.push_str(cell);
                }
                _ => {
                    out.push_str(cell);
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            if i != last {
                out.push_str("  ");
            }
        }
        out.truncate(out.trim_end().len());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_printed_one_at_a_time_read_as_the_table_does() {
        let columns = [
            ("VM", Align::Left),
            ("SOURCE", Align::Left),
            ("SIZE", Align::Right),
            ("NOTE", Align::Left),
        ];
        let rows: Vec<Vec<String>> = [
            ["web01", "vhd", "1 GiB", ""],
            ["データベース", "nbd-bitmap", "12.5 MiB", "a note"],
            ["🦀crab", "", "0 B", "x"],
            ["a-rather-long-vm-name", "raw", "1023.9 KiB", ""],
        ]
        .iter()
        .map(|r| r.iter().map(|c| (*c).to_owned()).collect())
        .collect();
        let mut table = Table::new(&columns);
        let mut streamed = Rows::new(&columns);
        for r in &rows {
            table.row(r.clone());
            streamed.measure(r);
        }
        let mut lines = vec![streamed.heading()];
        lines.extend(rows.iter().map(|r| streamed.line(r)));
        assert_eq!(lines.join("\n"), table.render());
    }

    #[test]
    fn columns_line_up_in_display_columns() {
        let mut t = Table::new(&[
            ("VM", Align::Left),
            ("SOURCE", Align::Left),
            ("SIZE", Align::Right),
        ]);
        t.row(["web01", "vhd", "1 GiB"]);
        t.row(["データベース", "nbd-bitmap", "12.5 MiB"]);
        t.row(["🦀crab", "raw", "0 B"]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        // Every SOURCE cell starts at the same display column, and every SIZE ends at the same.
        let starts: Vec<usize> = lines
            .iter()
            .zip(["SOURCE", "vhd", "nbd-bitmap", "raw"])
            .map(|(l, cell)| l[..l.find(cell).expect("cell")].width())
            .collect();
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{text}");
        let ends: Vec<usize> = lines.iter().map(|l| l.width()).collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }
}
