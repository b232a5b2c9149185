"""argv -> config -> run / predict / push; user mistakes print one clear paragraph, no traceback."""

from __future__ import annotations

import argparse
import copy
import difflib
import errno
import os
import shlex
import signal
import sys
import threading
import time
import typing
from pathlib import Path

from . import logs
from .errors import Interrupted, XferError

USAGE = """usage: xfer-nlp {run,compare,report,predict,evaluate,export,push} ...

  run      train one model (all flags: xfer-nlp run --help)
  compare  run modes x training-set sizes x seeds and report which approach wins (xfer-nlp compare --help)
  report   rewrite a comparison folder's tables and plots, without training
  predict  label texts with an exported model
  evaluate score an exported model or Hub id on a dataset (metrics, predictions, confusion matrix)
  export   write an exported model as ONNX (onnx/model.onnx), checked against torch
  push     upload a finished run folder to the Hugging Face Hub

xfer-nlp --version prints this package's version and those of the libraries it runs on (for a bug report).
"""


def versions() -> str:
    """xfer_nlp's version and its main libraries', read from their installed metadata (nothing is imported)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def of(dist: str) -> str:
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            return f"{dist} not installed"

    libraries = ", ".join(map(of, ("torch", "transformers", "accelerate", "datasets", "peft", "huggingface_hub")))
    return f"xfer-nlp {__version__} (Python {platform.python_version()}; {libraries})"


def _error(e: Exception) -> int:
    if logs.is_main_process():  # one voice under accelerate launch
        print(f"error: {e}", file=sys.stderr)
    else:
        # torchrun stops every worker as soon as one exits: give rank 0 the time to print the message. Being
        # stopped is then the expected end, not news: without the except, the user's one message came with this
        # worker's KeyboardInterrupt traceback.
        try:
            time.sleep(3)
        except KeyboardInterrupt:
            pass
    return 2


# The machine's refusals, which no change to xfer_nlp fixes: said in one line, with the path and the way round,
# instead of a traceback. Any other OSError keeps its traceback: it may be a bug.
REFUSALS = {errno.ENOSPC: "free space, or write to another disk", errno.EDQUOT: "free space within your quota",
            errno.EFBIG: "write to a file system that allows larger files",
            errno.ENAMETOOLONG: "shorten it (is it a text where a path or name belongs?)",
            errno.EACCES: "choose a path you may write to, or fix its permissions",
            errno.EROFS: "choose a path on a writable file system"}


def _refused(e: OSError) -> XferError | None:
    if e.errno not in REFUSALS:
        return None
    name = str(e.filename or "")
    shown = f": '{name[:100]}{'...' if len(name) > 100 else ''}'" if name else ""
    return XferError(f"{e.strerror}{shown}. The machine refused it: {REFUSALS[e.errno]}.")


def stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's preemption, `timeout`, `kill`, the launcher stopping its workers) stops a command as
    Ctrl-C does: a run says where it stopped and how to resume, a grid stops, and a half-written output file is
    removed. Python's default is to die at once, with no message and the temporary file left behind. A process
    forked from this one (a datasets worker) keeps the default, so that its pool can stop it."""
    owner = os.getpid()

    def stop(signum, frame):
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


MODEL_HELP = "An output_dir of xfer-nlp run, or any text-classification model folder / Hub id."


class Parser(argparse.ArgumentParser):
    """argparse for the commands that take no run options, naming an unknown flag's nearest spelling as `run` does
    (argparse's own message lists the unknown arguments alone). Unknown flags are named before missing required
    ones: `export M --formt onnx` is a misspelt --format, not a missing one."""

    def parse_args(self, args=None, namespace=None):
        required = [a for a in self._actions if a.required]
        for action in required:
            action.required = False
        try:
            _, extra = self.parse_known_args(args, copy.copy(namespace))
        finally:
            for action in required:
                action.required = True
        if extra:
            flags = [o for action in self._actions for o in action.option_strings
                     if o.startswith("--") and action.help != argparse.SUPPRESS]
            said = []
            for a in extra:
                close = difflib.get_close_matches(a.split("=")[0], flags, n=1) if a.startswith("--") else []
                said.append(f"{a} (did you mean {close[0]}?)" if close else a)
            self.error(f"unrecognized arguments: {' '.join(said)}")
        return super().parse_args(args, namespace)


