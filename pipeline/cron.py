"""Cron schedules: ``"0 3 * * 0"`` (minute hour day-of-month month day-of-week), as Kubernetes' CronJob and
KubeRay's RayCronJob read them; a sixth leading field gives seconds (``"*/10 * * * * *"``: every 10 s), for
tests and demos. Fields take ``*``, numbers, ``a-b`` ranges, ``/step`` and comma lists; day-of-week 0 or 7 is
Sunday; names (``mon``, ``jan``) and the macros ``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` work too.
As in cron, when both day fields are restricted a day matches either. Times are UTC.

croniter finds the fire times; this module checks each field first, so that an error names it, and so that
only what Kubernetes also reads gets through (none of croniter's ``L``, ``W``, ``#``, ``?``, ``H``, ``R``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from croniter import CroniterBadDateError, croniter

_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
           "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
# (name, croniter's index of the field, lowest, highest); in our order: seconds first
_FIELDS = [("second", 5, 0, 59), ("minute", 0, 0, 59), ("hour", 1, 0, 23), ("day of month", 2, 1, 31),
           ("month", 3, 1, 12), ("day of week", 4, 0, 7)]
_TOKEN = re.compile(r"(?:\*|(\w+)(?:-(\w+))?)(?:/(\d+))?")


class CronError(ValueError):
    pass


def _field(text: str, name: str, index: int, lo: int, hi: int) -> str:
    """Check one field; return it in numbers, every token as ``a-b/step`` or ``a``, for croniter: it reads an
    equal range ``a-a`` as the whole cycle, stops ``1/2`` in day-of-week at 6, and ANDs the day fields when a
    restricted one holds a ``*`` (``*/2``): written out, they mean what they mean in cron."""
    if text == "*":
        return text
    names = {k: int(v) for k, v in croniter.ALPHACONV[index].items() if str(v).isdigit()}
    out = []
    for tok in text.split(","):
        m = _TOKEN.fullmatch(tok)
        if not m:
            raise CronError(f"{name}: {tok!r} is not *, a number, a range a-b, or one of those /step")
        step = m.group(3)
        if step is not None and int(step) < 1:
            raise CronError(f"{name}: step must be >= 1")
        vals = []
        for s in m.group(1, 2):
            if s is not None:
                if not s.isdigit() and s not in names:
                    raise CronError(f"{name}: {s!r} is not a number" + (f" or one of {', '.join(names)}" if names
                                                                         else ""))
                vals.append(names[s] if s in names else int(s))
                if not lo <= vals[-1] <= hi:
                    raise CronError(f"{name}: {vals[-1]} is outside {lo}-{hi}")
        a, b = vals if len(vals) == 2 else (vals[0], vals[0] if step is None else hi) if vals else (lo, hi)
        if a > b:
            raise CronError(f"{name}: range {tok.partition('/')[0]} runs backwards")
        out.append(str(a) if a == b else f"{a}-{b}" + (f"/{step}" if step else ""))
    return ",".join(out)


@dataclass(frozen=True)
class Cron:
    text: str
    spec: str  # six fields, seconds first, as croniter reads them with ``second_at_beginning``

    @classmethod
    def parse(cls, text: str) -> Cron:
        parts = _MACROS.get(text.strip().lower(), text).lower().split()
        if len(parts) == 5:
            parts = ["0", *parts]
        if len(parts) != 6:
            raise CronError(f"{text!r}: a schedule has 5 fields (minute hour day month weekday), or 6 with "
                            "seconds first; e.g. '0 3 * * 0' is Sundays at 03:00")
        cron = cls(text, " ".join(_field(p, *f) for p, f in zip(parts, _FIELDS)))
        cron.next_after(datetime(2000, 1, 1, tzinfo=timezone.utc))  # Feb 30 passes each field but never fires
        return cron

    def next_after(self, t: datetime) -> datetime:
        """The first fire time strictly after ``t`` (UTC; a naive ``t`` is taken as UTC)."""
        t = (t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)).replace(microsecond=0)
        try:
            nxt: datetime = croniter(self.spec, t, second_at_beginning=True).get_next(datetime)
        except CroniterBadDateError:
            raise CronError(f"{self.text!r} never fires") from None
        return nxt
