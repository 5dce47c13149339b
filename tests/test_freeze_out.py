"""--freeze-out: the backbone's stages stop training one after another (FreezeOut by epoch)."""
from __future__ import annotations

import pytest
import torch
from fastai.callback.core import Callback

from mlns_fast.config import IMAGE_SIZE, ModelConfig
from mlns_fast.model import backbone_stages, create_model

from .conftest import assert_user_error, run_cli


@pytest.mark.parametrize("arch, shapes", [
    ("mlns_cnn", [[(32, 1, 3, 3), (32, 32, 3, 3)], [(64, 32, 3, 3), (64, 64, 3, 3)], [(128, 64, 3, 3), (128, 128, 3, 3)]]),
    ("convnet4", [[(32, 1, 3, 3)], [(64, 32, 3, 3)], [(128, 64, 3, 3)], [(256, 128, 3, 3)]]),
])
def test_the_built_in_cnns_stages_are_their_resolutions(arch, shapes):
    stages = backbone_stages(create_model(ModelConfig(arch=arch), IMAGE_SIZE).backbone)
    assert [[tuple(p.shape) for p in s if p.ndim == 4] for s in stages] == shapes
    assert all(len(s) == 3 * len(c) for s, c in zip(stages, shapes))  # each conv with its BatchNorm's two


def test_a_timm_backbones_stages_are_timms_coarse_groups():
    backbone = create_model(ModelConfig(arch="resnet18", prune_stages=2), IMAGE_SIZE).backbone
    stages = backbone_stages(backbone)
    assert len(stages) == 3  # the stem, layer1, layer2 (layer3 and layer4 pruned)
    assert stages[0][0] is backbone.conv1.weight and stages[2][-1] is backbone.layer2[-1].bn2.bias
    assert sum(len(s) for s in stages) == len(list(backbone.parameters()))


def test_a_backbone_without_stages_is_a_user_error():
    from torch import nn
    from mlns_fast.errors import ModelError
    with pytest.raises(ModelError, match="freeze-out"):
        backbone_stages(nn.Sequential(nn.Conv2d(1, 8, 3)))


class Grads(Callback):
    """Per training epoch, which backbone stages got gradients; the trainable flags after the fit."""
    order = 100  # after FreezeOut's before_epoch

    def before_fit(self):
        self.stages, self.seen = backbone_stages(self.learn.model.backbone), {}

    def after_backward(self):
        got = tuple(all(p.grad is not None for p in s) for s in self.stages)
        none = tuple(all(p.grad is None for p in s) for s in self.stages)
        assert all(g or n for g, n in zip(got, none))  # a stage trains whole or not at all
        self.seen.setdefault(self.epoch, set()).add(got)

    def after_fit(self):
        self.trainable_after = all(p.requires_grad for p in self.learn.model.parameters())


def test_a_freeze_out_run_freezes_the_stages_in_turn_and_restores_them(tiny_cfg, tmp_path):
    from mlns_fast.training import train
    spy = Grads()
    s = train(tiny_cfg(epochs=4, freeze_out=0.25), tmp_path, quiet=True, extra_cbs=[spy])
    assert s["status"] == "finished"
    # three stages, two that freeze: the first after round(4 x 0.25) = 1 epoch, the second after
    # round(4 x (0.25 + 0.375)) = 2; the last trains throughout
    assert spy.seen == {0: {(True, True, True)}, 1: {(False, True, True)}, 2: {(False, False, True)},
                        3: {(False, False, True)}}
    assert spy.trainable_after


@pytest.mark.parametrize("anneal", [False, True])  # with anneal the checkpoint's optimizer has a group per stage
def test_a_resumed_run_freezes_what_the_first_fit_had_frozen(tiny_cfg, tmp_path, anneal):
    from mlns_fast.runs import RunDir
    from mlns_fast.training import train
    from .conftest import SigintAfter
    cut = train(tiny_cfg(epochs=3, freeze_out=0.34, freeze_anneal=anneal), tmp_path, quiet=True,
                extra_cbs=[SigintAfter(1)])
    assert cut["status"] == "interrupted" and cut["epochs_done"] == 2
    spy = Grads()
    done = train(None, tmp_path, quiet=True, resume=str(RunDir(tmp_path / cut["run"]).path), extra_cbs=[spy])
    assert done["status"] == "finished" and done["epochs_done"] == 3
    # the first stage froze after round(3 x 0.34) = 1 epoch, the second after round(3 x 0.67) = 2: the resumed
    # fit trains epoch 2 alone, with both frozen
    assert spy.seen == {2: {(False, False, True)}}


