"""The label set of a classification and each record's label id.

The labels are spec.dataset.labels when given (in that order: label i is class
i of the model's head), else the labels found in the training records, sorted
(numerically when all are integers), so every rank and every attempt derives
the same ids. A record's label is a name, or an integer: with declared labels
an integer is a class id, without them it is a name written as a number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kubetune_trainer.data.sources import Record, each
from kubetune_trainer.errors import DataError


def _raw_label(record: Record, key: str) -> str | int:
    if key not in record.data or record.data[key] is None:
        raise DataError(f"{record.where}: no label: field {key!r} is missing (set spec.dataset.fields.label "
                        "if the records call it something else)")
    value = record.data[key]
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise DataError(f"{record.where}: field {key!r} must be a label name (a non-empty string) or an "
                        f"integer (got {type(value).__name__} {value!r:.40})")
    return value


def label_names(declared: Sequence[str] | None, records: Iterable[Record], key: str,
                skip_bad: bool = False) -> list[str]:
    """The classification's labels, in class-id order; `skip_bad`: records without a valid label
    are left out (the preflight reports them when it encodes them) instead of raising."""
    if declared:
        return list(declared)
    found: set[str | int] = set(each(records, lambda record: _raw_label(record, key), [] if skip_bad else None))
    if all(isinstance(v, int) for v in found):
        return [str(v) for v in sorted(int(v) for v in found)]
    return sorted(str(v) for v in found)


class LabelIds:
    """Label name -> class id, and the checks that name the record on a mismatch."""

    def __init__(self, names: Sequence[str], declared: bool) -> None:
        self.names = list(names)
        self.declared = declared
        self._ids = {name: i for i, name in enumerate(self.names)}

    def of(self, record: Record, key: str) -> int:
        value = _raw_label(record, key)
        if isinstance(value, int) and self.declared:
            if not 0 <= value < len(self.names):
                raise DataError(f"{record.where}: label id {value} is outside spec.dataset.labels "
                                f"(ids 0 to {len(self.names) - 1})")
            return value
        label = str(value)
        if label not in self._ids:
            shown = ", ".join(self.names[:10]) + (", ..." if len(self.names) > 10 else "")
            where = "spec.dataset.labels" if self.declared else "the labels of the training records"
            raise DataError(f"{record.where}: label {label!r} is not one of {where} ({shown}); fix the "
                            "record" + (" or add it to spec.dataset.labels" if self.declared else ""))
        return self._ids[label]
