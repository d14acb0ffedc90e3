"""Block-wise distillation compression: exact selection, budgets met as measured, rebuildable students."""
import json

import numpy as np
import pytest
import torch

from pipeline.compress.compressor import compress
from pipeline.compress.options import Budget, CompressOptions
from pipeline.compress.blocks import TeacherBlock, cut_teacher
from pipeline.compress.selection import Option, brute_force, pareto_front, select
from pipeline.errors import ConfigError, ModelError
from pipeline.config import TrainOptions
from pipeline.data import PreprocessSpec, load_dataset
from pipeline.nets import fmnist_tiny
from pipeline.sources.student import load_student_files
from pipeline.torchmodel import count_flops, count_params
from pipeline.train import train_classifier


def _instance(seed: int) -> list[list[Option]]:
    rng = np.random.default_rng(seed)
    return [[Option(float(rng.random()), int(rng.integers(1, 100)), int(rng.integers(1, 50)))
             for _ in range(rng.integers(2, 5))] for _ in range(4)]


@pytest.mark.parametrize("seed", range(8))
def test_selection_equals_brute_force(seed):
    options = _instance(seed)
    flops_budget, params_budget = 180 + 10 * seed, 90 + 5 * seed
    expected = brute_force(options, flops_budget, params_budget, fixed=(5, 3))
    if expected is None:
        with pytest.raises(ConfigError):
            select(options, flops_budget, params_budget, fixed=(5, 3))
        return
    got = select(options, flops_budget, params_budget, fixed=(5, 3))
    assert got.score == pytest.approx(expected.score) and got.flops <= flops_budget and got.params <= params_budget


def test_pareto_front_is_non_dominated_and_reaches_the_best():
    options = _instance(3)
    front = pareto_front(options, None)
    assert all(a.flops < b.flops and a.score > b.score for a, b in zip(front, front[1:]))
    assert front[-1].score == pytest.approx(brute_force(options, None, None).score)


def test_budget_below_the_smallest_student_names_the_block():
    options = [[Option(0.0, 50, 1), Option(0.1, 40, 1)], [Option(0.0, 500, 1), Option(0.3, 300, 1)]]
    with pytest.raises(ConfigError, match=r"smallest student needs 340 FLOPs \(block 1 alone at least 300"):
        select(options, 100, None)


def test_models_that_cannot_be_cut():
    with pytest.raises(ModelError, match="cannot cut into blocks"):
        cut_teacher(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)))
    with pytest.raises(ModelError, match=r"unknown block name\(s\) 7"):
        cut_teacher(fmnist_tiny(), ["0", "7"])


def test_bad_budget_values():
    with pytest.raises(ConfigError, match="max_flops: bad value 'lots'"):
        Budget(max_flops="lots")
    with pytest.raises(ConfigError, match="params_ratio: bad value 2"):
        Budget(params_ratio=2)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    data = load_dataset(None)
    train, val = data.train.take(3000, seed=1), data.test.take(600, seed=1)
    spec = PreprocessSpec.from_images(train.read())
    torch.manual_seed(0)  # the result must not depend on which tests ran before
    teacher, _ = train_classifier(fmnist_tiny(), train, val, spec, TrainOptions(epochs=2), {"test": "compress"})
    out = tmp_path_factory.mktemp("compress")
    options = CompressOptions(budget=Budget(flops_ratio=0.6, params_ratio=0.6), blockwise_epochs=1, finetune_epochs=1)
    student, report = compress(teacher, {"model": "fmnist-tiny", "in_channels": 1, "num_classes": 10},
                      spec.apply(train.read()), train.labels, spec.apply(val.read()), val.labels, options, out)
    with torch.no_grad():
        reference = student(torch.from_numpy(spec.apply(val.read()[:8])))
    return report, out, (spec.apply(val.read()[:8]), reference)


def test_budget_is_met_by_the_measured_student(compressed):
    report, out, _ = compressed
    student = load_student_files(out / "student.json")
    flops, params = count_flops(student, (1, 1, 28, 28)), count_params(student)
    assert flops <= report["budget"]["max_flops"] and params <= report["budget"]["max_params"]
    assert flops == report["student"]["flops"] == report["student"]["predicted_flops"]
    assert report["pareto_front"] and report["student"]["val_top1"] > 20  # chance is 10


def test_student_rebuilt_from_its_spec_gives_identical_outputs(compressed):
    report, out, (x, reference) = compressed
    rebuilt = load_student_files(out / "student.json")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(torch.from_numpy(x)), reference, rtol=0, atol=0)
    spec = json.loads((out / "student.json").read_text())
    assert [b["chosen"] for b in report["blocks"]] == spec["blocks"]


