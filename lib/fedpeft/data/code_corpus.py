"""A Python code corpus for causal language modelling: documents, a file-level held-out split, client shards and
packed token blocks.

Sources:

* ``stdlib``: the running Python's standard library source (real code that ships with Python), without its
  tests: a file is left out when a folder on its path is ``test``, ``tests``, ``idle_test`` or
  ``site-packages``, or its name starts with ``test_``. A document's *group* is its top-level package or module
  (``email``, ``asyncio``, ``json``...).
* ``hub``: a Hugging Face dataset with ``content`` and ``repo_name`` columns such as
  ``codeparrot/codeparrot-clean-valid`` (the seed's data; needs internet); a document's group is its repository.

Evaluation files are chosen per file by a hash of the file's name, so the split does not depend on the order
files are listed in, and an evaluation file never reaches training. A *sample* is a block of ``block_size``
tokens cut from the documents concatenated with an end-of-text token between them (sequence packing, as
transformers' ``run_clm`` example does): no padding, every token counts.

Two ways to cut samples: :func:`sample_blocks` draws them at seeded random positions of the whole token stream, so
they spread over the files in proportion to their length (the experiment's training and evaluation samples);
:func:`pack_blocks` takes the first blocks of the files in the order given (the tiny model's pretraining, and the
"first files in name order" sample the code report once evaluated on, kept to explain its round-0 loss).
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

EXCLUDED_FOLDERS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
SPLITS = ("iid", "package")


@dataclass(frozen=True)
class Document:
    name: str  # path relative to the corpus root (stdlib) or "repo/path" (hub)
    group: str  # top-level package or repository: the unit of the non-IID split
    text: str


@dataclass
class TokenBlocks:
    """Packed training or evaluation samples: ``input_ids`` of shape ``(samples, block_size)``."""

    input_ids: torch.Tensor
    files: list[str]  # every document that contributed tokens, in packing order
    block_files: list[tuple[str, ...]] | None = None  # per sample, the documents its tokens come from (sampled blocks)

    def select(self, indices: Sequence[int]) -> "TokenBlocks":
        """The samples at ``indices``; ``files`` narrows to theirs when each sample's documents are known."""
        indices = [int(i) for i in indices]
        if self.block_files is None:
            return TokenBlocks(self.input_ids[indices], self.files)
        chosen = [self.block_files[i] for i in indices]
        return TokenBlocks(self.input_ids[indices], sorted({f for names in chosen for f in names}), chosen)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_test_or_foreign(relative: Path) -> bool:
    """True for files the corpus leaves out: tests and third-party packages."""
    return bool(EXCLUDED_FOLDERS & set(relative.parts[:-1])) or relative.name.startswith("test_")


def stdlib_documents(packages: Sequence[str] = (), root: Path | None = None) -> list[Document]:
    """The standard library's ``.py`` files without tests, sorted by name; ``packages`` keeps only those groups.

    Raises a ``ValueError`` naming the unknown packages when ``packages`` lists a group that has no file.
    """
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"standard library folder {root} does not exist")
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if is_test_or_foreign(rel):
            continue
        group = rel.parts[0].removesuffix(".py")
        if packages and group not in packages:
            continue
        docs.append(Document(rel.as_posix(), group, path.read_text(encoding="utf-8", errors="replace")))
    if packages:
        missing = sorted(set(packages) - {d.group for d in docs})
        if missing:
            raise ValueError(f"stdlib_packages {missing} have no source files under {root}")
    if not docs:
        raise ValueError(f"no Python source files found under {root}")
    return docs


def hub_documents(dataset: str, split: str = "train") -> list[Document]:  # pragma: no cover - needs internet
    """Documents of a hub code dataset (``content``, ``repo_name`` and ``path`` columns)."""
    from datasets import load_dataset

    table = load_dataset(dataset, split=split)
    return [Document(f"{r['repo_name']}/{r['path']}", r["repo_name"], r["content"]) for r in table]


def _unit_hash(name: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_held_out(docs: Sequence[Document], eval_fraction: float, seed: int = 0) -> tuple[list[Document], list[Document]]:
    """``(train, eval)`` documents: a file goes to evaluation when the hash of ``(seed, name)`` falls below
    ``eval_fraction``. Deterministic and independent of the documents' order."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction = {eval_fraction!r} is not allowed; it must be in (0, 1)")
    train = [d for d in docs if _unit_hash(d.name, seed) >= eval_fraction]
    held = [d for d in docs if _unit_hash(d.name, seed) < eval_fraction]
    if not train or not held:
        raise ValueError(f"eval_fraction = {eval_fraction} leaves {len(train)} training and {len(held)} evaluation "
                         f"files out of {len(docs)}; both must be non-empty")
    return train, held


def pack_blocks(docs: Sequence[Document], tokenizer, block_size: int, num_blocks: int, separator_id: int,
                what: str = "samples") -> TokenBlocks:
    """Tokenize ``docs`` in order, concatenate them with ``separator_id`` after each, and cut the first
    ``num_blocks`` blocks of ``block_size`` tokens; only the documents needed are tokenized.

    Raises a ``ValueError`` when the documents hold fewer than ``num_blocks * block_size`` tokens.
    """
    if block_size < 2:
        raise ValueError(f"block_size = {block_size!r} is not allowed; it must be >= 2")
    if num_blocks < 1:
        raise ValueError(f"{what} = {num_blocks!r} is not allowed; it must be >= 1")
    need = num_blocks * block_size
    ids: list[int] = []
    used: list[str] = []
    for doc in docs:
        if len(ids) >= need:
            break
        ids.extend(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        ids.append(separator_id)
        used.append(doc.name)
    if len(ids) < need:
        raise ValueError(f"{what} = {num_blocks} blocks of {block_size} tokens need {need:,} tokens, but the "
                         f"{len(docs)} files hold only {len(ids):,}; ask for fewer or shorter samples")
    return TokenBlocks(torch.tensor(ids[:need], dtype=torch.long).view(num_blocks, block_size), used)


def token_stream(docs: Sequence[Document], tokenizer, separator_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, owner)``: the documents' tokens in order with ``separator_id`` after each, and for every token the
    index of its document in ``docs``."""
    if not docs:
        raise ValueError("no documents to tokenize")
    encoded = tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]
    lengths = np.array([len(e) + 1 for e in encoded])
    ids = np.fromiter((t for e in encoded for t in (*e, separator_id)), dtype=np.int64, count=int(lengths.sum()))
    return ids, np.repeat(np.arange(len(docs)), lengths)


