"""The copy's progress: a bar with rows, MB/s and ETA on a terminal, log lines otherwise."""

import io
import logging

from subscriber import progress
from subscriber.ddl import TableDefinition
from subscriber.progress import CopyProgress

TABLE = TableDefinition("public", "accounts", (), (), (), (), False, estimated_rows=1000, size_bytes=0)


def test_a_terminal_gets_a_bar_with_rows_rate_and_eta():
    out = io.StringIO()
    copy = CopyProgress(stream=out, bar=True)
    with copy.table(TABLE) as report:
        report(400, 40_000)
        report(600, 60_000)
    text = out.getvalue()
    assert "public.accounts" in text and "1.00k/1.00k" in text and "MB/s" in text
    assert copy.tables[0][:3] == ("public.accounts", 1000, 100_000)


def test_elsewhere_plain_log_lines_with_rows_size_rate_and_eta(caplog, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="subscriber.progress"), CopyProgress(stream=out, bar=False).table(TABLE) as report:
        report(500, 50_000)
        report(500, 50_000)
    assert out.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("copying public.accounts: 500 rows of ~1000, 0.1 MB") and "s left" in line for line in lines)
    assert lines[-1].startswith("copied public.accounts: 1000 rows, 0.1 MB in ")