def _add_model_argument(parser: argparse.ArgumentParser) -> None:
    """MODEL as a positional argument, or as --model as predict spells it (where positionals are the texts)."""
    parser.add_argument("model", nargs="?", help=MODEL_HELP + " Also accepted as --model MODEL.")
    parser.add_argument("--model", dest="model_flag", metavar="MODEL", help=argparse.SUPPRESS)


def _model_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    model, flag = args.model, args.model_flag
    if model and flag and model != flag:
        parser.error(f"two models given: '{model}' and --model '{flag}'. Give one.")
    if not (model or flag):
        parser.error("the model to use is missing: pass an output_dir of xfer-nlp run, or a model folder / Hub id.")
    return model or flag


def run_command(argv: list[str], default_config_dir: str | Path | None = None, prog: str | None = None) -> int:
    """`xfer-nlp run` and the recipes: parse, run, print the results table."""
    from .api import run
    from .config import parse_args

    stop_on_sigterm()
    try:
        result = run(parse_args(argv, default_config_dir, prog=prog))
    except Interrupted as e:
        _error(e)
        return 130  # what a shell reports for a process stopped by SIGINT
    except KeyboardInterrupt:  # before training started: nothing to resume
        _error(Interrupted("Interrupted before training started; nothing was lost. Run the command again."))
        return 130
    except XferError as e:
        return _error(e)
    except OSError as e:
        if (refused := _refused(e)) is None:
            raise
        return _error(refused)
    if logs.is_main_process():
        print(result)
    return 0


def compare_command(argv: list[str]) -> int:
    """`xfer-nlp compare`: the grid flags plus every run flag, which applies to every cell."""
    from .grid import SET_BY_THE_GRID, CompareArgs, compare
    from .config import parse_args

    try:
        if any(a == "--mode" or a.startswith("--mode=") for a in argv):
            raise XferError("compare takes --modes (a comma list, e.g. probe,finetune), not --mode.")
        cfg, grid = parse_args(argv, extra_types=(CompareArgs,), prog="xfer-nlp compare", description=(
            "Run every variant x training-set size x seed (x fold) as one run into OUTPUT_DIR/runs/, then report "
            "which approach wins: comparison.md, comparison.csv and three plots. The grid's flags come first; "
            "every other flag is a run option and applies to every cell. Run the same command again to resume."),
            hidden=(*SET_BY_THE_GRID, "hub_model_id", "hub_private_repo", "hub_token"))  # no cell is pushed
        result = compare(cfg, modes=grid.modes, train_sizes=grid.train_sizes, seeds=grid.seeds,
                         output_dir=cfg.output_dir, keep=grid.keep, folds=grid.folds)
    except Interrupted as e:
        _error(e)
        return 130
    except KeyboardInterrupt:  # between cells or while reporting: every finished cell is on disk
        _error(Interrupted("Interrupted; finished cells are kept. Run the same compare command again to finish."))
        return 130
    except XferError as e:
        return _error(e)
    if logs.is_main_process():
        print(result)
    return 1 if result.failed else 0


def report_command(argv: list[str]) -> int:
    parser = Parser(prog="xfer-nlp report", description="Rewrite comparison.md, comparison.csv and "
                                     "the plots of a compare output folder from its finished runs; never trains.")
    parser.add_argument("output_dir", help="Folder written by xfer-nlp compare.")
    parser.add_argument("--modes", help="Variants to report, in this order, written as compare's --modes wrote them "
                                        "(e.g. 'probe,finetune,finetune[freeze_layers=4]'); default: every variant "
                                        "in the folder, in folder-name order. Use it after several compare runs "
                                        "into one folder.")
    args = parser.parse_args(argv)
    from .grid import parse_variants  # after parsing, as in export and push: --help needs no torch
    from .report import write_report

    try:
        labels = [v.label for v in parse_variants(args.modes)] if args.modes else None
        print(write_report(args.output_dir, labels))
    except XferError as e:
        return _error(e)
    return 0


# A printed row is one line of three tab-separated fields: a text's own tabs and line breaks are shown escaped.
TSV_ESCAPES = str.maketrans({"\t": "\\t", "\n": "\\n", "\r": "\\r"})


