"""Fixtures: a tiny random BERT with its own word-level vocab, and tiny labelled text sets in every format."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: N workers share the cores, so each (and every process it starts) gets one OpenMP thread;
    # threads beyond the cores spin against each other and measured several times slower, not shared.
    os.environ["OMP_NUM_THREADS"] = "1"

import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The real benchmark sets: ../shared/data beside the project (as in CI), or wherever XFER_NLP_DATA_DIR points.
SHARED_DATA = Path(os.environ.get("XFER_NLP_DATA_DIR") or ROOT.parent / "shared" / "data")
if os.environ.get("CI") and not SHARED_DATA.is_dir():
    raise RuntimeError(f"CI must run the real-data tests, but {SHARED_DATA} does not exist (set XFER_NLP_DATA_DIR).")

POSITIVE = ["good", "great", "wonderful", "superb", "moving", "funny", "brilliant", "charming"]
NEGATIVE = ["bad", "awful", "dull", "boring", "terrible", "tedious", "clumsy", "lifeless"]
FILLER = ["the", "film", "movie", "was", "is", "a", "and", "plot", "acting", "story", "really", "quite", "very",
          "this", "it", "but", "overall", "cast", "script", "ending"]


def make_rows(n: int, seed: int) -> list[dict]:
    """Sentences whose label is the polarity word they contain: learnable by every mode in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, rng.randint(3, 9)) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def free_port() -> str:
    """A port nothing listens on now, for one multi-process launch: a fixed one can still be held by the
    rendezvous of a launch an earlier test killed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def one_process_env() -> dict:
    """Environment for a subprocess that runs alone (a benchmark script): the test's threads (every core when the
    suite runs in one process, one under pytest -n), and no GPUs."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def launch_env() -> dict:
    """Environment for launched runs that may start 2 processes: one OpenMP thread each (they share this
    machine's cores), and no GPUs, so they test DDP over gloo on CPU as they say, also on a one-GPU machine,
    where two processes would otherwise share one device."""
    return {**one_process_env(), "OMP_NUM_THREADS": "1"}


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def descendants(pid: int) -> list[int]:
    """Every process below pid (torchrun's workers can leave the launcher's process group)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_and_kill(cmd, out, after_step, cwd):
    """Start the run and SIGKILL it and every process under it once checkpoint-<after_step> exists."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=launch_env())
    target = out / "checkpoints" / f"checkpoint-{after_step}"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    time.sleep(0.5)
    assert target.exists(), "the run ended before it could be killed"
    assert not (out / "results.json").exists(), "the run finished before it was killed"


@pytest.fixture(scope="session", autouse=True)
def temp_files_under_basetemp(tmp_path_factory):
    """Temporary files of this process and every process it starts (torchelastic's per-launch log folders,
    benchmarks' scratch) go under pytest's base folder, which a passing run removes, not loose into /tmp."""
    import tempfile

    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmp"))
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    yield
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT with random weights and a word-level vocab, saved as a real model folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(POSITIVE + NEGATIVE + FILLER)) + list(
        "abcdefghijklmnopqrstuvwxyz")
    # transformers 5 takes the vocabulary itself (`vocab=`); a vocab_file argument is silently ignored.
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=64)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForSequenceClassification(config).bert.save_pretrained(path)  # an encoder checkpoint, like a Hub one
    tokenizer.save_pretrained(path)
    # Like the embedded encoder, it declares sentence-transformers mean pooling, so mean is its default head.
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return path


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    return data_folder(tmp_path_factory, "tiny-data", train=make_rows(160, 1), validation=make_rows(48, 2),
                       test=make_rows(40, 3))


def data_folder(tmp_path_factory, name: str, **splits) -> Path:
    """A data folder with one JSONL file per split: data_folder(f, "x", train=rows, validation=rows)."""
    path = tmp_path_factory.mktemp(name)
    for split, rows in splits.items():
        write_jsonl(path / f"{split}.jsonl", rows)
    return path


