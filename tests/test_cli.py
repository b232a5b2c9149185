"""The recipe and the console script as a user runs them: real subprocesses, real files."""

import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl

from xfer_nlp import allocator
from xfer_nlp.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "sentiment.py"


def sh(*args, **kw):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, **kw)


def tiny_flags(tiny_model_dir, tiny_data_dir, out, features):
    return ["--model_name_or_path", tiny_model_dir, "--dataset_name", tiny_data_dir, "--output_dir", out,
            "--max_seq_length", "32", "--feature_cache_dir", features]


def test_help_explains_every_flag():
    result = sh(RECIPE, "--help")
    assert result.returncode == 0
    for f in dataclasses.fields(RunConfig):
        assert f"--{f.name}" in result.stdout
    assert "--config" in result.stdout
    assert result.stdout.startswith("usage: sentiment.py ")
    run_help = subprocess.run([Path(sys.executable).parent / "xfer-nlp", "run", "--help"], capture_output=True,
                              text=True, timeout=120)
    assert run_help.returncode == 0 and run_help.stdout.startswith("usage: xfer-nlp run ")  # the command, named


def test_the_console_script_lists_its_commands_on_stdout_when_asked_and_on_stderr_when_misused():
    xfer = Path(sys.executable).parent / "xfer-nlp"
    helped = subprocess.run([xfer, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: xfer-nlp {run,") and not helped.stderr
    for misuse in ([], ["compar"]):
        wrong = subprocess.run([xfer, *misuse], capture_output=True, text=True, timeout=120)
        assert wrong.returncode == 2 and wrong.stderr.startswith("usage: xfer-nlp {run,") and not wrong.stdout
    assert "error: unknown command 'compar'; did you mean 'compare'?" in wrong.stderr
    # The console script's import of the package loads no torch, transformers or datasets: `--help` answers at
    # once, and the public names still resolve (on first use).
    loaded = sh("-c", "import sys, xfer_nlp.cli; heavy = {'torch', 'transformers', 'datasets'} & set(sys.modules); "
                "print(sorted(heavy)); from xfer_nlp import compare, run, ConfigError; import xfer_nlp.grid; "
                "print(xfer_nlp.compare is compare is xfer_nlp.grid.compare, callable(run), 'xfer_nlp' in str(ConfigError)); "
                "print(sorted(xfer_nlp.__all__) == sorted(xfer_nlp._HOMES), all(getattr(xfer_nlp, n) for n in xfer_nlp.__all__))")
    assert loaded.returncode == 0 and loaded.stdout.split("\n")[:3] == ["[]", "True True True", "True True"], loaded.stderr
    for command in ("report", "export", "push"):  # their flags need none of it either
        helped = sh("-c", f"import sys, contextlib, io\nfrom xfer_nlp import cli\nwith contextlib.redirect_stdout(io.StringIO()):"
                          f"\n    try: cli.main(['{command}', '--help'])\n    except SystemExit: pass\nprint('torch' in sys.modules)")
        assert helped.returncode == 0 and helped.stdout == "False\n", (command, helped.stdout, helped.stderr)


def test_user_error_is_one_clear_message_without_traceback(tmp_path):
    result = sh(RECIPE, "--mode", "probe", "--dataset_name", "sst3", "--output_dir", tmp_path / "o")
    assert result.returncode == 2
    assert "error: Unknown dataset 'sst3'" in result.stderr and "Traceback" not in result.stderr


def test_existing_results_are_never_overwritten(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_model_dir, tiny_data_dir, out, tmp_path / "f")
    first = sh(RECIPE, "--mode", "probe", *flags)
    assert first.returncode == 0, first.stderr
    assert "validation" in first.stdout
    before = (out / "results.json").read_bytes()
    again = sh(RECIPE, "--mode", "probe", *flags)
    assert again.returncode == 2 and "--overwrite_output_dir" in again.stderr
    assert (out / "results.json").read_bytes() == before
    # overwritten on request; --keep_freed_memory (glibc's allocator keeps freed blocks) changes no figure
    forced = sh(RECIPE, "--mode", "probe", "--overwrite_output_dir", "--keep_freed_memory", "true", *flags)
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "results.json").read_text())["metrics"] == json.loads(before)["metrics"]
    if platform.libc_ver()[0] == "glibc":
        assert "Memory: glibc keeps what a step frees" in (out / "train.log").read_text()


def test_predict_command(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    assert sh(RECIPE, "--mode", "probe", *tiny_flags(tiny_model_dir, tiny_data_dir, out, tmp_path / "f")).returncode == 0
    printed = sh("-m", "xfer_nlp.cli", "predict", "--model", out, "a good film", "a dull film")
    assert printed.returncode == 0, printed.stderr
    assert len(printed.stdout.strip().splitlines()) == 2
    written = sh("-m", "xfer_nlp.cli", "predict", "--model", out, "--input", tiny_data_dir / "test.jsonl",
                 "--output", tmp_path / "pred.jsonl")
    assert written.returncode == 0, written.stderr
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    assert set(rows[0]) == {"text", "label", "score", "scores"}
    assert abs(sum(rows[0]["scores"].values()) - 1) < 1e-4
    # Labelling a file on a CPU under glibc says how to run it faster under tcmalloc; a few texts are not told.
    hinted = platform.libc_ver()[0] == "glibc" and allocator.preloaded() is None
    assert ("LD_PRELOAD=libtcmalloc_minimal.so.4" in written.stderr) == hinted
    assert "LD_PRELOAD" not in printed.stderr
    missing = sh("-m", "xfer_nlp.cli", "predict", "--model", out, "--input", tmp_path / "nope.txt")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    columnless = sh("-m", "xfer_nlp.cli", "predict", "--model", out, "--text_column", "review", "a good film")
    assert columnless.returncode == 2 and "--text_column review names a column of --input FILE" in columnless.stderr


def test_predict_in_a_pipe(tiny_model_dir, tmp_path):
    """Unix plumbing: texts from standard input (--input -), JSONL rows to standard output (--output -), a printed
    row one line whatever its text holds, and a reader that stops early (`| head`) ends the command quietly."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = tmp_path / "classifier"  # the tiny encoder with a head, saved once, so that every load scores alike
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).save_pretrained(model)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model)
    lines = tmp_path / "texts.txt"
    lines.write_text("".join(f"film number {i} was {'good' if i % 3 else 'dull'}\n" for i in range(8_000)))
    predict = [sys.executable, "-m", "xfer_nlp.cli", "predict", "--model", str(model)]
    from_file = sh(*predict[1:], "--input", lines, "--output", tmp_path / "rows.jsonl")
    assert from_file.returncode == 0, from_file.stderr
    with open(lines, "rb") as stdin:
        piped = subprocess.run([*predict, "--input", "-", "--output", "-"], stdin=stdin, capture_output=True,
                               text=True, cwd=ROOT)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == (tmp_path / "rows.jsonl").read_text()  # the same rows, in input order

    printed = sh(*predict[1:], "a\tfilm", "two\nlines")
    assert printed.returncode == 0, printed.stderr
    assert [row.split("\t", 2)[2] for row in printed.stdout.splitlines()] == ["a\\tfilm", "two\\nlines"]

    with open(lines, "rb") as stdin:
        reader = subprocess.Popen([*predict, "--input", "-"], stdin=stdin, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=ROOT)
        assert reader.stdout.readline().startswith(b"LABEL_")  # the tiny model's labels
        reader.stdout.close()  # as `head -1` does, long before the 8,000th row (64 KB fill a pipe)
        err = reader.stderr.read().decode()
        assert reader.wait(timeout=300) == 141 and "Traceback" not in err and "Broken pipe" not in err, err

    latin1 = subprocess.run([*predict, "--input", "-"], input="un film caf\xe9\n".encode("latin-1"),
                            capture_output=True, cwd=ROOT)
    assert latin1.returncode == 2
    assert latin1.stderr.decode().strip().splitlines()[-1] == (
        "error: Standard input is not UTF-8: byte 0xe9 on line 1 cannot be decoded. Re-encode it as UTF-8 (e.g. "
        "`iconv -f latin1 -t utf-8`).")
    nothing = subprocess.run(predict, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT)
    assert nothing.returncode == 2 and nothing.stderr.strip().endswith("(to read standard input: --input -).")


def test_predict_names_a_model_folder_given_where_its_texts_go(tmp_path, capsys):
    """The other commands take MODEL first; predict's positionals are texts, so a folder there is named, with the
    command as it should read, instead of argparse's bare "required: --model" (or labelling the path as a text)."""
    from xfer_nlp import cli

    (tmp_path / "my run").mkdir()
    (tmp_path / "texts.txt").write_text("a dull film\n")
    review = "a long review that goes on and on about the film " * 20  # longer than a file name may be
    for texts, fix in (([str(tmp_path / "my run"), "a dull film"], "--model '{}/my run' 'a dull film'"),
                       ([str(tmp_path / "my run")], "--model '{}/my run' ..."),
                       ([str(tmp_path / "my run"), str(tmp_path / "texts.txt")], "--model '{0}/my run' --input {0}/texts.txt"),
                       (["a dull film"], None),
                       ([review], None)):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["predict", *texts])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert stopped.value.code == 2 and "--model is missing" in err
        assert (fix is not None and err.endswith("xfer-nlp predict " + fix.format(tmp_path))) or \
            (fix is None and "is a folder" not in err and "--input FILE" in err)


def test_version_names_the_package_and_the_libraries_it_runs_on(capsys):
    """`xfer-nlp --version` was an unknown command; a bug report needs these figures."""
    from importlib.metadata import version

    import xfer_nlp
    from xfer_nlp import cli

    assert xfer_nlp.__version__ == version("xfer-nlp")  # the package's and pyproject's, one version
    for flag in ("--version", "-V"):
        assert cli.main([flag]) == 0
        out = capsys.readouterr().out.strip()
        assert out.startswith(f"xfer-nlp {xfer_nlp.__version__} (Python {platform.python_version()}; "
                              f"torch {version('torch')}, transformers {version('transformers')}, "), out
    assert cli.main(["help"]) == 0 and capsys.readouterr().out.startswith("usage: xfer-nlp {run,compare,")


def test_a_misspelt_flag_of_any_command_is_named_with_its_nearest_spelling(capsys, tmp_path):
    """run and compare named the nearest flag; the other commands printed argparse's bare list."""
    from xfer_nlp import cli

    for argv, said in ((["predict", "--modle", "m", "a text"], "--modle (did you mean --model?)"),
                       (["evaluate", "m", "--datset_name=sst2"], "--datset_name=sst2 (did you mean --dataset_name?)"),
                       (["push", str(tmp_path), "--hub_privat_repo"],
                        "--hub_privat_repo (did you mean --hub_private_repo?)"),
                       (["report", str(tmp_path), "--moods", "probe"], "--moods (did you mean --modes?) probe"),
                       # a misspelt required flag is named as misspelt, not as missing
                       (["export", str(tmp_path), "--formt", "onnx"], "--formt (did you mean --format?) onnx"),
                       (["report", "--moods"], "--moods (did you mean --modes?)")):
        with pytest.raises(SystemExit) as stopped:
            cli.main(argv)
        assert stopped.value.code == 2
        assert capsys.readouterr().err.strip().endswith(f"error: unrecognized arguments: {said}"), argv
    with pytest.raises(SystemExit):  # with nothing unknown, a missing required flag is still said
        cli.main(["export", str(tmp_path)])
    assert capsys.readouterr().err.strip().endswith("error: the following arguments are required: --format")
    # huggingface_hub's name for the repository is push's too; the folder is then what is refused
    assert cli.main(["push", str(tmp_path), "--repo_id", "me/model"]) == 2
    assert "unrecognized" not in capsys.readouterr().err


def test_a_killed_runs_folder_given_as_the_model_says_how_to_finish_it(tiny_data_dir, tmp_path, capsys):
    """predict, evaluate, export, push and a run from it said the folder lacked config.json (or results.json, or a
    model's files), to a user whose run had been killed before it saved the model."""
    from xfer_nlp import cli

    killed, cell = tmp_path / "killed", tmp_path / "grid" / "runs" / "finetune-n100-s0"
    for folder in (killed, cell):
        (folder / "checkpoints" / "checkpoint-40").mkdir(parents=True)
        (folder / "train.log").write_text("step 40\n")
    (cell / "cell.json").write_text("{}")
    unfinished = "holds an unfinished run: checkpoints, and no model yet (it is saved when the run finishes). "
    for argv, said in ((["predict", "--model", killed, "a text"], f"--model '{killed}' {unfinished}"),
                       (["evaluate", killed, "--dataset_name", tiny_data_dir], f"--model '{killed}' {unfinished}"),
                       (["export", killed, "--format", "onnx"], f"--model '{killed}' {unfinished}"),
                       (["push", killed, "--repo_id", "me/model"], f"'{killed}' {unfinished}"),
                       (["run", "--mode", "finetune", "--model_name_or_path", killed, "--dataset_name", tiny_data_dir,
                         "--output_dir", tmp_path / "next"], f"--model_name_or_path '{killed}' {unfinished}")):
        assert cli.main([str(a) for a in argv]) == 2, argv
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"error: {said}Resume it with the same command and --resume_from_checkpoint latest, then use the folder.")
    assert cli.main(["predict", "--model", str(cell), "a text"]) == 2
    assert capsys.readouterr().err.strip().endswith("Run the grid's compare command again: it resumes the cell, then "
                                                    "use the folder.")
    assert sorted(p.name for p in killed.iterdir()) == ["checkpoints", "train.log"]  # nothing written or removed


