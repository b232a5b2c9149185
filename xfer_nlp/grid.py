"""The grid of runs (mode variants x training-set sizes x seeds): planned up front, run cell by cell, resumable."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import re
import shutil
import time
import traceback
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .config import (FIELD_NAMES, FIELD_TYPES, GRID_OWNED, MODES, SEED_MAX, RunConfig, as_text, nearest, resolve,
                     with_options)
from . import logs, runfolder
from .runfolder import read_results
from .errors import CheckpointError, ConfigError, DiskFull, Interrupted, LaunchError, XferError

logger = logging.getLogger("xfer_nlp.compare")  # its own handlers: each run() resets those of "xfer_nlp"


# What the grid sets in every cell itself, and what to do instead: a value given to compare would be replaced in
# every cell without a word. (output_dir is the grid's folder; --cv_folds/--cv_fold without --folds apply to all.)
SET_BY_THE_GRID = {
    "mode": "the cells' modes come from --modes (a comma list, e.g. probe,finetune)",
    "seed": "each cell's seed comes from --seeds (e.g. --seeds {value})",
    "max_train_samples": "each cell's training-set size comes from --train_sizes (e.g. --train_sizes {value})",
    "run_name": "each cell is named GRID_FOLDER/CELL in the trackers",
    "resume_from_checkpoint": "run the same compare command again: finished cells are kept and an interrupted one "
                              "resumes from its last checkpoint",
    "overwrite_output_dir": "compare keeps finished cells; to start over, delete the folder or give another "
                            "--output_dir",
    "push_to_hub": "push a finished cell with `xfer-nlp push OUTPUT_DIR/runs/CELL --hub_model_id NAME`",
}


@dataclass
class CompareArgs:
    """The grid; every other option is a run option and applies to every cell."""

    modes: str = field(default="probe,finetune,scratch,lora", metadata={"help": (
        f"Comma list of modes ({', '.join(MODES)}) or variants with their own settings, "
        "e.g. 'probe,finetune,finetune[freeze_layers=4],finetune[gradual_unfreezing=true,layer_lr_decay=0.8],lora'. "
        "Each is a line in the plots and a column in the tables, under that label.")})
    train_sizes: str = field(default="100,500,2000,all", metadata={"help": (
        "Comma list of training-set sizes; 'all' is the whole training split. Subsets are stratified (two of each "
        "class where the size allows), seeded and nested (the 100 are inside the 500), and the same for every mode. "
        "A default size above the data's training examples is left out; one given here is refused.")})
    seeds: str = field(default="0,1,2", metadata={"help": "Comma list of seeds; each cell is run once per seed."})
    folds: typing.Optional[int] = field(default=None, metadata={"help": (
        "Cross-validate (data without a test split: mr, subj, one labelled file): cut the labelled rows into this "
        "many stratified folds and run every cell once per fold, that fold the test split (--cv_folds); the tables "
        "average over seeds and folds. 10 is the published protocol for mr and subj.")})
    keep: str = field(default="model", metadata={"help": (
        "What a finished cell keeps on disk. 'model' (default): the exported model, card, results and logs; its "
        "checkpoints, which only an unfinished run needs, are deleted (270 of a loop cell's 357 MB with the "
        "embedded encoder). 'results': also deletes the model weights (*.safetensors, *.onnx), leaving "
        "results.json, card, logs and predictions (~1 MB a cell): enough for the report and the plots, not for "
        "predict or push. "
        "'all': keeps everything.")})


@dataclass(frozen=True)
class Variant:
    label: str  # as the user wrote it: the name in tables and plots
    mode: str
    overrides: dict

    @property
    def slug(self) -> str:
        """A folder-safe name: finetune[freeze_layers=4] -> finetune-freeze_layers_4."""
        inner = "-".join(f"{k}_{v}" for k, v in self.overrides.items())
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.mode}-{inner}" if inner else self.mode)


@dataclass(frozen=True)
class Cell:
    variant: Variant
    size: str  # a number, or "all"
    seed: int
    config: RunConfig
    fold: int | None = None  # with --folds: the test fold

    @property
    def name(self) -> str:
        return cell_name(self.variant, self.size, self.seed, self.fold)


def cell_name(variant: Variant, size: str, seed: int, fold: int | None) -> str:
    """The cell's folder: finetune-n100-s0, or with --folds finetune-n100-s0-f3."""
    return f"{variant.slug}-n{size}-s{seed}" + ("" if fold is None else f"-f{fold}")


