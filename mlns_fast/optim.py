"""The optimizer: torch's fused (or multi-tensor) AdamW behind fastai's `OptimWrapper`.

fastai's own `Adam` loops over parameters in Python (~1,400 small tensor ops per resnet50 step);
torch's fused AdamW is one kernel per step and dtype. The recipe's semantics are kept: decoupled
weight decay, none on norm and bias parameters (timm's `param_groups_weight_decay` groups them),
fastai's Adam hyper-parameters (betas 0.9 / 0.99, eps 1e-5), and the one-cycle schedule reaching
the torch optimizer through `OptimWrapper`'s hyper map (`lr` -> lr, `mom` -> betas[0],
`wd` -> weight_decay). The state is torch's `state_dict` (tensors, numbers, lists, dicts), which
checkpoints save and `torch.load(weights_only=True)` reads back.
"""
from __future__ import annotations

import logging

import torch
from fastai.optimizer import OptimWrapper
from timm.optim import param_groups_weight_decay

from .model import backbone_stages

log = logging.getLogger(__name__)

IMPLEMENTATION_KEYS = ("fused", "foreach")  # how a step runs, not what it computes: not taken from a checkpoint
GROUP_TAGS = ("wd_mult", "lr_mult", "stage")  # the run's own config and model (decay_groups): not taken from a checkpoint either


def decay_groups(model: torch.nn.Module, body_lr: float = 1.0, stages: bool = False) -> list[dict]:
    """fastai splitter: timm's weight-decay grouping, each group tagged with its `wd_mult` (0 for
    norm and bias parameters and the model's `no_weight_decay()` names, 1 for the rest).

    `body_lr` != 1 (`--body-lr`): each group split in two, the backbone's parameters (`model.backbone`)
    tagged with `lr_mult` = body_lr and listed first, the rest (ink fit, reader, heads) with 1, last:
    fastai's discriminative learning rates. Not `lr_max=slice(lo, hi)`: fastai spaces a slice's lrs
    geometrically over every group in order, which cannot put the backbone's two decay groups at one lr;
    and fastai reads a run's lr from the last group, which stays the head's (`--lr`) here.

    `stages` (`--freeze-anneal`): the backbone's stages but the last (`model.backbone_stages`) split off
    first, in order, each group tagged with its `stage`, so that `callbacks.FreezeOut` can give each its
    own lr schedule."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, weight_decay=1.0, no_weight_decay_list=skip)
    groups = [{"params": g["params"], "wd_mult": g["weight_decay"]} for g in groups]
    if body_lr == 1.0 and not stages:
        return groups
    body = {id(p) for p in model.backbone.parameters()}
    parts = [({"stage": i}, {id(p) for p in ps})
             for i, ps in enumerate(backbone_stages(model.backbone)[:-1] if stages else [])]
    parts += [({}, body), ({}, None)]  # the rest of the backbone, then the rest (None: every parameter left)
    taken, out = set(), []
    for tags, ids in parts:
        mult = {"lr_mult": body_lr if ids is not None else 1.0} if body_lr != 1.0 else {}
        for g in groups:
            ps = [p for p in g["params"] if id(p) not in taken and (ids is None or id(p) in ids)]
            taken |= {id(p) for p in ps}
            if ps:
                out.append({**g, "params": ps, **tags, **mult})
    return out


class DecayGroupsWrapper(OptimWrapper):
    """`OptimWrapper` whose `wd` and `lr` hypers are scaled per group by the group's `wd_mult` and
    `lr_mult`: fastai's `fit` and its schedules set one weight decay and one lr for every group,
    which would otherwise decay norm and bias parameters and train the backbone at the head's lr."""

    def _set_hyper(self, k, v):
        if k in ("wd", "lr"):
            v = [x * pg.get(f"{k}_mult", 1.0) for pg, x in zip(self.opt.param_groups, v)]
        super()._set_hyper(k, v)

    @property
    def hypers(self) -> list[dict]:
        """fastai's view of the hypers, each group's `lr` the schedule's (torch's lr / `lr_mult`): fastai reads
        the lrs back and sets them again (`fit_one_cycle` takes its per-group `lr_max` from here), which
        would otherwise scale a backbone group's lr twice."""
        hypers = super().hypers
        for h, pg in zip(hypers, self.opt.param_groups):
            h["lr"] = h["lr"] / pg.get("lr_mult", 1.0)
        return hypers

    def skip_if(self, flag: torch.Tensor) -> bool:
        """Have the next step skipped on the device where `flag` (0-dim float32, 1.0 = skip) is set,
        without reading it on the host: fused AdamW's `found_inf` argument, the one torch's grad
        scaler uses. False when this optimizer cannot (not fused): the caller must check itself."""
        if not all(pg.get("fused") for pg in self.opt.param_groups):
            return False
        self.opt.found_inf = flag
        return True

    def load_state_dict(self, sd: dict) -> None:
        """torch's load, keeping this optimizer's implementation flags (a checkpoint written where
        `fused` was unavailable resumes fused, and the other way round) and its groups' weight-decay and
        lr multipliers (derived from the run's config; an edited checkpoint does not change them)."""
        now = [{k: pg[k] for k in IMPLEMENTATION_KEYS + GROUP_TAGS if k in pg} for pg in self.opt.param_groups]
        self.opt.load_state_dict(sd)
        for pg, flags in zip(self.opt.param_groups, now):
            pg.update(flags)
            pg["betas"] = tuple(pg["betas"])  # a checkpoint stores lists


def adamw(params, lr: float = 1e-3, mom: float = 0.9, sqr_mom: float = 0.99, eps: float = 1e-5,
          wd: float = 0.01) -> DecayGroupsWrapper:
    """fastai `opt_func`: torch AdamW, fused where torch has a fused kernel for the parameters'
    device and dtype, else multi-tensor (foreach). Defaults are fastai Adam's."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    groups = [{**g, "weight_decay": wd * g.get("wd_mult", 1.0), "lr": lr * g.get("lr_mult", 1.0)} for g in groups]
    kw = dict(lr=lr, betas=(mom, sqr_mom), eps=eps)
    try:
        return DecayGroupsWrapper(opt=torch.optim.AdamW(groups, fused=True, **kw))
    except RuntimeError as e:  # e.g. a device or dtype without a fused kernel
        log.debug("fused AdamW unavailable (%s); using foreach", e)
        return DecayGroupsWrapper(opt=torch.optim.AdamW(groups, foreach=True, **kw))
