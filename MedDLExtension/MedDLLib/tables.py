"""Table nodes from lists of rows (the classification results)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import vtk


def fill_table_node(table_node, rows: Sequence[dict[str, Any]]) -> None:
    """Replace the table's content: one column per key of the first row, numbers as double columns."""
    table = table_node.GetTable()
    was_modifying = table_node.StartModify()
    try:
        table_node.RemoveAllColumns()
        for name in rows[0]:
            numeric = all(isinstance(row[name], (int, float)) for row in rows)
            column = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
            column.SetName(name)
            for row in rows:
                column.InsertNextValue(float(row[name]) if numeric else str(row[name]))
            table.AddColumn(column)
        table.Modified()
    finally:
        table_node.EndModify(was_modifying)


def rows_of_table_node(table_node) -> list[dict[str, Any]]:
    """The table's rows as dictionaries (numbers as floats)."""
    table = table_node.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c, name in enumerate(names):
            column = table.GetColumn(c)
            row[name] = column.GetValue(r) if isinstance(column, vtk.vtkStringArray) else float(column.GetValue(r))
        rows.append(row)
    return rows
