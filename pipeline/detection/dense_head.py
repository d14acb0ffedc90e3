"""A dense YOLO head's one output split in two, as Ultralytics splits it for its TFLite and Edge TPU exports.

Ultralytics' detect head ends in a Concat on axis 1 of the decoded boxes [1, 4, N] (centre x, y, width, height in
input pixels) and the sigmoid class scores [1, C, N]. In one int8 tensor the two share one scale: pixels up to 640
and scores in [0, 1] give the scores a step of about 2.5, so a full-integer model (Coral's) reads every score as 0.
Split, the boxes are divided by the input size and each output keeps its own scale; the ``boxes-scores`` decoder
reads them (``SPLIT_DECODER``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

BOXES, SCORES = "boxes", "scores"
SPLIT_DECODER = {"decoder": "boxes-scores", "box_format": "cxcywh", "normalised": True, "anchors_last": True}


def dense_head_concat(model):
    """The Concat on axis 1 that writes the graph's one output from the boxes and a Sigmoid's scores (a dense head's
    last op), or None for any other graph."""
    if len(model.graph.output) != 1:
        return None
    producers = {out: node for node in model.graph.node for out in node.output}
    concat = producers.get(model.graph.output[0].name)
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 2:
        return None
    axis = next((a.i for a in concat.attribute if a.name == "axis"), None)
    scores = producers.get(concat.input[1])
    return concat if axis in (1, -2) and scores is not None and scores.op_type == "Sigmoid" else None


def split_dense_head(path: Path, input_hw: tuple[int, int]) -> None:
    """Rewrite the static-shaped ONNX file ``path``: outputs ``boxes`` [1, 4, N] in [0, 1] of the input and ``scores``
    [1, C, N] in place of the concatenated [1, 4 + C, N]."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    concat = dense_head_concat(model)
    if concat is None:
        raise ValueError(f"{path.name}: its output is not a dense head's Concat of boxes and sigmoid scores")
    boxes, scores = concat.input
    output = model.graph.output[0]
    batch, rows, anchors = (d.dim_value for d in output.type.tensor_type.shape.dim)
    height, width = input_hw
    model.graph.node.remove(concat)
    size = numpy_helper.from_array(np.asarray([width, height, width, height], np.float32).reshape(1, 4, 1),
                                   "dense_head_input_size")
    model.graph.initializer.append(size)
    model.graph.node.extend([helper.make_node("Div", [boxes, size.name], [BOXES], name="dense_head_boxes"),
                             helper.make_node("Identity", [scores], [SCORES], name="dense_head_scores")])
    elem = output.type.tensor_type.elem_type
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info(BOXES, elem, [batch, 4, anchors]),
                               helper.make_tensor_value_info(SCORES, elem, [batch, rows - 4, anchors])])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
