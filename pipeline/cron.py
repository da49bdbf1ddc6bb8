"""Cron schedules: ``"0 3 * * 0"`` (minute hour day-of-month month day-of-week), as Kubernetes' CronJob and
KubeRay's RayCronJob read them; a sixth leading field gives seconds (``"*/10 * * * * *"``: every 10 s), for
tests and demos. Fields take ``*``, numbers, ``a-b`` ranges, ``/step`` and comma lists; day-of-week 0 or 7 is
Sunday; names (``mon``, ``jan``) and the macros ``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` work too.
As in cron, when both day fields are restricted a day matches either. Times are UTC."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
           "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
_DOW = {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_MON = {n: i + 1 for i, n in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                         "nov", "dec"])}
_FIELDS = [("second", 0, 59, {}), ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
           ("month", 1, 12, _MON), ("day of week", 0, 7, _DOW)]


class CronError(ValueError):
    pass


def _field(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        body, _, step_s = part.partition("/")
        try:
            step = int(step_s) if step_s else 1
        except ValueError:
            raise CronError(f"{name}: step {step_s!r} is not a number") from None
        if step < 1:
            raise CronError(f"{name}: step must be >= 1")

        def num(s: str) -> int:
            s = s.strip().lower()
            if s in names:
                return names[s]
            try:
                v = int(s)
            except ValueError:
                raise CronError(f"{name}: {s!r} is not a number" + (f" or one of {', '.join(names)}" if names
                                                                     else "")) from None
            if not lo <= v <= hi:
                raise CronError(f"{name}: {v} is outside {lo}-{hi}")
            return v

        if body == "*":
            a, b = lo, hi
        elif "-" in body:
            a_s, b_s = body.split("-", 1)
            a, b = num(a_s), num(b_s)
            if a > b:
                raise CronError(f"{name}: range {body} runs backwards")
        else:
            a = num(body)
            b = hi if step_s else a
        out.update(range(a, b + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        spec = _MACROS.get(text.strip().lower(), text)
        parts = spec.split()
        if len(parts) == 5:
            parts = ["0", *parts]
        if len(parts) != 6:
            raise CronError(f"{text!r}: a schedule has 5 fields (minute hour day month weekday), or 6 with "
                            "seconds first; e.g. '0 3 * * 0' is Sundays at 03:00")
        sets = [_field(p, n, lo, hi, names) for p, (n, lo, hi, names) in zip(parts, _FIELDS)]
        weekdays = frozenset(d % 7 for d in sets[5])
        return cls(text, sets[0], sets[1], sets[2], sets[3], sets[4], weekdays, parts[3] == "*", parts[5] == "*")

    def _day_ok(self, t: datetime) -> bool:
        dom, dow = t.day in self.days, (t.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow

    def next_after(self, t: datetime) -> datetime:
        """The first fire time strictly after ``t`` (UTC)."""
        t = (t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)).replace(microsecond=0)
        t += timedelta(seconds=1)
        for _ in range(366 * 5):  # days: a schedule that never fires (Feb 30) ends the search
            if t.month in self.months and self._day_ok(t):
                for h in sorted(x for x in self.hours if x >= t.hour):
                    for m in sorted(x for x in self.minutes if (h > t.hour or x >= t.minute)):
                        for s in sorted(self.seconds):
                            cand = t.replace(hour=h, minute=m, second=s)
                            if cand >= t:
                                return cand
            t = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0)
        raise CronError(f"{self.text!r} never fires")
