"""Stage names and freezing: which layers train.

Every weight-bearing layer belongs to one stage: a backbone's stages (``conv1``, ``layer1``..
``layer4`` for ResNets; torchvision's ``features.N`` for MobileNet and EfficientNet), a scratch
CNN's ``blockN``, and ``head`` (aliases ``fc``, ``classifier``) for the new classifier.
"""

from __future__ import annotations

import re

import keras

from kerascnn.models.registry import MODELS
from kerascnn.models.stages import HEAD, choose_stages

NOT_LEARNED = ("moving_mean", "moving_variance")


def layer_stages(model: keras.Model) -> list[tuple[keras.layers.Layer, str | None]]:
    """Each layer of ``model`` (the backbone's layers in its place) with its stage, None for
    layers outside every stage (inputs, preprocessing, the softmax)."""
    out: list[tuple[keras.layers.Layer, str | None]] = []
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name == "backbone":
            spec = MODELS.get(model.name)
            stage_of = spec.stage_of if spec is not None and spec.stage_of else (lambda name: None)
            out += [(inner, stage_of(inner.name)) for inner in layer.layers]
        elif layer.name.startswith("head_"):
            out.append((layer, HEAD))
        else:
            match = re.match(r"(block\d+)_", layer.name)
            out.append((layer, match.group(1) if match else None))
    return out


def learnable_params(layer: keras.layers.Layer) -> int:
    """Parameters a layer learns when it trains (batch-norm moving statistics excluded)."""
    return sum(_size(w) for w in layer.weights if w.name not in NOT_LEARNED)


def _size(w) -> int:
    n = 1
    for d in w.shape:
        n *= int(d)
    return n


def stage_params(model: keras.Model) -> dict[str, int]:
    """Learnable parameters per stage, in input order."""
    params: dict[str, int] = {}
    for layer, stage in layer_stages(model):
        if stage is not None:
            params[stage] = params.get(stage, 0) + learnable_params(layer)
    return {s: n for s, n in params.items() if n}


def stages_to_train(model: keras.Model, unfreeze: str) -> list[str]:
    """The stages named by ``--unfreeze`` (``none``, ``all`` or ``STAGE[,STAGE...]``), in model order."""
    return choose_stages(unfreeze, list(stage_params(model)), model.name)


def set_trainable(model: keras.Model, unfreeze: str = "all", bn_policy: str = "train") -> dict[str, list[str]]:
    """Train the head and the stages named by ``unfreeze``; freeze every other layer.

    Frozen batch norms run in inference mode and keep their statistics (Keras semantics). With
    ``bn_policy="frozen"`` the batch norms of unfrozen stages stay frozen too. The model must be
    compiled afresh afterwards. Returns the unfrozen and frozen stages.
    """
    chosen = set(stages_to_train(model, unfreeze))
    model.trainable = True
    for layer, stage in layer_stages(model):
        if stage is None:
            continue
        on = stage == HEAD or stage in chosen
        if on and stage != HEAD and bn_policy == "frozen" and isinstance(layer, keras.layers.BatchNormalization):
            on = False
        layer.trainable = on
    stages = list(stage_params(model))
    return {"unfrozen_stages": [s for s in stages if s in chosen or s == HEAD],
            "frozen_stages": [s for s in stages if s not in chosen and s != HEAD]}


def trainable_params(model: keras.Model) -> int:
    """Parameters that training changes through gradients."""
    return int(sum(_size(w) for w in model.trainable_weights))