def test_an_input_without_texts_is_named(tiny_model_dir, tmp_path, capsys):
    """It had said to pass the texts 'with --input FILE', to a user who had."""
    from xfer_nlp import cli

    (tmp_path / "blank.txt").write_text("\n  \n")
    assert cli.main(["predict", "--model", str(tiny_model_dir), "--input", str(tmp_path / "blank.txt")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: No texts to label: '{tmp_path / 'blank.txt'}' holds none "
                                               "(blank lines are skipped).")


def test_predict_reads_a_pipe_as_lines_and_names_a_folder_or_an_unknown_kind(tiny_model_dir, tmp_path, capsys):
    """bash's `--input <(...)` (a pipe at /dev/fd/63) and a folder were both said not to exist; a file of no known
    extension was refused with the data formats alone, leaving out predict's .txt."""
    import threading

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from xfer_nlp import cli

    model = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).save_pretrained(model)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # a daemon: if predict never opens the pipe, the writer's open() blocks and must not hold the test process
    writer = threading.Thread(target=fifo.write_text, args=("a good film\n\na dull film\n",), daemon=True)
    writer.start()
    assert cli.main(["predict", "--model", str(model), "--input", str(fifo)]) == 0
    writer.join(timeout=60)
    assert [row.split("\t")[2] for row in capsys.readouterr().out.splitlines()] == ["a good film", "a dull film"]

    (tmp_path / "texts").write_text("a good film\n")
    kinds = (".txt (one text a line) or a data file with a text column (.jsonl, .json, .csv, .tsv, .parquet), the text "
             "ones also compressed (.gz, .bz2, .xz)")
    for given, said in ((tmp_path, f"--input '{tmp_path}' is a folder. Pass a file of texts: {kinds}, or - for "
                                   "standard input."),
                        (tmp_path / "texts", f"--input '{tmp_path / 'texts'}' has extension '', which predict cannot "
                                             f"read. Use {kinds}.")):
        assert cli.main(["predict", "--model", str(model), "--input", str(given)]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {said}"


def test_predict_writes_a_table_to_a_csv_or_tsv_output(tiny_model_dir, tmp_path, capsys):
    """--output preds.csv wrote JSON Lines into a file named .csv."""
    import csv

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from xfer_nlp import cli

    model = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).save_pretrained(model)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model)
    texts = ["a good film", 'say "hi", then\tgo', "two\nlines"]
    assert cli.main(["predict", "--model", str(model), "--output", str(tmp_path / "rows.jsonl"), *texts]) == 0
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    for name, delimiter in (("p.csv", ","), ("p.tsv", "\t")):
        assert cli.main(["predict", "--model", str(model), "--output", str(tmp_path / name), *texts]) == 0
        with open(tmp_path / name, newline="", encoding="utf-8") as f:
            table = list(csv.reader(f, delimiter=delimiter))
        assert table[0] == ["text", "label", "score", "score_LABEL_0", "score_LABEL_1"]
        assert [r[:2] for r in table[1:]] == [[row["text"], row["label"]] for row in rows]
        assert [[float(x) for x in r[2:]] for r in table[1:]] == [
            [row["score"], *row["scores"].values()] for row in rows]
    assert capsys.readouterr().err.strip().endswith(f"wrote 3 predictions to {tmp_path / 'p.tsv'}")
    assert cli.main(["predict", "--model", str(model), "--output", str(tmp_path / "one.csv"), "a good film"]) == 0
    assert capsys.readouterr().err.strip().endswith(f"wrote 1 prediction to {tmp_path / 'one.csv'}")
    # and a table it wrote is read back as an input, texts intact
    assert cli.main(["predict", "--model", str(model), "--input", str(tmp_path / "p.tsv")]) == 0
    assert [line.split("\t", 2)[2] for line in capsys.readouterr().out.splitlines()] == [
        "a good film", 'say "hi", then\\tgo', "two\\nlines"]