def predict_command(argv: list[str]) -> int:
    import itertools
    import json

    import torch

    from . import allocator, runfolder
    from .api import BATCH_TOKENS, PREDICT_BACKENDS, PREDICT_PRECISIONS, predict_stream
    from .data import iter_texts, write_predictions_file

    parser = Parser(prog="xfer-nlp predict", description="Label texts with an exported model.")
    parser.add_argument("texts", nargs="*", help="Texts to label (or use --input).")
    parser.add_argument("--model", help=MODEL_HELP + " Required: the positional arguments are the texts.")
    parser.add_argument("--input", help="File of texts: .txt (one a line), .jsonl, .json, .csv, .tsv or .parquet, "
                                        "the text ones also as .gz, .bz2 or .xz (texts.txt.gz); "
                                        "- reads standard input, one text a line (`cut -f2 data.tsv | xfer-nlp "
                                        "predict --model RUN_DIR --input -`), as it reads a pipe such as bash's "
                                        "`--input <(zcat texts.gz)`.")
    parser.add_argument("--text_column", default="text", help="Column of --input that holds the text.")
    parser.add_argument("--text_pair_column", help="For a model trained on text pairs: the column of --input that "
                                                   "holds each text's pair (--input must then be a data file).")
    parser.add_argument("--output", help="Write JSONL rows (text, text_pair for pairs, label, score, scores) here "
                                         "instead of printing label, score and text (and pair) a line, "
                                         "tab-separated; a .csv or .tsv file gets a table instead (text, label, "
                                         "score, a score_<label> column a class); - writes the JSONL rows to "
                                         "standard output (for jq and the like).")
    parser.add_argument("--batch_tokens", type=int, default=BATCH_TOKENS, help=(
        "Padded tokens per forward pass: texts are sorted by length and each batch holds as many as fit, up to "
        "--batch_size (the default: 64 sentences, 32 texts of 128 tokens, 8 of 512), so long texts cannot make a "
        "pass much bigger than a short one."))
    parser.add_argument("--batch_size", type=int, default=64, help="At most this many texts per forward pass.")
    parser.add_argument("--precision", choices=PREDICT_PRECISIONS, default="fp32", help=(
        "fp32: exactly the scores the run reported and pipeline() computes; bf16: faster where the hardware has "
        "native bf16 (scores within bf16 rounding, a near-tie label can flip); auto: bf16 where native, else fp32 "
        "(and fp32 for DeBERTa v1, which fails under bf16 autocast)."))
    parser.add_argument("--backend", choices=PREDICT_BACKENDS, default="torch", help=(
        "torch: the exported model; onnx: MODEL/onnx/model.onnx through onnxruntime (make it with "
        "`xfer-nlp export MODEL --format onnx`; fp32)."))
    args = parser.parse_args(argv)
    # A text is no path, and may be too long to be one: os.path answers False where Path.is_file() raises.
    files = [t for t in args.texts if os.path.isfile(t)]
    if not args.model:  # the other commands take MODEL first; here a folder given so would be labelled as a text
        if args.texts and os.path.isdir(args.texts[0]):
            rest = args.texts[1:]
            inputs = ["--input", rest[0]] if len(rest) == 1 and rest[0] in files else rest or ["..."]
            parser.error(f"--model is missing, and '{args.texts[0]}' is a folder: predict's positional arguments are "
                         f"the texts, so give the model as --model: "
                         f"{shlex.join(['xfer-nlp', 'predict', '--model', args.texts[0], *inputs])}")
        parser.error("--model is missing: xfer-nlp predict --model RUN_DIR TEXT ... (or --input FILE).")
    for name in files:  # labelled as asked, but a file name is seldom the text meant
        print(f"note: '{name}' is a file, labelled here as a text; to label the texts in it: --input {shlex.quote(name)}",
              file=sys.stderr)
    if "-" in args.texts:  # the Unix way of saying "standard input", which here takes --input
        print("note: '-' is labelled here as a text; to label the lines of standard input: --input -", file=sys.stderr)
    to_stdout = args.output == "-"
    try:
        if args.input == "-" and sys.stdin.isatty():
            print("Reading texts from the terminal, one a line; end with Ctrl-D.", file=sys.stderr)
        if args.text_pair_column and not args.input:
            raise XferError("--text_pair_column reads pairs from --input FILE, which is missing.")
        if args.text_column != "text" and not args.input:  # the texts given as arguments have no columns
            raise XferError(f"--text_column {args.text_column} names a column of --input FILE, which is missing; "
                            "texts given as arguments are labelled as they are.")
        texts = itertools.chain(args.texts, iter_texts(args.input, args.text_column, args.text_pair_column)
                                if args.input else [])
        first = next(texts, predict_command)  # the function itself as the end marker: a text may be None
        if first is predict_command:
            if args.input:  # a .txt file of blank lines, or nothing on standard input
                source = "standard input" if args.input == "-" else f"'{args.input}'"
                raise XferError(f"No texts to label: {source} holds none (blank lines are skipped).")
            piped = "" if sys.stdin.isatty() else " (to read standard input: --input -)"
            raise XferError(f"No texts to label: pass them as arguments or with --input FILE{piped}.")
        if args.output and not to_stdout:  # before any model is loaded or text labelled
            if args.input and args.input != "-" and os.path.exists(args.output) and \
                    os.path.samefile(args.input, args.output):
                raise XferError(f"--output '{args.output}' is the --input file: the predictions would replace the "
                                "texts (and any labels) in it. Name another file.")
            try:
                Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise XferError(f"--output '{args.output}': its folder cannot be created ({e.strerror}).") from None
        # A file through torch on a CPU: where tcmalloc measured faster (onnxruntime keeps its own memory arena).
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.input and args.backend == "torch" and (hint := allocator.predict_hint(device)):
            print(f"note: {hint}", file=sys.stderr)
        # Streamed: texts are read, labelled and written a chunk at a time, so memory stays flat for any input size.
        # Texts given as arguments are counted, so a few of them get no progress bar; a file's are not known ahead.
        rows = predict_stream(args.model, itertools.chain([first], texts), args.batch_size, args.precision,
                              args.backend, total=None if args.input else len(args.texts),
                              batch_tokens=args.batch_tokens)
        if to_stdout:
            for row in rows:
                print(json.dumps(row, ensure_ascii=False))
        elif args.output:
            with runfolder.disk_full_explained(Path(args.output).parent, f"the predictions to {args.output}",
                                               "Nothing was written: the file appears only when complete. Free "
                                               "space, or pass --output on another disk."):
                n = write_predictions_file(args.output, rows)
            print(f"wrote {n} prediction{'' if n == 1 else 's'} to {args.output}", file=sys.stderr)
        else:
            for row in rows:  # one row a line whatever the text holds (--output keeps it exactly)
                texts = [row["text"], *([row["text_pair"]] if "text_pair" in row else [])]
                print(f"{row['label']}\t{row['score']:.4f}\t" + "\t".join(t.translate(TSV_ESCAPES) for t in texts))
    except KeyboardInterrupt:
        written = f"; nothing was written to {args.output} (it appears only when complete)" \
            if args.output and not to_stdout else ""
        _error(Interrupted(f"Interrupted{written}. Run the command again."))
        return 130
    except XferError as e:
        return _error(e)
    return 0


