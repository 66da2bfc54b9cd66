//! Tables for people: every column as wide as its widest cell measured in display columns (a
//! CJK name or an emoji takes two), two spaces between columns, figures right-aligned, no
//! trailing spaces. `list`, `report`, `prune`, `forget`, `protect`, `token list` and
//! `policy show` print through it, so no command pads by hand.

use comfy_table::{CellAlignment, ColumnConstraint, ContentArrangement};

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

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_width::UnicodeWidthStr;

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