def _split_top_level(spec: str) -> list[str]:
    """Split on commas that are not inside [...]."""
    parts, depth, current = [], 0, ""
    for ch in spec:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in parts + [current] if p.strip()]


def _typed(name: str, text: str):
    """A variant value converted to the type of its RunConfig field."""
    kind = str(FIELD_TYPES[name])
    if "bool" in kind:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"Variant value {name}={text} must be true or false.")
        return text.lower() in ("true", "1", "yes")
    if text.lower() in ("none", "null") and "Optional" in kind:
        return None
    for cast in ((int,) if "int" in kind else ()) + ((float,) if "float" in kind else ()):
        try:
            return cast(text)
        except ValueError:
            pass
    if "int" in kind or "float" in kind:
        raise ConfigError(f"Variant value {name}={text} is not a number.")
    return text


def parse_variants(spec: str) -> list[Variant]:
    """'probe,finetune[freeze_layers=4]' -> variants; a bad mode or key fails here, before any cell runs."""
    variants = []
    for item in _split_top_level(spec):
        m = re.fullmatch(r"([a-z_]+)(?:\[(.*)\])?", item)
        if not m:
            raise ConfigError(f"Cannot read the variant '{item}': write mode or mode[key=value,key=value].")
        mode, inner = m.group(1), m.group(2)
        if mode not in MODES:
            raise ConfigError(f"Unknown mode '{mode}' in --modes{nearest(mode, MODES)}. Choose from {', '.join(MODES)}.")
        overrides = {}
        for pair in filter(None, (p.strip() for p in (inner or "").split(","))):
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep:
                raise ConfigError(f"Variant '{item}': '{pair}' is not key=value.")
            if key not in FIELD_NAMES or key in GRID_OWNED:
                why = "is set by the grid itself" if key in GRID_OWNED else "is not a run option"
                raise ConfigError(f"Variant '{item}': '{key}' {why}"
                                  f"{nearest(key, [f for f in FIELD_NAMES if f not in GRID_OWNED])}.")
            if key in overrides:
                raise ConfigError(f"Variant '{item}' sets {key} twice; keep one value (for two values, write two "
                                  f"variants: {mode}[{key}=a],{mode}[{key}=b]).")
            overrides[key] = _typed(key, value.strip())
        variants.append(Variant(item, mode, overrides))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels) or len({v.slug for v in variants}) != len(variants):
        raise ConfigError(f"--modes lists a variant twice: {spec}")
    if not variants:
        raise ConfigError("--modes is empty; name at least one mode.")
    return variants


def parse_sizes(spec: str) -> list[str]:
    sizes = [s.strip() for s in spec.split(",") if s.strip()]
    for s in sizes:
        if s != "all" and not (s.isdigit() and int(s) > 0):
            raise ConfigError(f"--train_sizes entry '{s}' must be a positive integer or 'all'.")
    if not sizes or len(set(sizes)) != len(sizes):
        raise ConfigError(f"--train_sizes must list distinct sizes, got '{spec}'.")
    return sorted(sizes, key=lambda s: float("inf") if s == "all" else int(s))


def parse_seeds(spec: str) -> list[int]:
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got '{spec}'.") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must list distinct integers, got '{spec}'.")
    if not all(0 <= s <= SEED_MAX for s in seeds):
        raise ConfigError(f"--seeds must be integers from 0 to {SEED_MAX}, got '{spec}'.")
    return seeds