@pytest.fixture
def tiny_run(tiny_model_dir, tiny_data_dir, tmp_path):
    """Keyword arguments for a fast xfer_nlp.run on the tiny model and data."""
    return dict(model_name_or_path=str(tiny_model_dir), dataset_name=str(tiny_data_dir),
                output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, per_device_eval_batch_size=32,
                max_seq_length=32, feature_cache_dir=str(tmp_path / "features"), seed=0, logging_steps=5,
                min_train_steps=0)  # the tiny sets are small data: keep the mode's own epochs


def tiny_configs():
    """One tiny config per encoder family xfer_nlp supports: hidden 32, 2 layers, the tiny vocab, [PAD] = 0."""
    from transformers import (AlbertConfig, BertConfig, CamembertConfig, ConvBertConfig, Data2VecTextConfig,
                              DebertaConfig, DebertaV2Config, DistilBertConfig, ElectraConfig, ErnieConfig,
                              EuroBertConfig, GteConfig, LongformerConfig, MegatronBertConfig, MobileBertConfig,
                              MPNetConfig, ModernBertConfig, NomicBertConfig, RemBertConfig, RobertaConfig,
                              XLMRobertaConfig, XLMRobertaXLConfig)

    v = len(VOCAB)
    common = dict(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=160, pad_token_id=0)
    return {
        "bert": BertConfig(**common),
        "ernie": ErnieConfig(**common),
        # as google/mobilebert-uncased, narrower: 16-wide bottlenecks and embeddings, 2 feed-forward blocks a layer
        "mobilebert": MobileBertConfig(**common, embedding_size=16, true_hidden_size=16, intra_bottleneck_size=16,
                                       num_feedforward_networks=2),
        "roberta": RobertaConfig(**common),
        "xlm-roberta": XLMRobertaConfig(**common),
        "camembert": CamembertConfig(**common),
        "data2vec-text": Data2VecTextConfig(**common),
        "longformer": LongformerConfig(**{**common, "max_position_embeddings": 162}, attention_window=8),
        "distilbert": DistilBertConfig(vocab_size=v, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                       max_position_embeddings=160, pad_token_id=0),
        "albert": AlbertConfig(**common, embedding_size=16),
        "electra": ElectraConfig(**common, embedding_size=16),
        "deberta-v2": DebertaV2Config(**common, relative_attention=True, position_biased_input=False,
                                      pos_att_type=["p2c", "c2p"], max_relative_positions=16),
        # as microsoft/deberta-base: relative positions only, query, key and value in one projection
        "deberta": DebertaConfig(**common, relative_attention=True, position_biased_input=False,
                                 pos_att_type=["p2c", "c2p"], max_relative_positions=16),
        "mpnet": MPNetConfig(**common),
        # ConvBERT mixes span-based convolutions into attention; RemBERT's embeddings are narrower than its layers
        "convbert": ConvBertConfig(**common, embedding_size=16),
        "rembert": RemBertConfig(**common, input_embedding_size=16, output_embedding_size=16),
        # pre-LayerNorm layers, with a final LayerNorm after the last one
        "megatron-bert": MegatronBertConfig(**common),
        "xlm-roberta-xl": XLMRobertaXLConfig(**common),
        # rotary positions, gated feed-forward blocks: nomic-embed-text, gte-multilingual, EuroBERT (transformers 5
        # only); EuroBERT's head classifies each token and averages the logits
        "nomic_bert": NomicBertConfig(**common),
        "gte": GteConfig(**common),
        "eurobert": EuroBertConfig(**common, num_key_value_heads=2),
        "modernbert": ModernBertConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=160, pad_token_id=0,
                                       bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3,
                                       global_attn_every_n_layers=2, local_attention=16),
    }


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(POSITIVE + NEGATIVE + FILLER)) + list(
    "abcdefghijklmnopqrstuvwxyz")


def save_tiny_encoder(config, path: Path) -> Path:
    """A random encoder of `config`'s family with the word-level tokenizer, saved as a Hub-style model folder."""
    import torch
    from transformers import AutoModel, BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True, model_max_length=64)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
