//! The one table style of lbctl: upper-case headers and columns aligned by spaces, as kubectl
//! prints them; a cell may hold several lines (a service's backends). Numbers align right.
use comfy_table::{presets::NOTHING, CellAlignment, ContentArrangement, Table};

/// A table under construction.
pub struct Builder {
    table: Table,
    right: Vec<usize>,
}

impl Builder {
    pub fn new(header: &[&str]) -> Self {
        let mut table = Table::new();
        table
            .load_style(NOTHING)
            // Never wrap to the terminal: the output stays the same wherever it goes.
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(header.to_vec());
        Builder {
            table,
            right: Vec::new(),
        }
    }

    /// Right-align these columns (numbers).
    pub fn right(mut self, columns: &[usize]) -> Self {
        self.right.extend_from_slice(columns);
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.table.add_row(cells);
    }

    pub fn render(mut self) -> String {
        let count = self.table.column_count();
        for (i, column) in self.table.column_iter_mut().enumerate() {
            // Three spaces between columns, none before the first or after the last.
            column.set_padding((0, if i + 1 == count { 0 } else { 3 }));
            if self.right.contains(&i) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        self.table.trim_fmt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_without_trailing_space() {
        let mut t = Builder::new(&["NAME", "PACKETS", "NOTE"]).right(&[1]);
        t.row(vec!["a".into(), "1".into(), "x\ny".into()]);
        t.row(vec!["longer".into(), "1234".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME     PACKETS   NOTE\n\
             a              1   x\n\
             \x20                  y\n\
             longer      1234"
        );
    }
}