def evaluate_command(argv: list[str]) -> int:
    import dataclasses

    from .config import FIELD_TYPES, RunConfig
    from .evaluation import COLUMN_FIELDS, EVALUATE_FIELDS, SPLIT_FIELDS, evaluate

    parser = Parser(prog="xfer-nlp evaluate", allow_abbrev=False, description=(
        "Score an exported model on a dataset's validation (and test) split: writes evaluation.json (accuracy, "
        "macro-F1, per-class figures, confusion matrix, --metrics), predictions.jsonl and confusion_matrix.png. "
        "The model's labels are matched to the data's by name. A folder of test.jsonl (or validation.jsonl) alone "
        "is scored as it is."))
    _add_model_argument(parser)
    for f in dataclasses.fields(RunConfig):  # only the flags given are passed on: the rest keep evaluate's defaults
        if f.name not in EVALUATE_FIELDS:
            continue
        help_text = f.metadata["help"]
        if f.name == "output_dir":
            help_text = "Where evaluation.json, predictions.jsonl and the plot go (default: runs/<model>-on-<dataset>)."
        elif f.name in ("max_seq_length", "truncation", "head_tokens", "long_text", "chunk_stride"):
            help_text += " Default: as the run read its texts (its results.json)."
        elif f.name in SPLIT_FIELDS:
            help_text += (" Default: on the data a run trained on, as that run cut it (its results.json), so no "
                          f"scored row is one it trained on; else {'none' if f.default is None else f.default}.")
        elif f.name in COLUMN_FIELDS:
            help_text += (" Default: on the data a run trained on, the run's (its results.json); else "
                          f"{'none' if f.default is None else f.default}.")
        elif f.default not in (None, ""):
            help_text += f" Default: {f.default}."
        if isinstance(f.default, bool):
            parser.add_argument(f"--{f.name}", action="store_true", default=argparse.SUPPRESS, help=help_text)
        else:
            # the field's type, Optional unwrapped: an Optional[int] (--cv_folds, --head_tokens) had been read as text
            kind = next((t for t in typing.get_args(FIELD_TYPES[f.name]) if t is not type(None)), FIELD_TYPES[f.name])
            parser.add_argument(f"--{f.name}", type=kind, default=argparse.SUPPRESS,
                                choices=f.metadata.get("choices"), help=help_text)
    parser.add_argument("--all_rows", action="store_true", help=(
        "For data without a validation split of its own (one file): score every row. Default: the seeded hold-out "
        "(--validation_split_ratio, --seed) that a run on that data validates on, so a model and its run are scored "
        "on the same rows."))
    parsed = parser.parse_args(argv)
    model = _model_of(parser, parsed)
    args = {k: v for k, v in vars(parsed).items() if k not in ("model", "model_flag")}
    try:
        print(evaluate(model, **args))
    except XferError as e:
        return _error(e)
    return 0