@pytest.mark.slow
def test_run_compresses_by_default_and_sends_the_student_through_every_stage(tmp_path, capsys):
    from pipeline.cli import main

    config = tmp_path / "pipeline.yaml"
    # conftest's SMALL teacher (trained once per test session); min/max ranges and nearest rounding: the int8 file
    # is converted from the student's export, with the float ones
    config.write_text(
        "model: fmnist-tiny\ntrain: {epochs: 4, train_subset: 10000}\n"
        "calibration: {num_samples: 32, method: minmax, weight_rounding: nearest}\n"
        "eval_samples: 200\nbench: {runs: 10, warmup: 1}\n"
        "compress: {blockwise_epochs: 1, finetune_epochs: 1, blockwise_subset: 1000, finetune_subset: 2000, "
        "val_samples: 500}\n"
    )
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(out), "--target", "coral-edgetpu",
                 "--flops-ratio", "0.6"]) == 0, capsys.readouterr().err
    [compressed] = (out / "shared").glob("student-*/compress")
    report = json.loads((compressed / "compression.json").read_text())
    assert report["student"]["flops"] <= report["budget"]["max_flops"] <= 0.6 * report["teacher"]["flops"]
    md = (out / "coral-edgetpu" / "report.md").read_text()
    assert "student of fmnist-tiny" in md and "| tflite-int8 |" in md
    assert f"(details: ../shared/{compressed.parent.name}/compress/compression.md)" in md
    assert "Pareto front" in (compressed / "compression.md").read_text()
    assert "](pareto_front.png)" in (compressed / "compression.md").read_text()
    # both models on the held-out test split, beside the validation figures from the training split
    assert 10 < report["teacher"]["test_top1"] <= 100 and 10 < report["student"]["test_top1"] <= 100
    assert f"| {report['teacher']['test_top1']:.2f} | {report['teacher']['val_top1']:.2f} |" in \
        (compressed / "compression.md").read_text()
    assert (compressed / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the student's spec is a model source of its own
    student = load_student_files(compressed / "student.json")
    assert count_flops(student, (1, 1, 28, 28)) == report["student"]["flops"]


@pytest.mark.slow
def test_two_process_ddp_run_agrees_across_ranks(tmp_path):
    import subprocess
    import sys

    torch.manual_seed(0)
    weights = tmp_path / "teacher.pt"
    torch.save(fmnist_tiny().state_dict(), weights)
    out = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pipeline.compress.torchrun_main", "--model", "fmnist-tiny", "--weights", str(weights), "--out", str(out),
         "--train-subset", "1024", "--val-samples", "256", "--finetune-epochs", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "compression.json").read_text())
    assert report["world_size"] == 2
    assert (out / "rank0.sha256").read_text() == (out / "rank1.sha256").read_text()
    assert load_student_files(out / "student.json") is not None


def test_compression_is_skipped_when_the_model_already_fits(tmp_path, small_config):
    from pipeline.orchestrator import Run

    lines: list[str] = []
    config = small_config(tmp_path, targets="jetson-nano", compress={"enabled": True})
    assert Run(config, log=lines.append).execute(["model", "compress"]) == {}
    assert "[skip] compress: the model already fits the budget (FLOPs <= 200000000, parameters <= 2000000)" in lines
    assert not list((tmp_path / "shared").glob("student-*"))


def test_runs_with_other_budgets_in_one_directory_keep_each_others_outputs(tmp_path, small_config):
    from pipeline.orchestrator import Run

    tiny = {"enabled": True, "blockwise_epochs": 1, "finetune_epochs": 1, "blockwise_subset": 500,
            "finetune_subset": 500, "val_samples": 200}
    stages = ["model", "compress", "export"]
    runs = {}
    for ratio in (0.6, 0.4, 0.6):
        lines: list[str] = []
        config = small_config(tmp_path, targets="raspberry-pi-4", compress={**tiny, "budget": {"flops_ratio": ratio}})
        Run(config, log=lines.append).execute(stages)
        runs.setdefault(ratio, []).append(lines)
    students = sorted(p.name for p in (tmp_path / "shared").glob("student-*"))
    assert len(students) == 2 and all((tmp_path / "shared" / s / "export-opset17" / "model.onnx").is_file()
                                      for s in students)
    # back to the first budget: its student and its export are still there and are not redone
    again = runs[0.6][1]
    assert not [line for line in again if line.startswith("[run ]")], again


