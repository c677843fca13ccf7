"""One file per model: architecture and training setup as JSON, weights and optimizer state as
arrays, in a NumPy ``.npz`` archive read back with ``allow_pickle=False`` (no code runs on load).
The file is written aside and renamed into place, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "rnnfast-model"
FORMAT_VERSION = 1
_META = "__rnnfast__"


def _layer_classes():
    from . import layers, nn
    return {c.__name__: c for c in (layers.LSTM, layers.GRU, layers.RNN, nn.Embedding, nn.Dense,
                                    nn.Dropout, nn.LastStep)}


def save(model, path, tokenizer=None):
    """Writes ``model`` (a Sequential; compiled or not) and an optional tokenizer to ``path``."""
    from . import __version__
    from .data import _Tokenizer
    classes = _layer_classes()
    arch = []
    for layer in model.layers:
        name = type(layer).__name__
        if name not in classes or classes[name] is not type(layer):
            raise TypeError(f"cannot save a {name} layer: only rnnfast's own layers are known")
        arch.append({"class": name, "config": layer.get_config()})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "rnnfast_version": __version__,
            "layers": arch, "compile": None, "tokenizer": None}
    arrays = {f"param/{k}": np.asarray(v) for k, v in model.state_dict().items()}
    if model.loss is not None:
        opt = model.optimizer
        meta["compile"] = {"loss": model.loss.name, "metrics": [m.name for m in model.metrics],
                           "clip_norm": model.clip_norm, "clip_value": model.clip_value,
                           "optimizer": type(opt).__name__,
                           "param_groups": opt.param_groups, "state_keys": []}
        for i, st in enumerate(opt.state):
            keys = {}
            for k, v in st.items():
                if isinstance(v, np.ndarray):
                    arrays[f"optim/{i}/{k}"] = v
                    keys[k] = "array"
                else:
                    keys[k] = v
            meta["compile"]["state_keys"].append(keys)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is not None:
        if not isinstance(tok, _Tokenizer):
            raise TypeError("tokenizer must be an rnnfast.data tokenizer")
        meta["tokenizer"] = tok.to_json()
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".rnnfast-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(path):
    """Reads a file written by ``save``: -> a Sequential with its weights, its compile setup and
    optimizer state (training resumes where it stopped) and ``model.tokenizer`` (or None)."""
    from . import optim
    from .data import _Tokenizer
    from .models import Sequential
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if _META not in z.files:
                raise ValueError("no rnnfast metadata in it")
            meta = json.loads(bytes(z[_META]).decode())
            arrays = {k: z[k] for k in z.files if k != _META}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, KeyError, UnicodeDecodeError,
            json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable rnnfast model file: {exc}") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} was written in format {meta.get('format')!r} version "
                         f"{meta.get('format_version')!r} (rnnfast {meta.get('rnnfast_version')}); "
                         f"this rnnfast reads {FORMAT!r} version {FORMAT_VERSION}")
    classes = _layer_classes()
    try:
        layers = []
        for entry in meta["layers"]:
            cls = classes[entry["class"]]
            cfg = dict(entry["config"])
            layers.append(cls(**cfg))
        model = Sequential(layers)
        model.load_state_dict({k[len("param/"):]: v for k, v in arrays.items()
                               if k.startswith("param/")})
        comp = meta.get("compile")
        if comp:
            group = dict(comp["param_groups"][0])
            group.pop("initial_lr", None)
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
            opt = getattr(optim, comp["optimizer"])(model, **group)
            states = []
            for i, keys in enumerate(comp["state_keys"]):
                states.append({k: (arrays[f"optim/{i}/{k}"] if v == "array" else v)
                               for k, v in keys.items()})
            opt.load_state_dict({"param_groups": comp["param_groups"], "state": states})
            model.compile(comp["loss"], opt, metrics=comp["metrics"], clip_norm=comp["clip_norm"],
                          clip_value=comp["clip_value"])
        model.tokenizer = _Tokenizer.from_json(meta["tokenizer"]) if meta.get("tokenizer") \
            else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} does not describe a model this rnnfast can rebuild: "
                         f"{type(exc).__name__}: {exc}") from None
    return model