def sample_blocks(docs: Sequence[Document], tokenizer, block_size: int, num_blocks: int, separator_id: int, seed: int,
                  what: str = "samples") -> TokenBlocks:
    """``num_blocks`` non-overlapping blocks of ``block_size`` tokens drawn at random from the documents' token
    stream (files in a seeded order, ``separator_id`` after each).

    The stream is cut at a seeded offset into whole blocks and ``num_blocks`` of them are drawn without
    replacement, so every token is equally likely to be drawn and the samples spread over the files in proportion
    to their length. The draw for ``seed`` is a prefix: asking for fewer blocks gives the first of the same blocks.
    ``block_files`` names each sample's documents. Raises a ``ValueError`` when the stream holds fewer blocks.
    """
    if block_size < 2:
        raise ValueError(f"block_size = {block_size!r} is not allowed; it must be >= 2")
    if num_blocks < 1:
        raise ValueError(f"{what} = {num_blocks!r} is not allowed; it must be >= 1")
    order = shuffled(docs, seed)
    ids, owner = token_stream(order, tokenizer, separator_id)
    rng = np.random.default_rng(seed)
    offset = int(rng.integers(block_size)) if len(ids) >= 2 * block_size else 0
    available = (len(ids) - offset) // block_size
    if available < num_blocks:
        raise ValueError(f"{what} = {num_blocks} blocks of {block_size} tokens need {num_blocks * block_size:,} tokens, "
                         f"but the {len(docs)} files hold only {len(ids):,}; ask for fewer or shorter samples")
    starts = offset + block_size * rng.permutation(available)[:num_blocks]
    windows = starts[:, None] + np.arange(block_size)
    block_files = [tuple(dict.fromkeys(order[j].name for j in owner[w])) for w in windows]
    return TokenBlocks(torch.from_numpy(ids[windows]), sorted({f for names in block_files for f in names}), block_files)


def shuffled(docs: Sequence[Document], seed: int) -> list[Document]:
    order = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in order]


def assign_groups(groups: Iterable[str], num_clients: int, seed: int) -> dict[str, int]:
    """Groups (packages) dealt to clients round-robin in a seeded order: every group has exactly one client."""
    names = sorted(set(groups))
    if len(names) < num_clients:
        raise ValueError(f"num_clients = {num_clients} is more than the {len(names)} packages in the corpus; "
                         "a package split needs at least one package per client")
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[j]: k % num_clients for k, j in enumerate(order)}


def client_shards(docs: Sequence[Document], tokenizer, split: str, num_clients: int, samples_per_client: int,
                  block_size: int, separator_id: int, seed: int) -> list[TokenBlocks]:
    """Training blocks for each client, drawn at random positions of the files (:func:`sample_blocks`).

    ``iid``: ``num_clients * samples_per_client`` blocks are drawn from all files and dealt in turn (block ``i``
    to client ``i % num_clients``). ``package``: whole packages are dealt to clients (:func:`assign_groups`) and
    each client draws its blocks from its own packages' files only, so clients see different modules (a natural
    non-IID split for code). Either way, a client's blocks for fewer samples per client are a subset of its blocks
    for more (the same seed's draw is a prefix), as the seed's 1,000-sample run is half of its 2,000.
    """
    if split not in SPLITS:
        raise ValueError(f"split = {split!r} is not allowed; it must be one of {list(SPLITS)}")
    if num_clients < 1:
        raise ValueError(f"num_clients = {num_clients!r} is not allowed; it must be >= 1")
    if split == "iid":
        blocks = sample_blocks(docs, tokenizer, block_size, num_clients * samples_per_client, separator_id, seed,
                               what=f"{num_clients} clients x samples_per_client")
        return [blocks.select(range(c, len(blocks), num_clients)) for c in range(num_clients)]
    owner = assign_groups((d.group for d in docs), num_clients, seed)
    return [sample_blocks([d for d in docs if owner[d.group] == c], tokenizer, block_size, samples_per_client,
                          separator_id, seed, what=f"samples_per_client (client {c}, package split)")
            for c in range(num_clients)]