def plan(base: RunConfig, args: CompareArgs, output_dir: Path) -> list[Cell]:
    """Every cell's resolved config; any invalid combination is reported before the first cell runs."""
    cells, problems = [], []
    if args.folds is not None and args.folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {args.folds}.")
    if args.folds and base.cv_folds:
        raise ConfigError("Pass --folds (every fold, a cell each) or --cv_folds with --cv_fold (one fold for every "
                          "cell), not both.")
    folds = list(range(args.folds)) if args.folds else [None]
    variants = parse_variants(args.modes)
    for variant in variants:
        # A grid measures training time: a probe re-fitted on cached features reads ~1 s where a first run encodes
        # every text, so each fitted-head cell encodes cold unless --feature_cache_dir asks to reuse features.
        cold = MODES[variant.mode].fitted_head and base.feature_cache_dir is None \
            and "feature_cache_dir" not in variant.overrides
        for size in parse_sizes(args.train_sizes):
            for seed, fold in itertools.product(parse_seeds(args.seeds), folds):
                name = cell_name(variant, size, seed, fold)
                try:
                    cfg = resolve(dataclasses.replace(
                        base, **variant.overrides, mode=variant.mode, seed=seed,
                        max_train_samples=None if size == "all" else int(size),
                        output_dir=str(output_dir / "runs" / name), run_name=f"{output_dir.resolve().name}/{name}",
                        overwrite_output_dir=False,
                        resume_from_checkpoint=None, push_to_hub=False,
                        no_feature_cache=base.no_feature_cache or cold,
                        **({} if fold is None else {"cv_folds": args.folds, "cv_fold": fold})))
                except ConfigError as e:
                    problems.append(f"{variant.label}: {e}")
                    break
                cells.append(Cell(variant, size, seed, cfg, fold))
    if problems:
        some = len(problems) < len(variants)  # other variants took the same flags: they suit only some of them
        raise ConfigError("The grid has invalid cells:\n" + "\n".join(dict.fromkeys(problems)) + (
            "\nA flag given to compare applies to every cell; one that suits only some variants goes inside them, "
            "e.g. --modes 'probe,finetune[max_steps=100]'." if some else ""))
    # --keep_freed_memory tunes glibc for the rest of the process (allocator.py): a cell without it that ran after
    # one with it would train with it too and report that heap as its peak. So those cells run last.
    return sorted(cells, key=lambda c: c.config.keep_freed_memory)


def _fit_sizes_to_data(cells: list[Cell], train_sizes: str) -> tuple[list[Cell], str]:
    """The cells to run, and what was left out of them (or ""). The data is read before the first cell, once for
    each data source the variants name, as each cell will read it: data that cannot be read stops the grid with its
    one message, where every cell had failed with it in turn. A size above the training examples would fail in
    every cell too: the default sizes leave it out, saying so ('all' runs them all); sizes the user asked for are
    refused, naming the count. So is a size below what a subset needs: one example of each class (two for
    contrastive, whose pairs need a same-label partner)."""
    from .data import DATA_FIELDS, load_text_data

    available, classes = {}, {}  # data source -> its training examples; its classes
    for cell in cells:
        key = tuple(getattr(cell.config, f) for f in DATA_FIELDS)
        if key not in available:
            data = load_text_data(dataclasses.replace(cell.config, max_train_samples=None))
            available[key] = (len(data.splits["train"]), data.source)
            classes[key] = len(data.label_names)
        each = 2 if cell.variant.mode == "contrastive" else 1
        if cell.size != "all" and int(cell.size) < each * classes[key]:
            raise ConfigError(f"--train_sizes {cell.size} is too few for {cell.variant.label} on "
                              f"'{available[key][1]}': {'two examples' if each == 2 else 'one example'} of each of its "
                              f"{classes[key]} classes make {each * classes[key]}. Use sizes of at least "
                              f"{each * classes[key]}.")
    fewest, source = min(available.values())
    over = [s for s in parse_sizes(train_sizes) if s != "all" and int(s) > fewest]
    if not over:
        return cells, ""
    if train_sizes != CompareArgs.train_sizes:
        raise ConfigError(f"--train_sizes {','.join(over)} {'is' if len(over) == 1 else 'are'} larger than the "
                          f"{fewest:,} training examples of '{source}'. Use sizes up to {fewest}, or 'all'.")
    return [c for c in cells if c.size not in over], (f"Training-set size(s) {','.join(over)} left out of the default "
                                                      f"sizes: '{source}' has {fewest:,} training examples ('all' "
                                                      "runs them all).")


KEEP = ("all", "model", "results")


def _trim_cell(out: Path, keep: str) -> None:
    """Free a finished cell's disk as --keep asks; the report needs only results.json."""
    if keep == "all":
        return
    shutil.rmtree(out / runfolder.CHECKPOINTS, ignore_errors=True)
    if keep == "results":
        for weights in [*out.rglob("*.safetensors"), *out.rglob("*.onnx"), *out.rglob("*.onnx.data")]:
            weights.unlink()