@pytest.mark.slow
def test_interrupted_compression_resumes_from_its_last_epoch(tmp_path, small_config, monkeypatch):
    import pipeline.compress.compressor as compress_module
    from pipeline.orchestrator import Run

    tiny = {"enabled": True, "blockwise_epochs": 2, "finetune_epochs": 3, "patience": 3, "blockwise_subset": 600,
            "finetune_subset": 600, "val_samples": 200, "budget": {"flops_ratio": 0.6}}
    stages = ["model", "compress"]
    evaluate = compress_module.evaluate_torch
    calls = []

    def interrupted_in_the_second_finetune_epoch(*args):
        calls.append(args)
        if len(calls) == 2:  # the end of fine-tuning epoch 2, before its checkpoint
            raise KeyboardInterrupt
        return evaluate(*args)

    monkeypatch.setattr(compress_module, "evaluate_torch", interrupted_in_the_second_finetune_epoch)
    with pytest.raises(KeyboardInterrupt):
        Run(small_config(tmp_path / "resumed", targets="raspberry-pi-4", compress=tiny)).execute(stages)
    monkeypatch.undo()
    [resume_dir] = (tmp_path / "resumed" / ".state").glob("*compress.resume")
    assert sorted(p.name for p in resume_dir.glob("*.pt")) == ["blockwise.pt", "finetune.pt"]
    assert not list((tmp_path / "resumed" / "shared").glob("student-*/compress"))

    Run(small_config(tmp_path / "resumed", targets="raspberry-pi-4", compress=tiny)).execute(stages)
    Run(small_config(tmp_path / "straight", targets="raspberry-pi-4", compress=tiny)).execute(stages)
    (resumed,), (straight,) = ((tmp_path / d / "shared").glob("student-*/compress") for d in ("resumed", "straight"))
    report = json.loads((resumed / "compression.json").read_text())
    assert report["blockwise_resumed_after_epoch"] == 2 and report["student"]["resumed_after_epoch"] == 1
    assert len(report["student"]["val_top1_per_epoch"]) == 3 and not resume_dir.exists()
    # resuming changes nothing: the same student, weight for weight, as a run that was never interrupted
    resumed_weights, straight_weights = (torch.load(d / "student.pt", weights_only=True) for d in (resumed, straight))
    assert resumed_weights.keys() == straight_weights.keys()
    assert all(torch.equal(resumed_weights[k], straight_weights[k]) for k in resumed_weights)


def test_torchvision_style_teacher_pools_and_flattens_in_forward(tmp_path):
    from pipeline.compress.blocks import find_head
    from tests.helpers import torchvision_style_net

    torch.manual_seed(0)
    teacher = torchvision_style_net().eval()
    assert find_head(teacher, (1, 1, 28, 28)) == "pool-flatten-classifier"
    assert find_head(fmnist_tiny().eval(), (1, 1, 28, 28)) == "classifier"
    data = load_dataset(None)
    train, val = data.train.take(600, seed=3), data.test.take(200, seed=3)
    spec = PreprocessSpec.from_images(train.read())
    options = CompressOptions(budget=Budget(flops_ratio=0.6), blockwise_epochs=1, finetune_epochs=1)
    student, report = compress(teacher, {"model": "tests.helpers:torchvision_style_net", "in_channels": 1,
                                         "num_classes": 10}, spec.apply(train.read()), train.labels,
                               spec.apply(val.read()), val.labels, options, tmp_path)
    x = torch.from_numpy(spec.apply(val.read()[:8]))
    with torch.no_grad():
        assert student(x).shape == (8, 10)
        assert torch.equal(load_student_files(tmp_path / "student.json")(x), student(x))
    assert count_flops(student, (1, 1, 28, 28)) == report["student"]["flops"] <= report["budget"]["max_flops"]
    assert json.loads((tmp_path / "student.json").read_text())["head"] == "pool-flatten-classifier"


def test_a_model_whose_output_does_not_follow_from_its_features_cannot_be_cut():
    from pipeline.compress.blocks import find_head
    from tests.helpers import TorchvisionStyleNet

    class Rescaled(TorchvisionStyleNet):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(ModelError, match=r"Rescaled: cannot cut into blocks: its output is neither"):
        find_head(Rescaled(), (1, 1, 28, 28))


def test_feature_loss_keeps_the_student_blocks_near_the_teachers(tmp_path):
    from pipeline.compress.search import nmse, teacher_features

    data = load_dataset(None)
    train, val = data.train.take(1500, seed=4), data.test.take(300, seed=4)
    spec = PreprocessSpec.from_images(train.read())
    torch.manual_seed(0)
    teacher, _ = train_classifier(fmnist_tiny(), train, val, spec, TrainOptions(epochs=2), {"test": "feature loss"})
    blocks, _ = cut_teacher(teacher)
    x = torch.from_numpy(spec.apply(val.read()))
    _, teacher_outputs = teacher_features(blocks, x)
    distance = {}
    for weight in (0.0, 1.0):
        options = CompressOptions(budget=Budget(flops_ratio=0.6), blockwise_epochs=1, finetune_epochs=2,
                                  feature_weight=weight)
        student, report = compress(teacher, {"model": "fmnist-tiny", "in_channels": 1, "num_classes": 10},
                                   spec.apply(train.read()), train.labels, spec.apply(val.read()), val.labels,
                                   options, tmp_path)
        _, student_outputs = teacher_features([TeacherBlock(b.name, s) for b, s in zip(blocks, student.features)], x)
        distance[weight] = float(sum(map(nmse, student_outputs, teacher_outputs)))
    assert distance[1.0] < 0.8 * distance[0.0], distance


