"""The optimizer behind the Learner: torch's AdamW driven by fastai's one-cycle schedule."""
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import combined_cos

from mlns_fast.config import IMAGE_SIZE, ModelConfig
from mlns_fast.data.loaders import build_dataloaders
from mlns_fast.model import create_model
from mlns_fast.optim import adamw, decay_groups
from mlns_fast.training import build_learner


class SeenByTorch(Callback):
    """Records, just before each optimizer step, what the torch optimizer itself will use."""
    order = 99

    def __init__(self):
        self.lrs, self.moms = [], []

    def before_step(self):
        groups = self.learn.opt.opt.param_groups
        self.lrs.append([g["lr"] for g in groups])
        self.moms.append([g["betas"][0] for g in groups])


def test_one_cycle_reaches_torch_and_norm_bias_get_no_decay(tiny_cfg):
    cfg = tiny_cfg(wd=0.05)
    seen = SeenByTorch()
    learn = build_learner(cfg, build_dataloaders(cfg), create_model(ModelConfig(arch="convnet4"), IMAGE_SIZE), torch.device("cpu"),
                          "fp32", quiet=True, extra_cbs=[seen])
    learn.fit_one_cycle(2, lr_max=1e-2, wd=0.05)
    total = 2 * len(learn.dls.train)
    lr, mom = combined_cos(0.25, 1e-2 / 25, 1e-2, 1e-2 / 1e5), combined_cos(0.25, 0.95, 0.85, 0.95)
    assert len(seen.lrs) == total
    for i, (lrs, moms) in enumerate(zip(seen.lrs, seen.moms)):
        assert all(abs(x - float(lr(i / total))) < 1e-12 for x in lrs), i
        assert all(abs(x - float(mom(i / total))) < 1e-12 for x in moms), i
    opt = learn.opt.opt
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"]  # CPU has a fused kernel
    assert len(opt.param_groups) == 2 and not any("lr_mult" in g for g in opt.param_groups)  # --body-lr 1: one lr
    named = {id(p): n for n, p in learn.model.named_parameters()}
    decays = {named[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decays) == len(named)  # every parameter is optimized, once
    for name, p in learn.model.named_parameters():
        no_decay = p.ndim <= 1  # BatchNorm weights and biases, conv / linear biases
        assert decays[name] == (0.0 if no_decay else 0.05), name
    assert any(v == 0 for v in decays.values()) and any(v > 0 for v in decays.values())


def test_body_lr_trains_the_backbone_at_its_fraction_of_the_schedule(tiny_cfg):
    """`--body-lr 0.25`: the backbone's parameters step at a quarter of the one-cycle lr, the reader's and heads'
    at the whole of it, each keeping its weight decay; the recorded lr is the head's (the run's --lr)."""
    cfg = tiny_cfg(wd=0.05, body_lr=0.25)
    seen = SeenByTorch()
    learn = build_learner(cfg, build_dataloaders(cfg), create_model(ModelConfig(arch="convnet4"), IMAGE_SIZE),
                          torch.device("cpu"), "fp32", quiet=True, extra_cbs=[seen])
    learn.fit_one_cycle(1, lr_max=1e-2, wd=0.05)
    groups = learn.opt.opt.param_groups
    mults = [g["lr_mult"] for g in groups]
    assert len(groups) == 4 and mults == [0.25, 0.25, 1.0, 1.0]
    body = {id(p) for p in learn.model.backbone.parameters()}
    assert 0 < len(body) < len(list(learn.model.parameters()))
    for g in groups:
        assert {id(p) in body for p in g["params"]} == {g["lr_mult"] == 0.25}
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in learn.model.parameters())  # every parameter once
    assert [g["weight_decay"] for g in groups] == [0.0, 0.05, 0.0, 0.05]
    total = len(learn.dls.train)
    lr = combined_cos(0.25, 1e-2 / 25, 1e-2, 1e-2 / 1e5)
    assert len(seen.lrs) == total > 1
    for i, lrs in enumerate(seen.lrs):
        assert all(abs(x - m * float(lr(i / total))) < 1e-12 for x, m in zip(lrs, mults)), i
    assert [round(x, 12) for x in learn.recorder.lrs] == [round(float(lr(i / total)), 12) for i in range(total)]


def test_a_checkpoint_does_not_set_the_groups_multipliers():
    """The lr and weight-decay multipliers come from the run's config and model, not from an (edited) checkpoint."""
    model = create_model(ModelConfig(arch="convnet4"), IMAGE_SIZE)
    opt = adamw(decay_groups(model, body_lr=0.5), lr=0.1, wd=0.5)
    state = opt.state_dict()
    for g in state["param_groups"]:
        g["lr_mult"], g["wd_mult"] = 7.0, 3.0
    opt.load_state_dict(state)
    assert [(g["lr_mult"], g["wd_mult"]) for g in opt.opt.param_groups] == [(0.5, 0.0), (0.5, 1.0), (1.0, 0.0), (1.0, 1.0)]


def test_adamw_matches_a_hand_step():
    """One step from zero state: the decoupled decay and fastai Adam's betas / eps, as torch computes them."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    w0 = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt = adamw(decay_groups(model), lr=0.1, wd=0.5)
    opt.step()
    for (name, p), p0 in zip(model.named_parameters(), w0):
        decay = 0.0 if p.ndim <= 1 else 0.5
        # step 1 of Adam: m / (sqrt(v) + eps) with m = v = bias-corrected ones -> 1 / (1 + 1e-5)
        torch.testing.assert_close(p.detach(), p0 * (1 - 0.1 * decay) - 0.1 / (1 + 1e-5), msg=name)
