"""Task data: question/solution rows from Stratos-layout sets, JSON Lines files, Hub datasets and
the bundled quick-start task (see loaders.py for the row contract)."""

from factory.data.loaders import check_data_source, load_rows, resolve_revision, row_id

__all__ = ["check_data_source", "load_rows", "resolve_revision", "row_id"]
