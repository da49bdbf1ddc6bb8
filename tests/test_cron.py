"""The cron schedules of `oat schedule` (pipeline/cron.py): fire times and the errors, no services."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.cron import Cron, CronError

UTC = timezone.utc
MON = datetime(2026, 11, 30, 5, 12, 30, tzinfo=UTC)  # a Monday, the last day of November


def fires(expr: str, t: datetime = MON, n: int = 4) -> list[datetime]:
    cron, out = Cron.parse(expr), []
    for _ in range(n):
        t = cron.next_after(t)
        out.append(t)
    return out


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_leading_seconds_field_fires_every_10_seconds():
    assert fires("*/10 * * * * *") == [at(2026, 11, 30, 5, 12, s) for s in (40, 50)] + [
        at(2026, 11, 30, 5, 13, s) for s in (0, 10)]
    assert fires("15,45 30 5 * * *", n=3) == [at(2026, 11, 30, 5, 30, 15), at(2026, 11, 30, 5, 30, 45),
                                             at(2026, 12, 1, 5, 30, 15)]
    assert fires("* * * * *", n=2) == [at(2026, 11, 30, 5, 13), at(2026, 11, 30, 5, 14)]  # 5 fields: second 0


def test_weekly_schedule_crosses_the_month_boundary_and_is_strictly_after():
    assert fires("0 3 * * 0", n=2) == [at(2026, 12, 6, 3), at(2026, 12, 13, 3)]
    assert Cron.parse("0 3 * * 0").next_after(at(2026, 12, 6, 3)) == at(2026, 12, 13, 3)
    assert fires("0 3 * * 7", n=1) == [at(2026, 12, 6, 3)]  # 7 is Sunday too
    assert fires("@weekly", n=1) == [at(2026, 12, 6, 0)]


def test_times_are_utc():
    east = timezone(timedelta(hours=2))
    nxt = Cron.parse("0 3 * * *").next_after(datetime(2026, 12, 1, 4, 30, 0, 999, tzinfo=east))  # 02:30 UTC
    assert nxt == at(2026, 12, 1, 3) and nxt.utcoffset() == timedelta(0)
    assert Cron.parse("0 3 * * *").next_after(datetime(2026, 12, 1, 2, 30)) == at(2026, 12, 1, 3)  # naive: UTC


def test_ranges_steps_and_lists():
    assert [t.minute for t in fires("5-20/5,59 6 * * *")] == [5, 10, 15, 20]
    assert fires("0 9 * * mon-fri", at(2026, 12, 4, 10), n=2) == [at(2026, 12, 7, 9), at(2026, 12, 8, 9)]
    assert [t.month for t in fires("0 0 1 jan/3 *")] == [1, 4, 7, 10]
    assert [t.minute for t in fires("3-3 * * * *", n=2)] == [3, 3]  # one minute, not croniter's whole hour
    assert [t.isoweekday() for t in fires("0 0 * * 1/2")] == [3, 5, 7, 1]  # 1-7/2: Sunday (7) included
    assert [t.isoweekday() for t in fires("0 0 * * 5-7")] == [5, 6, 7, 5]
    assert fires("0 0 29 2 *", n=2) == [at(2028, 2, 29), at(2032, 2, 29)]


def test_day_of_month_and_day_of_week():
    assert [(t.day, t.isoweekday()) for t in fires("0 0 13 * fri")] == [(4, 5), (11, 5), (13, 7), (18, 5)]  # or
    assert {t.isoweekday() for t in fires("0 0 * * fri")} == {5}  # a * in the other field: and
    assert {t.day for t in fires("0 0 13 * *")} == {13}
    assert [t.day for t in fires("0 0 1-31 * */2", n=3)] == [1, 2, 3]  # both restricted: every day (or)
    assert fires("0 0 30 2 mon", n=2) == [at(2027, 2, 1), at(2027, 2, 8)]  # Feb 30 never, Mondays in Feb do


@pytest.mark.parametrize("expr, msg", [
    ("0 3 * *", "5 fields"),
    ("0 0 3 * * * *", "5 fields"),
    ("@fortnightly", "5 fields"),
    ("61 * * * *", "minute: 61 is outside 0-59"),
    ("60 * * * * *", "second: 60 is outside 0-59"),
    ("0 24 * * *", "hour: 24 is outside 0-23"),
    ("0 0 0 * *", "day of month: 0 is outside 1-31"),
    ("0 0 1 13 *", "month: 13 is outside 1-12"),
    ("0 0 * * 8", "day of week: 8 is outside 0-7"),
    ("0 0 * * funday", "day of week: 'funday' is not a number or one of sun, mon"),
    ("0 0 1 smarch *", "month: 'smarch' is not a number or one of jan"),
    ("*/0 * * * *", "minute: step must be >= 1"),
    ("5-3 * * * *", "minute: range 5-3 runs backwards"),
    ("0 0 * * sat-sun", "day of week: range sat-sun runs backwards"),
    ("0 0 L * *", "day of month: 'l' is not a number"),  # croniter extensions Kubernetes does not read
    ("0 0 ? * *", "day of month: '?' is not"),
    ("0 0 * * 1#2", "day of week: '1#2' is not"),
    ("R 0 * * *", "minute: 'r' is not a number"),
    ("0 0 30 2 *", "'0 0 30 2 *' never fires"),
])
def test_bad_expressions_fail_at_parse_naming_the_field(expr: str, msg: str):
    with pytest.raises(CronError, match=re.escape(msg)):
        Cron.parse(expr)