def test_frozen_stages_keep_their_weights_and_the_rest_train(tiny_cfg, tmp_path):
    from mlns_fast.training import train

    class Snap(Callback):
        order = 100

        def before_epoch(self):
            if self.epoch == 1:
                self.before = [p.detach().clone() for p in self.learn.model.parameters()]

        def after_fit(self):
            self.after = [p.detach().clone() for p in self.learn.model.parameters()]

    snap = Snap()
    train(tiny_cfg(epochs=2, freeze_out=0.5, wd=0.1), tmp_path, quiet=True, extra_cbs=[snap])
    model = create_model(tiny_cfg().model, IMAGE_SIZE)
    first = {id(p) for p in backbone_stages(model.backbone)[0]}
    moved = [not torch.equal(a, b) for a, b in zip(snap.before, snap.after)]
    frozen = [id(p) in first for p in model.parameters()]
    assert not any(m for m, f in zip(moved, frozen) if f)  # no step, no weight decay on the frozen stage
    assert any(m for m, f in zip(moved, frozen) if not f)


@pytest.mark.parametrize("flags", [["--freeze-out", "1.5"], ["--freeze-out", "-0.1"]])
def test_freeze_out_user_errors(capsys, tmp_path, flags):
    code, _, err = run_cli(capsys, "train", *flags, "--runs-dir", tmp_path)
    assert_user_error(code, err, "freeze-out")
    assert not any(tmp_path.iterdir())


def test_freeze_out_is_refused_under_ddp_before_any_data(tiny_cfg, tmp_path):
    from mlns_fast.errors import ConfigError
    from mlns_fast.training import prepare
    with pytest.raises(ConfigError, match="freeze-out"):
        prepare(tiny_cfg(freeze_out=0.5), runs_dir=tmp_path, rank=0, world=2)
    assert not any(tmp_path.iterdir())


def test_with_anneal_each_stage_has_its_own_groups(tiny_cfg):
    from mlns_fast.optim import decay_groups
    model = create_model(tiny_cfg().model, IMAGE_SIZE)
    stages = backbone_stages(model.backbone)
    groups = decay_groups(model, stages=True)
    assert [g.get("stage") for g in groups] == [0, 0, 1, 1, None, None, None, None]  # decay and no-decay each
    for i in (0, 1):
        assert {id(p) for g in groups if g.get("stage") == i for p in g["params"]} == {id(p) for p in stages[i]}
    everything = [id(p) for g in groups for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())  # each parameter once
    plain = {id(p): g["wd_mult"] for g in decay_groups(model) for p in g["params"]}
    assert all(plain[id(p)] == g["wd_mult"] for g in groups for p in g["params"])  # the same weight decay
    assert all(g["lr_mult"] == (0.5 if i < 6 else 1.0)  # --body-lr still scales the backbone's groups
               for i, g in enumerate(decay_groups(model, body_lr=0.5, stages=True)))


class Lrs(Callback):
    """Each training batch's lr per stage (the backbone's first two; None: every other parameter), a list per
    epoch (of the stage's first group: its decay and no-decay groups have the same)."""
    order = 100  # after FreezeOut's before_batch

    def before_fit(self):
        self.by_stage = {}

    def before_batch(self):
        if self.training:
            now = {}
            for pg in self.opt.opt.param_groups:
                now.setdefault(pg.get("stage"), pg["lr"])
            for stage, lr in now.items():
                self.by_stage.setdefault(stage, {}).setdefault(self.epoch, []).append(lr)


def test_with_anneal_each_stage_runs_the_schedule_to_its_freeze(tiny_cfg, tmp_path):
    from mlns_fast.training import train
    spy = Lrs()
    s = train(tiny_cfg(epochs=4, freeze_out=0.25, freeze_anneal=True, lr=1e-2), tmp_path, quiet=True,
              extra_cbs=[spy])
    assert s["status"] == "finished"
    first, second, rest = (spy.by_stage[k] for k in (0, 1, None))
    # one-cycle (peak 1e-2, warm-up from 1e-2 / 25 over a quarter, down to 1e-2 / 1e5) compressed into epoch 0 for
    # the first stage, epochs 0-1 for the second; the rest of the model has the run's own
    assert first[0][0] == second[0][0] == rest[0][0] == pytest.approx(1e-2 / 25)
    quarter = len(first[0]) // 4  # the first stage's peak: a quarter into its one epoch
    assert first[0][quarter] > 0.95e-2 and rest[0][quarter] < 0.3e-2  # the rest is warming up over its first epoch
    assert first[0][-1] < 0.05e-2  # the first stage's low-lr finish, before it freezes
    assert max(second[0] + second[1]) > 0.95e-2 and second[1][-1] < 0.05e-2 < 0.5e-2 < rest[1][-1]
    assert max(rest[0] + rest[1]) > 0.95e-2 and rest[3][-1] < 0.05e-2


@pytest.mark.parametrize("flags, msg", [(["--freeze-anneal"], "needs --freeze-out")])
def test_freeze_anneal_needs_freeze_out(capsys, tmp_path, flags, msg):
    code, _, err = run_cli(capsys, "train", *flags, "--runs-dir", tmp_path)
    assert_user_error(code, err, msg)
    assert not any(tmp_path.iterdir())
