"""The frozen-encoder fast path: encode every split once (cached on disk), then fit a logistic-regression head.

A probe trained by SGD inside a training loop pays a full encoder pass per epoch and ends with a poorly tuned head.
Here the encoder sees each sentence once, and the head is SentEval's: L2-regularised multinomial logistic
regression, its strength chosen on validation, fitted by L-BFGS on standardised features. The standardisation is
folded into the exported linear layer, so the saved model computes exactly these logits.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, safe_open

from .batches import out_of_memory_explained, per_text, rows_fingerprint
from .families import Layout, out_layer, sentence_features
from .runfolder import atomic_write, disk_full, save_safetensors
from .tables import cache_home

logger = logging.getLogger(__name__)

# L-BFGS iterations per C. Warm starts (smallest C first) mean later fits start near their optimum; float32 and
# these tolerances gave the same sst2 accuracy as float64 at 1e-7 in under a quarter of the time
# (13.7 s -> 3.0 s for the 13-value C grid on sst2 features, same machine and load).
MAX_ITER = 200


def weights_fingerprint(model: torch.nn.Module, layout: Layout) -> str:
    """Hash of every tensor the features depend on (all but the head's final Linear)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(model.state_dict().items()):
        if not layout.is_out(name):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def encode(accelerator, model, layout: Layout, loader, desc: str, autocast: bool = True,
           first_text: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every text of a prepared loader in data order, gathered from all processes; a text
    read as several windows gets the mean of their features. `first_text`: the loader's rows start at that text."""
    def features(batch):
        # Only the forward pass in inference mode: the rows are concatenated outside it, because the head is then
        # fitted with autograd on them.
        with torch.inference_mode(), accelerator.autocast() if autocast else nullcontext():
            return sentence_features(model, layout, batch)

    return per_text(accelerator, loader, features, desc, first_text=first_text)


def text_labels(dataset) -> torch.Tensor:
    """Each text's label in data order, from a tokenised split's rows."""
    columns = dataset.select_columns(["labels", "doc"]).with_format("numpy")[:]
    labels, docs = (torch.from_numpy(columns[k].astype(np.int64)) for k in ("labels", "doc"))
    out = torch.empty(int(docs.max()) + 1, dtype=labels.dtype)
    out[docs] = labels
    return out


def shards(dataset, shard_texts: int) -> list[tuple[int, int, int, int]]:
    """(first text, end text, first row, end row) of each shard of `shard_texts` texts; a text's windows are
    consecutive rows (batches.tokenize), so each shard is one contiguous block of rows."""
    docs = dataset.select_columns(["doc"]).with_format("numpy")[:]["doc"]
    n = int(docs[-1]) + 1
    bounds = list(range(0, n, shard_texts)) + [n]
    rows = np.searchsorted(docs, bounds, side="left").tolist()
    return [(lo, hi, rows[i], rows[i + 1]) for i, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]


def cached_features(accelerator, cfg, model, layout: Layout, key_parts: tuple | None, make_loader, dataset,
                    desc: str, autocast: bool = True, write: bool = True):
    """encode(), shard by shard, reusing every shard whose cache file exists and checks out.

    A split is encoded in shards of --feature_cache_shard_size texts, each written (atomically, by the main
    process) as soon as it is encoded: a killed encoding resumes at the first missing shard. Each file is raw fp32
    safetensors, 4 bytes per feature (1,536 per text for a 384-wide encoder) plus its label. A file is checked before
    it is used: its row count and first text, the hash of the split it was made from, its labels (in data order)
    and the feature width the head reads; one that fails a check is re-encoded with a warning. `key_parts` None
    (--no_feature_cache): encoded, the cache neither read nor written; `write` False: read, not written.

    Returns (features, labels, shards read from the cache, shards in all, why a shard could not be written or None).
    """
    folder = None if key_parts is None else (
        Path(cfg.feature_cache_dir or cache_home() / "features")
        / hashlib.blake2b(repr(key_parts).encode(), digest_size=20).hexdigest())
    expected = text_labels(dataset)
    width = out_layer(model, layout).in_features
    features = torch.empty(len(expected), width)
    plan = shards(dataset, cfg.feature_cache_shard_size)
    hits, refused = 0, None
    for k, (lo, hi, row_lo, row_hi) in enumerate(plan):
        path = folder and folder / f"texts-{lo}-{hi}.safetensors"
        meta = folder and {"rows": str(hi - lo), "first": str(lo), "data": key_parts[-1], "width": str(width)}
        if path and path.is_file():
            problem = _check_cache(path, meta, expected[lo:hi])
            if problem is None:
                features[lo:hi] = load_file(path)["features"]
                hits += 1
                continue
            logger.warning("Feature cache %s does not match this data (%s); encoding again.", path, problem)
        part = dataset.select(range(row_lo, row_hi)) if len(plan) > 1 else dataset
        label = desc if len(plan) == 1 else f"{desc} (shard {k + 1} of {len(plan)})"
        cached = f"; the {k} shard(s) before it are in the feature cache and are read, not encoded" if folder and k \
            else ""
        with out_of_memory_explained(lambda why: (
                f"Out of memory {label.lower()} in batches of {cfg.per_device_eval_batch_size} texts ({why}). Lower "
                f"--per_device_eval_batch_size (e.g. {max(1, cfg.per_device_eval_batch_size // 4)}) and run "
                f"again{cached}.")):
            feats, labels = encode(accelerator, model, layout, make_loader(part), label, autocast, first_text=lo)
        assert torch.equal(labels, expected[lo:hi]), "gathered labels must come back in data order"
        features[lo:hi] = feats
        if path and write and refused is None and accelerator.is_main_process:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_write(path) as tmp:  # a killed run never leaves a half-written shard
                    save_safetensors({"features": feats.contiguous(), "labels": labels.contiguous()}, tmp, meta)
            except Exception as e:  # a full disk, a folder that cannot be written
                refused = disk_full(e, folder) or (e.strerror if isinstance(e, OSError) else None)
                if refused is None:
                    raise
                refused = f"could not write to {folder} ({refused})"
    if 0 < hits < len(plan):
        logger.info("%s: %d of %d shards from the feature cache, the rest encoded.", desc, hits, len(plan))
    return features, expected, hits, len(plan), refused


def _check_cache(path: Path, meta: dict, labels: torch.Tensor) -> str | None:
    """None when the cache file was made from exactly this data for this head, else what differs."""
    try:
        with safe_open(path, "pt") as f:
            stored, names = f.metadata() or {}, set(f.keys())
            if not {"features", "labels"} <= names:
                return "it lacks features or labels"
            shape, got = f.get_slice("features").get_shape(), f.get_tensor("labels")
    except Exception as e:  # a damaged cache file is only a lost shortcut
        return f"unreadable: {type(e).__name__}"
    for k, v in meta.items():
        if stored.get(k) != v:
            return f"its {k} is {stored.get(k)!r}, expected {v!r}"
    if list(shape) != [int(meta["rows"]), int(meta["width"])]:
        return f"its features are {list(shape)}, expected [{meta['rows']}, {meta['width']}]"
    if not torch.equal(got, labels):
        return "its labels differ from the data's"
    return None


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_labels: int, c: float,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None,
                 class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean (class-weighted) cross-entropy + ||W||^2 / (2 C n), scikit-learn's objective scaled by 1/(C n)."""
    n, d = x.shape
    w = torch.zeros(num_labels, d, dtype=x.dtype) if init is None else init[0].clone()
    b = torch.zeros(num_labels, dtype=x.dtype) if init is None else init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=MAX_ITER, tolerance_grad=1e-5, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        ce = torch.nn.functional.cross_entropy(x @ w.T + b, y, reduction="none")
        ce = ce.mean() if class_weights is None else (class_weights[y] * ce).mean()
        loss = ce + (w * w).sum() / (2 * c * n)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_head(train: tuple, val: tuple, scorer, c_grid: list[float], metric: str = "accuracy",
             class_weights: torch.Tensor | None = None) -> dict:
    """Fit one head per C (warm-started, smallest C first), keep the best on the validation `metric`.

    Returns the chosen head already un-standardised: logits = features @ weight.T + bias.
    """
    x, y = train[0].float(), train[1].long()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    # Divided in place: one standardised copy of the features rather than two at once (each 1.5 GB at a million
    # 384-wide features; the peak fell 1.4 GB), the same numbers.
    z, zv = (x - mean).div_(std), (val[0].float() - mean).div_(std)
    scores, best, head = {}, None, None
    for c in sorted(c_grid):
        head = fit_logistic(z, y, scorer.num_labels, c, init=head, class_weights=class_weights)
        acc = scorer((zv @ head[0].T + head[1]).argmax(1).numpy(), val[1].numpy())[metric]
        scores[c] = acc
        if best is None or acc > best[0]:  # ties keep the stronger regularisation
            best = (acc, c, head)
    _, c, (w, b) = best
    grid = sorted(scores)
    if len(grid) > 1 and c in (grid[0], grid[-1]):
        end, neighbour = ("smallest", grid[1]) if c == grid[0] else ("largest", grid[-2])
        if scores[c] > scores[neighbour]:  # still rising at the grid's end: the best C may lie beyond it
            logger.warning("The probe's best C, %g, is the %s in --probe_c_grid and scored above its neighbour %g "
                           "(%.4f against %.4f): a C beyond the grid may score higher. Extend --probe_c_grid past %g "
                           "(the penalty per example shrinks as the training set grows, so large or repeated data "
                           "wants a smaller C).", c, end, neighbour, scores[c], scores[neighbour], c)
    weight = w / std
    return {"weight": weight.float(), "bias": (b - weight @ mean).float(), "C": c, "validation_by_C": scores}


def run_probe(accelerator, cfg, model, layout: Layout, make_loader, datasets: dict, scorer,
              class_weights: torch.Tensor | None = None, autocast: bool = True) -> tuple[dict, dict, dict]:
    """Encode, fit, write the head into `model`. `make_loader(dataset)` gives a prepared evaluation loader.
    `autocast` False encodes in fp32 whatever the run's precision (contrastive: its features then are exactly what
    the exported model computes).

    Returns (metrics per split, each split's (logits, labels) in evaluation order, probe details).
    """
    model.eval()  # frozen encoder, and no dropout noise in the features
    # The cache key hashes every weight (0.2 s for this encoder): only computed when the cache is read or written.
    base_key = None if cfg.no_feature_cache else (
        weights_fingerprint(model, layout), getattr(model.config, "pooling", "pooler"),
        getattr(model.config, "normalize", False), getattr(model.config, "encoder", model.config).num_hidden_layers,
        cfg.max_seq_length, "shards of texts, one row per text")  # the cache layout: files of older layouts differ
    features, hits, shard_hits, seconds, write = {}, {}, {}, {}, True
    for split, dataset in datasets.items():
        start = time.perf_counter()
        key = None if base_key is None else base_key + (rows_fingerprint(dataset),)
        *features[split], done, total, refused = cached_features(accelerator, cfg, model, layout, key, make_loader,
                                                                  dataset, f"Encoding {split}", autocast, write)
        if refused and write:  # the cache only spares a later run the encoding: this one goes on without it
            write = False
            logger.warning("Feature cache: %s; this run goes on and caches nothing more. Free space, or pass "
                           "--feature_cache_dir on another disk, or --no_feature_cache.", refused)
        hits[split], shard_hits[split] = done == total, f"{done} of {total}"
        seconds[split] = time.perf_counter() - start
    # The head needs train and validation; the test split is only reported, so its encoding is timed apart.
    encode_seconds = seconds["train"] + seconds["validation"]
    start = time.perf_counter()
    head = fit_head(features["train"], features["validation"], scorer, cfg.c_grid, cfg.metric_for_best_model,
                    class_weights)
    fit_seconds = time.perf_counter() - start
    with torch.no_grad():
        out_layer(model, layout).weight.copy_(head["weight"])
        out_layer(model, layout).bias.copy_(head["bias"])
    outputs = {split: (x @ head["weight"].T + head["bias"], y) for split, (x, y) in features.items() if split != "train"}
    metrics = {split: scorer(logits.argmax(1).numpy(), y.numpy()) for split, (logits, y) in outputs.items()}
    details = {"C": head["C"], "C_chosen_on": cfg.metric_for_best_model,
               "validation_by_C": {str(k): v for k, v in head["validation_by_C"].items()},
               "encode_seconds": round(encode_seconds, 2), "feature_cache_hit": hits,
               "feature_cache_shards": shard_hits,
               "fit_seconds": round(fit_seconds, 2),
               "test_seconds": round(sum(t for split, t in seconds.items() if split not in ("train", "validation")), 4)}
    by_c = ", ".join(f"{c:g} → {score:.4f}" for c, score in head["validation_by_C"].items())
    logger.info("Probe head: C=%g chosen on validation %s (by C: %s); features %s.", head["C"],
                cfg.metric_for_best_model, by_c, "from cache" if all(hits.values()) else f"encoded in {encode_seconds:.1f}s")
    return metrics, outputs, details