def export_command(argv: list[str]) -> int:
    parser = Parser(prog="xfer-nlp export", description=(
        "Write an exported model as ONNX with torch's exporter. The graph takes the tokenizer's inputs (dynamic batch "
        "and length) and returns logits; it is kept only if onnxruntime reproduces the torch model's logits (to 1e-4 of the largest). "
        "Into a finished run folder it goes to onnx/model.onnx, recorded in results.json (so push uploads it); label "
        "texts with it by `xfer-nlp predict --model RUN_DIR --backend onnx`."))
    _add_model_argument(parser)
    parser.add_argument("--format", choices=["onnx"], required=True, help="The export format (onnx).")
    parser.add_argument("--output", help="The .onnx file to write (default: MODEL/onnx/model.onnx).")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18).")
    args = parser.parse_args(argv)
    from .onnx_export import export_onnx

    try:
        print(export_onnx(_model_of(parser, args), args.output, args.opset))
    except XferError as e:
        return _error(e)
    return 0


def push_command(argv: list[str]) -> int:
    parser = Parser(prog="xfer-nlp push", description="Upload a finished run folder to the Hub.")
    parser.add_argument("output_dir", help="Folder written by xfer-nlp run.")
    parser.add_argument("--hub_model_id", "--repo_id", help="user/name of the repository (default: your account / "
                                                             "folder name).")
    parser.add_argument("--hub_private_repo", action="store_true", help="Create the repository as private.")
    parser.add_argument("--hub_token", help="Token (default: $HF_TOKEN or the cached `hf auth login`).")
    args = parser.parse_args(argv)
    from .hub import push

    try:
        print(push(args.output_dir, args.hub_model_id, args.hub_private_repo, args.hub_token))
    except XferError as e:
        return _error(e)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"run": lambda rest: run_command(rest, prog="xfer-nlp run"), "compare": compare_command,
                "report": report_command, "predict": predict_command, "evaluate": evaluate_command,
                "export": export_command, "push": push_command}
    if argv and argv[0] in ("-h", "--help", "help"):  # asked for: stdout, so that `xfer-nlp --help | less` shows it
        print(USAGE)
        return 0
    if argv and argv[0] in ("-V", "--version"):
        print(versions())
        return 0
    if not argv or argv[0] not in commands:
        print(USAGE, file=sys.stderr)
        if argv:
            close = difflib.get_close_matches(argv[0], commands, n=1)
            print(f"error: unknown command '{argv[0]}'" + (f"; did you mean '{close[0]}'?" if close else "."),
                  file=sys.stderr)
        return 2
    stop_on_sigterm()
    try:
        code = commands[argv[0]](argv[1:])
        sys.stdout.flush()  # here, not at exit, so that a reader gone by now is handled below
        return code
    except BrokenPipeError:  # `xfer-nlp predict ... | head`: the reader has what it wanted; end as Unix tools do
        # Python flushes stdout once more at exit: point it at /dev/null so that flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # the commands without their own word on it (report, evaluate, export, push)
        _error(Interrupted(f"xfer-nlp {argv[0]} was interrupted. Run the command again."))
        return 130
    except OSError as e:
        if (refused := _refused(e)) is None:
            raise
        return _error(refused)


if __name__ == "__main__":
    sys.exit(main())