def test_evaluate_reads_its_optional_number_flags_as_numbers(tiny_model_dir, tiny_data_dir, tmp_path):
    """--cv_folds, --head_tokens and --chunk_stride (Optional[int], default None) were read as text by evaluate's
    parser, and ended in "'<' not supported between instances of 'int' and 'str'"."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from xfer_nlp import cli

    model = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).save_pretrained(model)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model)
    train = str(tiny_data_dir / "train.jsonl")
    for i, flags in enumerate((["--train_file", train, "--cv_folds", "2", "--cv_fold", "1"],
                               ["--train_file", train, "--truncation", "head+tail", "--head_tokens", "8"],
                               ["--train_file", train, "--long_text", "chunk", "--chunk_stride", "8"])):
        out = tmp_path / f"e{i}"
        assert cli.main(["evaluate", str(model), *flags, "--max_seq_length", "16", "--output_dir", str(out)]) == 0
        assert json.loads((out / "evaluation.json").read_text())["metrics"]["validation"]["accuracy"] >= 0


def test_predictions_never_replace_their_input_file(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """--output naming the --input file had replaced the user's labelled rows with the model's labels."""
    from xfer_nlp import cli

    data = write_jsonl(tmp_path / "mine.jsonl", [{"text": "a dull film", "label": 0}])
    before = data.read_bytes()
    monkeypatch.chdir(tmp_path)
    for output in (str(data), "./mine.jsonl"):  # the same file by another name too
        assert cli.main(["predict", "--model", str(tiny_model_dir), "--input", str(data), "--output", output]) == 2
        assert capsys.readouterr().err.strip() == (f"error: --output '{output}' is the --input file: the predictions "
                                                   "would replace the texts (and any labels) in it. Name another file.")
    assert data.read_bytes() == before


def test_a_file_given_as_a_text_is_labelled_with_a_note_naming_input(tiny_model_dir, tmp_path, capsys):
    from xfer_nlp import cli

    texts = tmp_path / "texts.txt"
    texts.write_text("a dull film\n")
    assert cli.main(["predict", "--model", str(tiny_model_dir), str(texts)]) == 0
    printed = capsys.readouterr()
    assert printed.out.rstrip().endswith(f"\t{texts}")  # labelled as given
    assert f"note: '{texts}' is a file, labelled here as a text; to label the texts in it: --input {texts}" \
        in printed.err
    # '-', the Unix name for standard input, is labelled as a text too, and the note names --input -
    assert cli.main(["predict", "--model", str(tiny_model_dir), "-"]) == 0
    printed = capsys.readouterr()
    assert printed.out.rstrip().endswith("\t-")
    assert "note: '-' is labelled here as a text; to label the lines of standard input: --input -" in printed.err


def test_the_machines_refusals_are_one_line_with_the_path(tmp_path, monkeypatch, capsys):
    """A name too long for the file system (a review pasted where a dataset name belongs) is the machine's answer,
    not a bug: one line naming the path, no traceback."""
    from xfer_nlp import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # the default output folder's parent: the long name is then what the stat refuses
    review = "a long review that goes on and on about the film " * 20
    assert cli.main(["run", "--dataset_name", review]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: File name too long: 'runs/a long review") and "Traceback" not in err
    assert err.endswith("The machine refused it: shorten it (is it a text where a path or name belongs?).")
    assert len(err) < 300


def test_a_text_given_as_the_model_is_named_not_echoed_whole(capsys):
    from xfer_nlp import cli

    review = "a long review that goes on and on about the film " * 20
    assert cli.main(["predict", "--model", review, "a dull film"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --model '{review[:100]}...' is neither a folder nor a Hub id (user/name)."


def test_a_command_stopped_by_ctrl_c_prints_one_line_not_a_traceback(monkeypatch, capsys):
    from xfer_nlp import cli

    def stopped(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "report_command", stopped)
    monkeypatch.setattr(cli, "stop_on_sigterm", lambda: None)  # this test process keeps its own SIGTERM handling
    assert cli.main(["report", "somewhere"]) == 130
    assert capsys.readouterr().err.strip() == "error: xfer-nlp report was interrupted. Run the command again."


def test_importing_the_package_leaves_peft_and_the_training_stack_unloaded():
    """predict, report and evaluate start by importing xfer_nlp; peft alone cost 1.5 s of a 5.7 s `xfer-nlp predict`
    of one text (pulled in by transformers.optimization at import time), so only LoRA runs and schedules load it."""
    probe = "import sys, xfer_nlp; print(sorted(m for m in ('peft', 'transformers.optimization') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