def test_search_space_from_a_config_file_with_a_users_block_factory(tmp_path, compressed):
    from dataclasses import replace

    from pipeline import build_config

    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(
        "compress:\n  search_space:\n    identity: false\n    inverted_residual: null\n    separable: null\n"
        "    basic: null\n    custom:\n      tests.helpers:grouped_conv_block: {groups: [1, 2, 4]}\n")
    options = replace(build_config(config_file).compress, budget=Budget(flops_ratio=0.6), blockwise_epochs=1,
                      finetune_epochs=1)
    data = load_dataset(None)
    train, val = data.train.take(3000, seed=1), data.test.take(600, seed=1)
    spec = PreprocessSpec.from_images(train.read())
    torch.manual_seed(0)
    # the `compressed` fixture's teacher, from the training cache
    teacher, stats = train_classifier(fmnist_tiny(), train, val, spec, TrainOptions(epochs=2), {"test": "compress"})
    assert stats["cached"]
    out = tmp_path / "student"
    student, report = compress(teacher, {"model": "fmnist-tiny", "in_channels": 1, "num_classes": 10},
                               spec.apply(train.read()), train.labels, spec.apply(val.read()), val.labels, options, out)
    # stem 1->8 channels: only groups=1 divides; the others take all three, besides the teacher's own block
    assert [b["candidates"] for b in report["blocks"]] == [2, 4, 4]
    assert {b["chosen"]["type"] for b in report["blocks"]} <= {"teacher", "tests.helpers:grouped_conv_block"}
    assert any(b["chosen"]["type"] != "teacher" for b in report["blocks"])
    x = torch.from_numpy(spec.apply(val.read()[:8]))
    with torch.no_grad():
        assert torch.equal(load_student_files(out / "student.json")(x), student(x))
    assert count_flops(student, (1, 1, 28, 28)) <= report["budget"]["max_flops"]


@pytest.mark.parametrize("search_space, message", [
    ("{separable: {kernel: [3, 0]}}", r"compress.search_space.separable.kernel: bad value \[3, 0\], expected a "
                                      "non-empty list of positive integers"),
    ("{inverted_residual: {expand: [2]}}", r"compress.search_space.inverted_residual: unknown argument\(s\) expand; "
                                           "valid: expansion, kernel, depth"),
    ("{custom: {mypkg.blocks:ghost: {ratio: [2]}}}", r"compress.search_space.custom: mypkg.blocks:ghost: cannot "
                                                     "import module 'mypkg.blocks'"),
    ("{seperable: null}", r"compress.search_space: unknown field\(s\) seperable; valid fields: identity, "
                          "inverted_residual, separable, basic, low_rank, custom"),
])
def test_bad_search_space_names_the_file_the_field_and_the_value(tmp_path, search_space, message):
    from pipeline import build_config

    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(f"compress:\n  search_space: {search_space}\n")
    with pytest.raises(ConfigError, match=f"^{tmp_path}/pipeline.yaml: {message}"):
        build_config(config_file)


def test_each_candidates_backward_gives_the_summed_losss_gradients():
    """Block-wise distillation back-propagates one candidate at a time (one autograd graph alive, not all of them):
    the candidates share no weights, so the gradients must be exactly those of the summed loss."""
    from pipeline.compress.blocks import find_head
    from pipeline.compress.options import SearchSpace
    from pipeline.compress.search import CandidateBank, block_shapes, make_candidates, nmse, teacher_features

    torch.manual_seed(0)
    teacher = fmnist_tiny().eval()
    blocks, _ = cut_teacher(teacher, None, (), find_head(teacher, (1, 1, 28, 28)))
    candidates = [make_candidates(b, i, o, SearchSpace()) for b, (i, o) in
                  zip(blocks, block_shapes(blocks, (1, 1, 28, 28)))]
    bank = CandidateBank(candidates).train()
    assert len(bank.index) > 5
    inputs, outputs = teacher_features(blocks, torch.randn(8, 1, 28, 28))
    sum(nmse(m(inputs[b]), outputs[b]) for (b, _), m in zip(bank.index, bank.members)).backward()
    summed = [p.grad.clone() for p in bank.parameters()]
    bank.zero_grad(set_to_none=True)
    bank.backward(inputs, outputs)
    assert all(torch.equal(a, p.grad) for a, p in zip(summed, bank.parameters()))
