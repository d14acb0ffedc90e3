"""The model's classes and the data's: a labels file gives the model's class names in output order, and each of the
data's classes (its folder names, or an .npz's ``classes``) maps to one of them, by name or by integer index. The
data may hold a few of the model's classes; evaluation then scores on the model's own indices."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from .datasets import DataSplits


def read_labels(path: str | Path) -> tuple[str, ...]:
    """One name per line in output order, or JSON: a list, or a mapping of index to a name (or to a list whose last
    item is the name, as ImageNet's ``imagenet_class_index.json`` has it)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the labels file ({exc.strerror or exc})") from exc
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(data, dict):
            try:
                order = sorted(data, key=int)
            except ValueError:
                raise DataError(f"{path}: a JSON mapping of labels needs integer keys (output indices)") from None
            if [int(k) for k in order] != list(range(len(order))):
                raise DataError(f"{path}: the JSON mapping's keys must be the indices 0..{len(order) - 1}")
            data = [data[k][-1] if isinstance(data[k], list) else data[k] for k in order]
        if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
            raise DataError(f"{path}: expected a JSON list of class names, or a mapping of index to name")
        names = data
    else:
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:
            names.pop()
    if not names or not all(names):
        raise DataError(f"{path}: expected one class name per line in the model's output order (no blank lines)")
    return tuple(names)


def map_classes(data: DataSplits, labels: tuple[str, ...], labels_path: str | Path) -> DataSplits:
    """The data with its labels moved to the model's indices and the model's classes as its own."""
    by_name = {name: index for index, name in enumerate(labels)}
    by_folded = {name.casefold(): index for index, name in enumerate(labels)}
    index = []
    for name in data.classes:
        if name in by_name or name.casefold() in by_folded:
            index.append(by_name.get(name, by_folded.get(name.casefold())))
        elif name.isdigit() and int(name) < len(labels):
            index.append(int(name))
        else:
            raise DataError(
                f"{data.source}: data class '{name}' is none of the model's {len(labels)} labels ({labels_path}, e.g. "
                f"'{labels[0]}') nor an index below {len(labels)}; the data has {len(data.classes)} classes "
                "(name its folders by the model's labels or by their indices)")
    if len(set(index)) != len(index):
        raise DataError(f"{data.source}: two data classes map to the same model class ({labels_path})")
    to_model = np.asarray(index, dtype=np.int64)
    move = lambda split: replace(split, labels=to_model[split.labels])  # noqa: E731
    return replace(data, train=move(data.train), test=move(data.test), classes=labels)