def _prepare_cell(cell: Cell, main: bool) -> RunConfig | None:
    """None when the cell is finished; else the config that finishes it (resuming an interrupted run)."""
    out = Path(cell.config.output_dir)
    now = runfolder.state(out)
    if now == "finished":
        try:
            read_results(out)
            return None
        except XferError:  # the report counts it failed, so it is run again as a failed cell is
            logger.warning("Cell %s: its %s is damaged, so the cell runs afresh.", cell.name, runfolder.RESULTS)
    if now == "interrupted":
        return dataclasses.replace(cell.config, resume_from_checkpoint="latest")
    if not main:
        return cell.config
    if out.exists():
        shutil.rmtree(out)  # started but left nothing to resume from, or its results are damaged
    out.mkdir(parents=True)
    runfolder.write_json(out / runfolder.CELL, {"label": cell.variant.label, "mode": cell.variant.mode,
                                                "size": cell.size, "seed": cell.seed, "fold": cell.fold,
                                                "overrides": cell.variant.overrides})
    return cell.config


def _every_cell_failed(failed: dict[str, str], output_dir: Path) -> str:
    """One message for a grid none of whose cells finished: each distinct reason once, with the cells it stopped."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in failed.items():
        by_reason.setdefault(reason, []).append(name)
    said = "; ".join(f"{', '.join(names)}: {reason}" for reason, names in by_reason.items())
    return (f"Every cell failed, so there is nothing to report. {said} (each cell's traceback: "
            f"{output_dir / 'runs' / '<cell>' / runfolder.FAILED}).")


@dataclass
class Comparison:
    """A finished (or partly failed) grid; `print(comparison)` shows the summary table, as does a notebook."""

    output_dir: Path
    ran: int
    skipped: int
    failed: dict[str, str]
    seconds: float
    summary: str = field(repr=False)

    def __str__(self) -> str:
        failed = f", {len(self.failed)} failed: {', '.join(self.failed)}" if self.failed else ""
        return (f"{self.summary}\n\n{self.ran} cells run, {self.skipped} already done{failed}; {self.seconds:.0f} s. "
                f"Report: {self.output_dir / 'comparison.md'}")

    _repr_markdown_ = __str__  # the summary is a Markdown table: Jupyter renders it where the repr shows counts


def compare(config: RunConfig | None = None, *, modes: str | Sequence[str] = CompareArgs.modes,
            train_sizes: str | Sequence[int | str] = CompareArgs.train_sizes, seeds: str | Sequence[int] | int =
            CompareArgs.seeds, output_dir: str | Path | None = None, keep: str = CompareArgs.keep,
            folds: int | None = None, data=None, **overrides) -> Comparison:
    """Run every cell of modes x train_sizes x seeds (x folds) into output_dir/runs/, then write the report.

    >>> xfer_nlp.compare(modes="probe,finetune", train_sizes="100,all", seeds="0,1", dataset_name="sst2")
    >>> xfer_nlp.compare(modes=["probe", "finetune"], train_sizes=[100, "all"], seeds=[0, 1], dataset_name="sst2")

    Keyword arguments are run options applied to every cell. Finished cells are skipped and an interrupted one
    resumes, so the same call continues a killed grid. A failing cell is reported and the others still run.
    keep ('model', 'results' or 'all') says what a finished cell keeps on disk (CompareArgs.keep). `data` is data
    in memory, as run() takes it.
    """
    from . import hub
    from .report import wall_seconds, write_report
    from .api import run
    from .tables import with_data

    if keep not in KEEP:
        raise ConfigError(f"--keep must be one of {', '.join(KEEP)}, got '{keep}'.")
    # from a notebook [100, 500, "all"] or 0 read as "100,500,all" and "0" (a list of modes had been read character
    # by character)
    modes, train_sizes, seeds = as_text(modes), as_text(train_sizes), as_text(seeds)
    base = with_options(config, with_data(data, config, overrides))
    default = RunConfig()
    given = [k for k in SET_BY_THE_GRID if getattr(base, k) != getattr(default, k)]
    if given:
        raise ConfigError("compare sets these in every cell itself, so the value given would be ignored: " + "; ".join(
            f"--{k}: {SET_BY_THE_GRID[k].format(value=getattr(base, k))}" for k in given) + ".")
    output_dir = Path(output_dir or base.output_dir or Path("runs") / f"{Path(str(base.dataset_name)).stem}-compare"
                      ).expanduser()
    cells = plan(base, CompareArgs(modes, train_sizes, seeds, folds=folds), output_dir)
    cells, left_out = _fit_sizes_to_data(cells, train_sizes)
    runfolder.make_writable(output_dir)  # a file in its place had ended in FileExistsError's traceback
    main = logs.is_main_process()
    # A second compare into the folder would clear the cells the first is running ("started but left nothing to
    # resume from") and mark the one it found locked as failed beside its results: refused, naming the first.
    with runfolder.Lock(output_dir, "compare") if main else contextlib.nullcontext():
        logs.setup(logger.name, output_dir / runfolder.COMPARE_LOG, main)
        if left_out:
            logger.info(left_out)
        logger.info("Grid of %d cells: %s x sizes %s x seeds %s%s, in %s.", len(cells), modes,
                    ",".join(dict.fromkeys(c.size for c in cells)), seeds, f" x {folds} folds" if folds else "",
                    output_dir)
        start, ran, skipped, failed = time.perf_counter(), 0, 0, {}
        bar = tqdm(cells, desc="Grid", unit="cell", position=0, disable=not main)
        for i, cell in enumerate(bar, 1):
            bar.set_description(f"Grid: cell {i}/{len(cells)} {cell.variant.label} n={cell.size} seed={cell.seed}"
                                + ("" if cell.fold is None else f" fold={cell.fold}"))
            cfg = _prepare_cell(cell, main)
            if cfg is None:
                skipped += 1
                continue
            logger.info("Cell %d/%d: %s%s", i, len(cells), cell.name,
                        " (resuming)" if cfg.resume_from_checkpoint else "")
            cell_start = time.perf_counter()
            try:
                run(cfg)
                ran += 1
                if main:
                    _trim_cell(Path(cfg.output_dir), keep)
            except (Interrupted, KeyboardInterrupt) as e:  # Ctrl-C stops the grid, not only this cell
                where = getattr(e, "where", "")  # the step and checkpoint, when training was under way
                then = ("resumes from its last checkpoint" if runfolder.state(Path(cfg.output_dir)) == "interrupted"
                        else "starts over")
                raise Interrupted(f"The grid was interrupted in cell {cell.name}{', ' + where if where else ''}. Run "
                                  f"the same compare command again: finished cells are kept and this one {then}.",
                                  where) from None
            except LaunchError:  # the launch, not the cell: every cell would fail alike
                raise
            except DiskFull as e:  # so would every later cell
                then = ("resumes from its last checkpoint" if runfolder.state(Path(cfg.output_dir)) == "interrupted"
                        else "starts over")
                raise DiskFull(f"The grid stopped in cell {cell.name}: {e.why}. Free space (or keep fewer "
                               "checkpoints: --save_total_limit 1), then run the same compare command again: finished "
                               f"cells are kept and this one {then}.", e.why) from None
            except (XferError, RuntimeError, ValueError, OSError) as e:
                # A checkpoint the cell cannot resume from would refuse it at every call: the run's advice is a run's
                advice = (f" For this cell: to train it afresh on the data as it is now, delete {cfg.output_dir} "
                          "and run the same compare command again." if isinstance(e, CheckpointError)
                          and cfg.resume_from_checkpoint else "")
                failed[cell.name] = f"{type(e).__name__}: {e}{advice}"
                logger.error("Cell %s failed; the grid goes on. %s", cell.name, failed[cell.name])
                if main:
                    (Path(cfg.output_dir) / runfolder.FAILED).write_text(traceback.format_exc() + advice.strip(),
                                                                         encoding="utf-8")
            if main:  # wall-clock of the whole grid, summed over the invocations that built it
                spent = wall_seconds(output_dir) or 0.0
                runfolder.write_json(output_dir / runfolder.GRID,
                                     {"wall_seconds": spent + time.perf_counter() - cell_start})
        bar.close()
        # The report covers the whole folder, this call's variants first: a grid built by several calls (probe and
        # finetune first, lora in a later session, the setfit peer's cells from benchmarks/) reads as one.
        try:
            summary = write_report(output_dir, first=[c.variant.label for c in cells]) if main else ""
        except XferError:  # nothing finished: when every cell of this call failed, its "nothing to report" hid why
            if failed and not ran and not skipped:
                raise XferError(_every_cell_failed(failed, output_dir)) from None
            raise
        if main:
            for cell in cells:  # every finished run's model card carries the comparison it was part of
                out = Path(cell.config.output_dir)
                if runfolder.state(out) == "finished":
                    try:
                        hub.model_card(read_results(out), comparison=summary).save(out / runfolder.CARD)
                    except XferError as e:
                        logger.warning("Cell %s: %s", cell.name, e)
        return Comparison(output_dir, ran, skipped, failed, time.perf_counter() - start, summary)
